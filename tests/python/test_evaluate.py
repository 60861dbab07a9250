#!/usr/bin/python3
"""Tests of train/evaluate.py: BLEU, chrF and 13a tokenisation on cases worked
out by hand (the arithmetic is in the comments), placeholder extraction and
the two baselines.

    /usr/bin/python3 tests/python/run_python_tests.py
"""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
import tempfile
import unittest
from contextlib import redirect_stdout

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "train"))

import evaluate as ev  # noqa: E402


class Tokenize13aTest(unittest.TestCase):
    def test_punctuation_split(self):
        self.assertEqual(ev.tokenize_13a("Hello, world!"), "Hello , world !")
        self.assertEqual(ev.tokenize_13a("(test) [x] {y}"), "( test ) [ x ] { y }")
        self.assertEqual(ev.tokenize_13a("a/b: c;d?"), "a / b : c ; d ?")
        # _ (0x5f) lies in the [ to ` range: mnemonics are split too
        self.assertEqual(ev.tokenize_13a("_File a_b"), "_ File a _ b")
        self.assertEqual(ev.tokenize_13a('say "hi" #1 $5 50%'),
                         'say " hi " # 1 $ 5 50 %')

    def test_apostrophe_and_word_dash_kept(self):
        # ' (0x27) and - (0x2d) are not in the symbol ranges.
        self.assertEqual(ev.tokenize_13a("it's well-known"), "it's well-known")

    def test_numbers_keep_commas_and_periods(self):
        # "1,000.50": each , and . sits between digits; the final "." is followed
        # by the padding space, so it is split off.
        self.assertEqual(ev.tokenize_13a("It costs 1,000.50 dollars."),
                         "It costs 1,000.50 dollars .")
        self.assertEqual(ev.tokenize_13a("version 2.0."), "version 2.0 .")

    def test_period_comma_next_to_letters(self):
        self.assertEqual(ev.tokenize_13a("e.g. this,that"), "e . g . this , that")
        # a comma before a digit but after a letter: split by the first rule
        self.assertEqual(ev.tokenize_13a("a,1"), "a , 1")
        # a period after a digit but before a letter: split by the second rule
        self.assertEqual(ev.tokenize_13a("1.a"), "1 . a")

    def test_dash_after_digit(self):
        self.assertEqual(ev.tokenize_13a("pages 3-4"), "pages 3 - 4")
        self.assertEqual(ev.tokenize_13a("x-3"), "x-3")

    def test_entities_unescaped(self):
        self.assertEqual(ev.tokenize_13a("A&amp;B"), "A & B")
        self.assertEqual(ev.tokenize_13a("&lt;b&gt;"), "< b >")
        self.assertEqual(ev.tokenize_13a("&quot;x&quot;"), '" x "')
        # only these four: &apos; stays an entity, then & and ; are split
        self.assertEqual(ev.tokenize_13a("&apos;"), "& apos ;")
        # &amp; is replaced before &lt;: "&amp;lt;" -> "&lt;" -> "<"
        self.assertEqual(ev.tokenize_13a("&amp;lt;"), "<")

    def test_language_independent_part(self):
        self.assertEqual(ev.tokenize_13a("a <skipped> b"), "a b")
        self.assertEqual(ev.tokenize_13a("hyphen-\nated\nline"), "hyphenated line")
        self.assertEqual(ev.tokenize_13a("  many   spaces  "), "many spaces")
        self.assertEqual(ev.tokenize_13a(""), "")


