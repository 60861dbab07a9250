#!/usr/bin/python3
"""Learns subword-nmt BPE merges (a "codes" file, format 0.2) on Moses-tokenised
text, and writes the fairseq dictionary of the segmented text: what fairseq's
WMT recipe does with `subword-nmt learn_bpe` and `fairseq-preprocess
--joined-dictionary`, in the standard library alone.

    # a tab-separated parallel corpus, both sides through the Moses rules of
    # their language (fairseq's recipe: normalise, clean, tokenize -a)
    /usr/bin/python3 train/learn_bpe.py --tsv train.en-de.tsv.xz --source-lang en \\
        --target-lang de --max-lines 20000 --symbols 4000 --codes bpecodes --dict dict.txt
    # text that is already tokenized
    /usr/bin/python3 train/learn_bpe.py --input corpus.tok --symbols 32000 --codes bpecodes

Learning (subword-nmt's rule): words are split into characters, the last one
marked with "</w>"; each step merges the most frequent adjacent pair (ties:
the greatest pair, comparing the two strings in order) in every word, until
`--symbols` merges are written or the best pair occurs fewer than
`--min-frequency` times. Counting is exact at every step (subword-nmt prunes
its pair statistics for speed, which can change late merges on big corpora).

The dictionary: pieces of the segmented text with their counts, most frequent
first (ties: by piece), padded with madeupwordNNNN entries to a multiple of 8
ids with the 4 specials, as fairseq's Dictionary.finalize does.
"""

from __future__ import annotations

import argparse
import collections
import lzma
import os
import sys
from typing import Counter, Dict, Iterable, Iterator, List, Optional, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bpe import BPE, END  # noqa: E402
from moses import Moses  # noqa: E402

Pair = Tuple[str, str]


def _pairs(word: Tuple[str, ...]) -> Iterator[Pair]:
    return zip(word, word[1:])


def learn(word_counts: Dict[str, int], symbols: int, min_frequency: int = 2) -> List[Pair]:
    """The merges, in order."""
    vocab = [(tuple(w[:-1]) + (w[-1] + END,), c)
             for w, c in sorted(word_counts.items(), key=lambda x: -x[1]) if w]
    words = [w for w, _ in vocab]
    freq = [c for _, c in vocab]
    stats: Counter[Pair] = collections.Counter()
    where: Dict[Pair, set] = collections.defaultdict(set)
    for j, w in enumerate(words):
        for p in _pairs(w):
            stats[p] += freq[j]
            where[p].add(j)
    # count -> pairs with that count, to find the best pair without a full scan
    buckets: Dict[int, set] = collections.defaultdict(set)
    for p, c in stats.items():
        buckets[c].add(p)

    def move(p: Pair, old: int, new: int) -> None:
        if old > 0:
            buckets[old].discard(p)
            if not buckets[old]:
                del buckets[old]
        if new > 0:
            buckets[new].add(p)

    merges: List[Pair] = []
    while len(merges) < symbols and buckets:
        top = max(buckets)
        if top < min_frequency:
            break
        best = max(buckets[top])
        merges.append(best)
        a, b = best
        for j in list(where.pop(best, ())):
            old = words[j]
            new: List[str] = []
            i = 0
            while i < len(old):
                if i + 1 < len(old) and old[i] == a and old[i + 1] == b:
                    new.append(a + b)
                    i += 2
                else:
                    new.append(old[i])
                    i += 1
            new_t = tuple(new)
            if new_t == old:
                continue
            for p in _pairs(old):
                c = stats[p]
                stats[p] = c - freq[j]
                move(p, c, c - freq[j])
            for p in _pairs(new_t):
                c = stats[p]
                stats[p] = c + freq[j]
                move(p, c, c + freq[j])
                where[p].add(j)
            words[j] = new_t
        c = stats.pop(best, 0)
        move(best, c, 0)
    return merges


def write_codes(merges: List[Pair], path: str) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("#version: 0.2\n")
        for a, b in merges:
            f.write(f"{a} {b}\n")


def fairseq_dict(counts: Counter[str]) -> List[Tuple[str, int]]:
    """(piece, count) in fairseq's order, padded to a multiple of 8 ids
    (with the 4 specials) with madeupwordNNNN entries of count 0."""
    items = sorted(sorted(counts.items()), key=lambda x: -x[1])
    i = 0
    while (len(items) + 4) % 8:
        items.append((f"madeupword{i:04d}", 0))
        i += 1
    return items


def write_dict(items: List[Tuple[str, int]], path: str) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for piece, count in items:
            f.write(f"{piece} {count}\n")


def read_tsv(path: str, max_lines: int) -> Iterator[Tuple[str, str]]:
    opener = lzma.open if path.endswith(".xz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        for n, line in enumerate(f):
            if max_lines and n >= max_lines:
                break
            cols = line.rstrip("\n").split("\t")
            if len(cols) >= 2:
                yield cols[0], cols[1]


def tokenized_lines(a: argparse.Namespace) -> Iterator[str]:
    """The Moses-tokenised lines to learn from."""
    if a.tsv:
        src, tgt = Moses(a.source_lang), Moses(a.target_lang)
        for s, t in read_tsv(a.tsv, a.max_lines):
            yield src.tokenize(s)
            yield tgt.tokenize(t)
    for path in a.input:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f):
                if a.max_lines and n >= a.max_lines:
                    break
                yield line.rstrip("\n")


def count_words(lines: Iterable[str]) -> Counter[str]:
    c: Counter[str] = collections.Counter()
    for line in lines:
        c.update(w for w in line.split(" ") if w)
    return c


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description="Learn subword-nmt BPE merges (and the fairseq "
                                "dictionary of the segmented text).")
    p.add_argument("--input", action="append", default=[], metavar="FILE",
                   help="Moses-tokenised text, one sentence a line (repeatable)")
    p.add_argument("--tsv", metavar="FILE", help="a source<TAB>target corpus (.xz allowed) "
                   "tokenised here with the Moses rules of --source-lang/--target-lang")
    p.add_argument("--source-lang", default="en", help="language of the TSV's first column")
    p.add_argument("--target-lang", default="de", help="language of the TSV's second column")
    p.add_argument("--max-lines", type=int, default=0,
                   help="read at most this many lines of each input (0: all)")
    p.add_argument("--symbols", type=int, default=32000, help="number of merges (default 32000)")
    p.add_argument("--min-frequency", type=int, default=2,
                   help="stop when the best pair occurs fewer times (default 2)")
    p.add_argument("--codes", required=True, help="codes file to write (#version: 0.2)")
    p.add_argument("--dict", help="also write the fairseq dict.txt of the segmented text")
    a = p.parse_args(argv)
    if not a.tsv and not a.input:
        p.error("give --tsv or --input")
    lines = list(tokenized_lines(a))
    merges = learn(count_words(lines), a.symbols, a.min_frequency)
    write_codes(merges, a.codes)
    print(f"{len(merges)} merges from {len(lines)} lines -> {a.codes}")
    if a.dict:
        bpe = BPE(a.codes)
        pieces: Counter[str] = collections.Counter()
        for line in lines:
            pieces.update(bpe.segment(line).split())
        items = fairseq_dict(pieces)
        write_dict(items, a.dict)
        print(f"{len(items)} dictionary entries -> {a.dict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
