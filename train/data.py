#!/usr/bin/python3
"""Corpus reading, tokenisation cache and length-bucketed token-count batches
for the MoA trainer (train/train.py).

The corpus (shared/corpus/README.md) is read in place: `train.en-de.tsv.xz`,
`valid.en-de.tsv`, `test.en-de.tsv`, one `english<TAB>german` pair a line.
Its directory is, in this order: an explicit path, $MOA_CORPUS, or the
repository's sibling `../shared/corpus`.

Tokenisation follows docs/moa-spec.md §7: SentencePiece pieces mapped through
vocab.txt (first occurrence wins, unknown pieces -> <unk>), then eos. It runs
once per split; the ids go to a numpy cache:

    DIR/{split}.src.npy  DIR/{split}.src.off.npy   (uint16/int32 ids, int64 offsets)
    DIR/{split}.tgt.npy  DIR/{split}.tgt.off.npy
    DIR/meta.json        (counts, the tokenizer's checksum)

Command line (used by train/make_model.sh):

    /usr/bin/python3 train/data.py sample --out S.txt --pairs 300000
    /usr/bin/python3 train/data.py cache --spm M.model --vocab vocab.txt --out DIR
    /usr/bin/python3 train/data.py stats --data DIR
"""

from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import os
import sys
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPLIT_FILES = {"train": "train.en-de.tsv.xz", "valid": "valid.en-de.tsv",
               "test": "test.en-de.tsv"}
BOS, PAD, EOS, UNK = 0, 1, 2, 3


# --- the corpus -------------------------------------------------------------------

def corpus_dir(path: Optional[str] = None) -> str:
    """The corpus directory: `path`, else $MOA_CORPUS, else ../shared/corpus
    next to the repository."""
    d = path or os.environ.get("MOA_CORPUS") or os.path.join(
        os.path.dirname(REPO), "shared", "corpus")
    if not os.path.isdir(d):
        raise SystemExit(f"error: corpus directory {d} not found "
                         "(set MOA_CORPUS or pass --corpus)")
    return d


def split_path(split: str, corpus: Optional[str] = None) -> str:
    return os.path.join(corpus_dir(corpus), SPLIT_FILES[split])


def read_pairs(path: str, limit: Optional[int] = None) -> Iterator[Tuple[str, str]]:
    """(english, german) pairs of a TSV file, plain or .xz."""
    opener = lzma.open if path.endswith(".xz") else open
    with opener(path, "rt", encoding="utf-8", newline="\n") as f:
        for n, line in enumerate(f):
            if limit is not None and n >= limit:
                break
            line = line.rstrip("\n").rstrip("\r")
            src, sep, tgt = line.partition("\t")
            if not sep:
                raise ValueError(f"{path}:{n + 1}: no tab")
            yield src, tgt


def write_spm_sample(corpus: Optional[str], out: str, pairs: int) -> int:
    """Both sides of the first `pairs` training pairs (the file is in random
    order), one sentence a line, for spm_train. Returns the line count."""
    n = 0
    tmp = out + ".tmp"
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        for src, tgt in read_pairs(split_path("train", corpus), pairs):
            f.write(src + "\n" + tgt + "\n")
            n += 2
    os.replace(tmp, out)
    return n


# --- tokenisation ---------------------------------------------------------------------

class Tokenizer:
    """SentencePiece + vocab.txt (spec §7). When vocab.txt lists exactly the
    SentencePiece model's pieces in id order (what make_model.sh writes), the
    ids are taken straight from SentencePiece; otherwise each piece is looked
    up in vocab.txt."""

    def __init__(self, spm_model: str, vocab_txt: str) -> None:
        import sentencepiece as spm
        self.sp = spm.SentencePieceProcessor(model_file=spm_model)
        with open(vocab_txt, encoding="utf-8", newline="\n") as f:
            self.vocab = [ln.rstrip("\n").rstrip("\r") for ln in f]
        if self.vocab[:4] != ["<s>", "<pad>", "</s>", "<unk>"]:
            raise SystemExit(f"error: {vocab_txt}: lines 0-3 must be <s> <pad> </s> <unk>")
        self.ids: Dict[str, int] = {}
        for i, piece in enumerate(self.vocab):
            self.ids.setdefault(piece, i)
        self.identity = (len(self.vocab) == self.sp.get_piece_size() and all(
            self.sp.id_to_piece(i) == p for i, p in enumerate(self.vocab)))
        h = hashlib.sha256()
        for p in (spm_model, vocab_txt):
            with open(p, "rb") as f:
                h.update(f.read())
        self.checksum = h.hexdigest()[:16]

    def encode_many(self, texts: Sequence[str]) -> List[List[int]]:
        """Ids of each text, eos appended."""
        if self.identity:
            out = self.sp.encode(list(texts), out_type=int)
        else:
            out = [[self.ids.get(p, UNK) for p in ps]
                   for ps in self.sp.encode(list(texts), out_type=str)]
        for ids in out:
            ids.append(EOS)
        return out

    def encode(self, text: str) -> List[int]:
        return self.encode_many([text])[0]

    def decode(self, ids: Sequence[int]) -> str:
        return self.sp.decode_pieces([self.vocab[i] for i in ids
                                      if i not in (BOS, PAD, EOS)])


