#!/usr/bin/python3
"""Tests of moa-translate's --precision and --shortlist, and of
train/make_shortlist.py (docs/moa-spec.md §9), on the tiny trained fixture
model and its shortlist.tsv:

- the AVX2 kernels (MOA_AVX512=0, what a CPU without AVX512_VNNI /
  AVX512_BF16 runs) translate exactly as the AVX-512 ones, token
  log-probabilities within 1e-5 (only the log-sum-exp is folded in another
  order);
- --score with --shortlist scores every target piece, eos included, even
  pieces outside the shortlist, each at least its full-vocabulary log-prob;
- bad values and a missing shortlist file are refused with clear messages;
- make_shortlist.py lists, on a made-up corpus, what travels together, and
  writes a file the engine loads.

    /usr/bin/python3 tests/python/run_python_tests.py tests/python/test_precision.py
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLI = os.path.join(ROOT, "build", "release", "moa-translate")
MODEL = os.path.join(ROOT, "tests", "fixtures", "models", "tiny-trained")
SAMPLE = os.path.join(ROOT, "tests", "fixtures", "sample.en-de.tsv")
sys.path.insert(0, os.path.join(ROOT, "train"))

import make_shortlist  # noqa: E402


def _run(args: list, env: dict = None, model: str = MODEL, stdin: str = None
         ) -> subprocess.CompletedProcess:
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([CLI, "--model", model] + args, capture_output=True, text=True,
                          timeout=300, env=e, input=stdin)


def _json_lines(text: str) -> list:
    return [json.loads(l) for l in text.splitlines()]


@unittest.skipUnless(os.access(CLI, os.X_OK), "build/release/moa-translate not built (make)")
class CliPrecision(unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        cls.tmp = tempfile.TemporaryDirectory()
        with open(SAMPLE, encoding="utf-8") as f:
            pairs = [l.rstrip("\n").split("\t") for l in f if l.strip()]
        cls.src = os.path.join(cls.tmp.name, "src.txt")
        with open(cls.src, "w", encoding="utf-8") as f:
            f.write("\n".join(p[0] for p in pairs[:60]) + "\n")
        cls.pairs = os.path.join(cls.tmp.name, "pairs.tsv")
        with open(cls.pairs, "w", encoding="utf-8") as f:
            f.write("\n".join(f"{p[0]}\t{p[1]}" for p in pairs[:30]) + "\n")

    @classmethod
    def tearDownClass(cls) -> None:
        cls.tmp.cleanup()

    def _same(self, a: str, b: str, what: str) -> None:
        la, lb = _json_lines(a), _json_lines(b)
        self.assertEqual(len(la), len(lb), what)
        for x, y in zip(la, lb):
            for hx, hy in zip(x["hypotheses"], y["hypotheses"]):
                self.assertEqual(hx["ids"], hy["ids"], f"{what}, line {x['index']}")
                for p, q in zip(hx["token_logprobs"], hy["token_logprobs"]):
                    self.assertAlmostEqual(p, q, delta=1e-5, msg=f"{what}, line {x['index']}")

    def test_avx2_kernels_match_avx512(self) -> None:
        for opts in (["--precision", "int8"], ["--precision", "bf16"],
                     ["--precision", "int8", "--shortlist"], ["--shortlist"]):
            args = ["--input", self.src, "--json", "--beam", "4", "--nbest", "2"] + opts
            fast = _run(args)
            self.assertEqual(fast.returncode, 0, fast.stderr)
            avx2 = _run(args, env={"MOA_AVX512": "0"})
            self.assertEqual(avx2.returncode, 0, avx2.stderr)
            self._same(avx2.stdout, fast.stdout, " ".join(opts))

    def test_verbose_names_precision_and_shortlist(self) -> None:
        r = _run(["--precision", "int8", "--shortlist", "--verbose"], stdin="Delete unused files\n")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("precision int8", r.stderr)
        self.assertIn("int8 weights", r.stderr)
        self.assertIn("vocabulary shortlist:", r.stderr)

    def test_score_with_shortlist_keeps_every_target_piece(self) -> None:
        full = _run(["--score", self.pairs])
        short = _run(["--score", self.pairs, "--shortlist"])
        self.assertEqual(full.returncode, 0, full.stderr)
        self.assertEqual(short.returncode, 0, short.stderr)
        _, always, lists = make_shortlist.read_shortlist(os.path.join(MODEL, "shortlist.tsv"))
        outside = 0
        for f, s in zip(_json_lines(full.stdout), _json_lines(short.stdout)):
            self.assertEqual(f["target_ids"], s["target_ids"])
            self.assertEqual(s["target_ids"][-1], 2)  # eos scored too
            cand = set(make_shortlist.candidates(s["source_ids"], always, lists).tolist())
            outside += sum(1 for t in s["target_ids"] if t not in cand)
            for p, q in zip(f["token_logprobs"], s["token_logprobs"]):
                self.assertTrue(math.isfinite(q))
                self.assertGreaterEqual(q, p - 1e-4)  # normalised over fewer pieces
        self.assertGreater(outside, 0, "the references use pieces outside the shortlist")

    def test_refusals(self) -> None:
        r = _run(["--precision", "fp8"], stdin="")
        self.assertEqual(r.returncode, 2)
        self.assertIn("--precision 'fp8': expected f32, bf16 or int8", r.stderr)
        d = os.path.join(self.tmp.name, "noshortlist")
        os.makedirs(d, exist_ok=True)
        for name in ("config.json", "model.safetensors", "sentencepiece.model", "vocab.txt"):
            shutil.copy(os.path.join(MODEL, name), d)
        r = _run(["--shortlist"], model=d, stdin="Open file\n")
        self.assertEqual(r.returncode, 1)
        self.assertIn("shortlist.tsv: cannot open", r.stderr)
        self.assertEqual(r.stdout, "")
        r = _run([], model=d, stdin="Open file\n")  # without the flag the file is not needed
        self.assertEqual(r.returncode, 0, r.stderr)


class MakeShortlist(unittest.TestCase):
    """make_shortlist.py on a made-up corpus of a 40-piece vocabulary."""

    V = 40

    def setUp(self) -> None:
        self.tmp = tempfile.TemporaryDirectory()
        rng = np.random.default_rng(3)
        src, tgt = [], []
        for i in range(2000):
            s = list(rng.choice(np.arange(10, 20), size=3, replace=False))
            t = [x + 20 for x in s]                    # source piece x travels with x + 20
            t += [4, 5]                                # frequent pieces, in every pair
            t += list(rng.choice([6, 7], size=1))      # frequent too, in half of them
            if 15 in s:
                t.append(15)                           # 15 is copied verbatim
            src.append(s + [2])
            tgt.append(t + [2])
        data = os.path.join(self.tmp.name, "data")
        os.makedirs(data)
        for side, seqs in (("src", src), ("tgt", tgt)):
            flat = np.array([x for q in seqs for x in q], dtype=np.uint16)
            off = np.zeros(len(seqs) + 1, dtype=np.int64)
            np.cumsum([len(q) for q in seqs], out=off[1:])
            np.save(os.path.join(data, f"train.{side}.npy"), flat)
            np.save(os.path.join(data, f"train.{side}.off.npy"), off)
        self.model = os.path.join(self.tmp.name, "model")
        os.makedirs(self.model)
        for name in ("sentencepiece.model", "vocab.txt"):
            shutil.copy(os.path.join(MODEL, name), self.model)
        with open(os.path.join(self.model, "config.json"), "w") as f:
            json.dump({"vocab_size": self.V}, f)
        with open(os.path.join(data, "meta.json"), "w") as f:
            json.dump({"tokenizer_checksum": make_shortlist.tokenizer_checksum(self.model),
                       "vocab_size": self.V}, f)
        self.data = data

    def tearDown(self) -> None:
        self.tmp.cleanup()

    def test_lists_what_travels_together(self) -> None:
        out = os.path.join(self.model, "shortlist.tsv")
        rc = make_shortlist.main(["--data", self.data, "--model", self.model, "--out", out,
                                  "--per-source", "3", "--frequent", "2"])
        self.assertEqual(rc, 0)
        vocab, always, lists = make_shortlist.read_shortlist(out)
        self.assertEqual(vocab, self.V)
        self.assertEqual(sorted(always.tolist()), [4, 5])
        for s in range(10, 20):
            # best Dice first (15 ties with its copy: the lower id first)
            self.assertEqual(lists[s][1 if s == 15 else 0], s + 20, f"piece {s}: {lists[s]}")
            self.assertLessEqual(len(lists[s]), 3 + (s == 15))
            self.assertNotIn(4, lists[s].tolist())     # no likelier with s than without
        self.assertIn(15, lists[15].tolist())          # copied: lists itself
        self.assertNotIn(12, lists[12].tolist())       # never on the target side
        for s in list(range(0, 10)) + list(range(20, 40)):
            self.assertNotIn(s, lists)                 # never on the source side
        cand = make_shortlist.candidates([11, 15, 2], always, lists)
        self.assertTrue({0, 1, 2, 3, 4, 5, 31, 35, 15} <= set(cand.tolist()))
        self.assertNotIn(32, cand.tolist())
        with open(out, encoding="utf-8") as f:
            self.assertEqual(f.readline()[:16], "# moa-shortlist ")

    def test_refuses_a_cache_of_another_tokenizer(self) -> None:
        with open(os.path.join(self.data, "meta.json"), "w") as f:
            json.dump({"tokenizer_checksum": "0123456789abcdef", "vocab_size": self.V}, f)
        with self.assertRaises(SystemExit) as e:
            make_shortlist.main(["--data", self.data, "--model", self.model,
                                 "--out", os.path.join(self.tmp.name, "x.tsv")])
        self.assertIn("another tokenizer", str(e.exception))

    @unittest.skipUnless(os.access(CLI, os.X_OK), "build/release/moa-translate not built (make)")
    def test_engine_loads_the_written_file(self) -> None:
        # the fixture model with a file written for its vocabulary
        d = os.path.join(self.tmp.name, "tiny")
        shutil.copytree(MODEL, d)
        lists = [np.array([7, 9]) if s == 100 else np.zeros(0, dtype=np.int64) for s in range(2000)]
        make_shortlist.write_shortlist(os.path.join(d, "shortlist.tsv"), 2000, [5, 6], lists,
                                       {"note": "test"})
        r = _run(["--shortlist", "--verbose"], model=d, stdin="Open file\n")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("1 source pieces listed, 2 always candidates", r.stderr)


if __name__ == "__main__":
    unittest.main()
