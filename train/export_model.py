#!/usr/bin/python3
"""Checkpoint -> model directory (docs/moa-spec.md §3), and the evaluation
stage of train/make_model.sh.

    # the four files; F16 weights by default
    export_model.py export --checkpoint build/model/run/checkpoint_last.pt \\
        --spm build/model/spm.model --vocab build/model/vocab.txt --out weights/moa-en-de

    # C engine scores of an F16 and an F32 export on N valid pairs: max difference
    export_model.py f16check --checkpoint ... --spm ... --vocab ... --work build/model/f16check

    # translate valid and test with the C CLI (beam 4), BLEU/chrF/placeholders
    # (train/evaluate.py), expert load on test (--trace); writes config.json
    # `metrics`, WORK/metrics.json and the marked section of train/RESULTS.md
    export_model.py evaluate --model weights/moa-en-de --work build/model/eval
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import data as datamod  # noqa: E402
import moa_io  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLI = os.path.join(REPO, "build", "release", "moa-translate")
RESULTS = os.path.join(REPO, "train", "RESULTS.md")
BEGIN, END = "<!-- metrics:begin (written by export_model.py evaluate) -->", "<!-- metrics:end -->"
DEFAULT_DESCRIPTION = (
    "English->German Mixture-of-Attention-heads transformer (post-norm) for software "
    "user-interface strings, trained from scratch by train/make_model.sh on the "
    "Debian 12 gettext-catalog corpus (shared/corpus). See README.md and NOTICE.")


# --- export ---------------------------------------------------------------------------------

def checkpoint_tensors(path: str) -> tuple:
    """(config, float32 numpy tensors with the spec's names) of a train.py checkpoint."""
    import torch
    state = torch.load(path, map_location="cpu")
    cfg = dict(state["config"])
    tensors = {k: v.detach().float().numpy() for k, v in state["model"].items()}
    if cfg.get("share_embeddings", True):
        tensors.pop("decoder.embed_tokens.weight", None)
        tensors.pop("decoder.output_projection.weight", None)
    info = {"updates": state["scheduler"]["step"], "epoch": state["data"]["epoch"],
            "train_seconds": round(state["train_seconds"], 1)}
    return cfg, tensors, info


def export(checkpoint: str, spm: str, vocab_txt: str, out: str, dtype: str = "f16",
           name: str = "moa-en-de", description: str = DEFAULT_DESCRIPTION,
           keep_metrics: bool = True) -> Dict[str, Any]:
    cfg, tensors, info = checkpoint_tensors(checkpoint)
    vocab = moa_io.read_vocab(vocab_txt, cfg["vocab_size"])
    old = {}
    cpath = os.path.join(out, moa_io.CONFIG_FILE)
    if keep_metrics and os.path.exists(cpath):
        with open(cpath, encoding="utf-8") as f:
            old = json.load(f).get("metrics", {})
    cfg.update(name=name, description=description, source_lang="en", target_lang="de")
    cfg["metrics"] = dict(old)
    cfg["metrics"]["training"] = info
    tmp = out.rstrip("/") + ".tmp"
    moa_io.save_model_dir(tmp, cfg, tensors, vocab, spm, dtype)
    if os.path.isdir(out):
        for fname in (moa_io.CONFIG_FILE, moa_io.WEIGHTS_FILE, moa_io.VOCAB_FILE,
                      moa_io.SPM_FILE):
            os.replace(os.path.join(tmp, fname), os.path.join(out, fname))
        os.rmdir(tmp)
    else:
        os.replace(tmp, out)
    size = os.path.getsize(os.path.join(out, moa_io.WEIGHTS_FILE))
    print(f"export: {out} ({moa_io.normalize_dtype(dtype)}, {size / 1e6:.1f} MB, "
          f"{sum(t.size for t in tensors.values())} parameters)")
    return cfg


# --- C engine ---------------------------------------------------------------------------------

def run_cli(args: List[str], stdin: Optional[str] = None) -> str:
    cmd = [CLI] + args
    r = subprocess.run(cmd, input=stdin, capture_output=True, text=True, encoding="utf-8")
    if r.returncode != 0:
        raise SystemExit(f"error: {' '.join(cmd)} exited {r.returncode}: {r.stderr[-2000:]}")
    return r.stdout


def f16check(checkpoint: str, spm: str, vocab_txt: str, work: str, pairs: int,
             corpus: Optional[str], threads: int) -> Dict[str, Any]:
    """Scores `pairs` valid pairs with the C engine on an F32 and an F16 export."""
    os.makedirs(work, exist_ok=True)
    tsv = os.path.join(work, "pairs.tsv")
    with open(tsv, "w", encoding="utf-8") as f:
        for s, t in datamod.read_pairs(datamod.split_path("valid", corpus), pairs):
            f.write(f"{s}\t{t}\n")
    scores = {}
    d32 = os.path.join(work, "f32")
    for dt in ("f32", "f16"):
        d = os.path.join(work, dt)
        export(checkpoint, spm, vocab_txt, d, dt, keep_metrics=False)
        out = run_cli(["--model", d, "--score", tsv, "--threads", str(threads)])
        scores[dt] = [json.loads(ln) for ln in out.splitlines() if ln.strip()]
    diffs = np.concatenate([np.abs(np.array(a["token_logprobs"]) - np.array(b["token_logprobs"]))
                            for a, b in zip(scores["f32"], scores["f16"])])
    sent_diff = max(abs(a["log_prob"] - b["log_prob"])
                    for a, b in zip(scores["f32"], scores["f16"]))
    tok_diff = float(diffs.max())
    res = {"pairs": len(scores["f32"]), "tokens": int(len(diffs)),
           "max_abs_token_logprob_diff": tok_diff,
           "median_abs_token_logprob_diff": float(np.median(diffs)),
           "p99_abs_token_logprob_diff": float(np.quantile(diffs, 0.99)),
           "tokens_over_1e-3": int((diffs > 1e-3).sum()),
           "max_abs_sentence_logprob_diff": float(sent_diff), "within_1e-3": tok_diff <= 1e-3,
           "f32_model": d32}
    with open(os.path.join(work, "f16check.json"), "w") as f:
        json.dump(res, f, indent=1)
    print(f"f16check: {json.dumps(res)}")
    return res


# --- evaluation --------------------------------------------------------------------------------

def _evaluate_module():
    try:
        import evaluate
        return evaluate
    except ImportError:
        return None


def expert_load(trace_lines: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Share of token->expert assignments per expert for every MoA module,
    from the CLI's --trace JSON (best hypothesis of each sentence)."""
    counts: Dict[str, np.ndarray] = {}
    for rec in trace_lines:
        if "hypotheses" not in rec or not rec["hypotheses"]:
            continue
        tr = rec["hypotheses"][0].get("trace") or {}
        for kind in ("encoder", "decoder_self", "decoder_cross"):
            for layer, entries in enumerate(tr.get(kind, [])):
                key = f"{kind}.{layer}"
                for e in entries:
                    for ex in e["experts"]:
                        c = counts.setdefault(key, np.zeros(0, dtype=np.int64))
                        if ex >= len(c):
                            c = np.concatenate([c, np.zeros(ex + 1 - len(c), dtype=np.int64)])
                        c[ex] += 1
                        counts[key] = c
    out = {}
    for key, c in counts.items():
        share = c / max(1, c.sum())
        out[key] = {"share": [round(float(v), 4) for v in share],
                    "max_share": round(float(share.max()), 4),
                    "min_share": round(float(share.min()), 4)}
    return out


def evaluate(model_dir: str, work: str, corpus: Optional[str], threads: int, beam: int,
             batch: int, results_md: str, extra: Dict[str, Any]) -> Dict[str, Any]:
    ev = _evaluate_module()
    os.makedirs(work, exist_ok=True)
    metrics: Dict[str, Any] = {}
    load = None
    lexicon = None
    if ev is not None:
        # The floor the model must clearly beat (issue): copying the source,
        # and a greedy word-by-word lookup learned from training pairs.
        train_path = datamod.split_path("train", corpus)
        lexicon = ev.build_lexicon(ev.iter_train_pairs(train_path, 100_000))
    for split in ("valid", "test"):
        pairs = list(datamod.read_pairs(datamod.split_path(split, corpus)))
        srcs, refs = [s for s, _ in pairs], [t for _, t in pairs]
        src_file = os.path.join(work, f"{split}.en")
        with open(src_file, "w", encoding="utf-8") as f:
            f.write("".join(s + "\n" for s in srcs))
        t0 = time.time()
        args = ["--model", model_dir, "--beam", str(beam), "--threads", str(threads),
                "--batch", str(batch), "--input", src_file]
        if split == "test":
            out = run_cli(args + ["--trace"])
            recs = [json.loads(ln) for ln in out.splitlines() if ln.strip()]
            recs.sort(key=lambda r: r["index"])
            hyps = [(r["hypotheses"][0]["text"] if r.get("hypotheses") else "") for r in recs]
            load = expert_load(recs)
        else:
            hyps = run_cli(args).split("\n")[:len(srcs)]
        secs = time.time() - t0
        with open(os.path.join(work, f"{split}.hyp.de"), "w", encoding="utf-8") as f:
            f.write("".join(h + "\n" for h in hyps))
        m: Dict[str, Any] = {"sentences": len(srcs), "beam": beam,
                             "translate_seconds": round(secs, 1)}
        if ev is None:
            m["note"] = "train/evaluate.py missing: no BLEU/chrF"
        else:
            m["bleu"] = round(float(ev.corpus_bleu(hyps, refs)), 2)
            m["chrf"] = round(float(ev.corpus_chrf(hyps, refs)), 2)
            m["placeholder_preservation"] = round(float(ev.placeholder_preservation(srcs, hyps)), 4)
            base = {"copy": ev.copy_baseline(srcs), "word_lookup": ev.lexicon_baseline(srcs, lexicon)}
            m["baselines"] = {name: {"bleu": round(float(ev.corpus_bleu(h, refs)), 2),
                                     "chrf": round(float(ev.corpus_chrf(h, refs)), 2),
                                     "placeholder_preservation":
                                         round(float(ev.placeholder_preservation(srcs, h)), 4)}
                              for name, h in base.items()}
        metrics[split] = m
        print(f"evaluate: {split}: {json.dumps(m)}", flush=True)
    f16 = extra.get("f16_check")
    if ev is not None and f16 and os.path.isdir(f16.get("f32_model", "")):
        # What F16 storage costs in quality: valid BLEU/chrF of the F32 export.
        pairs = list(datamod.read_pairs(datamod.split_path("valid", corpus)))
        refs = [t for _, t in pairs]
        hyps = run_cli(["--model", f16["f32_model"], "--beam", str(beam), "--threads",
                        str(threads), "--batch", str(batch), "--input",
                        os.path.join(work, "valid.en")]).split("\n")[:len(refs)]
        f16["valid_bleu_f32"] = round(float(ev.corpus_bleu(hyps, refs)), 2)
        f16["valid_chrf_f32"] = round(float(ev.corpus_chrf(hyps, refs)), 2)
        f16["valid_bleu_f16"] = metrics["valid"].get("bleu")
        f16["valid_chrf_f16"] = metrics["valid"].get("chrf")
        print(f"evaluate: valid with the F32 export: BLEU {f16['valid_bleu_f32']}, "
              f"chrF {f16['valid_chrf_f32']}", flush=True)
    metrics.update(extra)
    metrics["engine"] = "build/release/moa-translate"
    metrics["bleu_tokenizer"] = "13a (sacreBLEU-compatible, train/evaluate.py)"
    cpath = os.path.join(model_dir, moa_io.CONFIG_FILE)
    with open(cpath, encoding="utf-8") as f:
        cfg = json.load(f)
    cfg.setdefault("metrics", {}).update(metrics)
    moa_io.write_config(cpath, cfg)
    with open(os.path.join(work, "metrics.json"), "w") as f:
        json.dump({"metrics": cfg["metrics"], "expert_load_test": load}, f, indent=1)
    if results_md:
        write_results(results_md, cfg, load)
    return cfg["metrics"]


def write_results(path: str, cfg: Dict[str, Any], load: Optional[Dict[str, Any]]) -> None:
    m = cfg.get("metrics", {})
    lines = [BEGIN, "", f"Final model `{cfg.get('name')}` ({time.strftime('%Y-%m-%d %H:%M')}, "
             f"written by `train/export_model.py evaluate`):", ""]
    tr = m.get("training", {})
    if tr:
        lines.append(f"- training: {tr.get('updates')} updates, epoch {tr.get('epoch')}, "
                     f"{tr.get('train_seconds')} s of training time")
    lines += ["", "| split | sentences | BLEU | chrF | placeholders kept | beam | seconds (C CLI) |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for split in ("valid", "test"):
        s = m.get(split, {})
        lines.append(f"| {split} | {s.get('sentences')} | {s.get('bleu', 'n/a')} | "
                     f"{s.get('chrf', 'n/a')} | {s.get('placeholder_preservation', 'n/a')} | "
                     f"{s.get('beam')} | {s.get('translate_seconds')} |")
        for name, b in s.get("baselines", {}).items():
            lines.append(f"| {split}, baseline: {name.replace('_', ' ')} | {s.get('sentences')} | "
                         f"{b['bleu']} | {b['chrf']} | {b['placeholder_preservation']} | | |")
    f16 = m.get("f16_check")
    if f16:
        lines += ["", f"- F16 vs F32 (C engine `--score`, {f16.get('pairs')} valid pairs, "
                  f"{f16.get('tokens')} tokens): max |Δ token log-prob| = "
                  f"{f16.get('max_abs_token_logprob_diff'):.2e}, max |Δ sentence log-prob| = "
                  f"{f16.get('max_abs_sentence_logprob_diff'):.2e}; median "
                  f"{f16.get('median_abs_token_logprob_diff', float('nan')):.2e}, p99 "
                  f"{f16.get('p99_abs_token_logprob_diff', float('nan')):.2e}, "
                  f"{f16.get('tokens_over_1e-3', 'n/a')} tokens over 1e-3"]
        if "valid_bleu_f32" in f16:
            lines.append(f"- valid BLEU/chrF, F16 export {f16.get('valid_bleu_f16')}/"
                         f"{f16.get('valid_chrf_f16')} vs F32 export {f16['valid_bleu_f32']}/"
                         f"{f16['valid_chrf_f32']}")
    if load:
        lines += ["", "Expert load on the test set (share of token→expert assignments, best "
                  "beam hypothesis, from `--trace`):", "",
                  "| module | shares per expert | min | max |", "| --- | --- | --- | --- |"]
        for key in sorted(load, key=lambda k: (k.split(".")[0], int(k.split(".")[1]))):
            v = load[key]
            lines.append(f"| {key} | {' '.join(f'{x:.3f}' for x in v['share'])} | "
                         f"{v['min_share']:.3f} | {v['max_share']:.3f} |")
    lines += ["", END]
    block = "\n".join(lines)
    text = open(path, encoding="utf-8").read() if os.path.exists(path) else "# Training results\n\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        text = head + block + tail
    else:
        text = text.rstrip("\n") + "\n\n## Final metrics\n\n" + block + "\n"
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description="Export a train.py checkpoint as a model "
                                "directory (docs/moa-spec.md §3) and evaluate it with the "
                                "C engine.")
    sub = p.add_subparsers(dest="cmd", required=True)

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--checkpoint", required=True, help="train.py checkpoint_last.pt")
        q.add_argument("--spm", required=True, help="sentencepiece.model")
        q.add_argument("--vocab", required=True, help="vocab.txt")

    e = sub.add_parser("export", help="write config.json, model.safetensors, vocab.txt, "
                       "sentencepiece.model")
    common(e)
    e.add_argument("--out", required=True, help="model directory to (re)write")
    e.add_argument("--dtype", default="f16", help="f32, f16 or bf16 (default f16)")
    e.add_argument("--name", default="moa-en-de")
    e.add_argument("--description", default=DEFAULT_DESCRIPTION)
    c = sub.add_parser("f16check", help="C engine --score on an F32 and an F16 export")
    common(c)
    c.add_argument("--work", required=True)
    c.add_argument("--pairs", type=int, default=200, help="valid pairs scored (default 200)")
    for q in (c,):
        q.add_argument("--corpus", help="corpus directory (default $MOA_CORPUS or ../shared/corpus)")
        q.add_argument("--threads", type=int, default=2)
    v = sub.add_parser("evaluate", help="translate valid/test with the C CLI and record metrics")
    v.add_argument("--model", required=True, help="model directory")
    v.add_argument("--work", required=True, help="where translations and metrics.json go")
    v.add_argument("--corpus", help="corpus directory (default $MOA_CORPUS or ../shared/corpus)")
    v.add_argument("--threads", type=int, default=2)
    v.add_argument("--beam", type=int, default=4)
    v.add_argument("--batch", type=int, default=64)
    v.add_argument("--results", default=RESULTS, help="markdown file whose marked section "
                   "gets the metrics (default train/RESULTS.md; '' for none)")
    v.add_argument("--f16check", help="f16check.json to record in the metrics")
    a = p.parse_args(argv)
    if a.cmd == "export":
        export(a.checkpoint, a.spm, a.vocab, a.out, a.dtype, a.name, a.description)
    elif a.cmd == "f16check":
        f16check(a.checkpoint, a.spm, a.vocab, a.work, a.pairs, a.corpus, a.threads)
    else:
        extra = {}
        if a.f16check and os.path.exists(a.f16check):
            with open(a.f16check) as f:
                extra["f16_check"] = json.load(f)
        evaluate(a.model, a.work, a.corpus, a.threads, a.beam, a.batch, a.results, extra)
    return 0


if __name__ == "__main__":
    sys.exit(main())