# --- the cache ------------------------------------------------------------------------------

def _pack(seqs: List[List[int]], vocab_size: int) -> Tuple[np.ndarray, np.ndarray]:
    lens = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
    off = np.zeros(len(seqs) + 1, dtype=np.int64)
    np.cumsum(lens, out=off[1:])
    dtype = np.uint16 if vocab_size <= 65536 else np.int32
    flat = np.fromiter((t for s in seqs for t in s), dtype=dtype, count=int(off[-1]))
    return flat, off


def _save(path: str, arr: np.ndarray) -> None:
    tmp = path + ".tmp.npy"
    np.save(tmp, arr)
    os.replace(tmp, path)


def build_cache(tok: Tokenizer, out_dir: str, corpus: Optional[str] = None,
                splits: Sequence[str] = ("train", "valid", "test"),
                train_pairs: Optional[int] = None, chunk: int = 50000) -> Dict[str, int]:
    """Tokenises each split once into out_dir; returns pairs per split."""
    os.makedirs(out_dir, exist_ok=True)
    counts = {}
    for split in splits:
        limit = train_pairs if split == "train" else None
        src_ids: List[List[int]] = []
        tgt_ids: List[List[int]] = []
        buf: List[Tuple[str, str]] = []

        def flush() -> None:
            src_ids.extend(tok.encode_many([s for s, _ in buf]))
            tgt_ids.extend(tok.encode_many([t for _, t in buf]))
            buf.clear()

        for pair in read_pairs(split_path(split, corpus), limit):
            buf.append(pair)
            if len(buf) >= chunk:
                flush()
        flush()
        for side, seqs in (("src", src_ids), ("tgt", tgt_ids)):
            flat, off = _pack(seqs, len(tok.vocab))
            _save(os.path.join(out_dir, f"{split}.{side}.npy"), flat)
            _save(os.path.join(out_dir, f"{split}.{side}.off.npy"), off)
        counts[split] = len(src_ids)
        print(f"data: {split}: {len(src_ids)} pairs, "
              f"{sum(map(len, src_ids))} source / {sum(map(len, tgt_ids))} target tokens "
              "(eos included)", flush=True)
    meta = {"tokenizer_checksum": tok.checksum, "vocab_size": len(tok.vocab),
            "pairs": counts, "train_pairs_limit": train_pairs}
    with open(os.path.join(out_dir, "meta.json.tmp"), "w") as f:
        json.dump(meta, f, indent=1)
    os.replace(os.path.join(out_dir, "meta.json.tmp"), os.path.join(out_dir, "meta.json"))
    return counts


class Split:
    """One tokenised split: ids of pair i are src[src_off[i]:src_off[i+1]]."""

    def __init__(self, data_dir: str, split: str) -> None:
        def load(name: str) -> np.ndarray:
            return np.load(os.path.join(data_dir, f"{split}.{name}.npy"))
        self.src, self.src_off = load("src"), load("src.off")
        self.tgt, self.tgt_off = load("tgt"), load("tgt.off")
        self.src_len = np.diff(self.src_off)
        self.tgt_len = np.diff(self.tgt_off)

    def __len__(self) -> int:
        return len(self.src_len)

    def source(self, i: int) -> List[int]:
        return self.src[self.src_off[i]:self.src_off[i + 1]].astype(np.int64).tolist()

    def target(self, i: int) -> List[int]:
        return self.tgt[self.tgt_off[i]:self.tgt_off[i + 1]].astype(np.int64).tolist()

    def collate(self, idx: Sequence[int]) -> Tuple[np.ndarray, ...]:
        """(src (B,S), src_len (B,), prev (B,T), gold (B,T), tgt_len (B,)) as
        int64 arrays, right-padded with PAD; prev = eos (decoder start) then
        the target without its last token, as moa_reference.decoder_inputs."""
        idx = np.asarray(idx)
        sl, tl = self.src_len[idx], self.tgt_len[idx]
        b = len(idx)
        src = np.full((b, int(sl.max())), PAD, dtype=np.int64)
        gold = np.full((b, int(tl.max())), PAD, dtype=np.int64)
        for j, i in enumerate(idx):
            src[j, :sl[j]] = self.src[self.src_off[i]:self.src_off[i + 1]]
            gold[j, :tl[j]] = self.tgt[self.tgt_off[i]:self.tgt_off[i + 1]]
        prev = np.empty_like(gold)
        prev[:, 0] = EOS
        prev[:, 1:] = gold[:, :-1]  # positions >= tgt_len are pads (masked)
        return src, sl.astype(np.int64), prev, gold, tl.astype(np.int64)


