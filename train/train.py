#!/usr/bin/python3
"""Trains a MoA encoder-decoder (train/moa_reference.py) on the tokenised
corpus cache of train/data.py.

- Loss: label-smoothed cross-entropy (pads ignored) plus, for every MoA layer,
  the paper's auxiliary router losses: switch loss E * sum_e f_e * P_e (f_e =
  share of the token->expert assignments that went to e, P_e = mean router
  probability of e, real tokens only) and z-loss mean(logsumexp(logits)^2).
- Adam (0.9, 0.98), linear warm-up then inverse-square-root decay, gradient
  clipping, dropout.
- Batches by token count, bucketed by length; order deterministic given --seed.
- Logs to stdout and WORK/log.jsonl: train loss, valid loss, valid BLEU
  (greedy, reference decoder, on a valid subset), expert load per MoA module.
- Checkpoints WORK/checkpoint_last.pt every few minutes (temp file + rename)
  and resumes from it: model, optimizer, schedule, RNG states, data position,
  accumulated training seconds. --time-budget-minutes counts training time
  only (sum of step times, across processes).
- Continuation (--init-from DIR): starts from the weights of an exported model
  directory (config.json + model.safetensors) instead of random ones, with a
  fresh Adam. Its update count, epoch and training seconds (config.json ->
  metrics.training) carry on, so the learning-rate schedule continues where
  that model stopped (times a linear re-warm-up over --init-warmup updates,
  because Adam's moment estimates start from zero) and the log's clock keeps
  counting from that model's minute. A checkpoint in WORK wins over it.
- Pausing: SIGTERM or SIGINT lets the update in progress finish, writes the
  checkpoint and exits with status 75; the same command resumes from it with
  the same results per update as an uninterrupted run.

    /usr/bin/python3 train/train.py --data build/model/data --work build/model/run \\
        --spm build/model/spm.model --vocab build/model/vocab.txt --time-budget-minutes 120
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported

import argparse
import json
import math
import random
import signal
import sys
import time
from typing import Any, Dict, List, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import data as datamod  # noqa: E402
import moa_reference as ref  # noqa: E402

CKPT = "checkpoint_last.pt"
PAUSED = 75  # exit status after SIGTERM/SIGINT: checkpoint written, rerun to resume
ARCH_KEYS = ["d_model", "encoder_layers", "decoder_layers", "ffn_dim", "num_experts",
             "top_k", "head_dim", "activation", "normalize_before"]


def build_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Train a Mixture-of-Attention-heads translation model "
                    "(docs/moa-spec.md) on a train/data.py token cache. Resumes "
                    "from WORK/checkpoint_last.pt when it exists.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("data and files")
    g.add_argument("--data", required=True, help="token cache directory (train/data.py cache)")
    g.add_argument("--work", required=True,
                   help="run directory: checkpoint_last.pt, log.jsonl, done marker")
    g.add_argument("--spm", required=True, help="sentencepiece.model (for BLEU decoding)")
    g.add_argument("--vocab", required=True, help="vocab.txt; its line count is vocab_size")
    g.add_argument("--corpus", help="corpus directory for valid references "
                   "(default: $MOA_CORPUS or ../shared/corpus)")
    g.add_argument("--init-from", metavar="DIR",
                   help="start from this exported model directory's weights (fresh "
                        "optimizer; its metrics.training carries on); ignored when "
                        "WORK has a checkpoint to resume")
    g.add_argument("--init-warmup", type=int, default=200,
                   help="with --init-from: updates of linear re-warm-up of the learning "
                        "rate (the schedule itself continues from the model's update count)")
    g.add_argument("--max-len", type=int, default=200,
                   help="skip training pairs with a side longer than this many tokens")
    g.add_argument("--save-fairseq", metavar="PATH",
                   help="also write the final model as a checkpoint in the paper's "
                        "fairseq layout (train/fairseq_ckpt.py)")

    g = p.add_argument_group("model (ignored when resuming: the checkpoint's win)")
    g.add_argument("--d-model", type=int, default=256, help="model width d")
    g.add_argument("--encoder-layers", type=int, default=3, help="encoder layers")
    g.add_argument("--decoder-layers", type=int, default=3, help="decoder layers")
    g.add_argument("--ffn-dim", type=int, default=1024, help="feed-forward width")
    g.add_argument("--experts", type=int, default=8, help="attention experts E per MoA layer")
    g.add_argument("--top-k", type=int, default=2, help="experts used per token k")
    g.add_argument("--head-dim", type=int, default=64, help="head width h")
    g.add_argument("--activation", choices=["relu", "gelu"], default="relu",
                   help="feed-forward activation")
    g.add_argument("--pre-norm", action="store_true",
                   help="pre-norm layers (default: post-norm, the paper's setting)")

    g = p.add_argument_group("optimisation")
    g.add_argument("--seed", type=int, default=1,
                   help="seeds torch, numpy, random and the batch order")
    g.add_argument("--max-tokens", type=int, default=4096,
                   help="padded tokens per batch (sentences x longest side)")
    g.add_argument("--max-sentences", type=int, default=0,
                   help="most sentences per batch (0: no limit)")
    g.add_argument("--lr", type=float, default=1.5e-3, help="peak learning rate")
    g.add_argument("--warmup", type=int, default=1000,
                   help="linear warm-up updates, then lr * sqrt(warmup/step)")
    g.add_argument("--adam-betas", type=float, nargs=2, default=[0.9, 0.98],
                   help="Adam beta1 beta2")
    g.add_argument("--adam-eps", type=float, default=1e-8, help="Adam epsilon")
    g.add_argument("--weight-decay", type=float, default=0.0, help="Adam weight decay")
    g.add_argument("--clip-norm", type=float, default=1.0,
                   help="clip the gradient norm to this (0: off)")
    g.add_argument("--label-smoothing", type=float, default=0.1,
                   help="label smoothing epsilon")
    g.add_argument("--dropout", type=float, default=0.1, help="residual/embedding dropout")
    g.add_argument("--attention-dropout", type=float, default=0.0,
                   help="dropout on attention probabilities")
    g.add_argument("--activation-dropout", type=float, default=0.0,
                   help="dropout after the feed-forward activation")
    g.add_argument("--switch-loss", type=float, default=0.01,
                   help="coefficient of the switch (load-balancing) loss, per MoA layer")
    g.add_argument("--z-loss", type=float, default=0.001,
                   help="coefficient of the router z-loss, per MoA layer")

    g = p.add_argument_group("duration, checkpoints, logging")
    g.add_argument("--time-budget-minutes", type=float, default=0,
                   help="stop when the accumulated training time (sum of step times, "
                        "kept in the checkpoint) reaches this; 0: no limit")
    g.add_argument("--max-updates", type=int, default=0, help="stop after this many "
                   "updates (0: no limit)")
    g.add_argument("--max-epochs", type=int, default=0,
                   help="stop after this many passes over the data (0: no limit)")
    g.add_argument("--cooldown-minutes", type=float, default=0,
                   help="over the last this many minutes of --time-budget-minutes, decay the "
                        "learning rate linearly to 0 (0: no decay); a paused or finished run "
                        "can be resumed with a larger budget and a cool-down")
    g.add_argument("--checkpoint-minutes", type=float, default=5,
                   help="save checkpoint_last.pt every this many wall-clock minutes")
    g.add_argument("--snapshot-minutes", type=float, default=0,
                   help="also save the model's weights alone as WORK/snapshots/"
                        "snapshot_<update>.pt every this many training minutes, for "
                        "checkpoint averaging (train/average_checkpoints.py); 0: never")
    g.add_argument("--keep-snapshots", type=int, default=10,
                   help="keep only the newest this many snapshots")
    g.add_argument("--log-every", type=int, default=50, help="train log line every N updates")
    g.add_argument("--valid-minutes", type=float, default=10,
                   help="valid loss and expert load every this many training minutes")
    g.add_argument("--bleu-minutes", type=float, default=20,
                   help="greedy valid BLEU every this many training minutes (0: only at the end)")
    g.add_argument("--bleu-sentences", type=int, default=300,
                   help="valid sentences decoded for BLEU")
    g.add_argument("--no-final-eval", action="store_true",
                   help="skip the valid loss/BLEU at the end (pilot runs)")
    g.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    return p


# --- model ---------------------------------------------------------------------------------

def model_config(a: argparse.Namespace, vocab_size: int) -> Dict[str, Any]:
    return {"d_model": a.d_model, "encoder_layers": a.encoder_layers,
            "decoder_layers": a.decoder_layers, "ffn_dim": a.ffn_dim,
            "num_experts": a.experts, "top_k": a.top_k, "head_dim": a.head_dim,
            "activation": a.activation, "normalize_before": a.pre_norm,
            "attention_bias": False, "vocab_size": vocab_size, "share_embeddings": True,
            "scale_embedding": True, "max_positions": 1024, "layernorm_eps": 1e-5,
            "bos_id": 0, "pad_id": 1, "eos_id": 2, "unk_id": 3, "decoder_start_id": 2,
            "source_lang": "en", "target_lang": "de"}


def build_model(cfg: Dict[str, Any], a: argparse.Namespace) -> ref.MoATransformer:
    return ref.MoATransformer(ref.MoAConfig.from_dict(cfg), dropout=a.dropout,
                              attention_dropout=a.attention_dropout,
                              activation_dropout=a.activation_dropout)


def init_weights(model: nn.Module, cfg: Dict[str, Any]) -> None:
    """fairseq-like: embeddings N(0, d^-1/2) with a zero pad row, Xavier for
    linear and expert matrices, small random router, zero biases, LN = 1/0."""
    d = cfg["d_model"]
    for name, p in model.named_parameters():
        if name.endswith("embed_tokens.weight"):
            nn.init.normal_(p, 0.0, d ** -0.5)
            with torch.no_grad():
                p[cfg["pad_id"]].zero_()
        elif name.endswith("w_gate"):
            nn.init.normal_(p, 0.0, 0.02)
        elif name.endswith("experts.w"):          # (E, in, out): Xavier per expert
            fan_in, fan_out = p.shape[1], p.shape[2]
            nn.init.normal_(p, 0.0, math.sqrt(2.0 / (fan_in + fan_out)))
        elif "layer_norm" in name:
            nn.init.ones_(p) if name.endswith("weight") else nn.init.zeros_(p)
        elif name.endswith(".bias"):
            nn.init.zeros_(p)
        elif p.dim() == 2:
            nn.init.xavier_uniform_(p)


def moa_modules(model: ref.MoATransformer) -> List[str]:
    cfg = model.cfg
    return ([f"encoder.{i}.self" for i in range(cfg.encoder_layers)]
            + [f"decoder.{i}.self" for i in range(cfg.decoder_layers)]
            + [f"decoder.{i}.cross" for i in range(cfg.decoder_layers)])


def flat_routings(routings: Dict[str, List[ref.Routing]]) -> List[ref.Routing]:
    return routings["encoder"] + routings["decoder_self"] + routings["decoder_cross"]


def router_losses(routings: List[ref.Routing], num_experts: int):
    """Sum over MoA layers of the switch loss and the z-loss (real tokens only)."""
    switch = torch.zeros(())
    z = torch.zeros(())
    for r in routings:
        probs, logits = r.probs, r.logits
        if r.real is not None:
            m = r.real
            probs, logits, experts = probs[m], logits[m], r.experts[m]
        else:
            probs = probs.reshape(-1, num_experts)
            logits = logits.reshape(-1, num_experts)
            experts = r.experts.reshape(-1, r.experts.shape[-1])
        freq = torch.bincount(experts.reshape(-1), minlength=num_experts).float()
        f = freq / freq.sum().clamp(min=1)
        pm = probs.sum(0)
        pm = pm / pm.sum().clamp(min=1e-9)
        switch = switch + num_experts * (f * pm).sum()
        z = z + torch.logsumexp(logits, dim=-1).pow(2).mean()
    return switch, z


def expert_counts(routings: List[ref.Routing], num_experts: int) -> np.ndarray:
    """(modules, E) counts of token->expert assignments (real tokens)."""
    rows = []
    for r in routings:
        ex = r.experts[r.real] if r.real is not None else r.experts.reshape(-1, r.experts.shape[-1])
        rows.append(torch.bincount(ex.reshape(-1), minlength=num_experts).numpy())
    return np.stack(rows)


def smoothed_loss(logits: torch.Tensor, gold: torch.Tensor, eps: float, pad: int):
    """fairseq's label-smoothed cross-entropy, summed over non-pad tokens.
    Returns (loss, nll)."""
    lprobs = torch.log_softmax(logits.float(), dim=-1).view(-1, logits.shape[-1])
    gold = gold.reshape(-1)
    keep = gold != pad
    lprobs, gold = lprobs[keep], gold[keep]
    nll = -lprobs.gather(1, gold[:, None])[:, 0]
    smooth = -lprobs.sum(-1)
    eps_i = eps / (lprobs.shape[-1] - 1)
    loss = (1.0 - eps - eps_i) * nll + eps_i * smooth
    return loss.sum(), nll.sum()


def lr_at(step: int, a_lr: float, warmup: int, init_step: int = 0,
          init_warmup: int = 0) -> float:
    """Linear warm-up to a_lr over `warmup` updates, then a_lr*sqrt(warmup/step);
    a run continued from a model at update init_step is re-warmed linearly over
    init_warmup updates on top of that."""
    step = max(step, 1)
    if step < warmup:
        lr = a_lr * step / warmup
    else:
        lr = a_lr * math.sqrt(warmup / step)
    if init_warmup > 0 and step - init_step < init_warmup:
        lr *= max(step - init_step, 1) / init_warmup
    return lr


def cooldown_factor(train_secs: float, budget_secs: float, cooldown_secs: float) -> float:
    """1, then over the last cooldown_secs of the training-time budget a linear
    decay to 0 at the budget's end (the 'decay' of a warm-up/stable/decay
    schedule): a multiplier on lr_at's learning rate."""
    if cooldown_secs <= 0 or not math.isfinite(budget_secs):
        return 1.0
    return min(1.0, max(0.0, (budget_secs - train_secs) / cooldown_secs))


