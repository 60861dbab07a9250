#!/usr/bin/python3
"""The vocabulary shortlist of a model (docs/moa-spec.md §9): for each source
piece, the target pieces it is translated to, from co-occurrence counts over
the tokenised training corpus; plus the most frequent target pieces.

    /usr/bin/python3 train/make_shortlist.py --data build/model/data \\
        --model weights/moa-en-de --out weights/moa-en-de/shortlist.tsv
    /usr/bin/python3 train/make_shortlist.py --data DIR --model DIR --out F \\
        --report valid                # coverage of the split's references

The engine (moa-translate --shortlist, moa-server shortlist = on) then runs
the output projection and softmax of each sentence over the union of the
specials, the frequent pieces and the lists of the sentence's source pieces,
instead of the whole vocabulary.

How a list is chosen. Over the training pairs, c(s) counts the pairs whose
source holds piece s, c(t) those whose target holds t, c(s,t) those with
both (each pair counts once). A target piece t enters s's list when it
co-occurs at least --min-count times and is more likely with s than without
it (c(s,t)/c(s) > c(t)/N); the list keeps the --per-source best by Dice,
2·c(s,t)/(c(s)+c(t)), which ranks the pieces that travel with s above the
merely frequent ones (those are in the frequent set anyway). A source piece
that also occurs on the target side lists itself: software strings copy
names, numbers and placeholders verbatim.

Input: the token cache of train/data.py (train.{src,tgt}[.off].npy,
meta.json), made with the model's own tokenizer (checked against the
checksum of its sentencepiece.model + vocab.txt). numpy only.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

SPECIALS = (0, 1, 2, 3)  # <s> <pad> </s> <unk>
FORMAT = "moa-shortlist"
VERSION = 1


def tokenizer_checksum(model_dir: str) -> str:
    """The checksum train/data.py writes into meta.json for this tokenizer."""
    h = hashlib.sha256()
    for name in ("sentencepiece.model", "vocab.txt"):
        with open(os.path.join(model_dir, name), "rb") as f:
            h.update(f.read())
    return h.hexdigest()[:16]


def load_split(data_dir: str, split: str) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    def load(name: str) -> np.ndarray:
        return np.load(os.path.join(data_dir, f"{split}.{name}.npy"))
    return load("src"), load("src.off"), load("tgt"), load("tgt.off")


def unique_per_sentence(tok: np.ndarray, off: np.ndarray, lo: int, hi: int,
                        vocab: int) -> Tuple[np.ndarray, np.ndarray]:
    """The distinct non-special pieces of sentences lo..hi-1: (pieces, sorted
    by sentence then id; offsets, hi - lo + 1 values)."""
    seg = tok[off[lo]:off[hi]].astype(np.int64)
    sent = np.repeat(np.arange(hi - lo, dtype=np.int64), np.diff(off[lo:hi + 1]))
    keep = seg >= len(SPECIALS)
    keys = np.unique(sent[keep] * vocab + seg[keep])
    s, t = keys // vocab, keys % vocab
    counts = np.bincount(s, minlength=hi - lo)
    o = np.zeros(hi - lo + 1, dtype=np.int64)
    np.cumsum(counts, out=o[1:])
    return t, o


def cooccurrence(src: np.ndarray, src_off: np.ndarray, tgt: np.ndarray, tgt_off: np.ndarray,
                 vocab: int, chunk: int = 20000, log: bool = True
                 ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """c(s,t) as a dense vocab × vocab int32 matrix, c(s), c(t), and the
    number of pairs; each pair counts a piece (or two) once."""
    n = len(src_off) - 1
    cst = np.zeros(vocab * vocab, dtype=np.int32)
    cs = np.zeros(vocab, dtype=np.int64)
    ct = np.zeros(vocab, dtype=np.int64)
    t0 = time.time()
    for lo in range(0, n, chunk):
        hi = min(n, lo + chunk)
        su, so = unique_per_sentence(src, src_off, lo, hi, vocab)
        tu, to = unique_per_sentence(tgt, tgt_off, lo, hi, vocab)
        cs += np.bincount(su, minlength=vocab)
        ct += np.bincount(tu, minlength=vocab)
        a, b = np.diff(so), np.diff(to)
        nc = a * b                                   # combinations per pair
        start = np.zeros(len(nc) + 1, dtype=np.int64)
        np.cumsum(nc, out=start[1:])
        total = int(start[-1])
        if total == 0:
            continue
        pair = np.repeat(np.arange(len(nc), dtype=np.int64), nc)
        local = np.arange(total, dtype=np.int64) - start[pair]
        bb = b[pair]
        keys = su[so[pair] + local // bb] * vocab + tu[to[pair] + local % bb]
        cst += np.bincount(keys, minlength=vocab * vocab).astype(np.int32)
        if log and (lo // chunk) % 10 == 0:
            print(f"shortlist: {hi}/{n} pairs counted ({time.time() - t0:.0f} s)",
                  file=sys.stderr, flush=True)
    return cst.reshape(vocab, vocab), cs, ct, n


def build_lists(cst: np.ndarray, cs: np.ndarray, ct: np.ndarray, n: int, per_source: int,
                min_count: int) -> List[np.ndarray]:
    """Each source piece's list of target pieces, best first (module doc)."""
    vocab = len(cs)
    lists: List[np.ndarray] = []
    pt = ct / max(n, 1)
    for s in range(vocab):
        if s < len(SPECIALS) or cs[s] == 0:
            lists.append(np.zeros(0, dtype=np.int64))
            continue
        row = cst[s].astype(np.float64)
        ok = (row >= min_count) & (row / cs[s] > pt)
        ok[:len(SPECIALS)] = False
        cand = np.nonzero(ok)[0]
        dice = 2 * row[cand] / (cs[s] + ct[cand])
        order = np.lexsort((cand, -dice))            # best Dice, then lower id
        best = cand[order[:per_source]]
        if ct[s] > 0 and s not in best:              # copied verbatim
            best = np.concatenate([best, [s]])
        lists.append(best.astype(np.int64))
    return lists


