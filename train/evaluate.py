#!/usr/bin/python3
"""Translation quality: corpus BLEU and chrF (sacreBLEU's defaults), placeholder
preservation, and two baselines (copy the source; word-by-word lexicon lookup).

    from evaluate import corpus_bleu, corpus_chrf, placeholder_preservation
    corpus_bleu(["Die Datei ist offen ."], ["Die Datei ist offen ."])  # 100.0

    /usr/bin/python3 train/evaluate.py --hyp out.txt --tsv test.en-de.tsv
    /usr/bin/python3 train/evaluate.py --hyp out.txt --src src.txt --ref ref.txt \\
        --baselines --train ../shared/corpus/train.en-de.tsv.xz

BLEU is sacreBLEU's default corpus BLEU (tokenizer 13a, 4-grams, smoothing
'exp', no lower-casing, one reference); chrF is sacreBLEU's default chrF2
(character 1-6-grams, no word n-grams, beta 2, whitespace ignored). Both are
written here from their definitions (no sacrebleu package); see the tests in
tests/python/test_evaluate.py for hand-computed cases.

Placeholder preservation is reported over the sentences whose SOURCE holds at
least one placeholder or markup item (the count is given with it): such a
sentence counts as preserved when the multiset of placeholders of the output
equals the source's. Sentences without any are left out of the percentage;
how many of those got spurious placeholders in the output is reported apart.
"""

from __future__ import annotations

import argparse
import bz2
import gzip
import json
import lzma
import math
import re
import sys
from collections import Counter
from functools import lru_cache
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

# --- tokenizer 13a (mteval-v13a, as sacreBLEU applies it) ----------------------

_13A_RULES = [
    # symbols (ranges { to ~, [ to `, space to &, ( to +, : to @, and /) get spaces
    (re.compile(r"([\{-\~\[-\` -\&\(-\+\:-\@\/])"), r" \1 "),
    # period and comma unless preceded by a digit
    (re.compile(r"([^0-9])([\.,])"), r"\1 \2 "),
    # period and comma unless followed by a digit
    (re.compile(r"([\.,])([^0-9])"), r" \1 \2"),
    # dash when preceded by a digit
    (re.compile(r"([0-9])(-)"), r"\1 \2 "),
]


@lru_cache(maxsize=2 ** 16)
def tokenize_13a(line: str) -> str:
    """mteval-v13a tokenisation: the language-independent part (drop <skipped>,
    join '-\\n' hyphenations, newlines to spaces, unescape &quot; &amp; &lt;
    &gt;), then the regular expressions above on the line padded with one
    space each side, then whitespace runs collapsed and the ends stripped."""
    line = line.replace("<skipped>", "")
    line = line.replace("-\n", "")
    line = line.replace("\n", " ")
    if "&" in line:
        line = line.replace("&quot;", '"')
        line = line.replace("&amp;", "&")
        line = line.replace("&lt;", "<")
        line = line.replace("&gt;", ">")
    line = f" {line} "
    for pattern, repl in _13A_RULES:
        line = pattern.sub(repl, line)
    return " ".join(line.split())


# --- BLEU ----------------------------------------------------------------------

MAX_NGRAM = 4


def _word_ngrams(tokens: Sequence[str], max_n: int) -> Counter:
    grams: Counter = Counter()
    for n in range(1, max_n + 1):
        for i in range(len(tokens) - n + 1):
            grams[tuple(tokens[i:i + n])] += 1
    return grams


def _check_pair(hyps: Sequence[str], refs: Sequence[str]) -> None:
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} references")


