#!/usr/bin/python3
"""Sentence splitting and placeholder protection, measured through the server.

    /usr/bin/python3 bench/text_quality.py --server build/release/moa-server
    /usr/bin/python3 bench/text_quality.py --json build/bench/text_quality.json

Starts one moa-server (the default model, cache off) on a free loopback port
and sends it the source side of a test split (default:
../shared/corpus/test.en-de.tsv) four times over — with and without
`split_sentences`, with and without `protect_placeholders` — so every
number below comes from the same run, the same server and the same model:

  placeholders   the strings whose source holds a placeholder or markup item
                 (train/evaluate.py's definition): share whose output holds
                 the same multiset (placeholder_preservation), BLEU and chrF
                 on those strings, strings that came back with warnings
  multi-sentence the strings the server cuts into more than one sentence:
                 BLEU and chrF with and without splitting
  all            every string: BLEU and chrF

Not a test: it prints numbers (bench/RESULTS.md has a run).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import time
from typing import Dict, List, Sequence, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "train"))
from evaluate import corpus_bleu, corpus_chrf, extract_placeholders, placeholder_stats  # noqa: E402


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def post(port: int, body: dict) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    try:
        conn.request("POST", "/translate", json.dumps(body), {"Content-Type": "application/json"})
        r = conn.getresponse()
        data = r.read()
        if r.status != 200:
            raise RuntimeError(f"{r.status}: {data[:300]!r}")
        return json.loads(data)
    finally:
        conn.close()


def translate(port: int, texts: Sequence[str], **fields) -> Tuple[List[str], List[dict]]:
    """Translations and the translation objects, 64 texts a request."""
    out: List[str] = []
    objs: List[dict] = []
    for i in range(0, len(texts), 64):
        j = post(port, dict(text=list(texts[i:i + 64]), **fields))
        out += j["translatedText"]
        objs += j["translations"]
    return out, objs


def scores(hyps: Sequence[str], refs: Sequence[str]) -> Dict[str, float]:
    return {"bleu": round(corpus_bleu(hyps, refs), 2), "chrf": round(corpus_chrf(hyps, refs), 2)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--server", default=os.path.join(REPO, "build", "release", "moa-server"),
                   help="the moa-server binary (default build/release/moa-server)")
    p.add_argument("--model", default=os.path.join(REPO, "weights", "moa-en-de"),
                   help="model directory (default weights/moa-en-de)")
    p.add_argument("--tsv", default=os.path.join(REPO, "..", "shared", "corpus", "test.en-de.tsv"),
                   help="source<TAB>reference lines (default ../shared/corpus/test.en-de.tsv)")
    p.add_argument("--beam", type=int, default=4, help="beam size (default 4)")
    p.add_argument("--workers", type=int, default=0,
                   help="compute_workers of the server (default 0: one per core)")
    p.add_argument("--json", metavar="FILE", help="also write the numbers as JSON here")
    a = p.parse_args()

    pairs = []
    with open(a.tsv, encoding="utf-8") as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) >= 2 and parts[0].strip():
                pairs.append((parts[0], parts[1]))
    srcs = [s for s, _ in pairs]
    refs = [r for _, r in pairs]

    port = free_port()
    log = open(os.devnull, "wb")
    srv = subprocess.Popen([a.server, "--config", os.devnull, "--model", a.model, "--port", str(port),
                            "--listen", "127.0.0.1", "--cache-size", "0", "--log-level", "warn",
                            "--compute-workers", str(a.workers)], stdout=log, stderr=log)
    try:
        for _ in range(600):
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                c.request("GET", "/ready")
                if c.getresponse().status == 200:
                    break
            except OSError:
                pass
            if srv.poll() is not None:
                raise RuntimeError(f"moa-server exited with {srv.returncode}")
            time.sleep(0.1)
        t0 = time.time()
        runs = {}
        for split in (True, False):
            for protect in (True, False):
                hyps, objs = translate(port, srcs, beam_size=a.beam, split_sentences=split,
                                       protect_placeholders=protect)
                runs[(split, protect)] = (hyps, objs)
        # which strings the server cuts into several sentences: one trace per unit
        units = []
        for i in range(0, len(srcs), 64):
            j = post(port, {"text": srcs[i:i + 64], "beam_size": 1, "trace": True,
                            "protect_placeholders": False})
            units += [len(t.get("trace", [])) for t in j["translations"]]
        seconds = time.time() - t0
    finally:
        srv.terminate()
        srv.wait(60)

    ph = [i for i, s in enumerate(srcs) if extract_placeholders(s)]
    multi = [i for i, n in enumerate(units) if n > 1]
    pick = lambda xs, idx: [xs[i] for i in idx]  # noqa: E731
    res: Dict[str, object] = {"tsv": os.path.abspath(a.tsv), "model": os.path.abspath(a.model),
                              "beam": a.beam, "strings": len(srcs), "seconds": round(seconds, 1),
                              "placeholders": {}, "multi_sentence": {}, "all": {}}
    names = {(True, True): "split+protect (default)", (True, False): "split, no protection",
             (False, True): "protect, no split", (False, False): "neither (before)"}
    for key, name in names.items():
        hyps, objs = runs[key]
        st = placeholder_stats(pick(srcs, ph), pick(hyps, ph))
        warned = sum(1 for i in ph if objs[i].get("warnings"))
        res["placeholders"][name] = dict(scores(pick(hyps, ph), pick(refs, ph)),
                                         kept=st["preserved"], of=st["with_placeholders"],
                                         percent=round(st["percent"], 2), spurious=st["spurious"],
                                         warned=warned)
        res["multi_sentence"][name] = scores(pick(hyps, multi), pick(refs, multi))
        res["all"][name] = scores(hyps, refs)
    res["placeholder_strings"] = len(ph)
    res["multi_sentence_strings"] = len(multi)

    print(f"{len(srcs)} strings of {a.tsv}, beam {a.beam}, {seconds:.0f} s")
    print(f"\nstrings with placeholders or markup: {len(ph)}")
    print(f"{'setting':<26} {'kept':>16} {'BLEU':>6} {'chrF':>6} {'warned':>7}")
    for name, r in res["placeholders"].items():
        kept = f"{r['kept']}/{r['of']} {r['percent']:.1f}%"
        print(f"{name:<26} {kept:>16} {r['bleu']:6.2f} {r['chrf']:6.2f} {r['warned']:7d}")
    for title, part in ((f"multi-sentence strings: {len(multi)}", "multi_sentence"),
                        (f"all strings: {len(srcs)}", "all")):
        print(f"\n{title}")
        print(f"{'setting':<26} {'BLEU':>6} {'chrF':>6}")
        for name, r in res[part].items():
            print(f"{name:<26} {r['bleu']:6.2f} {r['chrf']:6.2f}")
    if a.json:
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
