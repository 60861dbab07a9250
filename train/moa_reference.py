#!/usr/bin/python3
"""PyTorch reference for MoA translation models (docs/moa-spec.md §1-2, §4-7).

Plain nn.Modules whose state_dict() keys are the spec's tensor names, usable
for training (dropout, router outputs for auxiliary losses) and for inference
(batched, incremental decoding with a KV cache, greedy / beam search / forced
scoring, routing traces, near-tie detection). The C engine is compared with
this file token by token (tests/golden/run_golden.py).

    model = MoATransformer.from_dir("tests/fixtures/models/tiny-random")
    res = translate_batch(model, [[57, 8, 2]], SearchOptions(beam=4))

Command line: /usr/bin/python3 train/moa_reference.py --help
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported

import argparse
import json
import math
import sys
from dataclasses import dataclass, field
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import moa_io  # noqa: E402

NEAR_TIE = 1e-4  # spec §5: gaps below this may be decided differently
Tensor = torch.Tensor


# --- configuration ---------------------------------------------------------------

@dataclass
class MoAConfig:
    d_model: int
    encoder_layers: int
    decoder_layers: int
    ffn_dim: int
    num_experts: int
    top_k: int
    head_dim: int
    vocab_size: int
    activation: str = "relu"
    normalize_before: bool = False
    attention_bias: bool = False
    share_embeddings: bool = True
    scale_embedding: bool = True
    max_positions: int = 1024
    layernorm_eps: float = 1e-5
    bos_id: int = 0
    pad_id: int = 1
    eos_id: int = 2
    unk_id: int = 3
    decoder_start_id: int = 2
    extra: Dict[str, Any] = field(default_factory=dict)  # langs, name, metrics...

    @classmethod
    def from_dict(cls, raw: Dict[str, Any]) -> "MoAConfig":
        cfg = moa_io.complete_config(raw)
        names = set(cls.__dataclass_fields__) - {"extra"}
        return cls(**{k: cfg[k] for k in names},
                   extra={k: v for k, v in cfg.items() if k not in names})

    def to_dict(self) -> Dict[str, Any]:
        out = dict(self.extra)
        out.update({k: getattr(self, k) for k in self.__dataclass_fields__
                    if k != "extra"})
        return out


def sinusoid_table(num: int, d: int, pad_id: int) -> Tensor:
    """fairseq sinusoids [sin | cos], computed in float64 and rounded once;
    row pad_id is zero. Row p is the vector of position index p."""
    half = d // 2
    freq = torch.exp(torch.arange(half, dtype=torch.float64)
                     * -(math.log(10000.0) / (half - 1)))
    args = torch.arange(num, dtype=torch.float64)[:, None] * freq[None, :]
    table = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    table[pad_id] = 0.0
    return table.float()


# --- the MoA attention layer -------------------------------------------------------

class Routing(NamedTuple):
    """What the router decided for a block of query tokens (shapes ... = the
    query batch shape). Training code uses logits/probs for the switch and
    z-losses; traces use experts/gates/margin."""
    logits: Tensor                 # (..., E) float32 router logits
    probs: Tensor                  # (..., E) softmax over E
    experts: Tensor                # (..., k) long, rank order
    gates: Tensor                  # (..., k) probs of the picks; 0 for pad queries
    margin: Optional[Tensor]       # (...,) k-th minus (k+1)-th logit; None if k == E
    real: Optional[Tensor]         # (...,) bool, False for pad queries (None: all real)

    def near_tie(self) -> Tensor:
        """(...,) bool: real query tokens whose k-th/(k+1)-th logits are close."""
        if self.margin is None:
            return torch.zeros(self.experts.shape[:-1], dtype=torch.bool)
        near = self.margin < NEAR_TIE
        return near if self.real is None else near & self.real


class ExpertWeights(nn.Module):
    """Holds one stacked weight `w` (E × rows × cols); exists for the names."""

    def __init__(self, experts: int, rows: int, cols: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.empty(experts, rows, cols))
        nn.init.normal_(self.w, 0.0, rows ** -0.5)  # trainers may re-initialise


class MoAQueryProjection(nn.Module):
    """Router + per-expert query (`map`) and output (`reduce`) projections.

    Dense then gather: every expert's query is one product x @ W_q viewed as
    d × E·h, then the k picked ones are gathered; the k gated head outputs are
    scattered into E slots and go through one product with W_o viewed as
    E·h × d. Unpicked experts get gate 0, so this equals spec §1 exactly."""

    def __init__(self, d: int, experts: int, k: int, h: int) -> None:
        super().__init__()
        self.d, self.e, self.k, self.h = d, experts, k, h
        self.w_gate = nn.Parameter(torch.empty(d, experts))
        nn.init.normal_(self.w_gate, 0.0, d ** -0.5)
        self.experts = ExpertWeights(experts, d, h)
        self.output_experts = ExpertWeights(experts, h, d)

    def route(self, x: Tensor, real: Optional[Tensor]) -> Routing:
        logits = (x @ self.w_gate).float()
        probs = torch.softmax(logits, dim=-1)
        # Stable sort: equal probabilities keep the lower expert index first.
        order = torch.sort(probs, dim=-1, descending=True, stable=True).indices
        experts = order[..., :self.k]
        gates = probs.gather(-1, experts)
        if real is not None:
            gates = gates * real[..., None].to(gates.dtype)
        margin = None
        if self.k < self.e:
            margin = (logits.gather(-1, order[..., self.k - 1:self.k])
                      - logits.gather(-1, order[..., self.k:self.k + 1]))[..., 0]
        return Routing(logits, probs, experts, gates, margin, real)

    def _query_weight(self) -> Tensor:
        """experts.w (E, d, h) viewed as one d × E·h matrix. The permuted copy
        is kept between calls at inference (no autograd, weights unchanged)."""
        w = self.experts.w
        if torch.is_grad_enabled():
            return w.permute(1, 0, 2).reshape(self.d, self.e * self.h)
        key = (w.data_ptr(), w._version)
        if getattr(self, "_q_cache_key", None) != key:
            self._q_cache = w.detach().permute(1, 0, 2).reshape(self.d, self.e * self.h)
            self._q_cache_key = key
        return self._q_cache

    def map(self, x: Tensor, real: Optional[Tensor] = None) -> Tuple[Tensor, Routing]:
        """x (..., d) -> queries of the picked experts (..., k, h), scaled."""
        r = self.route(x, real)
        q_all = (x @ self._query_weight()).view(*x.shape[:-1], self.e, self.h)
        idx = r.experts[..., None].expand(*r.experts.shape, self.h)
        q = q_all.gather(-2, idx) * (self.h ** -0.5)
        return q, r

    def reduce(self, a: Tensor, r: Routing) -> Tensor:
        """a (..., k, h) head outputs -> y (..., d) = sum_e gate_e · a_e W_o[e]."""
        gated = a * r.gates[..., None].to(a.dtype)
        slots = a.new_zeros(*a.shape[:-2], self.e, self.h)
        idx = r.experts[..., None].expand(*r.experts.shape, self.h)
        slots = slots.scatter(-2, idx, gated)
        w = self.output_experts.w.reshape(self.e * self.h, self.d)
        return slots.reshape(*a.shape[:-2], self.e * self.h) @ w


class MoAAttention(nn.Module):
    """One MoA attention layer (spec §1): shared K/V of width h, k of E query
    heads per token."""

    def __init__(self, d: int, experts: int, k: int, h: int, bias: bool,
                 attention_dropout: float = 0.0) -> None:
        super().__init__()
        self.h = h
        self.k_proj = nn.Linear(d, h, bias=bias)
        self.v_proj = nn.Linear(d, h, bias=bias)
        self.q_proj = MoAQueryProjection(d, experts, k, h)
        self.attention_dropout = attention_dropout

    def project_kv(self, memory: Tensor) -> Tuple[Tensor, Tensor]:
        """memory (B, m, d) -> K, V (B, m, h)."""
        return self.k_proj(memory), self.v_proj(memory)

    def attend(self, x: Tensor, keys: Tensor, values: Tensor,
               key_padding_mask: Optional[Tensor] = None, causal: bool = False,
               real: Optional[Tensor] = None) -> Tuple[Tensor, Routing]:
        """x (B, n, d), keys/values (B, m, h); key_padding_mask (B, m) True at
        pads; causal: query i sees keys 0..i+m-n; real (B, n) False at pad
        queries. Returns y (B, n, d) and the routing."""
        b, n, _ = x.shape
        m = keys.shape[1]
        q, r = self.q_proj.map(x, real)                   # (B, n, k, h)
        k = q.shape[2]
        scores = (q.reshape(b, n * k, self.h) @ keys.transpose(1, 2)).view(b, n, k, m)
        if key_padding_mask is not None:
            scores = scores.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
        if causal:
            future = torch.ones(n, m, dtype=torch.bool).triu(m - n + 1)
            scores = scores.masked_fill(future[None, :, None, :], float("-inf"))
        attn = torch.softmax(scores.float(), dim=-1).to(x.dtype)
        attn = F.dropout(attn, self.attention_dropout, self.training)
        a = (attn.view(b, n * k, m) @ values).view(b, n, k, self.h)
        return self.q_proj.reduce(a, r), r

    def forward(self, x: Tensor, memory: Tensor,
                key_padding_mask: Optional[Tensor] = None, causal: bool = False,
                real: Optional[Tensor] = None) -> Tuple[Tensor, Routing]:
        keys, values = self.project_kv(memory)
        return self.attend(x, keys, values, key_padding_mask, causal, real)


# --- layers --------------------------------------------------------------------------

@dataclass
class Dropouts:
    dropout: float = 0.0
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0


class _LayerBase(nn.Module):
    def __init__(self, cfg: MoAConfig, drop: Dropouts) -> None:
        super().__init__()
        d = cfg.d_model
        self.pre_norm = cfg.normalize_before
        self.drop = drop
        self.self_attn = MoAAttention(d, cfg.num_experts, cfg.top_k, cfg.head_dim,
                                      cfg.attention_bias, drop.attention_dropout)
        self.self_attn_layer_norm = nn.LayerNorm(d, eps=cfg.layernorm_eps)
        self.fc1 = nn.Linear(d, cfg.ffn_dim)
        self.fc2 = nn.Linear(cfg.ffn_dim, d)
        self.final_layer_norm = nn.LayerNorm(d, eps=cfg.layernorm_eps)
        self.act = F.gelu if cfg.activation == "gelu" else F.relu  # gelu: exact erf

    def _dropout(self, x: Tensor) -> Tensor:
        return F.dropout(x, self.drop.dropout, self.training)

    def _sublayer(self, x: Tensor, ln: nn.LayerNorm, fn) -> Tuple[Tensor, Any]:
        """Residual block, post-norm LN(x + f(x)) or pre-norm x + f(LN(x))."""
        y, extra = fn(ln(x) if self.pre_norm else x)
        x = x + self._dropout(y)
        return (x if self.pre_norm else ln(x)), extra

    def _ffn(self, x: Tensor) -> Tuple[Tensor, None]:
        y = self.act(self.fc1(x))
        y = F.dropout(y, self.drop.activation_dropout, self.training)
        return self.fc2(y), None


class EncoderLayer(_LayerBase):
    def forward(self, x: Tensor, pad_mask: Tensor) -> Tuple[Tensor, Routing]:
        """x (B, S, d), pad_mask (B, S) True at pads."""
        real = ~pad_mask
        x, r = self._sublayer(x, self.self_attn_layer_norm,
                              lambda y: self.self_attn(y, y, pad_mask, False, real))
        x, _ = self._sublayer(x, self.final_layer_norm, self._ffn)
        return x, r


class DecoderLayer(_LayerBase):
    def __init__(self, cfg: MoAConfig, drop: Dropouts) -> None:
        super().__init__(cfg, drop)
        self.encoder_attn = MoAAttention(cfg.d_model, cfg.num_experts, cfg.top_k,
                                         cfg.head_dim, cfg.attention_bias,
                                         drop.attention_dropout)
        self.encoder_attn_layer_norm = nn.LayerNorm(cfg.d_model, eps=cfg.layernorm_eps)

    def forward(self, x: Tensor, cross_kv: Tuple[Tensor, Tensor], enc_pad_mask: Tensor,
                real: Optional[Tensor] = None,
                self_cache: Optional[Dict[str, Tensor]] = None
                ) -> Tuple[Tensor, Routing, Routing]:
        """x (B, n, d). Without self_cache: the whole target at once (causal).
        With self_cache (dict with 'k', 'v' of shape (B, t, h), or empty): x is
        the next position (n = 1) and its K/V are appended to the cache."""

        def self_attention(y: Tensor) -> Tuple[Tensor, Routing]:
            keys, values = self.self_attn.project_kv(y)
            if self_cache is None:
                return self.self_attn.attend(y, keys, values, None, True, real)
            if "k" in self_cache:
                keys = torch.cat([self_cache["k"], keys], dim=1)
                values = torch.cat([self_cache["v"], values], dim=1)
            self_cache["k"], self_cache["v"] = keys, values
            return self.self_attn.attend(y, keys, values, None, False, real)

        def cross_attention(y: Tensor) -> Tuple[Tensor, Routing]:
            return self.encoder_attn.attend(y, cross_kv[0], cross_kv[1],
                                            enc_pad_mask, False, real)

        x, r_self = self._sublayer(x, self.self_attn_layer_norm, self_attention)
        x, r_cross = self._sublayer(x, self.encoder_attn_layer_norm, cross_attention)
        x, _ = self._sublayer(x, self.final_layer_norm, self._ffn)
        return x, r_self, r_cross


class _Embedder(nn.Module):
    def __init__(self, cfg: MoAConfig, embed_tokens: nn.Embedding, drop: Dropouts) -> None:
        super().__init__()
        self.embed_tokens = embed_tokens
        self.embed_scale = math.sqrt(cfg.d_model) if cfg.scale_embedding else 1.0
        self.pad_id = cfg.pad_id
        self.drop = drop
        table = sinusoid_table(cfg.max_positions + cfg.pad_id + 1, cfg.d_model, cfg.pad_id)
        self.register_buffer("positions", table, persistent=False)

    def embed(self, tokens: Tensor, positions: Tensor) -> Tensor:
        x = self.embed_scale * self.embed_tokens(tokens) + self.positions[positions]
        return F.dropout(x, self.drop.dropout, self.training)


class Encoder(_Embedder):
    def __init__(self, cfg: MoAConfig, embed_tokens: nn.Embedding, drop: Dropouts) -> None:
        super().__init__(cfg, embed_tokens, drop)
        self.layers = nn.ModuleList(EncoderLayer(cfg, drop) for _ in range(cfg.encoder_layers))
        self.layer_norm = nn.LayerNorm(cfg.d_model, eps=cfg.layernorm_eps) \
            if cfg.normalize_before else None

    def forward(self, src: Tensor, src_lengths: Tensor) -> Tuple[Tensor, Tensor, List[Routing]]:
        """src (B, S) right-padded ids (eos included), src_lengths (B,).
        Returns (output (B, S, d), pad_mask (B, S), routing per layer)."""
        s = src.shape[1]
        steps = torch.arange(s)[None, :]
        pad_mask = steps >= src_lengths[:, None]
        positions = (steps + self.pad_id + 1).masked_fill(pad_mask, self.pad_id)
        x = self.embed(src, positions)
        routings = []
        for layer in self.layers:
            x, r = layer(x, pad_mask)
            routings.append(r)
        if self.layer_norm is not None:
            x = self.layer_norm(x)
        return x, pad_mask, routings


class Decoder(_Embedder):
    def __init__(self, cfg: MoAConfig, embed_tokens: nn.Embedding, drop: Dropouts) -> None:
        super().__init__(cfg, embed_tokens, drop)
        self.layers = nn.ModuleList(DecoderLayer(cfg, drop) for _ in range(cfg.decoder_layers))
        self.layer_norm = nn.LayerNorm(cfg.d_model, eps=cfg.layernorm_eps) \
            if cfg.normalize_before else None
        self.output_projection = None if cfg.share_embeddings else \
            nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)

    def output_weight(self) -> Tensor:
        if self.output_projection is None:
            return self.embed_tokens.weight
        return self.output_projection.weight

    def cross_kv(self, enc_out: Tensor) -> List[Tuple[Tensor, Tensor]]:
        """Cross-attention K/V of every layer, computed once per sentence."""
        return [layer.encoder_attn.project_kv(enc_out) for layer in self.layers]

    def _finish(self, x: Tensor) -> Tensor:
        if self.layer_norm is not None:
            x = self.layer_norm(x)
        return F.linear(x, self.output_weight())

    def forward(self, prev: Tensor, tgt_lengths: Optional[Tensor], enc_out: Tensor,
                enc_pad_mask: Tensor) -> Tuple[Tensor, List[Routing], List[Routing]]:
        """Whole target at once (training, scoring). prev (B, T) decoder inputs
        (decoder_start_id then the target without its last token), tgt_lengths
        (B,) or None. Returns logits (B, T, V) and per-layer self/cross routing."""
        t = prev.shape[1]
        steps = torch.arange(t)[None, :]
        real = None if tgt_lengths is None else steps < tgt_lengths[:, None]
        x = self.embed(prev, (steps + self.pad_id + 1).expand_as(prev))
        r_self, r_cross = [], []
        for layer, kv in zip(self.layers, self.cross_kv(enc_out)):
            x, rs, rc = layer(x, kv, enc_pad_mask, real)
            r_self.append(rs)
            r_cross.append(rc)
        return self._finish(x), r_self, r_cross

    def step(self, tokens: Tensor, t: int, cache: "DecoderCache") -> Tuple[Tensor, Tensor]:
        """One incremental step: tokens (R,) at decoder position t. Returns
        float32 log-probs (R, V) and (R,) bool: a router near-tie in this row."""
        x = self.embed(tokens[:, None], torch.tensor([[self.pad_id + 1 + t]]))
        near = torch.zeros(tokens.shape[0], dtype=torch.bool)
        for i, layer in enumerate(self.layers):
            x, rs, rc = layer(x, (cache.cross_k[i], cache.cross_v[i]), cache.enc_pad_mask,
                              None, cache.self_kv[i])
            near |= rs.near_tie()[:, 0] | rc.near_tie()[:, 0]
        return torch.log_softmax(self._finish(x)[:, 0].float(), dim=-1), near


class DecoderCache:
    """Per-row decoder state: self-attention K/V (h floats each per token per
    layer) and the cross-attention K/V and mask of the row's sentence."""

    def __init__(self, cross: List[Tuple[Tensor, Tensor]], enc_pad_mask: Tensor) -> None:
        self.cross_k = [k for k, _ in cross]
        self.cross_v = [v for _, v in cross]
        self.enc_pad_mask = enc_pad_mask
        self.self_kv: List[Dict[str, Tensor]] = [{} for _ in cross]

    def reorder(self, rows: Tensor) -> None:
        """Keeps rows `rows` (in that order): beam reordering and retiring."""
        self.cross_k = [k.index_select(0, rows) for k in self.cross_k]
        self.cross_v = [v.index_select(0, rows) for v in self.cross_v]
        self.enc_pad_mask = self.enc_pad_mask.index_select(0, rows)
        for kv in self.self_kv:
            for name in list(kv):
                kv[name] = kv[name].index_select(0, rows)


