#!/usr/bin/python3
"""Tests of the subword-nmt path on the Python side: train/moses.py against the
tables of expected Moses outputs (the same tables as tests/test_moses.c),
train/bpe.py on hand-worked segmentations (the same as tests/test_bpe.c),
train/learn_bpe.py on a hand-worked example, the generated character table,
and the tiny-bpe fixture: rebuilt from a checkpoint in the layout of the
paper's fairseq code, converted with --bpe-codes, equal to the committed
files, scoring like the model it came from in the reference and in the C
CLI. Plus the converter's refusals for BPE models.

    /usr/bin/python3 tests/python/run_python_tests.py tests/python/test_bpe.py
"""

from __future__ import annotations

import argparse
import collections
import filecmp
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest
from typing import Any, List, Tuple

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "train"))
sys.path.insert(0, os.path.join(REPO, "tests", "fixtures", "bpe"))

import moa_reference as ref  # noqa: E402  (first: it sets OMP_WAIT_POLICY)
import bpe  # noqa: E402
import convert_fairseq as cf  # noqa: E402
import fairseq_ckpt as fc  # noqa: E402
import learn_bpe  # noqa: E402
import make_fixture  # noqa: E402
import moa_io  # noqa: E402
import moses  # noqa: E402
import moses_unitab  # noqa: E402

TABLES = os.path.join(REPO, "tests", "fixtures", "moses")
FIXTURE = os.path.join(REPO, "tests", "fixtures", "models", "tiny-bpe")
SAMPLE = os.path.join(REPO, "tests", "fixtures", "sample.en-de.tsv")
CLI = os.path.join(REPO, "build", "release", "moa-translate")
SPM_VOCAB = os.path.join(REPO, "tests", "fixtures", "spm", "vocab.txt")


def unescape(s: str) -> str:
    return re.sub(r"\\(t|\\|u[0-9a-fA-F]{4})",
                  lambda m: "\t" if m.group(1) == "t" else "\\" if m.group(1) == "\\"
                  else chr(int(m.group(1)[1:], 16)), s)


def rows(name: str, fields: int) -> List[Tuple[int, List[str]]]:
    out = []
    with open(os.path.join(TABLES, name), encoding="utf-8") as f:
        for n, line in enumerate(f.read().split("\n"), 1):
            if not line or line.startswith("#"):
                continue
            cols = line.split("\t")
            assert len(cols) == fields, f"{name}:{n}: {len(cols)} fields"
            out.append((n, [unescape(c) for c in cols]))
    return out


class MosesTableTest(unittest.TestCase):
    def test_tokenize_table(self):
        table = rows("tokenize.tsv", 5)
        self.assertGreaterEqual(len(table), 60)
        trips = 0
        for n, (lang, flags, text, want, rt) in table:
            with self.subTest(line=n):
                got = moses.tokenize(text, lang, "a" in flags, "x" not in flags, "n" in flags,
                                     "n" in flags)
                self.assertEqual(got, want, f"tokenize.tsv:{n} {text!r}")
                if rt == "1":
                    trips += 1
                    self.assertEqual(moses.detokenize(got, lang), text,
                                     f"tokenize.tsv:{n}: round trip")
        self.assertGreaterEqual(trips, 40)

    def test_detokenize_table(self):
        table = rows("detokenize.tsv", 3)
        self.assertGreaterEqual(len(table), 60)
        for n, (lang, text, want) in table:
            with self.subTest(line=n):
                self.assertEqual(moses.detokenize(text, lang), want, f"detokenize.tsv:{n}")

    def test_languages_and_wrapper(self):
        self.assertEqual(moses.lang_of("en-GB"), "en")
        self.assertEqual(moses.lang_of("DE"), "de")
        self.assertIsNone(moses.lang_of("fr"))
        self.assertIsNone(moses.lang_of("eng"))
        with self.assertRaisesRegex(ValueError, "fr"):
            moses.Moses("fr")
        m = moses.Moses("de")   # normalisation on, as fairseq's recipe
        self.assertEqual(m.tokenize("\u201eHallo\u201c, 1 000 \u20ac"),
                         "&quot; Hallo &quot; , 1,000 \u20ac")
        self.assertEqual(m.detokenize("E @-@ Mail , bitte ."), "E-Mail, bitte.")