class BleuTest(unittest.TestCase):
    def test_identical_is_100(self):
        hyps = ["The file is open.", "Save the document as %s?"]
        self.assertAlmostEqual(ev.corpus_bleu(hyps, hyps), 100.0, places=9)

    def test_worked_example(self):
        # hyp: the cat sat on the mat   (6 tokens)
        # ref: the cat is  on the mat   (6 tokens)
        # 1-grams: the×2 cat on mat match (sat does not): 5/6 -> 83.333
        # 2-grams: "the cat" "on the" "the mat" of 5: 3/5 -> 60
        # 3-grams: "on the mat" of 4: 1/4 -> 25
        # 4-grams: 0 of 3: first zero order, exp smoothing 100/(2·3) -> 16.667
        # BP = 1 (c = r = 6)
        # BLEU = (83.333 · 60 · 25 · 16.667)^(1/4) = 2083333.3^(1/4) = 37.9918
        hyp, ref = ["the cat sat on the mat"], ["the cat is on the mat"]
        correct, total, c, r = ev.bleu_statistics(hyp, ref)
        self.assertEqual(correct, [5, 3, 1, 0])
        self.assertEqual(total, [6, 5, 4, 3])
        self.assertEqual((c, r), (6, 6))
        parts = ev.bleu_from_statistics(correct, total, c, r)
        for got, want in zip(parts["precisions"], [500 / 6, 60.0, 25.0, 100 / 6]):
            self.assertAlmostEqual(got, want, places=9)
        self.assertEqual(parts["bp"], 1.0)
        self.assertAlmostEqual(ev.corpus_bleu(hyp, ref), 37.99178428, places=6)

    def test_smoothing_counts_each_zero_order(self):
        # hyp: a b c d e   ref: a b d c e
        # 1-grams 5/5 -> 100; 2-grams only "a b": 1/4 -> 25
        # 3-grams 0/3: first zero, k=1: 100/(2·3) = 16.667
        # 4-grams 0/2: second zero, k=2: 100/(4·2) = 12.5
        # BLEU = (100 · 25 · 16.667 · 12.5)^(1/4) = 520833.3^(1/4) = 26.8642
        hyp, ref = ["a b c d e"], ["a b d c e"]
        parts = ev.bleu_from_statistics(*ev.bleu_statistics(hyp, ref))
        for got, want in zip(parts["precisions"], [100.0, 25.0, 100 / 6, 12.5]):
            self.assertAlmostEqual(got, want, places=9)
        self.assertAlmostEqual(ev.corpus_bleu(hyp, ref), 26.86424830, places=6)

    def test_brevity_penalty(self):
        # hyp: the cat sat on the (5)  ref: the cat sat on the mat (6)
        # every hyp n-gram matches: precisions 100, 100, 100, 100
        # c = 5 < r = 6: BP = exp(1 - 6/5) = exp(-0.2) = 0.818731
        # BLEU = 100 · 0.818731 = 81.8731
        hyp, ref = ["the cat sat on the"], ["the cat sat on the mat"]
        parts = ev.bleu_from_statistics(*ev.bleu_statistics(hyp, ref))
        self.assertAlmostEqual(parts["bp"], math.exp(-0.2), places=12)
        self.assertAlmostEqual(ev.corpus_bleu(hyp, ref), 81.87307531, places=6)

    def test_longer_hypothesis_has_no_penalty(self):
        # hyp: a b c d e f (6), ref: a b c d e (5): p1 = 5/6, p2 = 4/5,
        # p3 = 3/4, p4 = 2/3, BP 1: (5/6·4/5·3/4·2/3)^(1/4)·100 = (1/3)^(1/4)·100
        self.assertAlmostEqual(ev.corpus_bleu(["a b c d e f"], ["a b c d e"]),
                               100 * (1 / 3) ** 0.25, places=9)

    def test_corpus_level_sums_statistics(self):
        # Two sentences: the statistics are summed before the precisions.
        # s1 hyp "a b c d" = ref: 4,3,2,1 matches of 4,3,2,1
        # s2 hyp "x y" ref "x z": 1-grams 1/2, 2-grams 0/1, no 3/4-grams
        # totals: 5/6, 3/4, 2/2, 1/1; c = r = 6
        # BLEU = (5/6 · 3/4 · 1 · 1)^(1/4)·100 = 0.625^(1/4)·100 = 88.9140
        got = ev.corpus_bleu(["a b c d", "x y"], ["a b c d", "x z"])
        self.assertAlmostEqual(got, 100 * 0.625 ** 0.25, places=9)

    def test_clipped_counts(self):
        # hyp "the the the the", ref "the cat": "the" counts once: p1 = 1/4,
        # no 2-gram matches: p2 = 100/(2·3); 3-grams 0/2: 100/(4·2);
        # 4-grams 0/1: 100/(8·1); BP = 1 (c 4 > r 2)
        parts = ev.bleu_from_statistics(*ev.bleu_statistics(["the the the the"], ["the cat"]))
        self.assertEqual(parts["precisions"][0], 25.0)
        want = (25.0 * (100 / 6) * 12.5 * 12.5) ** 0.25
        self.assertAlmostEqual(ev.corpus_bleu(["the the the the"], ["the cat"]), want, places=9)

    def test_no_matches_is_zero(self):
        self.assertEqual(ev.corpus_bleu(["x y z"], ["a b c"]), 0.0)
        self.assertEqual(ev.corpus_bleu([""], ["a b c"]), 0.0)

    def test_too_short_for_4grams_is_zero(self):
        # 3 tokens: no 4-grams at all, sacreBLEU stops there and the missing
        # precision makes the (non-effective-order) score 0.
        self.assertEqual(ev.corpus_bleu(["a b c"], ["a b c"]), 0.0)

    def test_tokenisation_applies(self):
        # "open." vs "open ." are the same once tokenised; trailing spaces too.
        self.assertAlmostEqual(ev.corpus_bleu(["The file is open.  "], ["The file is open ."]),
                               100.0, places=9)

    def test_length_mismatch_raises(self):
        with self.assertRaises(ValueError):
            ev.corpus_bleu(["a"], ["a", "b"])


