#!/usr/bin/python3
"""Translates a corpus split with the C engine (build/release/moa-translate)
for one or more model directories and search settings, and reports BLEU, chrF
and placeholder preservation (train/evaluate.py) overall and by source length
in words (1-3, 4-8, 9-20, 21+), side by side.

    # the issue's comparison: shipped model vs a candidate, test split, beam 4
    /usr/bin/python3 train/compare_models.py --split test \\
        --model old=build/model/v1 --model new=weights/moa-en-de
    # choosing search settings on valid (never on test)
    /usr/bin/python3 train/compare_models.py --split valid --model weights/moa-en-de \\
        --beam 1 2 4 6 8 --length-penalty 0.6 0.8 1.0 1.2 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import data as datamod  # noqa: E402
import evaluate as ev  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLI = os.path.join(REPO, "build", "release", "moa-translate")
BUCKETS: List[Tuple[str, int, int]] = [("1-3", 1, 3), ("4-8", 4, 8), ("9-20", 9, 20),
                                       ("21+", 21, 10 ** 9)]


def bucket_of(src: str) -> str:
    n = len(src.split())
    for name, lo, hi in BUCKETS:
        if lo <= n <= hi:
            return name
    return BUCKETS[0][0]  # empty source: counted with the shortest


def translate(model: str, srcs: Sequence[str], beam: int, lenpen: float, threads: int,
              batch: int) -> Tuple[List[str], float]:
    with tempfile.NamedTemporaryFile("w", suffix=".en", encoding="utf-8", delete=False) as f:
        f.write("".join(s + "\n" for s in srcs))
        path = f.name
    try:
        t0 = time.time()
        r = subprocess.run([CLI, "--model", model, "--beam", str(beam), "--length-penalty",
                            str(lenpen), "--threads", str(threads), "--batch", str(batch),
                            "--input", path], capture_output=True, text=True, encoding="utf-8")
        secs = time.time() - t0
    finally:
        os.unlink(path)
    if r.returncode != 0:
        raise SystemExit(f"error: {CLI} exited {r.returncode}: {r.stderr[-2000:]}")
    hyps = r.stdout.split("\n")[:len(srcs)]
    return hyps, secs


def score(srcs: Sequence[str], refs: Sequence[str], hyps: Sequence[str]) -> Dict[str, Any]:
    out: Dict[str, Any] = {
        "sentences": len(srcs),
        "bleu": round(float(ev.corpus_bleu(hyps, refs)), 2),
        "chrf": round(float(ev.corpus_chrf(hyps, refs)), 2),
        "placeholder_preservation": round(float(ev.placeholder_preservation(srcs, hyps)), 2),
        "by_length": {}}
    for name, _, _ in BUCKETS:
        idx = [i for i, s in enumerate(srcs) if bucket_of(s) == name]
        if not idx:
            continue
        h = [hyps[i] for i in idx]
        r = [refs[i] for i in idx]
        out["by_length"][name] = {"sentences": len(idx),
                                  "bleu": round(float(ev.corpus_bleu(h, r)), 2),
                                  "chrf": round(float(ev.corpus_chrf(h, r)), 2)}
    return out


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", action="append", required=True, metavar="[LABEL=]DIR",
                   help="model directory, optionally labelled; repeat to compare")
    p.add_argument("--split", default="test", choices=["valid", "test"],
                   help="corpus split (default test; choose settings on valid)")
    p.add_argument("--corpus", help="corpus directory (default $MOA_CORPUS or ../shared/corpus)")
    p.add_argument("--beam", type=int, nargs="+", default=[4], help="beam sizes (default 4)")
    p.add_argument("--length-penalty", type=float, nargs="+", default=[1.0],
                   help="length penalties (default 1.0)")
    p.add_argument("--threads", type=int, default=2, help="C engine worker threads")
    p.add_argument("--batch", type=int, default=64, help="C engine batch size")
    p.add_argument("--json", metavar="FILE", help="also write every result here")
    a = p.parse_args(argv)
    if not os.access(CLI, os.X_OK):
        raise SystemExit(f"error: {CLI} not built (run make)")
    pairs = list(datamod.read_pairs(datamod.split_path(a.split, a.corpus)))
    srcs, refs = [s for s, _ in pairs], [t for _, t in pairs]
    results = []
    header = ("| model | beam | lenpen | BLEU | chrF | placeholders | "
              + " | ".join(f"BLEU {n}" for n, _, _ in BUCKETS) + " | seconds |")
    print(header)
    print("|" + " --- |" * (header.count("|") - 1))
    for spec in a.model:
        label, _, path = spec.rpartition("=")
        label = label or path
        for beam in a.beam:
            for lp in a.length_penalty:
                hyps, secs = translate(path, srcs, beam, lp, a.threads, a.batch)
                m = score(srcs, refs, hyps)
                m.update(model=label, path=path, split=a.split, beam=beam,
                         length_penalty=lp, seconds=round(secs, 1))
                results.append(m)
                bl = " | ".join(str(m["by_length"].get(n, {}).get("bleu", "-"))
                                for n, _, _ in BUCKETS)
                print(f"| {label} | {beam} | {lp} | {m['bleu']} | {m['chrf']} | "
                      f"{m['placeholder_preservation']} | {bl} | {m['seconds']} |", flush=True)
    counts = {n: sum(1 for s in srcs if bucket_of(s) == n) for n, _, _ in BUCKETS}
    print(f"({a.split}: {len(srcs)} sentences; by source words: "
          + ", ".join(f"{n}: {c}" for n, c in counts.items()) + ")")
    if a.json:
        with open(a.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