def init_from_dir(model: ref.MoATransformer, cfg: Dict[str, Any], path: str,
                  vocab_size: int) -> Dict[str, Any]:
    """Loads an exported model directory's weights into model (its architecture
    must be cfg's) and returns its metrics.training ({} when absent)."""
    import moa_io
    raw, tensors, _ = moa_io.load_model_dir(path)
    diff = [k for k in ARCH_KEYS if raw.get(k) != cfg.get(k)]
    if diff:
        raise SystemExit(f"error: --init-from {path}: its config differs from the model "
                         f"being trained in {', '.join(diff)}")
    if raw["vocab_size"] != vocab_size:
        raise SystemExit(f"error: --init-from {path}: vocab_size {raw['vocab_size']} "
                         f"but --vocab has {vocab_size}")
    model.load_tensors(tensors)
    return dict(raw.get("metrics", {}).get("training", {}))


# --- evaluation -----------------------------------------------------------------------------

def to_tensors(batch):
    return [torch.from_numpy(x) for x in batch]


@torch.no_grad()
def valid_loss(model: ref.MoATransformer, split: datamod.Split, max_tokens: int,
               eps: float) -> Dict[str, Any]:
    model.eval()
    tot_loss = tot_nll = 0.0
    ntok = 0
    counts = None
    for b in datamod.make_batches(split, np.arange(len(split)), max_tokens, 0, 0,
                                  shuffle=False):
        src, sl, prev, gold, tl = to_tensors(split.collate(b))
        logits, routings = model(src, sl, prev, tl)
        loss, nll = smoothed_loss(logits, gold, eps, model.cfg.pad_id)
        tot_loss += float(loss)
        tot_nll += float(nll)
        ntok += int(tl.sum())
        c = expert_counts(flat_routings(routings), model.cfg.num_experts)
        counts = c if counts is None else counts + c
    model.train()
    return {"loss": tot_loss / ntok, "nll": tot_nll / ntok,
            "ppl": math.exp(min(tot_nll / ntok, 50)), "tokens": ntok,
            "counts": counts}