def frequent_targets(ct: np.ndarray, count: int) -> np.ndarray:
    """The `count` target pieces found in the most pairs (ties: lower id)."""
    order = np.lexsort((np.arange(len(ct)), -ct))
    order = order[ct[order] > 0]
    return np.sort(order[:count])


def write_shortlist(path: str, vocab: int, frequent: Sequence[int], lists: Sequence[np.ndarray],
                    meta: Dict[str, object]) -> int:
    """Writes the file (format: docs/moa-spec.md §9); returns its size."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        f.write(f"# {FORMAT} {VERSION}: the vocabulary shortlist of a moa-translation model "
                "(docs/moa-spec.md section 9), made by train/make_shortlist.py\n")
        for k, v in meta.items():
            f.write(f"# {k}: {v}\n")
        f.write(f"format\t{FORMAT}\t{VERSION}\n")
        f.write(f"vocab_size\t{vocab}\n")
        f.write("always\t" + " ".join(str(int(t)) for t in frequent) + "\n")
        for s, lst in enumerate(lists):
            if len(lst):
                f.write(f"{s}\t" + " ".join(str(int(t)) for t in lst) + "\n")
    os.replace(tmp, path)
    return os.path.getsize(path)


def read_shortlist(path: str) -> Tuple[int, np.ndarray, Dict[int, np.ndarray]]:
    """(vocab_size, always, {source piece: list}) of a shortlist file."""
    vocab, always, lists = 0, np.zeros(0, dtype=np.int64), {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line or line.startswith("#"):
                continue
            key, _, rest = line.partition("\t")
            if key == "format":
                continue
            if key == "vocab_size":
                vocab = int(rest)
            elif key == "always":
                always = np.array([int(x) for x in rest.split()], dtype=np.int64)
            else:
                lists[int(key)] = np.array([int(x) for x in rest.split()], dtype=np.int64)
    return vocab, always, lists


def candidates(src_ids: Sequence[int], always: np.ndarray, lists: Dict[int, np.ndarray]
               ) -> np.ndarray:
    """A sentence's candidate set, as the engine builds it: the specials, the
    always list and the lists of its source pieces."""
    parts = [np.array(SPECIALS, dtype=np.int64), always]
    parts += [lists[s] for s in set(int(x) for x in src_ids) if s in lists]
    return np.unique(np.concatenate(parts))


def report(path: str, data_dir: str, split: str) -> Dict[str, float]:
    """How well the shortlist covers a split's reference translations: the
    share of target tokens in their sentence's candidate set, the share of
    sentences covered whole, and the mean set size."""
    vocab, always, lists = read_shortlist(path)
    src, so, tgt, to = load_split(data_dir, split)
    n = len(so) - 1
    tok_in = tok_all = sent_ok = 0
    sizes = []
    for i in range(n):
        cand = candidates(src[so[i]:so[i + 1]], always, lists)
        t = tgt[to[i]:to[i + 1]]
        inside = np.isin(t, cand)
        tok_in += int(inside.sum())
        tok_all += len(t)
        sent_ok += bool(inside.all())
        sizes.append(len(cand))
    return {"sentences": n, "token_coverage": 100.0 * tok_in / max(tok_all, 1),
            "sentence_coverage": 100.0 * sent_ok / max(n, 1),
            "mean_candidates": float(np.mean(sizes)), "max_candidates": int(np.max(sizes)),
            "vocab_size": vocab}


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True,
                   help="token cache of train/data.py (made with the model's tokenizer)")
    p.add_argument("--model", required=True,
                   help="model directory: its config.json, sentencepiece.model and vocab.txt "
                        "must be the cache's")
    p.add_argument("--out", help="shortlist file to write (usually MODEL/shortlist.tsv)")
    p.add_argument("--per-source", type=int, default=100,
                   help="target pieces listed per source piece at most (default 100)")
    p.add_argument("--frequent", type=int, default=500,
                   help="most frequent target pieces, always candidates (default 500)")
    p.add_argument("--min-count", type=int, default=2,
                   help="pairs a source and a target piece must share to be listed (default 2)")
    p.add_argument("--report", metavar="SPLIT", nargs="*", default=[],
                   help="after writing (or, without --out, for an existing MODEL/shortlist.tsv) "
                        "print the coverage of these splits' references (valid, test)")
    a = p.parse_args(argv)

    with open(os.path.join(a.data, "meta.json")) as f:
        meta = json.load(f)
    with open(os.path.join(a.model, "config.json")) as f:
        vocab = int(json.load(f)["vocab_size"])
    want = tokenizer_checksum(a.model)
    if meta.get("tokenizer_checksum") != want:
        raise SystemExit(f"error: {a.data} was tokenised with another tokenizer "
                         f"({meta.get('tokenizer_checksum')}) than {a.model}'s ({want})")
    if int(meta["vocab_size"]) != vocab:
        raise SystemExit(f"error: {a.data} has vocab_size {meta['vocab_size']}, "
                         f"{a.model}/config.json {vocab}")
    path = a.out or os.path.join(a.model, "shortlist.tsv")
    if a.out:
        t0 = time.time()
        src, so, tgt, to = load_split(a.data, "train")
        cst, cs, ct, n = cooccurrence(src, so, tgt, to, vocab)
        lists = build_lists(cst, cs, ct, n, a.per_source, a.min_count)
        freq = frequent_targets(ct, a.frequent)
        size = write_shortlist(path, vocab, freq, lists, {
            "training pairs": n, "per_source": a.per_source, "frequent": a.frequent,
            "min_count": a.min_count, "tokenizer": want})
        listed = sum(1 for x in lists if len(x))
        print(f"shortlist: {path}: {listed} source pieces listed, {len(freq)} frequent, "
              f"{size / 1e6:.2f} MB, {time.time() - t0:.0f} s")
    for split in a.report:
        r = report(path, a.data, split)
        print(f"shortlist: {split}: {r['sentences']} sentences, reference tokens covered "
              f"{r['token_coverage']:.2f}%, sentences covered whole "
              f"{r['sentence_coverage']:.1f}%, candidates per sentence "
              f"{r['mean_candidates']:.0f} mean, {r['max_candidates']} max "
              f"(of {r['vocab_size']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