# --- the whole model --------------------------------------------------------------------

class MoATransformer(nn.Module):
    def __init__(self, cfg: MoAConfig, dropout: float = 0.0, attention_dropout: float = 0.0,
                 activation_dropout: float = 0.0) -> None:
        super().__init__()
        self.cfg = cfg
        drop = Dropouts(dropout, attention_dropout, activation_dropout)
        enc_embed = nn.Embedding(cfg.vocab_size, cfg.d_model, padding_idx=cfg.pad_id)
        dec_embed = enc_embed if cfg.share_embeddings else \
            nn.Embedding(cfg.vocab_size, cfg.d_model, padding_idx=cfg.pad_id)
        self.encoder = Encoder(cfg, enc_embed, drop)
        self.decoder = Decoder(cfg, dec_embed, drop)

    # -- loading and saving (the spec §3 names are the state_dict keys) --

    @classmethod
    def from_dir(cls, path: str, **dropouts: float) -> "MoATransformer":
        raw, tensors, _ = moa_io.load_model_dir(path)
        model = cls(MoAConfig.from_dict(raw), **dropouts)
        model.load_tensors(tensors)
        return model.eval()

    def load_tensors(self, tensors: Dict[str, np.ndarray]) -> None:
        state = {k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in tensors.items()}
        if self.cfg.share_embeddings:
            state.pop("decoder.output_projection.weight", None)
            state.setdefault("decoder.embed_tokens.weight", state["encoder.embed_tokens.weight"])
        self.load_state_dict(state, strict=True)

    def model_tensors(self) -> Dict[str, np.ndarray]:
        """The tensors of a model directory (shared tables stored once)."""
        out = {k: v.detach().float().cpu().numpy() for k, v in self.state_dict().items()}
        if self.cfg.share_embeddings:
            out.pop("decoder.embed_tokens.weight", None)
        return out

    # -- training interface --

    def forward(self, src: Tensor, src_lengths: Tensor, prev: Tensor,
                tgt_lengths: Optional[Tensor] = None) -> Tuple[Tensor, Dict[str, List[Routing]]]:
        """Teacher forcing. Returns logits (B, T, V) and the routing of every
        MoA layer: {'encoder': [...], 'decoder_self': [...], 'decoder_cross': [...]}
        (each Routing has logits/probs for switch and z-losses, and `real`)."""
        enc, pad_mask, r_enc = self.encoder(src, src_lengths)
        logits, r_self, r_cross = self.decoder(prev, tgt_lengths, enc, pad_mask)
        return logits, {"encoder": r_enc, "decoder_self": r_self, "decoder_cross": r_cross}