def load_evaluate():
    """train/evaluate.py (written separately); None while it is missing."""
    try:
        import evaluate  # noqa: F401
        return evaluate if hasattr(evaluate, "corpus_bleu") else None
    except Exception:  # noqa: BLE001 - any import problem means "not available"
        return None


@torch.no_grad()
def greedy_bleu(model: ref.MoATransformer, tok: datamod.Tokenizer, srcs: List[str],
                refs: List[str]) -> Dict[str, Any]:
    model.eval()
    ids = tok.encode_many(srcs)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    hyps = [""] * len(ids)
    opts = ref.SearchOptions(beam=1)
    for s in range(0, len(order), 100):
        chunk = order[s:s + 100]
        for i, res in zip(chunk, ref.greedy_batch(model, [ids[i] for i in chunk], opts)):
            hyps[i] = tok.decode(res.hypotheses[0].ids)
    model.train()
    out: Dict[str, Any] = {"sentences": len(srcs), "examples": [
        {"src": srcs[i], "hyp": hyps[i], "ref": refs[i]} for i in range(3)]}
    ev = load_evaluate()
    if ev is None:
        out["note"] = "train/evaluate.py not available: BLEU skipped"
    else:
        out["bleu"] = float(ev.corpus_bleu(hyps, refs))
        if hasattr(ev, "corpus_chrf"):
            out["chrf"] = float(ev.corpus_chrf(hyps, refs))
    return out