class UnicodeTableTest(unittest.TestCase):
    def test_generated_files_are_current(self):
        """The committed tables equal a fresh run of gen_unitab.pl (Perl's own
        classes, which are the Moses scripts')."""
        if not shutil.which("perl"):
            self.skipTest("no perl")
        with tempfile.TemporaryDirectory() as d:
            c, py = os.path.join(d, "t.c"), os.path.join(d, "t.py")
            subprocess.run(["perl", os.path.join(REPO, "tokenizer", "gen_unitab.pl"), c, py],
                           check=True, capture_output=True, timeout=300)
            with open(c) as f1, open(os.path.join(REPO, "tokenizer", "moa_unitab.c")) as f2:
                self.assertEqual(f1.read(), f2.read())
            with open(py) as f1, open(os.path.join(REPO, "train", "moses_unitab.py")) as f2:
                self.assertEqual(f1.read(), f2.read())

    def test_some_classes(self):
        self.assertTrue(moses.is_alpha("\u00e9") and moses.is_lower("\u00e9"))
        self.assertTrue(moses.is_uspace("\u00a0") and moses.is_uspace("\u3000"))
        self.assertTrue(moses.is_num("\u00b2") and not moses.is_alnum("\u00b2"))
        self.assertTrue(moses.is_currency("\u20ac") and moses.is_other("\u200b"))
        self.assertEqual(moses_unitab.START[0], 0)
        self.assertEqual(len(moses_unitab.START), len(moses_unitab.BITS))


CODES_02 = ("#version: 0.2\nl o\nlo w\ne r</w>\ne s\nes t</w>\nn e\nne w\nlow er</w>\n"
            "new est</w>\n")


class BPEApplyTest(unittest.TestCase):
    """The segmentations of tests/test_bpe.c, worked out by hand there."""

    def codes(self, text: str) -> bpe.BPE:
        d = tempfile.mkdtemp(prefix="bpe-")
        self.addCleanup(shutil.rmtree, d, True)
        path = os.path.join(d, "codes")
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return bpe.BPE(path)

    def test_version_02(self):
        b = self.codes(CODES_02)
        self.assertEqual(b.version, 2)
        for word, want in [("lower", "lower"), ("lowest", "low@@ est"), ("newer", "new@@ er"),
                           ("newest", "newest"), ("low", "lo@@ w"), ("ll", "l@@ l"),
                           ("x", "x"), ("\u00e9er", "\u00e9@@ er")]:
            self.assertEqual(b.segment(word), want, word)
        self.assertEqual(b.segment("lower lowest  newer "), "lower low@@ est new@@ er")

    def test_version_01_duplicates_overlap(self):
        b = self.codes("l o\nlo w\nw </w>\ne r\ner </w>\nlow er</w>\n")
        self.assertEqual(b.version, 1)
        self.assertEqual(b.segment("low lower wow ow"), "low lower w@@ o@@ w o@@ w")
        self.assertEqual(self.codes("#version: 0.2\na b\nb c</w>\na b\n").segment("abc"),
                         "ab@@ c")
        self.assertEqual(self.codes("a a\n").segment("aaaaa aaaa"), "aa@@ aa@@ a aa@@ aa")

    def test_errors(self):
        for text, words in [("#version: 0.3\na b\n", "version"), ("a b c\n", "line 1"),
                            ("a b\n\nc d\n", "line 2"), ("a b\nab\n", "line 2")]:
            with self.assertRaisesRegex(bpe.BPECodesError, words):
                self.codes(text)
        self.assertEqual(bpe.unsegment(["low@@", "est", "new@@"]), "lowest new")