# --- batching helpers ---------------------------------------------------------------------

def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int) -> Tuple[Tensor, Tensor]:
    """Right-padded (B, L) long tensor and lengths (B,)."""
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    out = torch.full((len(seqs), max(1, int(lengths.max()))), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, :len(s)] = torch.tensor(list(s), dtype=torch.long)
    return out, lengths


def decoder_inputs(targets: Sequence[Sequence[int]], cfg: MoAConfig) -> Tuple[Tensor, Tensor, Tensor]:
    """targets (eos included) -> (prev (B, T), gold (B, T), lengths (B,))."""
    gold, lengths = pad_batch(targets, cfg.pad_id)
    prev = torch.cat([torch.full((gold.shape[0], 1), cfg.decoder_start_id, dtype=torch.long),
                      gold[:, :-1]], dim=1)
    return prev, gold, lengths


# --- traces -----------------------------------------------------------------------------

def _trace_entries(r: Routing, row: int, n: int) -> List[Dict[str, Any]]:
    experts = r.experts[row, :n].tolist()
    gates = r.gates[row, :n].tolist()
    margins = [None] * n if r.margin is None else r.margin[row, :n].tolist()
    return [{"experts": e, "gates": g, "margin": m} for e, g, m in zip(experts, gates, margins)]


def build_trace(r_enc: List[Routing], enc_row: int, src_len: int, r_self: List[Routing],
                r_cross: List[Routing], dec_row: int, tgt_len: int) -> Dict[str, Any]:
    """Spec §7 trace of one sentence/hypothesis from forced-decoding routings."""
    return {"encoder": [_trace_entries(r, enc_row, src_len) for r in r_enc],
            "decoder_self": [_trace_entries(r, dec_row, tgt_len) for r in r_self],
            "decoder_cross": [_trace_entries(r, dec_row, tgt_len) for r in r_cross]}