class ChrfTest(unittest.TestCase):
    def test_identical_is_100(self):
        self.assertAlmostEqual(ev.corpus_chrf(["Datei öffnen"], ["Datei öffnen"]), 100.0)

    def test_disjoint_is_0(self):
        self.assertEqual(ev.corpus_chrf(["abc"], ["xyz"]), 0.0)

    def test_worked_example(self):
        # hyp "ab", ref "abc" (no whitespace)
        # n=1: hyp {a,b} 2, ref {a,b,c} 3, match 2 -> P 1, R 2/3
        # n=2: hyp {ab} 1, ref {ab,bc} 2, match 1 -> P 1, R 1/2
        # n=3: hyp has none -> the order is left out of the averages
        # avg P = 1, avg R = (2/3 + 1/2)/2 = 7/12
        # chrF2 = (1+4)·P·R / (4·P + R) = (35/12) / (55/12) = 7/11 -> 63.636
        self.assertEqual(ev.chrf_statistics(["ab"], ["abc"])[:3],
                         [[2, 3, 2], [1, 2, 1], [0, 1, 0]])
        self.assertAlmostEqual(ev.corpus_chrf(["ab"], ["abc"]), 700 / 11, places=9)

    def test_whitespace_ignored(self):
        # "a b" becomes "ab": the same as the previous example.
        self.assertAlmostEqual(ev.corpus_chrf(["a b"], ["ab c"]), 700 / 11, places=9)

    def test_corpus_sums_statistics(self):
        # s1 "ab"/"ab": n=1 2,2,2; n=2 1,1,1.  s2 "c"/"d": n=1 1,1,0.
        # sums: n=1 3,3,2 (P = R = 2/3); n=2 1,1,1 (P = R = 1)
        # avg P = avg R = 5/6, so chrF = 5/6 -> 83.333
        self.assertAlmostEqual(ev.corpus_chrf(["ab", "c"], ["ab", "d"]), 500 / 6, places=9)

    def test_repeated_ngrams_are_clipped(self):
        # hyp "aaa" ref "a": n=1 hyp 3, ref 1, match 1 -> P 1/3, R 1
        # n=2: ref has none -> left out.  chrF2 = 5·(1/3)·1 / (4/3 + 1) = 5/7
        self.assertAlmostEqual(ev.corpus_chrf(["aaa"], ["a"]), 500 / 7, places=9)


class PlaceholderTest(unittest.TestCase):
    def test_printf(self):
        self.assertEqual(ev.extract_placeholders("Copy %s to %d files (%ld, %lu, %.2f, %1$s, %%)"),
                         ["%s", "%d", "%ld", "%lu", "%.2f", "%1$s", "%%"])
        self.assertEqual(ev.extract_placeholders("%i of %u, %-10s %'d %02d %zu %llu"),
                         ["%i", "%u", "%-10s", "%'d", "%02d", "%zu", "%llu"])

    def test_percent_sign_is_not_a_placeholder(self):
        self.assertEqual(ev.extract_placeholders("100% done, 50 % left"), [])

    def test_qt_python_brace_shell(self):
        self.assertEqual(ev.extract_placeholders("%1 of %2"), ["%1", "%2"])
        self.assertEqual(ev.extract_placeholders("%(name)s has %(count)d"),
                         ["%(name)s", "%(count)d"])
        self.assertEqual(ev.extract_placeholders("{0} {name} {} {0:.2f}"),
                         ["{0}", "{name}", "{}", "{0:.2f}"])
        self.assertEqual(ev.extract_placeholders("path ${HOME}/x and $HOME"), ["${HOME}"])

    def test_markup_and_entities(self):
        self.assertEqual(ev.extract_placeholders('<b>Bold</b> <a href="http://x">link</a><br/>'),
                         ["<b>", "</b>", '<a href="http://x">', "</a>", "<br/>"])
        self.assertEqual(ev.extract_placeholders("Tom &amp; Jerry &lt; &#123; &#x1F;"),
                         ["&amp;", "&lt;", "&#123;", "&#x1F;"])
        # an unknown tag name counts when the text closes it
        self.assertEqual(ev.extract_placeholders("<para>x</para>"), ["<para>", "</para>"])

    def test_not_placeholders(self):
        # accelerators, usage metavariables, comparisons
        self.assertEqual(ev.extract_placeholders("_File &Save Usage: prog <file> a < b"), [])

    def test_preservation_counts_only_sources_with_placeholders(self):
        srcs = ["Open %s", "Delete %1 and %2", "Hello", "<b>Bold</b>", "Plain"]
        hyps = ["%s öffnen", "%2 und %1 löschen", "Hallo", "Fett", "Schlicht %s"]
        stats = ev.placeholder_stats(srcs, hyps)
        # sources with any: 1, 2, 4 -> kept in 1 and 2 (order does not matter)
        self.assertEqual(stats["with_placeholders"], 3)
        self.assertEqual(stats["preserved"], 2)
        self.assertAlmostEqual(stats["percent"], 200 / 3)
        self.assertEqual(stats["spurious"], 1)      # "Plain" -> "... %s"
        self.assertAlmostEqual(ev.placeholder_preservation(srcs, hyps), 200 / 3)

    def test_multiset_not_set(self):
        self.assertEqual(ev.placeholder_preservation(["%s and %s"], ["%s"]), 0.0)

    def test_no_placeholders_anywhere(self):
        self.assertIsNone(ev.placeholder_stats(["a"], ["b"])["percent"])
        self.assertEqual(ev.placeholder_preservation(["a"], ["b"]), 100.0)