def bleu_statistics(hyps: Sequence[str], refs: Sequence[str]
                    ) -> Tuple[List[int], List[int], int, int]:
    """(matches per order, hypothesis n-grams per order, hyp length, ref length),
    summed over the corpus after 13a tokenisation (each line right-stripped
    first, as sacreBLEU does). Matches are clipped by the reference counts."""
    _check_pair(hyps, refs)
    correct = [0] * MAX_NGRAM
    total = [0] * MAX_NGRAM
    sys_len = ref_len = 0
    for hyp, ref in zip(hyps, refs):
        h = tokenize_13a(hyp.rstrip()).split()
        r = tokenize_13a(ref.rstrip()).split()
        sys_len += len(h)
        ref_len += len(r)
        hg, rg = _word_ngrams(h, MAX_NGRAM), _word_ngrams(r, MAX_NGRAM)
        for gram, count in hg.items():
            n = len(gram)
            total[n - 1] += count
            if gram in rg:
                correct[n - 1] += min(count, rg[gram])
    return correct, total, sys_len, ref_len


def bleu_from_statistics(correct: Sequence[int], total: Sequence[int],
                         sys_len: int, ref_len: int) -> Dict[str, object]:
    """sacreBLEU's compute_bleu with smoothing 'exp': returns the score and its
    parts ({'score', 'precisions', 'bp', 'sys_len', 'ref_len'})."""
    if sys_len < ref_len:
        bp = math.exp(1.0 - ref_len / sys_len) if sys_len > 0 else 0.0
    else:
        bp = 1.0
    precisions = [0.0] * MAX_NGRAM
    out = {"score": 0.0, "precisions": precisions, "bp": bp,
           "sys_len": sys_len, "ref_len": ref_len}
    if not any(correct):
        return out
    smooth = 1.0
    for n in range(MAX_NGRAM):
        if total[n] == 0:
            break             # the remaining precisions stay 0: the score is 0
        if correct[n] == 0:
            smooth *= 2       # 'exp': 100 / (2^k · total) for the k-th zero order
            precisions[n] = 100.0 / (smooth * total[n])
        else:
            precisions[n] = 100.0 * correct[n] / total[n]
    # log(0) is taken as a huge negative number, as sacreBLEU's my_log does.
    logs = [math.log(p) if p > 0 else -9999999999.0 for p in precisions]
    out["score"] = bp * math.exp(sum(logs) / MAX_NGRAM)
    return out


def corpus_bleu(hyps: Sequence[str], refs: Sequence[str]) -> float:
    """sacreBLEU's default corpus BLEU (13a, 1-4-grams, 'exp' smoothing), 0-100."""
    return float(bleu_from_statistics(*bleu_statistics(hyps, refs))["score"])


# --- chrF ----------------------------------------------------------------------

CHRF_ORDER = 6
CHRF_BETA = 2


def _char_ngrams(text: str, max_n: int) -> List[Counter]:
    text = "".join(text.split())        # whitespace is not part of any n-gram
    return [Counter(text[i:i + n] for i in range(len(text) - n + 1))
            for n in range(1, max_n + 1)]


def chrf_statistics(hyps: Sequence[str], refs: Sequence[str]) -> List[List[int]]:
    """Per character order 1..6: [hyp n-grams, ref n-grams, matches], summed
    over the corpus (matches clipped by the reference counts)."""
    _check_pair(hyps, refs)
    stats = [[0, 0, 0] for _ in range(CHRF_ORDER)]
    for hyp, ref in zip(hyps, refs):
        for n, (hg, rg) in enumerate(zip(_char_ngrams(hyp, CHRF_ORDER),
                                          _char_ngrams(ref, CHRF_ORDER))):
            stats[n][0] += sum(hg.values())
            stats[n][1] += sum(rg.values())
            stats[n][2] += sum(min(c, rg[g]) for g, c in hg.items() if g in rg)
    return stats


def chrf_from_statistics(stats: Sequence[Sequence[int]], beta: float = CHRF_BETA) -> float:
    """sacreBLEU's default: precision and recall averaged over the orders
    where both sides have n-grams, then F-beta of the two averages, × 100."""
    factor = beta ** 2
    avg_p = avg_r = 0.0
    orders = 0
    for n_hyp, n_ref, n_match in stats:
        if n_hyp > 0 and n_ref > 0:
            avg_p += n_match / n_hyp
            avg_r += n_match / n_ref
            orders += 1
    if orders == 0:
        return 0.0
    avg_p /= orders
    avg_r /= orders
    if avg_p + avg_r == 0:
        return 0.0
    return 100.0 * (1 + factor) * avg_p * avg_r / (factor * avg_p + avg_r)