def first_router_near_tie(r_enc: List[Routing], enc_row: int, r_self: List[Routing],
                          r_cross: List[Routing], dec_row: int, tgt_len: int) -> Optional[int]:
    """0 if the encoder has a router near-tie, else the first decoder position
    with one (any layer, self or cross), else None."""
    if any(bool(r.near_tie()[enc_row].any()) for r in r_enc):
        return 0
    near = torch.zeros(tgt_len, dtype=torch.bool)
    for r in r_self + r_cross:
        near |= r.near_tie()[dec_row, :tgt_len]
    hits = near.nonzero()
    return int(hits[0]) if len(hits) else None


# --- scoring (forced decoding) -------------------------------------------------------------

@dataclass
class ScoreResult:
    token_logprobs: List[float]
    log_prob: float
    router_near_tie_pos: Optional[int]
    trace: Optional[Dict[str, Any]] = None


@torch.no_grad()
def score_batch(model: MoATransformer, srcs: Sequence[Sequence[int]],
                tgts: Sequence[Sequence[int]], trace: bool = False) -> List[ScoreResult]:
    """Per-token log-probs of each target (eos included) given its source."""
    cfg = model.cfg
    src, src_len = pad_batch(srcs, cfg.pad_id)
    prev, gold, tgt_len = decoder_inputs(tgts, cfg)
    enc, pad_mask, r_enc = model.encoder(src, src_len)
    logits, r_self, r_cross = model.decoder(prev, tgt_len, enc, pad_mask)
    lprobs = torch.log_softmax(logits.float(), dim=-1)
    tok = lprobs.gather(-1, gold[..., None])[..., 0]
    out = []
    for i, (s, t) in enumerate(zip(srcs, tgts)):
        lps = tok[i, :len(t)].tolist()
        res = ScoreResult(lps, _dsum(lps),
                          first_router_near_tie(r_enc, i, r_self, r_cross, i, len(t)))
        if trace:
            res.trace = build_trace(r_enc, i, len(s), r_self, r_cross, i, len(t))
        out.append(res)
    return out