# --- checkpoints ----------------------------------------------------------------------------

def rng_states() -> Dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
            "random": random.getstate()}


def set_rng_states(s: Dict[str, Any]) -> None:
    torch.set_rng_state(s["torch"])
    np.random.set_state(s["numpy"])
    random.setstate(s["random"])


def save_checkpoint(path: str, state: Dict[str, Any]) -> None:
    tmp = path + ".tmp"
    torch.save(state, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


class Logger:
    def __init__(self, path: str) -> None:
        self.f = open(path, "a", encoding="utf-8")

    def __call__(self, kind: str, **rec: Any) -> None:
        rec = {"type": kind, "time": round(time.time(), 1), **rec}
        line = json.dumps(rec, ensure_ascii=False, default=_jsonable)
        self.f.write(line + "\n")
        self.f.flush()
        print(line, flush=True)


def _jsonable(x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    raise TypeError(type(x))


def load_shares(counts: np.ndarray, names: List[str]) -> Dict[str, List[float]]:
    tot = counts.sum(axis=1, keepdims=True).clip(min=1)
    return {n: [round(float(v), 4) for v in row] for n, row in zip(names, counts / tot)}


# --- training -------------------------------------------------------------------------------

def main(argv: Optional[List[str]] = None) -> int:
    a = build_arg_parser().parse_args(argv)
    torch.set_num_threads(a.threads)
    os.makedirs(a.work, exist_ok=True)
    log = Logger(os.path.join(a.work, "log.jsonl"))
    ckpt_path = os.path.join(a.work, CKPT)

    tok = datamod.Tokenizer(a.spm, a.vocab)
    with open(os.path.join(a.data, "meta.json")) as f:
        meta = json.load(f)
    if meta["tokenizer_checksum"] != tok.checksum:
        raise SystemExit(f"error: {a.data} was tokenised with another tokenizer; "
                         "delete it and rebuild the cache")
    train = datamod.Split(a.data, "train")
    valid = datamod.Split(a.data, "valid")
    train_idx = datamod.usable(train, a.max_len)

    state: Optional[Dict[str, Any]] = None
    init_step, init_warmup = 0, 0
    if os.path.exists(ckpt_path):
        state = torch.load(ckpt_path)
        cfg = state["config"]
        wanted = model_config(a, len(tok.vocab))
        diff = [k for k in ARCH_KEYS if wanted[k] != cfg[k]]
        if diff:
            print(f"train: resuming {ckpt_path}; its architecture wins over the flags "
                  f"({', '.join(f'{k}={cfg[k]}' for k in diff)})", file=sys.stderr)
    elif a.init_from:
        import moa_io
        raw = moa_io.read_config(os.path.join(a.init_from, "config.json"))
        cfg = model_config(a, len(tok.vocab))
        cfg.update({k: raw[k] for k in ARCH_KEYS})
    else:
        cfg = model_config(a, len(tok.vocab))

    random.seed(a.seed)
    np.random.seed(a.seed)
    torch.manual_seed(a.seed)
    model = build_model(cfg, a)
    init_weights(model, cfg)
    opt = torch.optim.Adam(model.parameters(), lr=a.lr, betas=tuple(a.adam_betas),
                           eps=a.adam_eps, weight_decay=a.weight_decay)
    step, epoch, pos, train_secs = 0, 0, 0, 0.0
    next_valid = a.valid_minutes * 60
    next_bleu = a.bleu_minutes * 60 if a.bleu_minutes > 0 else float("inf")
    snap_every = a.snapshot_minutes * 60 if a.snapshot_minutes > 0 else float("inf")
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sch = state["scheduler"]
        step, epoch, pos = sch["step"], state["data"]["epoch"], state["data"]["position"]
        train_secs = state["train_seconds"]
        next_valid, next_bleu = state["next_valid"], state["next_bleu"]
        set_rng_states(state["rng"])
        init_step, init_warmup = sch.get("init_step", 0), sch.get("init_warmup", 0)
        # The batch order of an epoch is a function of seed and batch size: a
        # resumed run must keep the checkpoint's, whatever the flags say.
        for key in ("seed", "max_tokens", "max_sentences"):
            if key in state["data"] and getattr(a, key) != state["data"][key]:
                print(f"train: resuming with the checkpoint's {key} {state['data'][key]} "
                      f"(--{key.replace('_', '-')} {getattr(a, key)} ignored)", file=sys.stderr)
                setattr(a, key, state["data"][key])
        log("resume", step=step, epoch=epoch, position=pos, train_seconds=round(train_secs, 1))
    elif a.init_from:
        info = init_from_dir(model, cfg, a.init_from, len(tok.vocab))
        # Carry the model's own progress on: the schedule, the clock and the
        # epoch count continue (a new epoch, so the data order is a fresh one).
        step = int(info.get("updates", 0))
        train_secs = float(info.get("train_seconds", 0.0))
        epoch = int(info.get("epoch", -1)) + 1 if "epoch" in info else 0
        init_step, init_warmup = step, a.init_warmup
        next_valid = (math.floor(train_secs / (a.valid_minutes * 60)) + 1) * a.valid_minutes * 60
        if a.bleu_minutes > 0:
            next_bleu = (math.floor(train_secs / (a.bleu_minutes * 60)) + 1) * a.bleu_minutes * 60
        log("init", path=a.init_from, step=step, epoch=epoch,
            train_seconds=round(train_secs, 1), init_warmup=init_warmup)
    names = moa_modules(model)
    n_params = sum(p.numel() for p in model.parameters())
    log("start", config=cfg, params=n_params, train_pairs=int(len(train_idx)),
        args={k: v for k, v in vars(a).items()})
    model.train()

    valid_ref = list(datamod.read_pairs(datamod.split_path("valid", a.corpus), a.bleu_sentences))
    budget = a.time_budget_minutes * 60 if a.time_budget_minutes > 0 else float("inf")

    def checkpoint(done: bool = False) -> None:
        save_checkpoint(ckpt_path, {
            "config": cfg, "model": model.state_dict(), "optimizer": opt.state_dict(),
            "scheduler": {"step": step, "lr": a.lr, "warmup": a.warmup,
                          "kind": "inverse_sqrt", "init_step": init_step,
                          "init_warmup": init_warmup},
            "rng": rng_states(), "data": {"epoch": epoch, "position": pos, "seed": a.seed,
                                          "max_tokens": a.max_tokens,
                                          "max_sentences": a.max_sentences},
            "train_seconds": train_secs, "next_valid": next_valid, "next_bleu": next_bleu,
            "done": done, "args": vars(a)})

    def snapshot() -> None:
        sdir = os.path.join(a.work, "snapshots")
        os.makedirs(sdir, exist_ok=True)
        save_checkpoint(os.path.join(sdir, f"snapshot_{step:07d}.pt"),
                        {"config": cfg, "model": model.state_dict(), "step": step,
                         "epoch": epoch, "train_seconds": train_secs})
        old = sorted(f for f in os.listdir(sdir) if f.startswith("snapshot_"))
        for f in old[:-a.keep_snapshots] if a.keep_snapshots > 0 else []:
            os.remove(os.path.join(sdir, f))
        log("snapshot", step=step, train_seconds=round(train_secs, 1))

    def evaluate(with_bleu: bool, final: bool = False) -> None:
        v = valid_loss(model, valid, a.max_tokens, a.label_smoothing)
        log("valid", step=step, epoch=epoch, train_seconds=round(train_secs, 1),
            loss=round(v["loss"], 4), nll=round(v["nll"], 4), ppl=round(v["ppl"], 2),
            expert_load=load_shares(v["counts"], names), final=final)
        if with_bleu:
            t0 = time.perf_counter()
            b = greedy_bleu(model, tok, [s for s, _ in valid_ref], [t for _, t in valid_ref])
            log("bleu", step=step, train_seconds=round(train_secs, 1),
                seconds=round(time.perf_counter() - t0, 1), final=final, **b)

    batches = datamod.make_batches(train, train_idx, a.max_tokens, a.seed, epoch,
                                   a.max_sentences)
    last_ckpt = time.time()
    acc = {"loss": 0.0, "nll": 0.0, "switch": 0.0, "z": 0.0, "tok": 0, "secs": 0.0,
           "cpu": 0.0, "n": 0, "counts": np.zeros((len(names), cfg["num_experts"]), dtype=np.int64)}
    stop_reason = None
    # SIGTERM or SIGINT pauses the run: the update in progress finishes, a
    # checkpoint is written and the process exits with PAUSED; the same
    # command resumes exactly there (benchmarks need the cores to themselves).
    pause = {"signal": None}

    def on_signal(signum, _frame) -> None:
        pause["signal"] = signal.Signals(signum).name

    old_handlers = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    while True:
        if pause["signal"]:
            checkpoint()
            log("pause", signal=pause["signal"], step=step, epoch=epoch,
                train_seconds=round(train_secs, 1))
            for sig, h in old_handlers.items():
                signal.signal(sig, h)
            return PAUSED
        if train_secs >= budget:
            stop_reason = "time budget"
        elif a.max_updates and step >= a.max_updates:
            stop_reason = "max updates"
        elif a.max_epochs and epoch >= a.max_epochs:
            stop_reason = "max epochs"
        if stop_reason:
            break
        if pos >= len(batches):
            epoch, pos = epoch + 1, 0
            batches = datamod.make_batches(train, train_idx, a.max_tokens, a.seed, epoch,
                                           a.max_sentences)
            log("epoch", epoch=epoch, batches=len(batches))
            continue
        t0 = time.perf_counter()
        c0 = time.process_time()
        src, sl, prev, gold, tl = to_tensors(train.collate(batches[pos]))
        lr = lr_at(step + 1, a.lr, a.warmup, init_step, init_warmup) * \
            cooldown_factor(train_secs, budget, a.cooldown_minutes * 60)
        for g in opt.param_groups:
            g["lr"] = lr
        logits, routings = model(src, sl, prev, tl)
        ntok = int(tl.sum())
        loss, nll = smoothed_loss(logits, gold, a.label_smoothing, cfg["pad_id"])
        flat = flat_routings(routings)
        switch, z = router_losses(flat, cfg["num_experts"])
        total = loss / ntok + a.switch_loss * switch + a.z_loss * z
        opt.zero_grad(set_to_none=True)
        total.backward()
        if a.clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), a.clip_norm)
        opt.step()
        step += 1
        pos += 1
        dt = time.perf_counter() - t0
        train_secs += dt
        acc["loss"] += float(loss)
        acc["nll"] += float(nll)
        acc["switch"] += float(switch)
        acc["z"] += float(z)
        acc["tok"] += ntok
        acc["secs"] += dt
        acc["cpu"] += time.process_time() - c0
        acc["n"] += 1
        acc["counts"] += expert_counts(flat, cfg["num_experts"])
        if step % a.log_every == 0:
            log("train", step=step, epoch=epoch, lr=round(lr, 7),
                loss=round(acc["loss"] / acc["tok"], 4), nll=round(acc["nll"] / acc["tok"], 4),
                switch=round(acc["switch"] / acc["n"], 4), z=round(acc["z"] / acc["n"], 4),
                tgt_tok_per_s=round(acc["tok"] / acc["secs"], 1),
                # CPU seconds of all the process's threads: a throughput figure
                # that other jobs on the machine barely move (2 threads: the
                # wall-clock rate of a quiet machine is about twice this).
                tgt_tok_per_cpu_s=round(acc["tok"] / max(acc["cpu"], 1e-9), 1),
                train_seconds=round(train_secs, 1), tgt_tokens=acc["tok"],
                expert_load=load_shares(acc["counts"], names))
            acc.update(loss=0.0, nll=0.0, switch=0.0, z=0.0, tok=0, secs=0.0, cpu=0.0, n=0)
            acc["counts"][:] = 0
        if not math.isfinite(float(total)):
            raise SystemExit(f"error: loss is {float(total)} at update {step}")
        if train_secs >= next_valid and train_secs < budget:
            next_valid += a.valid_minutes * 60
            bleu = train_secs >= next_bleu
            if bleu:
                next_bleu += a.bleu_minutes * 60
            evaluate(bleu)
        # Snapshot boundaries are multiples of the interval on the training
        # clock, so a resumed run takes the same snapshots.
        if math.floor(train_secs / snap_every) > math.floor((train_secs - dt) / snap_every):
            snapshot()
        if time.time() - last_ckpt >= a.checkpoint_minutes * 60:
            checkpoint()
            last_ckpt = time.time()
            log("checkpoint", step=step, train_seconds=round(train_secs, 1))

    checkpoint(done=True)
    log("stop", reason=stop_reason, step=step, epoch=epoch, train_seconds=round(train_secs, 1))
    if not a.no_final_eval:
        evaluate(True, final=True)
    with open(os.path.join(a.work, "done.json"), "w") as f:
        json.dump({"reason": stop_reason, "step": step, "epoch": epoch,
                   "train_seconds": train_secs,
                   "budget_minutes": a.time_budget_minutes}, f)
    if a.save_fairseq:
        try:
            import fairseq_ckpt
        except ImportError:
            print("train: train/fairseq_ckpt.py is missing; --save-fairseq skipped",
                  file=sys.stderr)
        else:
            model.eval()
            # The run's real settings and progress, not the writer's examples.
            fairseq_ckpt.save_fairseq_checkpoint(
                model, dict(cfg), a.save_fairseq,
                overrides={"dropout": a.dropout, "attention_dropout": a.attention_dropout,
                           "activation_dropout": a.activation_dropout, "lr": [a.lr],
                           "warmup_updates": a.warmup, "max_tokens": a.max_tokens,
                           "clip_norm": a.clip_norm, "label_smoothing": a.label_smoothing,
                           "switchloss": a.switch_loss, "zloss": a.z_loss,
                           "seed": a.seed, "fp16": False},
                training={"num_updates": step, "epoch": epoch,
                          "train_seconds": train_secs})
            log("fairseq", path=a.save_fairseq)
    return 0


if __name__ == "__main__":
    sys.exit(main())