def corpus_chrf(hyps: Sequence[str], refs: Sequence[str]) -> float:
    """sacreBLEU's default corpus chrF2 (char 1-6-grams, beta 2), 0-100."""
    return chrf_from_statistics(chrf_statistics(hyps, refs))


# --- placeholders --------------------------------------------------------------

# Markup tag names taken as markup even without attributes (HTML, Pango, Qt
# rich text). Other <word> items are usually translatable ("<file>" in a usage
# line becomes "<Datei>"), so they only count with attributes, as a closing
# tag, as self-closing, or when the same text closes them (<para>...</para>).
MARKUP_TAGS = frozenset("""
a abbr b big blockquote body br center cite code dd div dl dt em font h1 h2 h3
h4 h5 h6 head hr html i img kbd li link nobr ol p pre q qt s samp small span
strike strong style sub sup table td th title tr tt u ul var
""".split())

_PLACEHOLDER_RE = re.compile(r"""
    (?P<pct> %% )
  | (?P<pyfmt> %\( [^()\s]+ \) [-+0\#]* \d* (?: \.\d+ )? [diouxXeEfFgGcrsa] )
  | (?P<printf> % (?: \d+\$ )? [-+0\#']* (?: \d+ | \* )? (?: \. (?: \d+ | \* ) )?
                (?: hh | h | ll | l | L | q | j | z | t | I64 | I32 )?
                [diouxXeEfFgGaAcspn] )
  | (?P<qt> %L?\d+ )
  | (?P<shell> \$\{ [^{}\s]+ \} )
  | (?P<brace> \{ [^{}\s]* \} )
  | (?P<tag> < (?P<close>/)? (?P<name>[A-Za-z][A-Za-z0-9:_.-]*)
             (?P<attrs> \s+ [^<>]*? )? (?P<selfclose>/)? > )
  | (?P<entity> & (?: [A-Za-z][A-Za-z0-9]* | \#[0-9]+ | \#[xX][0-9A-Fa-f]+ ) ; )
""", re.VERBOSE)


def _is_markup(m: "re.Match[str]", closed: "set[str]") -> bool:
    if m.group("close") or m.group("selfclose"):
        return True
    if m.group("attrs") and "=" in m.group("attrs"):
        return True
    name = m.group("name").lower()
    return name in MARKUP_TAGS or name in closed


def _placeholder_matches(text: str) -> List["re.Match[str]"]:
    found = list(_PLACEHOLDER_RE.finditer(text))
    closed = {m.group("name").lower() for m in found if m.group("close")}
    return [m for m in found if m.group("tag") is None or _is_markup(m, closed)]


def extract_placeholders(text: str) -> List[str]:
    """Placeholders and markup in text, in order of appearance:
    printf (%s %d %ld %.2f %1$s %%), Python %(name)s, Qt %1, shell ${name},
    brace {0} {name} {} {0:.2f}, markup tags (<b> </b> <a href="..."> <br/>;
    see MARKUP_TAGS) and entities (&amp; &lt; &#123; &#x1F;). Mnemonic
    accelerators (_File, &File) are not placeholders."""
    return [m.group(0) for m in _placeholder_matches(text)]


def placeholder_stats(srcs: Sequence[str], hyps: Sequence[str]) -> Dict[str, object]:
    """{'sentences', 'with_placeholders' (sources holding any), 'preserved'
    (of those, output multiset == source multiset), 'percent' (None when no
    source holds any), 'spurious' (sources without any whose output has some)}."""
    _check_pair(srcs, hyps)
    with_ph = preserved = spurious = 0
    for src, hyp in zip(srcs, hyps):
        s, h = Counter(extract_placeholders(src)), Counter(extract_placeholders(hyp))
        if s:
            with_ph += 1
            preserved += s == h
        elif h:
            spurious += 1
    return {"sentences": len(srcs), "with_placeholders": with_ph,
            "preserved": preserved,
            "percent": 100.0 * preserved / with_ph if with_ph else None,
            "spurious": spurious}