def _dsum(values: Sequence[float]) -> float:
    """Sum accumulated in double, left to right (as the engines do)."""
    total = 0.0
    for v in values:
        total += v
    return total


# --- search ---------------------------------------------------------------------------------

@dataclass
class SearchOptions:
    beam: int = 4
    nbest: int = 1
    length_penalty: float = 1.0
    max_length: int = 0          # 0: per sentence min(max_positions-2, 2*src_len+10)
    min_length: int = 1
    no_unk: bool = False
    trace: bool = False


@dataclass
class Hypothesis:
    ids: List[int]               # eos included
    token_logprobs: List[float]
    log_prob: float
    score: float
    trace: Optional[Dict[str, Any]] = None


@dataclass
class Translation:
    hypotheses: List[Hypothesis]
    near_tie_step: Optional[int] = None
    near_tie_kind: Optional[str] = None  # "search" or "router"

    def note_near_tie(self, step: int, kind: str) -> None:
        if self.near_tie_step is None or step < self.near_tie_step:
            self.near_tie_step, self.near_tie_kind = step, kind


def default_max_length(cfg: MoAConfig, src_len: int) -> int:
    """Spec §4; src_len counts the eos."""
    return min(cfg.max_positions - 2, 2 * src_len + 10)


def _mask_logprobs(lprobs: Tensor, t: int, at_max: Tensor, cfg: MoAConfig,
                   opts: SearchOptions) -> Tensor:
    """Spec §4 masking after the log-softmax; at_max (R,) rows that may only
    produce eos now."""
    lprobs[:, cfg.pad_id] = float("-inf")
    lprobs[:, cfg.bos_id] = float("-inf")
    if opts.no_unk:
        lprobs[:, cfg.unk_id] = float("-inf")
    if t < opts.min_length:
        lprobs[:, cfg.eos_id] = float("-inf")
    if bool(at_max.any()):
        eos = lprobs[at_max, cfg.eos_id].clone()
        lprobs[at_max] = float("-inf")
        lprobs[at_max, cfg.eos_id] = eos
    return lprobs


def _encode_batch(model: MoATransformer, srcs: Sequence[Sequence[int]], beam: int):
    cfg = model.cfg
    src, src_len = pad_batch(srcs, cfg.pad_id)
    enc, pad_mask, r_enc = model.encoder(src, src_len)
    enc_near = torch.zeros(len(srcs), dtype=torch.bool)
    for r in r_enc:
        enc_near |= r.near_tie().any(dim=1)
    cross = model.decoder.cross_kv(enc)
    if beam > 1:
        cross = [(k.repeat_interleave(beam, 0), v.repeat_interleave(beam, 0)) for k, v in cross]
        pad_mask = pad_mask.repeat_interleave(beam, 0)
    return DecoderCache(cross, pad_mask), enc_near


def _normalised(log_prob: float, length: int, lenpen: float) -> float:
    return log_prob / (length ** lenpen)


@torch.no_grad()
def greedy_batch(model: MoATransformer, srcs: Sequence[Sequence[int]],
                 opts: SearchOptions) -> List[Translation]:
    cfg = model.cfg
    n = len(srcs)
    cache, enc_near = _encode_batch(model, srcs, 1)
    results = [Translation([]) for _ in range(n)]
    for i in range(n):
        if enc_near[i]:
            results[i].note_near_tie(0, "router")
    max_len = torch.tensor([opts.max_length or default_max_length(cfg, len(s)) for s in srcs])
    alive = torch.arange(n)                               # sentence of each row
    tokens = torch.full((n,), cfg.decoder_start_id, dtype=torch.long)
    hist_ids: List[List[int]] = [[] for _ in range(n)]
    hist_lp: List[List[float]] = [[] for _ in range(n)]
    t = 0
    while len(alive):
        lprobs, rnear = model.decoder.step(tokens, t, cache)
        lprobs = _mask_logprobs(lprobs, t, max_len[alive] == t, cfg, opts)
        top = torch.topk(lprobs, 2, dim=-1).values
        best = torch.argmax(lprobs, dim=-1)               # first maximum: lower id
        best_lp = lprobs.gather(1, best[:, None])[:, 0]
        gap = top[:, 0] - top[:, 1]
        keep = []
        for row, sent in enumerate(alive.tolist()):
            res = results[sent]
            if rnear[row]:
                res.note_near_tie(t, "router")
            elif gap[row] < NEAR_TIE:
                res.note_near_tie(t, "search")
            tok = int(best[row])
            hist_ids[sent].append(tok)
            hist_lp[sent].append(float(best_lp[row]))
            if tok == cfg.eos_id:
                lp = _dsum(hist_lp[sent])
                res.hypotheses.append(Hypothesis(
                    hist_ids[sent], hist_lp[sent], lp,
                    _normalised(lp, len(hist_ids[sent]), opts.length_penalty)))
            else:
                keep.append(row)
        if len(keep) < len(alive):
            rows = torch.tensor(keep, dtype=torch.long)
            cache.reorder(rows)
            alive = alive[rows]
            best = best[rows]
        tokens = best
        t += 1
    return results


