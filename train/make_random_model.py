#!/usr/bin/python3
"""Writes a random-weight MoA model directory (docs/moa-spec.md §3) for tests.

The weights are random but shaped so that tests are decisive: router logits
are spread (top-k picks rarely near-tie), output distributions are peaked
(search near-ties are rare), and the eos logit gets a boost, calibrated by
greedy-decoding random sources with the reference model, so that generation
ends before max_length in a fair share of sentences. Deterministic given --seed: each
tensor draws from its own generator seeded by (seed, tensor name).

    /usr/bin/python3 train/make_random_model.py --out /tmp/m --seed 1
"""

from __future__ import annotations

import argparse
import os
import sys
import zlib
from typing import Any, Dict, List, Optional

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import moa_io  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_SPM_DIR = os.path.join(REPO, "tests", "fixtures", "spm")


def make_config(a: argparse.Namespace, vocab_size: int) -> Dict[str, Any]:
    cfg = {
        "d_model": a.d_model, "encoder_layers": a.encoder_layers,
        "decoder_layers": a.decoder_layers, "ffn_dim": a.ffn_dim,
        "activation": a.activation, "normalize_before": a.pre_norm,
        "num_experts": a.experts, "top_k": a.top_k, "head_dim": a.head_dim,
        "attention_bias": a.attention_bias, "vocab_size": vocab_size,
        "share_embeddings": not a.no_share_embeddings, "scale_embedding": True,
        "max_positions": a.max_positions, "layernorm_eps": 1e-5,
        "bos_id": 0, "pad_id": 1, "eos_id": 2, "unk_id": 3, "decoder_start_id": 2,
        "source_lang": "en", "target_lang": "de",
        "name": a.name or os.path.basename(os.path.normpath(a.out)),
        "description": f"random weights for tests (make_random_model.py, seed {a.seed})",
    }
    return moa_io.complete_config(cfg)


def _rng(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(name.encode("utf-8"))])


def _std(name: str, shape: tuple, cfg: Dict[str, Any], router_scale: float) -> float:
    """Standard deviation of a tensor's entries, chosen by role."""
    d, h, f = cfg["d_model"], cfg["head_dim"], cfg["ffn_dim"]
    if name.endswith("w_gate"):
        return router_scale / np.sqrt(d)       # router logits ~ N(0, router_scale²)
    if name.endswith("output_experts.w"):
        return 1.0 / np.sqrt(h)
    if name.endswith("experts.w"):
        return 2.0 / np.sqrt(d)                # fairly sharp attention
    if name.endswith(".bias"):
        return 0.1
    if name.endswith("fc2.weight"):
        return 1.0 / np.sqrt(f)
    return 1.0 / np.sqrt(d)                    # embeddings, k/v, fc1, output


def random_tensors(cfg: Dict[str, Any], seed: int, router_scale: float,
                   peak: float) -> Dict[str, np.ndarray]:
    required, _ = moa_io.expected_shapes(cfg)
    out: Dict[str, np.ndarray] = {}
    for name in sorted(required):
        shape = required[name]
        rng = _rng(seed, name)
        if "layer_norm" in name and name.endswith(".weight"):
            t = 1.0 + 0.1 * rng.standard_normal(shape)
        else:
            t = _std(name, shape, cfg, router_scale) * rng.standard_normal(shape)
        out[name] = t.astype(np.float32)
    _shape_output(out, cfg, peak)
    return out


def _output_ln(cfg: Dict[str, Any]) -> str:
    """The LayerNorm whose output feeds the output projection."""
    if cfg["normalize_before"]:
        return "decoder.layer_norm"
    return f"decoder.layers.{cfg['decoder_layers'] - 1}.final_layer_norm"


def _eos_direction(t: Dict[str, np.ndarray], cfg: Dict[str, Any]) -> np.ndarray:
    """A bias along this vector raises the eos logit by exactly 1 per unit."""
    out_w = t["encoder.embed_tokens.weight"] if cfg["share_embeddings"] else \
        t["decoder.output_projection.weight"]
    e = out_w[cfg["eos_id"]].astype(np.float64)
    return e / np.dot(e, e)


def _shape_output(t: Dict[str, np.ndarray], cfg: Dict[str, Any], peak: float) -> None:
    """Scales the LayerNorm feeding the output projection so logits have a
    spread of about `peak`: peaked distributions."""
    ln = _output_ln(cfg)
    t[f"{ln}.weight"] = (t[f"{ln}.weight"] * peak).astype(np.float32)


def set_eos_boost(t: Dict[str, np.ndarray], cfg: Dict[str, Any], base_bias: np.ndarray,
                  boost: float) -> None:
    """Output LayerNorm bias = base_bias + boost along the eos direction."""
    bias = base_bias.astype(np.float64) + boost * _eos_direction(t, cfg)
    t[f"{_output_ln(cfg)}.bias"] = bias.astype(np.float32)


