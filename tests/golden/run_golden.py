#!/usr/bin/python3
"""Golden test: the C CLI against the PyTorch reference (docs/moa-spec.md §4-5).

Generates three random models into build/golden/, runs the reference
(train/moa_reference.py) and the CLI on the same inputs in score, greedy,
beam and n-best modes, and compares token ids, scores, per-token log-probs
and routing traces. Near-ties (spec §5) found by the reference exempt what
follows them; they are counted, and too many make the test fail.

Then the same checks on trained models, as shipped: always
tests/fixtures/models/tiny-trained (score, greedy, beam4) and the subword-nmt
model tests/fixtures/models/tiny-bpe (score, greedy, beam4), and
weights/moa-en-de once it exists (score and greedy on 100 pairs), plus any
--extra-model DIR (score and greedy on 100 pairs).

    /usr/bin/python3 tests/golden/run_golden.py --cli build/release/moa-translate
    /usr/bin/python3 tests/golden/run_golden.py --self-test   # harness check, no CLI

Prints one line per check and ends with `N passed, M failed`; exits 1 on any
failure. See tests/golden/README.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PYTHON = "/usr/bin/python3"
REFERENCE = os.path.join(REPO, "train", "moa_reference.py")
MAKE_MODEL = os.path.join(REPO, "train", "make_random_model.py")
SAMPLE = os.path.join(REPO, "tests", "fixtures", "sample.en-de.tsv")

TOL = 1e-4              # log-probs, scores and gates
MARGIN_TOL = 1e-3       # router margins (reported, loosely compared)
MAX_EXEMPT = 0.10       # more near-tie-exempt sentences than this: too weak

SIZE = ["--d-model", "64", "--encoder-layers", "2", "--decoder-layers", "2",
        "--experts", "8", "--top-k", "2", "--head-dim", "16", "--ffn-dim", "128"]
MODELS: List[Tuple[str, List[str]]] = [
    ("a-postnorm-relu-f32", SIZE + ["--seed", "101"]),
    ("b-prenorm-bias-gelu", SIZE + ["--seed", "202", "--pre-norm", "--attention-bias",
                                    "--activation", "gelu"]),
    ("c-separate-out-f16", SIZE + ["--seed", "303", "--no-share-embeddings", "--dtype", "f16"]),
]
# Trained model directories checked as they are: (name, directory relative to
# the repository, modes, pairs; 0 pairs = --sentences, and a missing
# directory is skipped when `optional`).
@dataclass
class TrainedModel:
    name: str
    path: str
    modes: List[str]
    sentences: int = 0
    optional: bool = False


TRAINED_MODELS: List[TrainedModel] = [
    TrainedModel("tiny-trained", os.path.join("tests", "fixtures", "models", "tiny-trained"),
                 ["score", "greedy", "beam4"]),
    TrainedModel("moa-en-de", os.path.join("weights", "moa-en-de"), ["score", "greedy"], 100,
                 optional=True),
    # subword-nmt BPE + Moses (tests/fixtures/bpe/make_fixture.py: converted from a
    # checkpoint in the layout of the paper's fairseq code): the two tokenizers too
    TrainedModel("tiny-bpe", os.path.join("tests", "fixtures", "models", "tiny-bpe"),
                 ["score", "greedy", "beam4"]),
]
EXTRA_MODES = ["score", "greedy"]   # --extra-model DIR
EXTRA_SENTENCES = 100

# mode name -> extra CLI arguments (all runs add --model DIR --json --trace)
TRANSLATE_RUNS: List[Tuple[str, List[str]]] = [
    ("greedy", ["--beam", "1"]),
    ("beam4", ["--beam", "4"]),
    ("nbest4", ["--beam", "4", "--nbest", "4"]),
]


# --- results bookkeeping ------------------------------------------------------------

@dataclass
class Report:
    passed: int = 0
    failed: int = 0

    def check(self, name: str, problems: List[str], detail: str) -> None:
        if problems:
            self.failed += 1
            print(f"FAILED {name}: {len(problems)} mismatches; {detail}")
            for p in problems[:5]:
                print(f"    {p}")
        else:
            self.passed += 1
            print(f"ok     {name}: {detail}")
        sys.stdout.flush()


@dataclass
class Stats:
    """What one comparison covered."""
    sentences: int = 0
    exempt_sentences: int = 0
    resolved: int = 0          # near-tie sentences the CLI decided the same way: compared in full
    compared: int = 0          # tokens / entries compared
    exempt_items: int = 0      # tokens / entries skipped for near-ties
    problems: List[str] = field(default_factory=list)
    max_diff: float = 0.0      # largest |ref - cli| among compared values

    def close(self, a: Any, b: Any, tol: Optional[float] = None) -> bool:
        """|a - b| <= tol; the default tol TOL is for single values (token
        log-probs, gates, scores), whose largest difference is remembered."""
        if not (isinstance(a, (int, float)) and isinstance(b, (int, float))):
            return False
        if tol is None:
            self.max_diff = max(self.max_diff, abs(a - b))
        return abs(a - b) <= (TOL if tol is None else tol)

    def text(self, unit: str) -> str:
        return (f"{self.sentences} sentences, {self.compared} {unit} compared, "
                f"max |diff| {self.max_diff:.2g}, {self.exempt_sentences} sentences "
                f"near-tie-exempt ({self.exempt_items} {unit} skipped), {self.resolved} "
                "with a near-tie decided the same way (compared in full)")


# --- running ---------------------------------------------------------------------------

def run_jsonl(cmd: List[str], n_lines: int, label: str) -> Tuple[Optional[List[dict]], float, str]:
    """Runs cmd, parses one JSON object a line. Returns (rows or None, seconds, error)."""
    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    t0 = time.time()
    try:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                           timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, time.time() - t0, f"{label}: could not run: {e}"
    secs = time.time() - t0
    if p.returncode != 0:
        tail = p.stderr.decode("utf-8", "replace").strip().splitlines()[-3:]
        return None, secs, f"{label}: exit status {p.returncode}: {' | '.join(tail)}"
    rows = []
    for i, line in enumerate(p.stdout.decode("utf-8", "replace").splitlines()):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            return None, secs, f"{label}: output line {i + 1} is not JSON ({e})"
    if len(rows) != n_lines:
        return None, secs, f"{label}: {len(rows)} JSON lines for {n_lines} input lines"
    for i, r in enumerate(rows):
        if r.get("index") != i:
            return None, secs, f"{label}: line {i + 1} has index {r.get('index')!r}"
    return rows, secs, ""


def make_inputs(work: str, n: int, tag: str = "") -> Tuple[str, str, int, int]:
    """n pairs from the sample plus edge cases (empty source / empty target),
    written to input{tag}.txt and pairs{tag}.tsv."""
    with open(SAMPLE, encoding="utf-8") as f:
        pairs = [ln.rstrip("\n").split("\t", 1) for ln in f][:n]
    srcs = [s for s, _ in pairs] + [""]
    score = [f"{s}\t{t}" for s, t in pairs] + ["\tLeer", "Empty\t"]
    src_path = os.path.join(work, f"input{tag}.txt")
    tsv_path = os.path.join(work, f"pairs{tag}.tsv")
    with open(src_path, "w", encoding="utf-8") as f:
        f.write("\n".join(srcs) + "\n")
    with open(tsv_path, "w", encoding="utf-8") as f:
        f.write("\n".join(score) + "\n")
    return src_path, tsv_path, len(srcs), len(score)


def make_model(path: str, args: List[str]) -> None:
    subprocess.run([PYTHON, MAKE_MODEL, "--out", path] + args, check=True)


# --- comparisons ---------------------------------------------------------------------------

def _close(a: Any, b: Any, tol: float = TOL) -> bool:
    return isinstance(a, (int, float)) and isinstance(b, (int, float)) and abs(a - b) <= tol


def compare_source_ids(ref: List[dict], cli: List[dict], keys: List[str]) -> Stats:
    st = Stats(sentences=len(ref))
    for i, (r, c) in enumerate(zip(ref, cli)):
        for k in keys:
            st.compared += 1
            if r[k] != c.get(k):
                st.problems.append(f"line {i + 1}: {k} ref {r[k]} cli {c.get(k)}")
    return st


def compare_entry(r: dict, c: Any, st: Stats) -> str:
    """One trace entry; '' when they agree. Experts must come in the same rank
    order, except that experts whose gates are within TOL (a near-tie inside
    the top k, which changes nothing but the order) may swap places."""
    if not isinstance(c, dict):
        return f"cli entry {c!r}"
    ce, cg = c.get("experts"), c.get("gates")
    if not isinstance(ce, list) or not isinstance(cg, list) or len(ce) != len(r["experts"]) \
            or len(cg) != len(ce):
        return f"experts ref {r['experts']} cli {ce} (gates {cg})"
    ref_gate = dict(zip(r["experts"], r["gates"]))
    if sorted(ce) != sorted(r["experts"]):
        return f"experts ref {r['experts']} cli {ce}"
    for pos, (e, g) in enumerate(zip(ce, cg)):
        if not st.close(g, ref_gate[e]):
            return f"gates ref {r['gates']} cli {cg} (experts {r['experts']} / {ce})"
        if e != r["experts"][pos] and not _close(ref_gate[e], r["gates"][pos]):
            return f"experts ref {r['experts']} cli {ce} (gates {r['gates']})"
    m = c.get("margin")
    if (r["margin"] is None) != (m is None) or (
            r["margin"] is not None and not _close(r["margin"], m, MARGIN_TOL)):
        return f"margin ref {r['margin']} cli {m}"
    return ""


def compare_trace_part(where: str, ref: List[List[dict]], cli: Any, positions: int,
                       upto: int, st: Stats) -> None:
    """Compares entries of positions < upto in every layer."""
    if not isinstance(cli, list) or len(cli) != len(ref):
        st.problems.append(f"{where}: {len(ref)} layers expected, cli has "
                           f"{len(cli) if isinstance(cli, list) else type(cli).__name__}")
        return
    for layer, (rl, cl) in enumerate(zip(ref, cli)):
        if not isinstance(cl, list) or len(cl) != positions:
            st.problems.append(f"{where} layer {layer}: {positions} positions expected, "
                               f"cli has {len(cl) if isinstance(cl, list) else cl!r}")
            continue
        for pos in range(min(upto, positions)):
            st.compared += 1
            problem = compare_entry(rl[pos], cl[pos], st)
            if problem:
                st.problems.append(f"{where} layer {layer} pos {pos}: {problem}")
        st.exempt_items += max(0, positions - upto)


def compare_trace(where: str, ref: dict, cli: Any, src_len: int, tgt_len: int,
                  dec_upto: int, enc_ok: bool, st: Stats) -> None:
    if not isinstance(cli, dict):
        st.problems.append(f"{where}: no trace")
        return
    if enc_ok:
        compare_trace_part(f"{where} encoder", ref["encoder"], cli.get("encoder"),
                           src_len, src_len, st)
    else:
        st.exempt_items += src_len * len(ref["encoder"])
    for part in ("decoder_self", "decoder_cross"):
        compare_trace_part(f"{where} {part}", ref[part], cli.get(part), tgt_len, dec_upto, st)


def same_routing(ref: Optional[dict], cli: Any) -> bool:
    """True when the CLI's trace picked the same experts (as sets) as the
    reference's at every layer and position: a router near-tie was then
    decided the same way and changes nothing."""
    if not isinstance(ref, dict) or not isinstance(cli, dict):
        return False
    for part in ("encoder", "decoder_self", "decoder_cross"):
        rl, cl = ref.get(part), cli.get(part)
        if not isinstance(cl, list) or len(cl) != len(rl):
            return False
        for r_layer, c_layer in zip(rl, cl):
            if not isinstance(c_layer, list) or len(c_layer) != len(r_layer):
                return False
            for re_, ce in zip(r_layer, c_layer):
                if not isinstance(ce, dict) or not isinstance(ce.get("experts"), list) \
                        or sorted(ce["experts"]) != sorted(re_["experts"]):
                    return False
    return True


def same_decisions(r: dict, c: dict) -> bool:
    """Translation: the CLI returned the same hypotheses (ids, in rank order)
    with the same routing as the reference, so a near-tie on the way was
    decided the same way."""
    chyps = c.get("hypotheses")
    if not isinstance(chyps, list) or len(chyps) != len(r["hypotheses"]):
        return False
    return all(isinstance(ch, dict) and rh["ids"] == ch.get("ids")
               and ("trace" not in rh or same_routing(rh["trace"], ch.get("trace")))
               for rh, ch in zip(r["hypotheses"], chyps))


def compare_scores(ref: List[dict], cli: List[dict]) -> Tuple[Stats, Stats]:
    lp, tr = Stats(sentences=len(ref)), Stats(sentences=len(ref))
    for i, (r, c) in enumerate(zip(ref, cli)):
        n = len(r["target_ids"])
        pos = r["router_near_tie_pos"]
        if pos is not None and "trace" in r and same_routing(r["trace"], c.get("trace")):
            lp.resolved += 1
            tr.resolved += 1
            pos = None
        upto = n if pos is None else pos
        if pos is not None:
            lp.exempt_sentences += 1
            tr.exempt_sentences += 1
        clp = c.get("token_logprobs")
        if not isinstance(clp, list) or len(clp) != n:
            lp.problems.append(f"line {i + 1}: {n} token_logprobs expected, cli has "
                               f"{len(clp) if isinstance(clp, list) else clp!r}")
            continue
        for t in range(upto):
            lp.compared += 1
            if not lp.close(r["token_logprobs"][t], clp[t]):
                lp.problems.append(f"line {i + 1} token {t}: ref {r['token_logprobs'][t]:.6f} "
                                   f"cli {clp[t]}")
        lp.exempt_items += n - upto
        if pos is None and not lp.close(r["log_prob"], c.get("log_prob"), n * TOL):
            lp.problems.append(f"line {i + 1}: log_prob ref {r['log_prob']:.6f} cli {c.get('log_prob')}")
        if "trace" in r:
            compare_trace(f"line {i + 1}", r["trace"], c.get("trace"), len(r["source_ids"]),
                          n, upto, pos != 0, tr)
    return lp, tr


def _same_hyp(where: str, rh: dict, ch: dict, st: Stats) -> None:
    if rh["ids"] != ch.get("ids"):
        st.problems.append(f"{where}: ids ref {rh['ids']} cli {ch.get('ids')}")
        return
    if rh["text"] != ch.get("text"):
        st.problems.append(f"{where}: text ref {rh['text']!r} cli {ch.get('text')!r}")
    n = len(rh["ids"])
    for k, tol in (("score", None), ("log_prob", n * TOL)):
        if not st.close(rh[k], ch.get(k), tol):
            st.problems.append(f"{where}: {k} ref {rh[k]:.6f} cli {ch.get(k)}")
    clp = ch.get("token_logprobs")
    if not isinstance(clp, list) or len(clp) != len(rh["token_logprobs"]) or not all(
            [st.close(a, b) for a, b in zip(rh["token_logprobs"], clp)]):
        st.problems.append(f"{where}: token_logprobs ref {rh['token_logprobs']} cli {clp}")


def compare_translations(ref: List[dict], cli: List[dict], greedy: bool) -> Tuple[Stats, Stats]:
    """Non-exempt sentences: identical hypothesis lists (ids, text), scores
    within TOL. A sentence with a near-tie is exempt only when the CLI
    decided differently (other hypotheses or other experts); then greedy
    compares the ids before the near-tie step, and beam skips the sentence
    (after a near-tie any hypothesis of the final list may differ)."""
    ids, tr = Stats(sentences=len(ref)), Stats(sentences=len(ref))
    for i, (r, c) in enumerate(zip(ref, cli)):
        step, kind = r["near_tie"]["step"], r["near_tie"]["kind"]
        chyps = c.get("hypotheses")
        if not isinstance(chyps, list) or not chyps:
            ids.problems.append(f"line {i + 1}: no hypotheses")
            continue
        if step is not None and same_decisions(r, c):
            ids.resolved += 1
            tr.resolved += 1
            step = None
        if step is not None:
            ids.exempt_sentences += 1
            tr.exempt_sentences += 1
            if not greedy:
                ids.exempt_items += len(r["hypotheses"])
                continue
            rh, ch = r["hypotheses"][0], chyps[0]
            ids.compared += 1
            if rh["ids"][:step] != (ch.get("ids") or [])[:step]:
                ids.problems.append(f"line {i + 1}: first {step} ids (before the near-tie) "
                                    f"ref {rh['ids'][:step]} cli {(ch.get('ids') or [])[:step]}")
            elif "trace" in rh:
                compare_trace(f"line {i + 1}", rh["trace"], ch.get("trace"),
                              len(r["source_ids"]), len(rh["ids"]), step,
                              not (step == 0 and kind == "router"), tr)
            continue
        if len(chyps) != len(r["hypotheses"]):
            ids.problems.append(f"line {i + 1}: {len(r['hypotheses'])} hypotheses expected, "
                                f"cli has {len(chyps)}")
            continue
        for j, (rh, ch) in enumerate(zip(r["hypotheses"], chyps)):
            ids.compared += 1
            before = len(ids.problems)
            _same_hyp(f"line {i + 1} hyp {j}", rh, ch, ids)
            if len(ids.problems) == before and "trace" in rh:
                compare_trace(f"line {i + 1} hyp {j}", rh["trace"], ch.get("trace"),
                              len(r["source_ids"]), len(rh["ids"]), len(rh["ids"]), True, tr)
    return ids, tr


# --- one model ------------------------------------------------------------------------------

@dataclass
class ModelRuns:
    name: str
    ref: Dict[str, List[dict]] = field(default_factory=dict)
    cli: Dict[str, Optional[List[dict]]] = field(default_factory=dict)
    errors: Dict[str, str] = field(default_factory=dict)
    times: Dict[str, Tuple[float, float]] = field(default_factory=dict)


def run_model(name: str, model_dir: str, cli_cmd: List[str], src_path: str, tsv_path: str,
              n_src: int, n_tsv: int, ref_extra: List[str],
              modes: Optional[List[str]] = None) -> ModelRuns:
    """Runs the reference and the CLI in every mode (or only `modes`)."""
    runs = ModelRuns(name)
    ref_cmd = [PYTHON, REFERENCE] + ref_extra
    jobs = [("score", ["--score", tsv_path, "--trace"], n_tsv)] + [
        (mode, ["--input", src_path, "--trace"] + extra, n_src) for mode, extra in TRANSLATE_RUNS]
    for mode, args, n in jobs:
        if modes is not None and mode not in modes:
            continue
        base = ["--model", model_dir, "--json"] + args
        ref, t_ref, err = run_jsonl(ref_cmd + base, n, f"reference {mode}")
        if ref is None:
            raise SystemExit(f"error: {name}: {err}")
        cli, t_cli, err = run_jsonl(cli_cmd + base, n, f"cli {mode}")
        runs.ref[mode], runs.cli[mode], runs.times[mode] = ref, cli, (t_ref, t_cli)
        if err:
            runs.errors[mode] = err
    return runs


def check_model(runs: ModelRuns, rep: Report) -> None:
    name = runs.name
    for mode, ref in runs.ref.items():
        cli = runs.cli[mode]
        label = f"{name} {mode}"
        if cli is None:
            rep.check(f"{label} run", [runs.errors[mode]], "the CLI gave no usable output")
            continue
        keys = ["source_ids", "target_ids"] if mode == "score" else ["source_ids"]
        st = compare_source_ids(ref, cli, keys)
        rep.check(f"{label} source ids", st.problems, f"{st.compared} sequences compared")
        if mode == "score":
            lp, tr = compare_scores(ref, cli)
            rep.check(f"{label} token log-probs", lp.problems, lp.text("tokens"))
        else:
            lp, tr = compare_translations(ref, cli, mode == "greedy")
            rep.check(f"{label} ids+scores", lp.problems, lp.text("hypotheses"))
        rep.check(f"{label} traces", tr.problems, tr.text("entries"))
        exempt = lp.exempt_sentences / max(1, lp.sentences)
        rep.check(f"{label} near-tie budget",
                  [f"{lp.exempt_sentences} of {lp.sentences} sentences exempt"]
                  if exempt > MAX_EXEMPT else [],
                  f"{lp.exempt_sentences}/{lp.sentences} exempt (limit {MAX_EXEMPT:.0%}); "
                  f"{lp.resolved} more had a near-tie decided the same way")


# --- self-test: the harness must catch deliberate errors ---------------------------------------

def _first_clean(ref: List[dict], key: Callable[[dict], bool]) -> int:
    return next(i for i, r in enumerate(ref) if key(r))


def _perturbations(runs: ModelRuns) -> Dict[str, Callable[[Dict[str, List[dict]]], None]]:
    """The perturbations that apply to the modes `runs` has."""
    sr = runs.ref["score"]
    si = _first_clean(sr, lambda r: r["router_near_tie_pos"] is None and len(r["target_ids"]) > 2)

    def clean(mode: str) -> int:
        return _first_clean(runs.ref[mode], lambda r: r["near_tie"]["step"] is None) \
            if mode in runs.ref else -1
    gi, bi, ni = clean("greedy"), clean("beam4"), clean("nbest4")

    def logprob(c):
        c["score"][si]["token_logprobs"][1] += 3 * TOL

    def source(c):
        c["greedy"][gi]["source_ids"][0] += 1

    def ids(c):
        h = c["greedy"][gi]["hypotheses"][0]
        h["ids"][0] = 3 if h["ids"][0] != 3 else 4

    def beam_score(c):
        c["beam4"][bi]["hypotheses"][0]["score"] -= 3 * TOL

    def nbest_order(c):
        h = c["nbest4"][ni]["hypotheses"]
        h[0], h[1] = h[1], h[0]

    def expert(c):
        e = c["score"][si]["trace"]["decoder_cross"][0][1]
        e["experts"] = e["experts"][::-1]

    def expert_set(c):
        layers = c["greedy"][gi]["hypotheses"][0]["trace"]["decoder_self"]
        e = layers[min(1, len(layers) - 1)][0]
        e["experts"][-1] = next(x for x in range(64) if x not in e["experts"])

    def gate(c):
        layers = c["greedy"][gi]["hypotheses"][0]["trace"]["encoder"]
        layers[min(1, len(layers) - 1)][0]["gates"][0] += 3 * TOL

    def missing_trace(c):
        del c["beam4"][bi]["hypotheses"][0]["trace"]

    # A near-tie sentence that the CLI decides the same way is compared in
    # full: an error there must be caught too.
    ti = next((i for i, r in enumerate(sr) if r["router_near_tie_pos"] is not None
               and same_routing(r.get("trace"), runs.cli["score"][i].get("trace"))), None)

    def tie_logprob(c):
        c["score"][ti]["token_logprobs"][-1] += 3 * TOL

    all_kinds = {"logprob": ("score", logprob), "source": ("greedy", source),
                 "ids": ("greedy", ids), "beam-score": ("beam4", beam_score),
                 "nbest-order": ("nbest4", nbest_order), "expert": ("score", expert),
                 "expert-set": ("greedy", expert_set), "gate": ("greedy", gate),
                 "missing-trace": ("beam4", missing_trace)}
    if ti is not None:
        all_kinds["tie-logprob"] = ("score", tie_logprob)
    return {kind: fn for kind, (mode, fn) in all_kinds.items() if mode in runs.ref}


def self_test(runs: ModelRuns, rep: Report) -> None:
    """Each perturbation of the CLI's (here: the reference's) output must fail."""
    for kind, perturb in _perturbations(runs).items():
        bad = ModelRuns(runs.name, runs.ref, copy.deepcopy(runs.cli), runs.errors, runs.times)
        perturb(bad.cli)
        quiet = Report()
        stdout = sys.stdout
        sys.stdout = open(os.devnull, "w")
        try:
            check_model(bad, quiet)
        finally:
            sys.stdout.close()
            sys.stdout = stdout
        rep.check(f"{runs.name} self-test perturbation '{kind}'",
                  [] if quiet.failed else ["the harness did not notice"],
                  f"caught ({quiet.failed} checks failed)")


# --- main -------------------------------------------------------------------------------------

def build_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Golden test: compare the C CLI with the "
                                "PyTorch reference on three random models and the "
                                "trained ones.")
    p.add_argument("--cli", help="path of the moa-translate binary under test")
    p.add_argument("--cli-is-reference", action="store_true",
                   help="run the reference (with another batch size) in place of the CLI: "
                        "checks the harness itself while there is no CLI")
    p.add_argument("--self-test", action="store_true",
                   help="--cli-is-reference, then check that deliberately perturbed "
                        "outputs make every kind of comparison fail")
    p.add_argument("--sentences", type=int, default=200,
                   help="pairs taken from tests/fixtures/sample.en-de.tsv (default 200)")
    p.add_argument("--work", default=os.path.join(REPO, "build", "golden"),
                   help="where models, inputs and outputs go (default build/golden)")
    p.add_argument("--models", default="",
                   help="comma-separated subset of model names to run (default: all): "
                        + ", ".join([m for m, _ in MODELS] + [t.name for t in TRAINED_MODELS])
                        + ", or an --extra-model's name")
    p.add_argument("--extra-model", action="append", default=[], metavar="DIR",
                   help="also check this model directory as it is (score and greedy on "
                        f"{EXTRA_SENTENCES} pairs; named after the directory); repeatable")
    return p


def trained_models(a: argparse.Namespace, wanted: List[str]) -> List[Tuple[TrainedModel, str]]:
    """(model, absolute directory) of the trained models to check, in order
    (only `wanted` ones when given); prints a line for an optional one that
    does not exist yet."""
    out: List[Tuple[TrainedModel, str]] = []
    for t in TRAINED_MODELS:
        path = os.path.join(REPO, t.path)
        if wanted and t.name not in wanted:
            continue
        if not os.path.isfile(os.path.join(path, "config.json")):
            if t.optional:
                print(f"--     {t.name}: {t.path}/config.json not found: skipped "
                      "(not trained/exported yet)")
                continue
        out.append((t, path))
    names = {t.name for t in TRAINED_MODELS} | {m for m, _ in MODELS}
    for d in a.extra_model:
        name = base = "extra-" + os.path.basename(os.path.normpath(d))
        n = 2
        while name in names:
            name, n = f"{base}-{n}", n + 1
        names.add(name)
        if not wanted or name in wanted:
            out.append((TrainedModel(name, d, list(EXTRA_MODES), EXTRA_SENTENCES),
                        os.path.abspath(d)))
    return out


def main(argv: Optional[List[str]] = None) -> int:
    a = build_arg_parser().parse_args(argv)
    if a.self_test:
        a.cli_is_reference = True
    if not a.cli and not a.cli_is_reference:
        print("error: give --cli PATH (or --cli-is-reference / --self-test)", file=sys.stderr)
        return 2
    if a.cli_is_reference:
        cli_cmd = [PYTHON, REFERENCE, "--batch", "7"]
    else:
        cli_path = os.path.abspath(a.cli)
        if not os.access(cli_path, os.X_OK):
            print(f"error: {a.cli}: not an executable", file=sys.stderr)
            return 2
        cli_cmd = [cli_path]
    os.makedirs(a.work, exist_ok=True)
    src_path, tsv_path, n_src, n_tsv = make_inputs(a.work, a.sentences)
    wanted = [m for m in a.models.split(",") if m]
    rep = Report()
    t_start = time.time()

    def one(name: str, model_dir: str, inputs: Tuple[str, str, int, int],
            modes: Optional[List[str]]) -> None:
        runs = run_model(name, model_dir, cli_cmd, *inputs, [], modes)
        times = ", ".join(f"{m} {r:.1f}/{c:.1f}" for m, (r, c) in runs.times.items())
        print(f"--     {name}: seconds reference/cli: {times}")
        check_model(runs, rep)
        if a.self_test:
            self_test(runs, rep)

    for name, args in MODELS:
        if wanted and name not in wanted:
            continue
        model_dir = os.path.join(a.work, name)
        make_model(model_dir, args)
        one(name, model_dir, (src_path, tsv_path, n_src, n_tsv), None)
    for t, model_dir in trained_models(a, wanted):
        n = min(t.sentences or a.sentences, a.sentences)
        inputs = (src_path, tsv_path, n_src, n_tsv) if n == a.sentences \
            else make_inputs(a.work, n, f"-{n}")
        print(f"--     {t.name}: trained model {model_dir}, {n} pairs, "
              f"modes {' '.join(t.modes)}")
        one(t.name, model_dir, inputs, t.modes)
    print(f"--     total {time.time() - t_start:.1f} s")
    print(f"{rep.passed} passed, {rep.failed} failed")
    return 1 if rep.failed else 0


if __name__ == "__main__":
    sys.exit(main())