def _take_top(cand: Tensor, m: int) -> Tuple[Tensor, Tensor]:
    """Best m entries of each row of cand (rows, N), ranked by value, ties by
    lower index (deterministic, unlike a bare topk)."""
    n = cand.shape[1]
    m = min(m, n)
    fetch = min(n, m + 8)
    vals, idx = torch.topk(cand, fetch, dim=1, sorted=True)
    ambiguous = vals[:, -1] == vals[:, m - 1] if fetch < n else torch.zeros(len(cand), dtype=torch.bool)
    if bool(ambiguous.any()):  # ties reach past what we fetched: full stable sort
        rows = ambiguous.nonzero()[:, 0]
        order = torch.sort(cand[rows], dim=1, descending=True, stable=True).indices[:, :fetch]
        vals[rows] = cand[rows].gather(1, order)
        idx[rows] = order
    # Among the fetched, order by (value desc, index asc).
    by_idx = torch.sort(idx, dim=1, stable=True).indices
    idx, vals = idx.gather(1, by_idx), vals.gather(1, by_idx)
    by_val = torch.sort(vals, dim=1, descending=True, stable=True).indices
    return vals.gather(1, by_val)[:, :m], idx.gather(1, by_val)[:, :m]


def _beam_outcome(cands: List[Tuple[int, int]], beam: int, n_finished: int,
                  eos: int) -> Tuple[List[Tuple[int, int]], List[Tuple[int, int]]]:
    """Spec §4 for one sentence and step: cands is the ranked list of the
    2·beam candidates (hyp, token). Returns (finishing, staying live)."""
    finishing, live = [], []
    for rank, (hyp, tok) in enumerate(cands):
        if tok == eos:
            if rank < beam and n_finished + len(finishing) < beam:
                finishing.append((hyp, tok))
        elif len(live) < beam:
            live.append((hyp, tok))
    return finishing, live


def _search_near_tie(vals: List[float], cands: List[Tuple[int, int]], beam: int,
                     n_finished: int, eos: int) -> bool:
    """Decisive gaps of one beam step: the beam and 2·beam cuts (spec §5),
    plus any adjacent pair within the candidates whose swap would change
    which hypotheses finish or stay live."""
    def gap(i: int) -> float:
        a, b = vals[i], vals[i + 1]
        return a - b if b != float("-inf") else float("inf")

    m = 2 * beam
    for cut in (beam - 1, m - 1):
        if cut + 1 < len(vals) and gap(cut) < NEAR_TIE:
            return True
    base = _beam_outcome(cands[:m], beam, n_finished, eos)
    for i in range(min(m, len(vals) - 1)):
        if gap(i) < NEAR_TIE:
            swapped = list(cands)
            swapped[i], swapped[i + 1] = swapped[i + 1], swapped[i]
            alt = _beam_outcome(swapped[:m], beam, n_finished, eos)
            if sorted(alt[0]) != sorted(base[0]) or sorted(alt[1]) != sorted(base[1]):
                return True
    return False


def _ranking_near_tie(hyps: List[Hypothesis]) -> Optional[int]:
    """Adjacent finished hypotheses (ranked) whose scores are within NEAR_TIE
    could be ranked the other way: returns the first step at which such a
    pair differs, else None."""
    step = None
    for a, b in zip(hyps, hyps[1:]):
        if abs(a.score - b.score) < NEAR_TIE:
            diverge = next((i for i, (x, y) in enumerate(zip(a.ids, b.ids)) if x != y),
                           min(len(a.ids), len(b.ids)))
            step = diverge if step is None else min(step, diverge)
    return step