# --- batches --------------------------------------------------------------------------------

def usable(split: Split, max_len: int) -> np.ndarray:
    """Indices of pairs whose both sides fit in max_len tokens (eos included)."""
    return np.nonzero((split.src_len <= max_len) & (split.tgt_len <= max_len)
                      & (split.src_len >= 2) & (split.tgt_len >= 2))[0]


def make_batches(split: Split, indices: np.ndarray, max_tokens: int, seed: int,
                 epoch: int, max_sentences: int = 0, shuffle: bool = True) -> List[np.ndarray]:
    """Token-count batches, bucketed by length (fairseq style): the pairs are
    shuffled with a generator seeded by (seed, epoch), stably sorted by target
    then source length, cut into batches whose padded size
    (sentences x longest side) stays within max_tokens, and the batches are
    shuffled. Deterministic given (seed, epoch)."""
    rng = np.random.default_rng([seed, epoch])
    idx = rng.permutation(indices) if shuffle else np.asarray(indices)
    order = np.lexsort((split.src_len[idx], split.tgt_len[idx]))
    idx = idx[order]
    longest = np.maximum(split.src_len[idx], split.tgt_len[idx])
    batches = []
    start, cur = 0, 0
    for j in range(len(idx)):
        width = max(cur, int(longest[j]))
        n = j - start + 1
        if n > 1 and (n * width > max_tokens or (max_sentences and n > max_sentences)):
            batches.append(idx[start:j])
            start, width = j, int(longest[j])
        cur = width
    if start < len(idx):
        batches.append(idx[start:])
    if shuffle:
        perm = rng.permutation(len(batches))
        batches = [batches[p] for p in perm]
    return batches


def stats(data_dir: str) -> Dict[str, Dict[str, float]]:
    out = {}
    for split in ("train", "valid", "test"):
        if not os.path.exists(os.path.join(data_dir, f"{split}.src.npy")):
            continue
        s = Split(data_dir, split)
        out[split] = {"pairs": len(s), "src_tokens_per_sentence": float(s.src_len.mean()),
                      "tgt_tokens_per_sentence": float(s.tgt_len.mean()),
                      "unk_rate": float(((s.src == UNK).sum() + (s.tgt == UNK).sum())
                                        / (len(s.src) + len(s.tgt)))}
    return out


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description="Corpus sample, tokenisation cache and "
                                "statistics for the MoA trainer.")
    p.add_argument("--corpus", help="corpus directory (default: $MOA_CORPUS or "
                   "../shared/corpus next to the repository)")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sample", help="write both sides of the first N training pairs, "
                       "one sentence a line (SentencePiece training input)")
    s.add_argument("--out", required=True)
    s.add_argument("--pairs", type=int, default=300000)
    c = sub.add_parser("cache", help="tokenise train/valid/test into a numpy cache")
    c.add_argument("--spm", required=True, help="sentencepiece.model")
    c.add_argument("--vocab", required=True, help="vocab.txt (pieces in id order)")
    c.add_argument("--out", required=True, help="cache directory")
    c.add_argument("--train-pairs", type=int, default=0,
                   help="use only the first N training pairs (0: all)")
    t = sub.add_parser("stats", help="tokens per sentence and <unk> rate of a cache")
    t.add_argument("--data", required=True)
    a = p.parse_args(argv)
    if a.cmd == "sample":
        n = write_spm_sample(a.corpus, a.out, a.pairs)
        print(f"data: {n} sentences -> {a.out}")
    elif a.cmd == "cache":
        build_cache(Tokenizer(a.spm, a.vocab), a.out, a.corpus,
                    train_pairs=a.train_pairs or None)
    else:
        print(json.dumps(stats(a.data), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
