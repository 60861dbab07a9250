#!/usr/bin/python3
"""subword-nmt's byte-pair encoding, applied: the Python twin of
tokenizer/moa_bpe.c (same codes file, same rules; see tokenizer/moa_bpe.h).

    from bpe import BPE
    b = BPE("bpecodes")
    b.segment("a lower word")          # "a low@@ er word"
    b.segment_word("lower")            # ["low", "er"]

    /usr/bin/python3 train/bpe.py --codes bpecodes < tokenized.txt > pieces.txt

The codes file: an optional "#version: 0.2" line (none means 0.1), then
"LEFT RIGHT" merges, earliest first (the first of a repeated pair counts).
Glossaries, vocabulary filters and dropout are not supported.
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import Dict, List, Optional, Tuple

END = "</w>"
SEPARATOR = "@@"


class BPECodesError(ValueError):
    pass


def read_codes(path: str) -> Tuple[int, List[Tuple[str, str]]]:
    """(version 1 or 2, merges in file order). Raises BPECodesError."""
    with open(path, encoding="utf-8", newline="\n") as f:
        text = f.read()
    lines = text.rstrip("\n").split("\n") if text.rstrip("\n") else []
    version, first = 1, 0
    if lines and lines[0].startswith("#version:"):
        v = lines[0].strip("\r\n ")[len("#version:"):].strip()
        m = re.fullmatch(r"0\.([12])(\.0+)*", v)
        if not m:
            raise BPECodesError(f"{path}: line 1: BPE codes version {v!r} is not supported "
                                "(0.1 or 0.2)")
        version, first = int(m.group(1)), 1
    merges = []
    for n, raw in enumerate(lines[first:], first + 1):
        item = raw.strip("\r\n ").split(" ")
        if len(item) != 2 or not item[0] or not item[1]:
            raise BPECodesError(f"{path}: line {n}: expected two symbols separated by one "
                                f"space, got {raw[:60]!r}")
        merges.append((item[0], item[1]))
    return version, merges


class BPE:
    def __init__(self, codes: str) -> None:
        self.version, merges = read_codes(codes)
        self.ranks: Dict[Tuple[str, str], int] = {}
        for i, pair in enumerate(merges):
            self.ranks.setdefault(pair, i)
        self.cache: Dict[str, List[str]] = {}

    def segment_word(self, word: str) -> List[str]:
        """The pieces of one word, without separators."""
        if len(word) == 1:
            return [word]
        hit = self.cache.get(word)
        if hit is not None:
            return list(hit)
        syms = list(word[:-1]) + [word[-1] + END] if self.version == 2 else list(word) + [END]
        while len(syms) > 1:
            ranked = [(self.ranks[p], i) for i, p in enumerate(zip(syms, syms[1:]))
                      if p in self.ranks]
            if not ranked:
                break
            best = syms[min(ranked)[1]], syms[min(ranked)[1] + 1]
            out, i = [], 0
            while i < len(syms):
                if i + 1 < len(syms) and (syms[i], syms[i + 1]) == best:
                    out.append(syms[i] + syms[i + 1])
                    i += 2
                else:
                    out.append(syms[i])
                    i += 1
            syms = out
        if syms[-1] == END:
            syms = syms[:-1]
        elif syms[-1].endswith(END):
            syms[-1] = syms[-1][:-len(END)]
        self.cache[word] = syms
        return list(syms)

    def segment(self, text: str) -> str:
        """Space-separated words -> space-separated pieces, '@@' on all but a
        word's last."""
        out: List[str] = []
        for w in text.split(" "):
            if not w:
                continue
            pieces = self.segment_word(w)
            out += [p + SEPARATOR for p in pieces[:-1]] + [pieces[-1]]
        return " ".join(out)


def unsegment(pieces: List[str]) -> str:
    """fairseq's removal of subword-nmt separators: join, drop '@@ '."""
    return (" ".join(pieces) + " ").replace(SEPARATOR + " ", "").rstrip(" ")


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description="Apply subword-nmt BPE merges to tokenized text "
                                "(one sentence a line).")
    p.add_argument("--codes", required=True, help="the codes file (merges)")
    a = p.parse_args(argv)
    b = BPE(a.codes)
    for line in sys.stdin:
        print(b.segment(line.rstrip("\n")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