@torch.no_grad()
def beam_batch(model: MoATransformer, srcs: Sequence[Sequence[int]],
               opts: SearchOptions) -> List[Translation]:
    """Beam search exactly by spec §4, batched over sentences and beams."""
    cfg, k, v = model.cfg, opts.beam, model.cfg.vocab_size
    n = len(srcs)
    cache, enc_near = _encode_batch(model, srcs, k)
    results = [Translation([]) for _ in range(n)]
    for i in range(n):
        if enc_near[i]:
            results[i].note_near_tie(0, "router")
    finished: List[List[Tuple[Hypothesis, int]]] = [[] for _ in range(n)]
    max_len = [opts.max_length or default_max_length(cfg, len(s)) for s in srcs]
    alive = list(range(n))                       # sentences; each owns k rows
    tokens = torch.full((n * k,), cfg.decoder_start_id, dtype=torch.long)
    hist_ids = torch.zeros((n * k, 0), dtype=torch.long)
    hist_lp = torch.zeros((n * k, 0), dtype=torch.float32)
    cum = torch.zeros(n * k, dtype=torch.float64)
    t = 0
    while alive:
        lprobs, rnear = model.decoder.step(tokens, t, cache)
        at_max = torch.tensor([max_len[s] == t for s in alive]).repeat_interleave(k)
        lprobs = _mask_logprobs(lprobs, t, at_max, cfg, opts)
        cand = cum[:, None] + lprobs.double()                 # (rows, V)
        cand = cand.view(len(alive), k, v)
        if t == 0:                                            # one hypothesis only
            cand[:, 1:, :] = float("-inf")
        vals, idx = _take_top(cand.view(len(alive), k * v), 2 * k + 1)
        vals_l, idx_l = vals.tolist(), idx.tolist()
        rnear_l = rnear.view(len(alive), k).any(dim=1).tolist()
        src_rows, new_tok, keep_alive = [], [], []
        for j, sent in enumerate(alive):
            res = results[sent]
            cands = [(x // v, x % v) for x in idx_l[j]]
            if rnear_l[j]:
                res.note_near_tie(t, "router")
            elif res.near_tie_step is None and _search_near_tie(
                    vals_l[j], cands, k, len(finished[sent]), cfg.eos_id):
                res.note_near_tie(t, "search")
            fin, live = _beam_outcome(cands[:2 * k], k, len(finished[sent]), cfg.eos_id)
            for rank, (hyp, tok) in enumerate(fin):
                row = j * k + hyp
                ids = hist_ids[row].tolist() + [tok]
                lps = hist_lp[row].tolist() + [float(lprobs[row, tok])]
                lp = float(cum[row]) + float(lprobs[row, tok])
                finished[sent].append((Hypothesis(ids, lps, lp, _normalised(
                    lp, len(ids), opts.length_penalty)), len(finished[sent])))
            if len(finished[sent]) >= k or t >= max_len[sent]:
                continue
            keep_alive.append(sent)
            for hyp, tok in live:
                src_rows.append(j * k + hyp)
                new_tok.append(tok)
        if not keep_alive:
            break
        rows = torch.tensor(src_rows, dtype=torch.long)
        tok = torch.tensor(new_tok, dtype=torch.long)
        step_lp = lprobs[rows, tok]
        cum = cum[rows] + step_lp.double()
        hist_ids = torch.cat([hist_ids[rows], tok[:, None]], dim=1)
        hist_lp = torch.cat([hist_lp[rows], step_lp[:, None]], dim=1)
        cache.reorder(rows)
        tokens = tok
        alive = keep_alive
        t += 1
    for sent in range(n):
        ranked = sorted(finished[sent], key=lambda p: (-p[0].score, p[1]))
        hyps = [h for h, _ in ranked]
        tie = _ranking_near_tie(hyps[:opts.nbest + 1])  # pairs that reach the output
        if tie is not None:
            results[sent].note_near_tie(tie, "search")
        results[sent].hypotheses = hyps[:opts.nbest]
    return results


@torch.no_grad()
def add_traces(model: MoATransformer, srcs: Sequence[Sequence[int]],
               results: List[Translation]) -> None:
    """Routing traces of every returned hypothesis, by one forced-decoding
    pass (mathematically the same routing as during the search)."""
    cfg = model.cfg
    src, src_len = pad_batch(srcs, cfg.pad_id)
    enc, pad_mask, r_enc = model.encoder(src, src_len)
    owners = [i for i, r in enumerate(results) for _ in r.hypotheses]
    hyps = [h for r in results for h in r.hypotheses]
    if not hyps:
        return
    rows = torch.tensor(owners, dtype=torch.long)
    prev, _, tgt_len = decoder_inputs([h.ids for h in hyps], cfg)
    _, r_self, r_cross = model.decoder(prev, tgt_len, enc[rows], pad_mask[rows])
    for j, (i, h) in enumerate(zip(owners, hyps)):
        h.trace = build_trace(r_enc, i, len(srcs[i]), r_self, r_cross, j, len(h.ids))


def translate_batch(model: MoATransformer, srcs: Sequence[Sequence[int]],
                    opts: SearchOptions) -> List[Translation]:
    """srcs: token ids with the eos appended. Beam 1 is greedy."""
    search = greedy_batch if opts.beam == 1 else beam_batch
    results = search(model, srcs, opts)
    if opts.trace:
        add_traces(model, srcs, results)
    return results


# --- text ---------------------------------------------------------------------------------

class Tokenizer:
    """Pieces mapped through vocab.txt (spec §7): SentencePiece's, or for a
    "tokenizer": "subword-nmt" model the Moses rules of each side's language
    and the merges of bpecodes (train/moses.py, train/bpe.py: the Python twins
    of the C tokenizer)."""

    BPE_UNK_TEXT = "\u2047"   # how <unk> reads in subword-nmt output, as in SentencePiece's

    def __init__(self, model_dir: str, cfg: MoAConfig) -> None:
        raw = cfg.to_dict()
        self.kind = raw.get("tokenizer", "sentencepiece")
        if self.kind == "subword-nmt":
            import bpe
            import moses
            self.bpe = bpe.BPE(os.path.join(model_dir, moa_io.BPE_CODES_FILE))
            m = raw.get("moses", {})
            opts = {} if m is False else m
            self.moses: Optional[List[moses.Moses]] = None
            if m is not False and opts.get("tokenize", True):
                self.moses = [moses.Moses(raw[k], opts.get("aggressive_dash_splits", True),
                                          opts.get("escape", True),
                                          opts.get("normalize_punctuation", True),
                                          opts.get("remove_non_printing", True))
                              for k in ("source_lang", "target_lang")]
        else:
            import sentencepiece as spm
            self.sp = spm.SentencePieceProcessor(
                model_file=os.path.join(model_dir, moa_io.SPM_FILE))
        self.vocab = moa_io.read_vocab(os.path.join(model_dir, moa_io.VOCAB_FILE), cfg.vocab_size)
        self.ids: Dict[str, int] = {}
        for i, piece in enumerate(self.vocab):
            self.ids.setdefault(piece, i)
        self.cfg = cfg

    def pieces(self, text: str, side: str = "source") -> List[str]:
        if self.kind != "subword-nmt":
            return self.sp.encode(text, out_type=str)
        if text.strip(" \t\n\r\v\f") == "":
            return []
        if self.moses is None:
            words = "".join(" " if c in " \t\n\r\v\f" else c for c in text)
        else:
            words = self.moses[0 if side == "source" else 1].tokenize(text)
        return self.bpe.segment(words).split()

    def encode(self, text: str, side: str = "source") -> List[int]:
        """Ids of text with the eos appended; side "target" for a translation
        to score (the Moses rules of the target language)."""
        return [self.ids.get(p, self.cfg.unk_id) for p in self.pieces(text, side)] + \
            [self.cfg.eos_id]

    def decode(self, ids: Sequence[int]) -> str:
        drop = {self.cfg.bos_id, self.cfg.pad_id, self.cfg.eos_id}
        if self.kind != "subword-nmt":
            return self.sp.decode_pieces([self.vocab[i] for i in ids if i not in drop])
        import bpe
        words = bpe.unsegment([self.BPE_UNK_TEXT if i == self.cfg.unk_id else self.vocab[i]
                               for i in ids if i not in drop])
        return words if self.moses is None else self.moses[1].detokenize(words)


class IdsInput:
    """--ids: input lines hold model ids (space-separated, eos not included)
    instead of text; decoding still goes through the model's tokenizer."""

    def __init__(self, tok: Tokenizer) -> None:
        self.tok = tok

    def encode(self, text: str, side: str = "source") -> List[int]:
        ids = [int(x) for x in text.split()]
        bad = [i for i in ids if not 0 <= i < self.tok.cfg.vocab_size]
        if bad:
            raise SystemExit(f"error: id {bad[0]} is not a vocabulary id")
        return ids + [self.tok.cfg.eos_id]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode(ids)


# --- command line -------------------------------------------------------------------------

def _read_lines(path: Optional[str]) -> List[str]:
    f = open(path, encoding="utf-8", newline="\n") if path and path != "-" else sys.stdin
    with f:
        return [ln.rstrip("\n").rstrip("\r") for ln in f]


def _batches(lengths: List[int], size: int) -> List[List[int]]:
    """Indices sorted by length (stable), cut into batches of `size`."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[i:i + size] for i in range(0, len(order), size)]


def _check_length(ids: List[int], cfg: MoAConfig, what: str, line: int) -> None:
    if len(ids) > cfg.max_positions:
        raise SystemExit(f"error: line {line + 1}: {what} has {len(ids)} tokens (eos included), "
                         f"max_positions is {cfg.max_positions}")


def run_translate(model: MoATransformer, tok: Any, lines: List[str],
                  opts: SearchOptions, batch: int, as_json: bool) -> None:
    srcs = [tok.encode(ln) for ln in lines]
    for i, s in enumerate(srcs):
        _check_length(s, model.cfg, "source", i)
    results: List[Optional[Translation]] = [None] * len(srcs)
    for b in _batches([len(s) for s in srcs], batch):
        for i, r in zip(b, translate_batch(model, [srcs[i] for i in b], opts)):
            results[i] = r
    for i, r in enumerate(results):
        if not as_json:
            if opts.nbest == 1:
                print(tok.decode(r.hypotheses[0].ids) if r.hypotheses else "")
            for h in r.hypotheses if opts.nbest > 1 else []:
                print(f"{i}\t{h.score}\t{tok.decode(h.ids)}")
            continue
        hyps = []
        for h in r.hypotheses:
            d = {"ids": h.ids, "text": tok.decode(h.ids), "score": h.score,
                 "log_prob": h.log_prob, "token_logprobs": h.token_logprobs}
            if h.trace is not None:
                d["trace"] = h.trace
            hyps.append(d)
        print(json.dumps({"index": i, "source_ids": srcs[i], "hypotheses": hyps,
                          "near_tie": {"step": r.near_tie_step, "kind": r.near_tie_kind}},
                         ensure_ascii=False))


def run_score(model: MoATransformer, tok: Any, lines: List[str], trace: bool,
              batch: int, as_json: bool) -> None:
    pairs = [(ln.split("\t", 1) + [""])[:2] for ln in lines]
    srcs = [tok.encode(s) for s, _ in pairs]
    tgts = [tok.encode(t, "target") for _, t in pairs]
    for i, (s, t) in enumerate(zip(srcs, tgts)):
        _check_length(s, model.cfg, "source", i)
        _check_length(t, model.cfg, "target", i)
    results: List[Optional[ScoreResult]] = [None] * len(srcs)
    for b in _batches([len(s) + len(t) for s, t in zip(srcs, tgts)], batch):
        out = score_batch(model, [srcs[i] for i in b], [tgts[i] for i in b], trace)
        for i, r in zip(b, out):
            results[i] = r
    for i, r in enumerate(results):
        if not as_json:
            print(r.log_prob)
            continue
        d = {"index": i, "source_ids": srcs[i], "target_ids": tgts[i],
             "token_logprobs": r.token_logprobs, "log_prob": r.log_prob,
             "router_near_tie_pos": r.router_near_tie_pos}
        if r.trace is not None:
            d["trace"] = r.trace
        print(json.dumps(d, ensure_ascii=False))


def build_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Translate or score with the PyTorch reference of a MoA model "
                    "directory (docs/moa-spec.md). Reads one sentence per line.")
    p.add_argument("--model", required=True, help="model directory (config.json, "
                   "model.safetensors, vocab.txt, sentencepiece.model)")
    p.add_argument("--input", default="-", help="input text file, one sentence a line; "
                   "an empty line is translated too (default or \"-\": standard input)")
    p.add_argument("--beam", type=int, default=4, help="beam size 1-16; 1 = greedy (default 4)")
    p.add_argument("--nbest", type=int, default=1,
                   help="hypotheses returned per sentence, 1..beam (default 1); as text, "
                        "N lines per input line: INDEX<TAB>SCORE<TAB>TEXT, best first")
    p.add_argument("--length-penalty", type=float, default=1.0,
                   help="rank by score / length^F, length counting eos (default 1.0)")
    p.add_argument("--max-length", type=int, default=0,
                   help="most real tokens per translation, 1..max_positions-2 (default: "
                        "min(max_positions-2, 2*source_length+10) per sentence)")
    p.add_argument("--min-length", type=int, default=1,
                   help="eos is forbidden before this many real tokens (default 1)")
    p.add_argument("--no-unk", action="store_true", help="never produce <unk>")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="PyTorch intra-op threads (default: all cores)")
    p.add_argument("--batch", type=int, default=32,
                   help="sentences decoded together (sorted by length; default 32)")
    p.add_argument("--score", metavar="FILE.tsv",
                   help="score mode: forced decoding of source<TAB>target lines "
                        "instead of translating --input; prints each pair's log-prob "
                        "(eos included), or with --json its per-token log-probs")
    p.add_argument("--trace", action="store_true",
                   help="add routing traces (experts, gates, router margin per layer and "
                        "position) to the JSON output; implies --json")
    p.add_argument("--ids", action="store_true",
                   help="the input (and --score pairs) holds model ids, space-separated "
                        "without eos, instead of text: scores exactly the ids another "
                        "program produced")
    p.add_argument("--json", action="store_true",
                   help="one JSON object per input line (ids, scores, token log-probs, "
                        "near-tie info) instead of plain text")
    return p


def check_args(p: argparse.ArgumentParser, a: argparse.Namespace, cfg: MoAConfig) -> None:
    if not 1 <= a.beam <= 16:
        p.error("--beam must be 1..16")
    if not 1 <= a.nbest <= a.beam:
        p.error("--nbest must be 1..beam")
    if not 0 <= a.length_penalty <= 10:
        p.error("--length-penalty must be 0..10")
    if a.max_length and not 1 <= a.max_length <= cfg.max_positions - 2:
        p.error(f"--max-length must be 1..{cfg.max_positions - 2} for this model")
    if a.min_length < 0 or (a.max_length and a.min_length > a.max_length):
        p.error("--min-length must be 0..max-length")
    if a.threads < 1 or a.batch < 1:
        p.error("--threads and --batch must be positive")


def main(argv: Optional[List[str]] = None) -> int:
    p = build_arg_parser()
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    try:
        model = MoATransformer.from_dir(a.model)
    except moa_io.ModelFormatError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    check_args(p, a, model.cfg)
    a.json = a.json or a.trace
    tok: Any = Tokenizer(a.model, model.cfg)
    if a.ids:
        tok = IdsInput(tok)
    if a.score:
        run_score(model, tok, _read_lines(a.score), a.trace, a.batch, a.json)
    else:
        opts = SearchOptions(a.beam, a.nbest, a.length_penalty, a.max_length,
                             a.min_length, a.no_unk, a.trace)
        run_translate(model, tok, _read_lines(a.input), opts, a.batch, a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
