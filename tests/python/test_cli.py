#!/usr/bin/python3
"""Tests of moa-translate's data-parallel workers (--threads N): the output
must not depend on how many workers translate or on how the input splits
into rounds, and a short input (fewer lines than one worker's share of a
round) must still reach every worker.

Runs the tiny trained fixture model on the fixture sentences:
- greedy, beam 4 with 3-best, and seeded sampling: --threads 1, 2 and 3 and
  batch sizes that give one round or several write the same lines (n-best
  scores within 1e-4);
- --verbose reports, per worker, how many sentences it translated; with a
  40-line input and --threads 2 both workers translate some.

    /usr/bin/python3 tests/python/run_python_tests.py tests/python/test_cli.py
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLI = os.path.join(ROOT, "build", "release", "moa-translate")
MODEL = os.path.join(ROOT, "tests", "fixtures", "models", "tiny-trained")
SAMPLE = os.path.join(ROOT, "tests", "fixtures", "sample.en-de.tsv")


def _run(args: list) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, "--model", MODEL] + args, capture_output=True,
                          text=True, timeout=300)


@unittest.skipUnless(os.access(CLI, os.X_OK), "build/release/moa-translate not built (make)")
class CliWorkers(unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        cls.tmp = tempfile.TemporaryDirectory()
        with open(SAMPLE, encoding="utf-8") as f:
            src = [l.split("\t")[0] for l in f if l.strip()]
        cls.inputs = {}
        for n in (40, 300):
            path = os.path.join(cls.tmp.name, f"src{n}.txt")
            with open(path, "w", encoding="utf-8") as f:
                f.write("\n".join(src[:n]) + "\n")
            cls.inputs[n] = path

    @classmethod
    def tearDownClass(cls) -> None:
        cls.tmp.cleanup()

    def _same_for_all_workers(self, opts: list) -> None:
        for n, path in self.inputs.items():
            ref = _run(["--input", path] + opts)
            self.assertEqual(ref.returncode, 0, ref.stderr)
            self.assertEqual(len(ref.stdout.splitlines()), n * (3 if "--nbest" in opts else 1))
            # batch 2: 64-line rounds per worker, so 300 lines take several
            for threads, batch in (("2", "8"), ("3", "8"), ("2", "2"), ("3", "32")):
                got = _run(["--input", path, "--threads", threads, "--batch", batch] + opts)
                self.assertEqual(got.returncode, 0, got.stderr)
                self._same_output(got.stdout, ref.stdout,
                                  f"{n} lines, --threads {threads} --batch {batch} {opts}")

    def _same_output(self, got: str, ref: str, what: str) -> None:
        """Same lines and texts; n-best scores within 1e-4 (a batch of another
        size sums in another order inside the products)."""
        g, r = got.splitlines(), ref.splitlines()
        self.assertEqual(len(g), len(r), what)
        for i, (a, b) in enumerate(zip(g, r)):
            fa, fb = a.split("\t"), b.split("\t")
            if len(fb) == 3:
                self.assertEqual((fa[0], fa[2]), (fb[0], fb[2]), f"{what}, line {i}")
                self.assertAlmostEqual(float(fa[1]), float(fb[1]), delta=1e-4,
                                       msg=f"{what}, line {i}")
            else:
                self.assertEqual(a, b, f"{what}, line {i}")

    def test_greedy(self) -> None:
        self._same_for_all_workers([])

    def test_beam_nbest(self) -> None:
        self._same_for_all_workers(["--beam", "4", "--nbest", "3"])

    def test_sampling(self) -> None:
        self._same_for_all_workers(["--sample-topk", "10", "--temperature", "0.8",
                                    "--seed", "7"])

    def test_short_input_uses_every_worker(self) -> None:
        got = _run(["--input", self.inputs[40], "--threads", "2", "--verbose"])
        self.assertEqual(got.returncode, 0, got.stderr)
        counts = [int(x) for x in re.findall(r"worker \d+: (\d+) sentences decoded", got.stderr)]
        self.assertEqual(len(counts), 2, got.stderr)
        self.assertEqual(sum(counts), 40)
        self.assertTrue(all(c > 0 for c in counts), got.stderr)


if __name__ == "__main__":
    unittest.main()