class LearnTest(unittest.TestCase):
    def test_hand_worked_example(self):
        """low×5 lower×2 newest×6 widest×3, worked by hand with subword-nmt's
        rule (most frequent pair; ties: the greatest pair)."""
        merges = learn_bpe.learn({"low": 5, "lower": 2, "newest": 6, "widest": 3}, 100)
        want = [("s", "t</w>"), ("e", "st</w>"), ("l", "o"), ("w", "est</w>"), ("n", "e"),
                ("ne", "west</w>"), ("lo", "w</w>"), ("w", "i"), ("wi", "d"),
                ("wid", "est</w>"), ("w", "e"), ("we", "r</w>"), ("lo", "wer</w>")]
        self.assertEqual(merges, want)
        self.assertEqual(learn_bpe.learn({"low": 5, "lower": 2, "newest": 6, "widest": 3}, 3),
                         want[:3])

    def test_codes_apply_to_what_they_learned(self):
        """Applying learned merges to the training words rebuilds each word whose
        every merge was learned: here all of them, since each occurs twice."""
        counts = {"lowest": 2, "slower": 2, "newer": 3, "tower": 2, "er": 4}
        merges = learn_bpe.learn(counts, 1000)
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "codes")
            learn_bpe.write_codes(merges, path)
            with open(path, encoding="utf-8") as f:
                self.assertEqual(f.readline(), "#version: 0.2\n")
            b = bpe.BPE(path)
            for w in counts:
                self.assertEqual(b.segment_word(w), [w])
            self.assertEqual(b.segment_word("ztower"), ["z", "tower"])

    def test_fairseq_dict_order_and_padding(self):
        items = learn_bpe.fairseq_dict(collections.Counter({"b": 3, "a": 3, "c@@": 5, "d": 1,
                                                            "e": 1}))
        self.assertEqual(items[:5], [("c@@", 5), ("a", 3), ("b", 3), ("d", 1), ("e", 1)])
        # 5 pieces + 4 specials = 9 ids: 7 more make 16
        self.assertEqual(items[5:], [(f"madeupword{i:04d}", 0) for i in range(7)])
        self.assertEqual(len(learn_bpe.fairseq_dict(collections.Counter("abcd"))), 4)

    def test_relearn_fixture_codes(self):
        """tests/fixtures/bpe is what learn_bpe.py gives on the corpus (when the
        shared corpus is there to learn from)."""
        if not os.path.isfile(make_fixture.CORPUS):
            self.skipTest(f"{make_fixture.CORPUS} not found")
        with tempfile.TemporaryDirectory() as d:
            codes, dct = os.path.join(d, "codes"), os.path.join(d, "dict.txt")
            learn_bpe.main(["--tsv", make_fixture.CORPUS, "--max-lines", "20000", "--symbols",
                            "2000", "--codes", codes, "--dict", dct])
            self.assertTrue(filecmp.cmp(codes, make_fixture.CODES, shallow=False))
            self.assertTrue(filecmp.cmp(dct, make_fixture.DICT, shallow=False))


def sample_pairs(n: int) -> List[List[str]]:
    with open(SAMPLE, encoding="utf-8") as f:
        return [ln.rstrip("\n").split("\t", 1) for ln in f][:n]