def placeholder_preservation(srcs: Sequence[str], hyps: Sequence[str]) -> float:
    """Share (0-100) of the sentences whose source holds placeholders/markup
    that keep exactly the same multiset in the output. 100.0 when no source
    holds any (nothing could be lost); placeholder_stats gives the counts."""
    pct = placeholder_stats(srcs, hyps)["percent"]
    return 100.0 if pct is None else float(pct)


# --- baselines -----------------------------------------------------------------

_WORD_RE = re.compile(r"[^\W_]+")


def copy_baseline(srcs: Sequence[str]) -> List[str]:
    """The output is the source."""
    return list(srcs)


def _words(text: str) -> List[str]:
    """Lower-cased words outside placeholders."""
    spans = [m.span() for m in _placeholder_matches(text)]
    out, pos = [], 0
    for begin, end in spans + [(len(text), len(text))]:
        out.extend(w.lower() for w in _WORD_RE.findall(text, pos, begin))
        pos = end
    return out


def build_lexicon(train_pairs: Iterable[Tuple[str, str]], max_pairs: int = 100_000,
                  min_count: int = 2) -> Dict[str, str]:
    """English word (lower-cased) -> German word with the highest Dice
    coefficient 2·c(e,g) / (c(e) + c(g)), counting the pairs that hold the
    words (each word once per pair), over the first max_pairs pairs. Pairs
    seen together fewer than min_count times are not considered. Ties: more
    co-occurrences, then the alphabetically first German word. The German word
    is given in its most frequent spelling (German nouns are capitalised)."""
    en_ids: Dict[str, int] = {}
    de_ids: Dict[str, int] = {}
    surfaces: Dict[str, Counter] = {}
    e_df: Counter = Counter()           # pairs holding each English word
    g_df: Counter = Counter()           # pairs holding each German word
    en_rows: List[np.ndarray] = []      # one (e, g) row per co-occurrence
    de_rows: List[np.ndarray] = []
    for i, (en, de) in enumerate(train_pairs):
        if i >= max_pairs:
            break
        e = {en_ids.setdefault(w, len(en_ids)) for w in _words(en)}
        g = set()
        spans = [m.span() for m in _placeholder_matches(de)]
        pos = 0
        for begin, end in spans + [(len(de), len(de))]:
            for w in _WORD_RE.findall(de, pos, begin):
                low = w.lower()
                surfaces.setdefault(low, Counter())[w] += 1
                g.add(de_ids.setdefault(low, len(de_ids)))
            pos = end
        if not e or not g:
            continue
        e_df.update(e)
        g_df.update(g)
        ea = np.fromiter(e, dtype=np.int64, count=len(e))
        ga = np.fromiter(g, dtype=np.int64, count=len(g))
        en_rows.append(np.repeat(ea, len(ga)))
        de_rows.append(np.tile(ga, len(ea)))
    if not en_rows:
        return {}
    n_de = len(de_ids)
    keys, pair_count = np.unique(np.concatenate(en_rows) * n_de + np.concatenate(de_rows),
                                 return_counts=True)
    e_of, g_of = keys // n_de, keys % n_de
    e_df_arr = np.array([e_df[i] for i in range(len(en_ids))], dtype=np.int64)
    g_df_arr = np.array([g_df[i] for i in range(n_de)], dtype=np.int64)
    keep = pair_count >= min_count
    e_of, g_of, pair_count = e_of[keep], g_of[keep], pair_count[keep]
    dice = 2.0 * pair_count / (e_df_arr[e_of] + g_df_arr[g_of])
    de_names = sorted(de_ids, key=de_ids.get)
    de_rank = np.empty(n_de, dtype=np.int64)      # alphabetical tie-break
    de_rank[np.argsort(np.array(de_names, dtype=object))] = np.arange(n_de)
    order = np.lexsort((de_rank[g_of], -pair_count, -dice, e_of))
    e_sorted = e_of[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = e_sorted[1:] != e_sorted[:-1]
    en_names = sorted(en_ids, key=en_ids.get)
    lexicon = {}
    for idx in order[first]:
        low = de_names[g_of[idx]]
        lexicon[en_names[e_of[idx]]] = surfaces[low].most_common(1)[0][0]
    return lexicon


def _match_case(word: str, translation: str) -> str:
    if len(word) > 1 and word.isupper():
        return translation.upper()
    if word[:1].isupper() and translation[:1].islower():
        return translation[:1].upper() + translation[1:]
    return translation


def lexicon_translate(src: str, lexicon: Dict[str, str]) -> str:
    """Word-by-word: each word outside placeholders/markup is replaced by its
    lexicon entry (capitalised like the source word); unknown words,
    placeholders, markup, punctuation and spacing stay as they are."""
    out, pos = [], 0
    spans = [m.span() for m in _placeholder_matches(src)]
    for begin, end in spans + [(len(src), len(src))]:
        last = pos
        for m in _WORD_RE.finditer(src, pos, begin):
            out.append(src[last:m.start()])
            w = m.group(0)
            t = lexicon.get(w.lower())
            out.append(_match_case(w, t) if t else w)
            last = m.end()
        out.append(src[last:begin])
        out.append(src[begin:end])
        pos = end
    return "".join(out)


def lexicon_baseline(srcs: Sequence[str], lexicon: Dict[str, str]) -> List[str]:
    return [lexicon_translate(s, lexicon) for s in srcs]


# --- files ---------------------------------------------------------------------

def _open_text(path: str):
    if path.endswith(".xz"):
        return lzma.open(path, "rt", encoding="utf-8", newline="\n")
    if path.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8", newline="\n")
    if path.endswith(".bz2"):
        return bz2.open(path, "rt", encoding="utf-8", newline="\n")
    return open(path, encoding="utf-8", newline="\n")


def read_lines(path: str) -> List[str]:
    """Lines without their end (\\n, \\r\\n); '-' reads standard input."""
    f = sys.stdin if path == "-" else _open_text(path)
    try:
        return [ln.rstrip("\n").rstrip("\r") for ln in f]
    finally:
        if f is not sys.stdin:
            f.close()


def read_tsv(path: str) -> Tuple[List[str], List[str]]:
    """source<TAB>reference lines -> (sources, references)."""
    srcs, refs = [], []
    for i, ln in enumerate(read_lines(path)):
        if "\t" not in ln:
            raise ValueError(f"{path}:{i + 1}: no tab (expected source<TAB>reference)")
        s, r = ln.split("\t", 1)
        srcs.append(s)
        refs.append(r)
    return srcs, refs


def iter_train_pairs(path: str, limit: int) -> Iterable[Tuple[str, str]]:
    """The first `limit` english<TAB>german pairs of a (.xz/.gz/.bz2) TSV."""
    n = 0
    with _open_text(path) as f:
        for ln in f:
            if n >= limit:
                break
            parts = ln.rstrip("\n").rstrip("\r").split("\t")
            if len(parts) >= 2:
                n += 1
                yield parts[0], parts[1]


# --- evaluation and command line -----------------------------------------------

def evaluate(hyps: Sequence[str], refs: Sequence[str],
             srcs: Optional[Sequence[str]] = None) -> Dict[str, object]:
    """{'bleu', 'chrf', 'placeholders' (placeholder_stats or None)}."""
    return {"bleu": corpus_bleu(hyps, refs), "chrf": corpus_chrf(hyps, refs),
            "placeholders": placeholder_stats(srcs, hyps) if srcs is not None else None}


def _format_table(results: Dict[str, Dict[str, object]]) -> str:
    ph_n = next((r["placeholders"]["with_placeholders"] for r in results.values()
                 if r["placeholders"] is not None), None)
    ph_head = f"placeholders kept (of {ph_n})" if ph_n is not None else "placeholders"
    width = max(len("system"), *(len(k) for k in results))
    lines = [f"{'system':<{width}}  {'BLEU':>6}  {'chrF':>6}  {ph_head}"]
    for name, r in results.items():
        ph = r["placeholders"]
        if ph is None:
            cell = "-"
        elif ph["percent"] is None:
            cell = "n/a (no source holds any)"
        else:
            cell = f"{ph['percent']:.1f}% ({ph['preserved']}/{ph['with_placeholders']}" \
                   f"; spurious in {ph['spurious']})"
        lines.append(f"{name:<{width}}  {r['bleu']:6.2f}  {r['chrf']:6.2f}  {cell}")
    return "\n".join(lines)


def build_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Corpus BLEU and chrF (sacreBLEU defaults: 13a tokenisation, "
                    "exp smoothing; chrF2) and placeholder preservation of "
                    "translations, optionally beside a copy and a lexicon baseline.")
    p.add_argument("--hyp", metavar="FILE",
                   help="the system's translations, one a line ('-': standard input); "
                        "may be left out with --baselines")
    p.add_argument("--ref", metavar="FILE", help="reference translations, one a line")
    p.add_argument("--src", metavar="FILE",
                   help="source sentences, one a line (needed for placeholder "
                        "preservation and the baselines)")
    p.add_argument("--tsv", metavar="FILE",
                   help="source<TAB>reference lines, instead of --src and --ref")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object instead of a table")
    p.add_argument("--baselines", action="store_true",
                   help="also score the copy baseline (output = source) and the "
                        "word-by-word lexicon baseline on the same sources")
    p.add_argument("--train", metavar="FILE",
                   help="english<TAB>german training pairs (.xz, .gz, .bz2 or plain) "
                        "from which the lexicon baseline learns (needed by --baselines)")
    p.add_argument("--train-pairs", type=int, default=100_000, metavar="N",
                   help="how many training pairs (from the top of --train) the "
                        "lexicon learns from (default 100000)")
    p.add_argument("--min-count", type=int, default=2, metavar="N",
                   help="lexicon: fewest pairs an English and a German word must "
                        "share to be considered (default 2)")
    p.add_argument("--lexicon-out", metavar="FILE",
                   help="write the learnt lexicon here (english<TAB>german lines)")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    p = build_arg_parser()
    a = p.parse_args(argv)
    if a.tsv and (a.src or a.ref):
        p.error("--tsv replaces --src and --ref")
    if not a.tsv and not a.ref:
        p.error("give --ref (or --tsv)")
    if not a.hyp and not a.baselines:
        p.error("give --hyp, --baselines or both")
    if a.baselines and not a.train:
        p.error("--baselines needs --train")
    if a.train_pairs < 1 or a.min_count < 1:
        p.error("--train-pairs and --min-count must be positive")
    try:
        if a.tsv:
            srcs, refs = read_tsv(a.tsv)
        else:
            refs = read_lines(a.ref)
            srcs = read_lines(a.src) if a.src else None
        if a.baselines and srcs is None:
            p.error("--baselines needs the sources (--src or --tsv)")
        if srcs is not None and len(srcs) != len(refs):
            raise ValueError(f"{len(srcs)} sources but {len(refs)} references")
        results: Dict[str, Dict[str, object]] = {}
        if a.hyp:
            hyps = read_lines(a.hyp)
            if len(hyps) != len(refs):
                raise ValueError(f"{a.hyp}: {len(hyps)} lines but {len(refs)} references")
            results["model"] = evaluate(hyps, refs, srcs)
        if a.baselines:
            results["copy"] = evaluate(copy_baseline(srcs), refs, srcs)
            lexicon = build_lexicon(iter_train_pairs(a.train, a.train_pairs),
                                    a.train_pairs, a.min_count)
            if a.lexicon_out:
                with open(a.lexicon_out, "w", encoding="utf-8") as f:
                    for en in sorted(lexicon):
                        f.write(f"{en}\t{lexicon[en]}\n")
            results["lexicon"] = evaluate(lexicon_baseline(srcs, lexicon), refs, srcs)
    except (OSError, ValueError, EOFError, lzma.LZMAError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if a.json:
        print(json.dumps({"sentences": len(refs), **results}, ensure_ascii=False))
    else:
        print(f"{len(refs)} sentences")
        print(_format_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