def _eos_gaps(cfg: Dict[str, Any], t: Dict[str, np.ndarray], seed: int,
              sentences: int = 48, steps: int = 24) -> np.ndarray:
    """Greedy-decodes random sources with eos forbidden and returns, for every
    step, eos log-prob minus the best other token's: eos would win where > 0."""
    import moa_reference as ref  # first: it sets OMP_WAIT_POLICY before torch loads
    import torch

    model = ref.MoATransformer(ref.MoAConfig.from_dict(cfg))
    model.load_tensors(t)
    model.eval()
    rng = np.random.default_rng([seed, 0xE05])
    srcs = [rng.integers(4, cfg["vocab_size"], size=int(n)).tolist() + [cfg["eos_id"]]
            for n in rng.integers(3, 30, size=sentences)]
    gaps = []
    with torch.no_grad():
        cache, _ = ref._encode_batch(model, srcs, 1)
        tokens = torch.full((sentences,), cfg["decoder_start_id"], dtype=torch.long)
        for step in range(steps):
            lprobs, _ = model.decoder.step(tokens, step, cache)
            eos = lprobs[:, cfg["eos_id"]].clone()
            lprobs[:, [cfg["bos_id"], cfg["pad_id"], cfg["eos_id"]]] = float("-inf")
            best = lprobs.max(dim=1)
            if step > 0:
                gaps.append((eos - best.values).numpy())
            tokens = best.indices
    return np.concatenate(gaps)


def calibrate_eos(t: Dict[str, np.ndarray], cfg: Dict[str, Any], seed: int,
                  rate: float) -> float:
    """Finds the eos boost with which eos would win at about `rate` of the
    decoding steps of random sources (rounded, so that float noise between
    machines does not change the model). Sets it and returns it."""
    ln_bias = t[f"{_output_ln(cfg)}.bias"].copy()
    boost = 0.0
    for _ in range(3):  # the boost also nudges other logits: iterate
        set_eos_boost(t, cfg, ln_bias, boost)
        boost -= float(np.quantile(_eos_gaps(cfg, t, seed), 1.0 - rate))
    boost = round(boost, 2)
    set_eos_boost(t, cfg, ln_bias, boost)
    return boost


def build_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Write a random-weight MoA model directory "
                                "(config.json, model.safetensors, vocab.txt, "
                                "sentencepiece.model) for tests.")
    p.add_argument("--out", required=True, help="output directory (created)")
    p.add_argument("--d-model", type=int, default=32, help="model width d (even; default 32)")
    p.add_argument("--encoder-layers", type=int, default=2, help="encoder layers (default 2)")
    p.add_argument("--decoder-layers", type=int, default=2, help="decoder layers (default 2)")
    p.add_argument("--ffn-dim", type=int, default=64, help="FFN hidden width (default 64)")
    p.add_argument("--experts", type=int, default=4, help="attention experts E (default 4)")
    p.add_argument("--top-k", type=int, default=2, help="experts used per token k <= E (default 2)")
    p.add_argument("--head-dim", type=int, default=8, help="head width h (default 8)")
    p.add_argument("--pre-norm", action="store_true",
                   help="normalize_before: pre-norm layers plus final layer norms")
    p.add_argument("--attention-bias", action="store_true", help="biases on k_proj/v_proj")
    p.add_argument("--activation", choices=["relu", "gelu"], default="relu",
                   help="FFN activation (default relu)")
    p.add_argument("--no-share-embeddings", action="store_true",
                   help="separate decoder embedding and output projection tables")
    p.add_argument("--dtype", choices=["f32", "f16", "bf16"], default="f32",
                   help="stored dtype; weights are rounded to it (default f32)")
    p.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    p.add_argument("--spm-dir", default=DEFAULT_SPM_DIR,
                   help="directory with sentencepiece.model and vocab.txt to copy; "
                        "vocab_size = lines of vocab.txt (default tests/fixtures/spm)")
    p.add_argument("--max-positions", type=int, default=1024,
                   help="max_positions (default 1024)")
    p.add_argument("--name", help="config name (default: the output directory's name)")
    p.add_argument("--router-scale", type=float, default=6.0,
                   help="spread (std) of router logits; larger = fewer router near-ties, "
                        "peakier gates (default 6)")
    p.add_argument("--peak", type=float, default=3.0,
                   help="spread (std) of output logits; larger = more peaked "
                        "distributions and fewer search near-ties, but larger float32 "
                        "rounding in log-probs (default 3)")
    p.add_argument("--eos-rate", type=float, default=0.05,
                   help="raise the eos logit so that eos would win at about this fraction "
                        "of greedy steps on random sources (calibrated with the reference "
                        "model; outputs then end at varied lengths, or run to max_length "
                        "when the decoder loops; default 0.05)")
    p.add_argument("--eos-boost", type=float,
                   help="add this to the eos logit instead of calibrating with --eos-rate")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    a = build_arg_parser().parse_args(argv)
    spm_model = os.path.join(a.spm_dir, moa_io.SPM_FILE)
    vocab = moa_io.read_vocab(os.path.join(a.spm_dir, moa_io.VOCAB_FILE))
    try:
        cfg = make_config(a, len(vocab))
    except moa_io.ModelFormatError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    tensors = random_tensors(cfg, a.seed, a.router_scale, a.peak)
    if a.eos_boost is not None:
        set_eos_boost(tensors, cfg, tensors[f"{_output_ln(cfg)}.bias"], a.eos_boost)
        cfg["description"] += f", eos boost {a.eos_boost}"
    elif a.eos_rate > 0:
        boost = calibrate_eos(tensors, cfg, a.seed, a.eos_rate)
        cfg["description"] += f", eos boost {boost} (rate {a.eos_rate})"
    moa_io.save_model_dir(a.out, cfg, tensors, vocab, spm_model, a.dtype)
    return 0


if __name__ == "__main__":
    sys.exit(main())