class FixtureModelTest(unittest.TestCase):
    """The committed tiny-bpe is what the pipeline makes, and scores like the
    checkpoint it came from: in the reference (1e-5) and in the C CLI (1e-4),
    with the same ids from the C and the Python tokenizer."""

    @classmethod
    def setUpClass(cls) -> None:
        cls.tmp = tempfile.mkdtemp(prefix="test-bpe-")
        cls.out = os.path.join(cls.tmp, "tiny-bpe")
        cls.log: List[str] = []
        cls.model = make_fixture.build(cls.out, log=cls.log.append)

    @classmethod
    def tearDownClass(cls) -> None:
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def test_rebuilt_equals_committed(self):
        self.assertIn("hyper-parameters from `cfg.model`", self.log)
        for name in ("config.json", "vocab.txt", "bpecodes"):
            self.assertTrue(filecmp.cmp(os.path.join(self.out, name),
                                        os.path.join(FIXTURE, name), shallow=False), name)
        _, got, _ = moa_io.load_model_dir(self.out)
        _, want, _ = moa_io.load_model_dir(FIXTURE)
        self.assertEqual(sorted(got), sorted(want))
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)
        self.assertFalse(os.path.exists(os.path.join(self.out, "sentencepiece.model")))

    def test_scores_match_checkpoint_reference_and_cli(self):
        converted = ref.MoATransformer.from_dir(FIXTURE)
        tok = ref.Tokenizer(FIXTURE, converted.cfg)
        pairs = sample_pairs(40)
        srcs = [tok.encode(s) for s, _ in pairs]
        tgts = [tok.encode(t, "target") for _, t in pairs]
        self.assertLess(sum(i == 3 for s in srcs for i in s), sum(len(s) for s in srcs) // 10,
                        "the BPE vocabulary covers the sample")
        want = ref.score_batch(self.model, srcs, tgts)
        got = ref.score_batch(converted, srcs, tgts)
        for w, g in zip(want, got):
            np.testing.assert_allclose(g.token_logprobs, w.token_logprobs, rtol=0, atol=1e-5)
        if not os.access(CLI, os.X_OK):
            self.skipTest(f"{CLI} not built")
        tsv = os.path.join(self.tmp, "pairs.tsv")
        with open(tsv, "w", encoding="utf-8") as f:
            f.writelines(f"{s}\t{t}\n" for s, t in pairs)
        proc = subprocess.run([CLI, "--model", FIXTURE, "--score", tsv], capture_output=True,
                              text=True, timeout=120)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        out = [json.loads(ln) for ln in proc.stdout.splitlines()]
        self.assertEqual(len(out), len(pairs))
        compared = 0
        for row, s, t, w in zip(out, srcs, tgts, want):
            self.assertEqual(row["source_ids"], s)   # C tokenizer == Python tokenizer
            self.assertEqual(row["target_ids"], t)
            n = w.router_near_tie_pos if w.router_near_tie_pos is not None else len(t)
            np.testing.assert_allclose(row["token_logprobs"][:n], w.token_logprobs[:n],
                                       rtol=0, atol=1e-4)
            compared += n == len(t)
        self.assertGreaterEqual(compared, len(pairs) - 2)

    def test_reference_ids_mode(self):
        """moa_reference.py --ids scores exactly the ids it is given."""
        converted = ref.MoATransformer.from_dir(FIXTURE)
        tok = ref.Tokenizer(FIXTURE, converted.cfg)
        s, t = sample_pairs(1)[0]
        src, tgt = tok.encode(s), tok.encode(t, "target")
        tsv = os.path.join(self.tmp, "ids.tsv")
        with open(tsv, "w") as f:
            f.write(" ".join(map(str, src[:-1])) + "\t" + " ".join(map(str, tgt[:-1])) + "\n")
        proc = subprocess.run([sys.executable, os.path.join(REPO, "train", "moa_reference.py"),
                               "--model", FIXTURE, "--score", tsv, "--ids", "--json",
                               "--threads", "1"], capture_output=True, text=True, timeout=300)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        row = json.loads(proc.stdout)
        self.assertEqual((row["source_ids"], row["target_ids"]), (src, tgt))
        w = ref.score_batch(converted, [src], [tgt])[0]
        np.testing.assert_allclose(row["token_logprobs"], w.token_logprobs, rtol=0, atol=1e-6)


class ConvertBPERefusalTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        cls.tmp = tempfile.mkdtemp(prefix="test-bpe-refuse-")
        cls.ckpt = os.path.join(cls.tmp, "ckpt.pt")
        cls.model, cls.cfg = make_fixture.build_checkpoint(cls.ckpt)

    @classmethod
    def tearDownClass(cls) -> None:
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def convert(self, name: str, **kw: Any) -> List[str]:
        out = os.path.join(self.tmp, name)
        lines: List[str] = []
        kw.setdefault("bpe_codes", make_fixture.CODES)
        spm = kw.pop("spm", None)
        dct = kw.pop("dict_path", make_fixture.DICT)
        cf.convert(self.ckpt, dct, spm, out, log=lines.append, **kw)
        return lines

    def refused(self, name: str, words: List[str], **kw: Any) -> None:
        with self.assertRaises(cf.ConversionRefused) as ctx:
            self.convert(name, **kw)
        msg = "\n".join(ctx.exception.problems)
        for w in words:
            self.assertIn(w, msg)
        self.assertFalse(os.path.exists(os.path.join(self.tmp, name)))

    def test_spm_given_for_a_bpe_dictionary(self):
        spm = os.path.join(REPO, "tests", "fixtures", "spm", "sentencepiece.model")
        self.refused("spm", ["--spm", "subword-nmt dictionary", "--bpe-codes"], spm=spm,
                     bpe_codes=None)

    def test_codes_that_cannot_make_the_dictionary(self):
        other = os.path.join(self.tmp, "other.codes")
        with open(other, "w", encoding="utf-8") as f:
            f.write("#version: 0.2\nq u\n")
        self.refused("codes", ["cannot come out of the merges", "--bpe-codes"],
                     bpe_codes=other)
        bad = os.path.join(self.tmp, "bad.codes")
        with open(bad, "w", encoding="utf-8") as f:
            f.write("#version: 0.2\na b c\n")
        self.refused("badcodes", ["--bpe-codes", "line 2"], bpe_codes=bad)
        self.refused("nocodes", ["missing file (--bpe-codes)"],
                     bpe_codes=os.path.join(self.tmp, "nothere"))
        self.refused("both", ["not both"], spm=other)

    def test_language_without_moses_rules(self):
        self.refused("fr", ["source_lang 'fr'", "--no-moses", "--source-lang"],
                     source_lang="fr")
        log = self.convert("fr-pretok", source_lang="fr",
                           moses=cf.moses_config(True, True, True, tokenize=False))
        self.assertTrue(any("text must come tokenized" in ln for ln in log), log)
        written = moa_io.read_config(os.path.join(self.tmp, "fr-pretok", "config.json"))
        self.assertEqual(written["source_lang"], "fr")
        self.assertFalse(written["moses"]["tokenize"])

    def test_command_line(self):
        script = os.path.join(REPO, "train", "convert_fairseq.py")
        out = os.path.join(self.tmp, "cli")
        base = [sys.executable, script, "--checkpoint", self.ckpt, "--dict", make_fixture.DICT]
        proc = subprocess.run(base + ["--bpe-codes", make_fixture.CODES, "--out", out,
                                      "--no-aggressive-dash-splits", "--no-moses-escape"],
                              capture_output=True, text=True, timeout=300)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        written = moa_io.read_config(os.path.join(out, "config.json"))
        self.assertEqual(written["tokenizer"], "subword-nmt")
        self.assertEqual(written["moses"], {"tokenize": True, "aggressive_dash_splits": False,
                                            "escape": False, "normalize_punctuation": True,
                                            "remove_non_printing": True})
        proc = subprocess.run(base + ["--spm", "x.model", "--bpe-codes", "c", "--out", out],
                              capture_output=True, text=True, timeout=300)
        self.assertEqual(proc.returncode, 2)
        self.assertIn("not allowed with argument", proc.stderr)
        spm = os.path.join(REPO, "tests", "fixtures", "spm", "sentencepiece.model")
        proc = subprocess.run(base + ["--spm", spm, "--no-moses", "--out", out + "2"],
                              capture_output=True, text=True, timeout=300)
        self.assertEqual(proc.returncode, 1)
        self.assertIn("go with --bpe-codes", proc.stderr)


class ModelDirConfigTest(unittest.TestCase):
    def test_tokenizer_keys_checked(self):
        base = make_fixture.model_config(2272)
        for extra, words in [({"tokenizer": "wordpiece"}, "tokenizer 'wordpiece'"),
                             ({"tokenizer": "subword-nmt", "moses": {"agressive": True}},
                              "moses.agressive"),
                             ({"tokenizer": "subword-nmt", "moses": {"escape": "yes"}},
                              "moses.escape must be true or false"),
                             ({"tokenizer": "subword-nmt", "target_lang": "fr"},
                              "target_lang 'fr'")]:
            with self.assertRaisesRegex(moa_io.ModelFormatError, re.escape(words)):
                moa_io.complete_config({**base, **extra})
        moa_io.complete_config({**base, "tokenizer": "subword-nmt", "moses": False,
                                "target_lang": "fr"})
        self.assertEqual(moa_io.tokenizer_file({"tokenizer": "subword-nmt"}), "bpecodes")
        self.assertEqual(moa_io.tokenizer_file({}), "sentencepiece.model")


if __name__ == "__main__":
    unittest.main()