class BaselineTest(unittest.TestCase):
    PAIRS = [("Open file", "Datei öffnen"), ("Save file", "Datei speichern"),
             ("Open folder", "Ordner öffnen"), ("Save folder", "Ordner speichern"),
             ("Delete file", "Datei löschen"), ("Delete folder", "Ordner löschen")]

    def test_copy(self):
        self.assertEqual(ev.copy_baseline(["a", "b"]), ["a", "b"])

    def test_lexicon_dice(self):
        lex = ev.build_lexicon(self.PAIRS, min_count=1)
        # file: 3 pairs, each with "datei" (Dice 2·3/(3+3) = 1)
        self.assertEqual(lex["file"], "Datei")
        self.assertEqual(lex["open"], "öffnen")
        self.assertEqual(lex["delete"], "löschen")

    def test_lexicon_translate_keeps_placeholders_and_unknowns(self):
        lex = {"open": "öffnen", "file": "Datei", "s": "WRONG", "b": "WRONG"}
        self.assertEqual(ev.lexicon_translate("Open <b>file</b> %s now!", lex),
                         "Öffnen <b>Datei</b> %s now!")
        self.assertEqual(ev.lexicon_translate("_Open FILE", lex), "_Öffnen DATEI")


class CliTest(unittest.TestCase):
    def test_cli_json_and_table(self):
        with tempfile.TemporaryDirectory() as d:
            tsv = os.path.join(d, "t.tsv")
            hyp = os.path.join(d, "h.txt")
            train = os.path.join(d, "train.tsv")
            with open(tsv, "w", encoding="utf-8") as f:
                f.write("Open %s\tÖffne %s\nSave file\tDatei speichern\n")
            with open(hyp, "w", encoding="utf-8") as f:
                f.write("Öffne %s\nDatei speichern\n")
            with open(train, "w", encoding="utf-8") as f:
                for en, de in BaselineTest.PAIRS:
                    f.write(f"{en}\t{de}\n")
            out = io.StringIO()
            with redirect_stdout(out):
                rc = ev.main(["--hyp", hyp, "--tsv", tsv, "--json", "--baselines",
                              "--train", train, "--min-count", "1"])
            self.assertEqual(rc, 0)
            res = json.loads(out.getvalue())
            self.assertAlmostEqual(res["model"]["chrf"], 100.0)
            self.assertEqual(res["model"]["placeholders"]["percent"], 100.0)
            self.assertIn("copy", res)
            self.assertIn("lexicon", res)
            proc = subprocess.run([sys.executable, os.path.join(REPO, "train", "evaluate.py"),
                                   "--hyp", hyp, "--tsv", tsv],
                                  capture_output=True, text=True, check=True)
            self.assertIn("model", proc.stdout)
            self.assertIn("BLEU", proc.stdout)

    def test_help_lists_every_flag(self):
        text = ev.build_arg_parser().format_help()
        for flag in ("--hyp", "--ref", "--src", "--tsv", "--json", "--baselines",
                     "--train", "--train-pairs", "--min-count", "--lexicon-out"):
            self.assertIn(flag, text)


if __name__ == "__main__":
    unittest.main()
