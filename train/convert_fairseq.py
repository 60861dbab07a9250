#!/usr/bin/python3
"""Converts a checkpoint of the paper's fairseq MoA code into a model directory
(docs/moa-spec.md §3): config.json, model.safetensors, vocab.txt and the
tokenizer's file, sentencepiece.model or (subword-nmt BPE) bpecodes.

    /usr/bin/python3 train/convert_fairseq.py --checkpoint checkpoint_best.pt \\
        --dict data-bin/dict.en.txt --spm sentencepiece.model --out weights/moa
    # the paper's own pipeline (fairseq's prepare-wmt14en2de.sh): Moses
    # tokenisation with -a, subword-nmt BPE, a joined dictionary
    /usr/bin/python3 train/convert_fairseq.py --checkpoint checkpoint_best.pt \\
        --dict data-bin/dict.en.txt --bpe-codes wmt14_en_de/code --out weights/moa-wmt

With --bpe-codes the model directory says "tokenizer": "subword-nmt": the
server cuts text with the Moses rules of the source language (and, to score,
the target language), normalising punctuation and splitting hyphens as that
recipe does, then applies the merges; it detokenizes output with the target
language's rules. The languages come from the checkpoint's task arguments
(source_lang/target_lang) or --source-lang/--target-lang; Moses rules exist
here for en and de (--no-moses for text that is tokenized already).

Needs neither fairseq nor omegaconf: classes of modules that cannot be
imported are replaced by stand-ins that keep their data (listed as
"skipped: ..."). Tensor names are already the spec's; the converter drops the
training-only entries (`*.q_proj.w_noise`, `*._float_tensor`,
`encoder.version`/`decoder.version`, the `*.ffd.N.*` aliases of fc1/fc2 after
checking that they equal them) and the tied copies of the shared embedding.

It refuses, naming each offending option or tensor, and writes nothing:
  - a missing structural hyper-parameter (encoder_embed_dim, encoder_layers,
    decoder_layers, encoder_ffn_embed_dim, encoder_attention_heads,
    num_expert, head_dim);
  - decoder_attention_heads != encoder_attention_heads (one top_k),
    decoder_embed_dim != encoder_embed_dim, decoder_ffn_embed_dim !=
    encoder_ffn_embed_dim, decoder_normalize_before != encoder_normalize_before;
  - encoder_learned_pos / decoder_learned_pos, no_token_positional_embeddings,
    layernorm_embedding, ffd_type moe (a mixture-of-experts FFN; the authors'
    code builds the dense FFN for every other value),
    NormFormer scale_attn / scale_fc / scale_heads / scale_resids,
    share_decoder_input_output_embed without share_all_embeddings,
    adaptive_input / adaptive_softmax_cutoff / tie_adaptive_weights,
    no_cross_attention, cross_self_attention, decoder_input_dim /
    decoder_output_dim != decoder_embed_dim, encoder/decoder_layers_to_keep,
    an activation_fn other than relu or gelu;
  - a state-dict entry it does not understand, an ffd.N alias that equals
    neither fc1 nor fc2, shared embeddings that differ, shapes that disagree
    with the hyper-parameters, NaN/inf weights;
  - a dict.txt whose ids do not match the embedding rows (beyond fairseq's
    padding to a multiple of 8 with madeupwordNNNN, which is added back), or
    most of whose tokens are not pieces of --spm (or cannot come out of the
    merges of --bpe-codes);
  - with --bpe-codes, a source or target language without Moses rules here.
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
import shutil
import sys
import tempfile
from collections import Counter
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fairseq_ckpt  # noqa: E402
import moa_io  # noqa: E402

REQUIRED = ["encoder_embed_dim", "encoder_layers", "decoder_layers",
            "encoder_ffn_embed_dim", "encoder_attention_heads", "num_expert", "head_dim"]

# Defaults of the paper's moa_transformer_base architecture for the rest.
DEFAULTS: Dict[str, Any] = {
    "encoder_normalize_before": False, "activation_fn": "relu",
    "share_all_embeddings": False, "share_decoder_input_output_embed": False,
    "no_scale_embedding": False, "max_source_positions": 1024,
    "max_target_positions": 1024,
}

# Boolean options that the model directory cannot express: name -> why.
UNSUPPORTED_FLAGS = {
    "encoder_learned_pos": "learned positional embeddings (the format has sinusoidal ones only)",
    "decoder_learned_pos": "learned positional embeddings (the format has sinusoidal ones only)",
    "no_token_positional_embeddings": "a model without positional embeddings",
    "layernorm_embedding": "a LayerNorm after the embeddings",
    "scale_attn": "NormFormer attention LayerNorm",
    "scale_fc": "NormFormer feed-forward LayerNorm",
    "scale_heads": "NormFormer per-head scaling",
    "scale_resids": "NormFormer residual scaling",
    "adaptive_input": "adaptive input embeddings",
    "tie_adaptive_weights": "adaptive softmax weights",
    "no_cross_attention": "a decoder without cross-attention",
    "cross_self_attention": "cross+self attention",
}

TRAINING_ONLY_RE = re.compile(
    r"(.*\.q_proj\.w_noise|.*\._float_tensor|(encoder|decoder)\.version)$")
FFD_RE = re.compile(r"((?:encoder|decoder)\.layers\.\d+)\.ffd\.(\d+)\.(weight|bias)$")
PAD_WORD = "madeupword{:04d}"


class ConversionRefused(Exception):
    """The checkpoint uses something the model directory cannot express."""

    def __init__(self, problems: List[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def _truthy(v: Any) -> bool:
    if isinstance(v, str):
        return v.strip().lower() not in ("", "0", "false", "none", "no", "off")
    return bool(v)


def _int(hp: Mapping[str, Any], name: str, problems: List[str]) -> Optional[int]:
    v = hp.get(name)
    try:
        if isinstance(v, bool) or v is None or int(v) != float(v):
            raise ValueError
        return int(v)
    except (TypeError, ValueError):
        problems.append(f"hyper-parameter {name} is {v!r}, not an integer")
        return None


def map_hparams(hp: Mapping[str, Any]) -> Tuple[Dict[str, Any], List[str], List[str]]:
    """Flat fairseq hyper-parameters -> (config.json keys, problems, notes).
    config lacks vocab_size, attention_bias and the language codes."""
    problems: List[str] = []
    notes: List[str] = []
    missing = [k for k in REQUIRED if hp.get(k) is None]
    for k in missing:
        problems.append(f"missing hyper-parameter {k}")
    h = dict(hp)
    for k, v in DEFAULTS.items():
        if h.get(k) is None:
            h[k] = v
            notes.append(f"{k} not in the checkpoint: fairseq default {v!r}")
    ints = {k: (None if k in missing else _int(h, k, problems)) for k in REQUIRED}
    # Decoder values default to the encoder's (the architecture function does).
    for side_key, enc_key in (("decoder_embed_dim", "encoder_embed_dim"),
                              ("decoder_ffn_embed_dim", "encoder_ffn_embed_dim"),
                              ("decoder_attention_heads", "encoder_attention_heads"),
                              ("decoder_normalize_before", "encoder_normalize_before")):
        if h.get(side_key) is None and h.get(enc_key) is not None:
            h[side_key] = h[enc_key]
            notes.append(f"{side_key} not in the checkpoint: taken from {enc_key}")
    for side_key, enc_key, what in (
            ("decoder_attention_heads", "encoder_attention_heads",
             "heads per token (the model directory has one top_k)"),
            ("decoder_embed_dim", "encoder_embed_dim", "embedding dimension"),
            ("decoder_ffn_embed_dim", "encoder_ffn_embed_dim", "feed-forward dimension"),
    ):
        dec = _int(h, side_key, problems) if h.get(side_key) is not None else None
        if dec is not None and ints[enc_key] is not None and dec != ints[enc_key]:
            problems.append(f"{side_key} ({dec}) differs from {enc_key} ({ints[enc_key]}): "
                            f"encoder and decoder must share the {what}")
    if _truthy(h["decoder_normalize_before"]) != _truthy(h["encoder_normalize_before"]):
        problems.append("decoder_normalize_before differs from encoder_normalize_before "
                        "(the model directory has one normalize_before)")
    for name, why in UNSUPPORTED_FLAGS.items():
        if _truthy(h.get(name, False)):
            problems.append(f"{name} is set: {why} is not supported")
    # The authors' layers build a mixture-of-experts FFN for ffd_type "moe" and
    # the dense fc1/fc2 for any other value (their default is "normal").
    ffd = h.get("ffd_type")
    if ffd is not None and str(ffd) == "moe":
        problems.append(f"ffd_type is {ffd!r}: only the dense feed-forward layer "
                        "('normal') is supported, not a mixture-of-experts FFN")
    elif ffd is not None and str(ffd) != "normal":
        notes.append(f"ffd_type is {ffd!r}: the authors' code builds the dense "
                     "feed-forward layer for every value but 'moe'")
    if _truthy(h.get("adaptive_softmax_cutoff")):
        problems.append("adaptive_softmax_cutoff is set: adaptive softmax is not supported")
    for name in ("encoder_layers_to_keep", "decoder_layers_to_keep"):
        if _truthy(h.get(name)):
            problems.append(f"{name} is set: pruned layer stacks are not supported")
    share_all = _truthy(h["share_all_embeddings"])
    if _truthy(h["share_decoder_input_output_embed"]) and not share_all:
        problems.append("share_decoder_input_output_embed is set without "
                        "share_all_embeddings: a decoder embedding tied only to the "
                        "output projection is not supported")
    d = ints["encoder_embed_dim"]
    for name in ("decoder_input_dim", "decoder_output_dim"):
        if h.get(name) is not None and d is not None:
            v = _int(h, name, problems)
            if v is not None and v != d:
                problems.append(f"{name} ({v}) differs from the embedding dimension ({d}): "
                                "projections around the decoder are not supported")
    act = str(h["activation_fn"])
    if act not in ("relu", "gelu"):
        problems.append(f"activation_fn is {act!r}: only relu and gelu (exact erf form) "
                        "are supported")
    maxpos = [_int(h, k, problems) for k in ("max_source_positions", "max_target_positions")]
    if problems:
        return {}, problems, notes
    cfg = {
        "d_model": d, "encoder_layers": ints["encoder_layers"],
        "decoder_layers": ints["decoder_layers"], "ffn_dim": ints["encoder_ffn_embed_dim"],
        "activation": act, "normalize_before": _truthy(h["encoder_normalize_before"]),
        "num_experts": ints["num_expert"], "top_k": ints["encoder_attention_heads"],
        "head_dim": ints["head_dim"], "share_embeddings": share_all,
        "scale_embedding": not _truthy(h["no_scale_embedding"]),
        "max_positions": min(maxpos), "layernorm_eps": 1e-5,
        "bos_id": 0, "pad_id": 1, "eos_id": 2, "unk_id": 3, "decoder_start_id": 2,
    }
    return cfg, problems, notes


def map_state_dict(sd: Mapping[str, Any], cfg: Dict[str, Any]
                   ) -> Tuple[Dict[str, np.ndarray], List[str], Counter]:
    """fairseq state dict -> (model-directory tensors, problems, dropped-entry
    counts by kind). Sets cfg['attention_bias'] and cfg['vocab_size']."""
    problems: List[str] = []
    dropped: Counter = Counter()
    tensors: Dict[str, np.ndarray] = {}
    ffd: Dict[str, Dict[int, Dict[str, np.ndarray]]] = {}
    for name, value in sd.items():
        if not hasattr(value, "detach"):
            problems.append(f"state-dict entry {name} is not a tensor")
            continue
        arr = value.detach().cpu().float().numpy()
        if TRAINING_ONLY_RE.match(name):
            dropped[name.rsplit(".", 1)[-1]] += 1
            continue
        m = FFD_RE.match(name)
        if m:
            ffd.setdefault(m.group(1), {}).setdefault(int(m.group(2)), {})[m.group(3)] = arr
            continue
        tensors[name] = arr
    if "decoder.embed_out" in tensors and "decoder.output_projection.weight" not in tensors:
        tensors["decoder.output_projection.weight"] = tensors.pop("decoder.embed_out")
        dropped["embed_out (renamed to output_projection.weight)"] += 1
    # ffd.N.* aliases: each must equal fc1 or fc2 of its layer; a layer that
    # only has the aliases gets fc1 = the lowest index, fc2 = the highest.
    for layer, entries in sorted(ffd.items()):
        fcs = {fc: {p: tensors.get(f"{layer}.{fc}.{p}") for p in ("weight", "bias")}
               for fc in ("fc1", "fc2")}
        if all(v is None for fc in fcs.values() for v in fc.values()) and len(entries) == 2:
            lo, hi = min(entries), max(entries)
            for fc, idx in (("fc1", lo), ("fc2", hi)):
                for part, arr in entries[idx].items():
                    tensors[f"{layer}.{fc}.{part}"] = arr
            dropped["ffd.N (taken as fc1/fc2)"] += sum(len(e) for e in entries.values())
            continue
        for idx, parts in sorted(entries.items()):
            for part, arr in parts.items():
                if not any(fc[part] is not None and fc[part].shape == arr.shape
                           and np.array_equal(fc[part], arr) for fc in fcs.values()):
                    problems.append(f"state-dict entry {layer}.ffd.{idx}.{part} equals "
                                    f"neither {layer}.fc1.{part} nor {layer}.fc2.{part}")
                else:
                    dropped["ffd.N (aliases of fc1/fc2)"] += 1
    emb = tensors.get("encoder.embed_tokens.weight")
    if emb is None:
        problems.append("state dict has no encoder.embed_tokens.weight")
        return tensors, problems, dropped
    cfg["vocab_size"] = int(emb.shape[0])
    if emb.ndim != 2 or emb.shape[1] != cfg["d_model"]:
        problems.append(f"encoder.embed_tokens.weight has shape {list(emb.shape)}, "
                        f"encoder_embed_dim is {cfg['d_model']}")
    if cfg["share_embeddings"]:
        for name in ("decoder.embed_tokens.weight", "decoder.output_projection.weight"):
            if name in tensors:
                if tensors[name].shape != emb.shape or not np.array_equal(tensors[name], emb):
                    problems.append(f"share_all_embeddings is set but {name} differs "
                                    "from encoder.embed_tokens.weight")
                else:
                    del tensors[name]
                    dropped["tied copy of the shared embedding"] += 1
    biases = [n for n in tensors if n.endswith(("k_proj.bias", "v_proj.bias"))]
    cfg["attention_bias"] = bool(biases)
    try:
        full = moa_io.complete_config({**cfg, "source_lang": "x", "target_lang": "y"},
                                      "hyper-parameters")
    except moa_io.ModelFormatError as e:
        problems.append(str(e))
        return tensors, problems, dropped
    required, optional = moa_io.expected_shapes(full)
    unknown = sorted(set(tensors) - set(required) - set(optional))
    if unknown:
        more = f" (and {len(unknown) - 12} more)" if len(unknown) > 12 else ""
        problems.append("state-dict entries not understood: " + ", ".join(unknown[:12]) + more)
    missing = sorted(set(required) - set(tensors))
    if missing:
        more = f" (and {len(missing) - 12} more)" if len(missing) > 12 else ""
        problems.append("state-dict entries missing for these hyper-parameters: "
                        + ", ".join(missing[:12]) + more)
    for name, shape in {**required, **optional}.items():
        if name in tensors and tuple(tensors[name].shape) != tuple(shape):
            problems.append(f"{name} has shape {list(tensors[name].shape)}, the "
                            f"hyper-parameters imply {list(shape)}")
    for name, arr in tensors.items():
        if not np.all(np.isfinite(arr)):
            problems.append(f"{name} holds NaN or infinity")
    return tensors, problems, dropped


def build_vocab(tokens: List[str], rows: int, dict_path: str
                ) -> Tuple[List[str], List[str], List[str]]:
    """<s> <pad> </s> <unk> + dict.txt tokens, padded with madeupwordNNNN
    entries (fairseq's pad_to_multiple_) up to the embedding rows.
    Returns (vocab, problems, notes)."""
    vocab = fairseq_ckpt.FAIRSEQ_SPECIALS + list(tokens)
    problems: List[str] = []
    notes: List[str] = []
    if len(vocab) > rows or rows - len(vocab) >= 8:
        problems.append(f"{dict_path}: {len(tokens)} tokens + 4 specials = {len(vocab)} ids, "
                        f"but the embedding has {rows} rows (wrong dictionary?)")
        return vocab, problems, notes
    present = set(vocab)
    i = added = 0
    while len(vocab) < rows:
        word = PAD_WORD.format(i)
        i += 1
        if word not in present:
            vocab.append(word)
            added += 1
    if added:
        notes.append(f"vocab.txt: added {added} padding entries ({PAD_WORD.format(0)}...) "
                     f"so that its {rows} lines match the embedding rows")
    return vocab, problems, notes


def bpe_symbols(codes_path: str) -> set:
    """Every piece the merges of a codes file can produce, without "@@" and
    "</w>" (single characters aside)."""
    import bpe
    _, merges = bpe.read_codes(codes_path)
    out = set()
    for a, b in merges:
        for sym in (a, b, a + b):
            out.add(sym[:-len(bpe.END)] if sym.endswith(bpe.END) else sym)
    return out


def check_bpe(vocab: List[str], codes_path: str) -> Tuple[int, int]:
    """(dict tokens that the merges cannot produce, tokens checked); like
    check_spm. A token is "X@@" (inside a word) or "X" (a word's end), X a
    single character or a merge result."""
    symbols = bpe_symbols(codes_path)
    checked = [t for t in vocab[4:] if not re.fullmatch(r"madeupword\d{4}", t)]

    def producible(t: str) -> bool:
        base = t[:-2] if t.endswith("@@") and len(t) > 2 else t
        return len(base) == 1 or base in symbols
    return sum(not producible(t) for t in checked), len(checked)


def looks_subword_nmt(vocab: List[str]) -> bool:
    """Many multi-character pieces end in "@@" and none starts with "\u2581"."""
    pieces = [t for t in vocab[4:] if len(t) > 1 and not re.fullmatch(r"madeupword\d{4}", t)]
    marked = sum(t.endswith("@@") for t in pieces)
    return bool(pieces) and marked * 5 > len(pieces) and not any(t.startswith("\u2581")
                                                                    for t in pieces)


def moses_config(aggressive: bool, escape: bool, normalize: bool,
                 tokenize: bool = True) -> Dict[str, Any]:
    """config.json "moses" (spec §3): fairseq's WMT recipe is all true."""
    return {"tokenize": tokenize, "aggressive_dash_splits": aggressive, "escape": escape,
            "normalize_punctuation": normalize, "remove_non_printing": normalize}


def check_spm(vocab: List[str], spm_path: str) -> Tuple[int, int]:
    """(dict tokens that are not pieces of the SentencePiece model, tokens
    checked); specials and padding entries are not checked."""
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=spm_path)
    pieces = {sp.id_to_piece(i) for i in range(sp.get_piece_size())}
    checked = [t for t in vocab[4:] if not re.fullmatch(r"madeupword\d{4}", t)]
    return sum(t not in pieces for t in checked), len(checked)


def convert(checkpoint: str, dict_path: str, spm_path: Optional[str], out: str,
            dtype: str = "F32", source_lang: Optional[str] = None,
            target_lang: Optional[str] = None, allow_vocab_mismatch: bool = False,
            log: Callable[[str], None] = print, bpe_codes: Optional[str] = None,
            moses: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Converts; returns the config written. Give spm_path (SentencePiece) or
    bpe_codes (subword-nmt; `moses` the config.json "moses" object, default
    fairseq's WMT recipe). Raises ConversionRefused (nothing is written
    then), or ValueError/OSError for unreadable inputs."""
    dtype = moa_io.normalize_dtype(dtype)
    if (spm_path is None) == (bpe_codes is None):
        raise ConversionRefused(["give the tokenizer: --spm (SentencePiece) or --bpe-codes "
                                 "(subword-nmt), not both"])
    tok_path, tok_flag = (spm_path, "--spm") if spm_path else (bpe_codes, "--bpe-codes")
    if not os.path.isfile(tok_path):
        raise ConversionRefused([f"{tok_path}: missing file ({tok_flag})"])
    if bpe_codes:
        import bpe
        try:
            bpe.read_codes(bpe_codes)
        except (bpe.BPECodesError, UnicodeDecodeError) as e:
            raise ConversionRefused([f"--bpe-codes: {e}"]) from None
    tokens = fairseq_ckpt.read_fairseq_dict(dict_path)
    ckpt, stubbed = fairseq_ckpt.load_fairseq_checkpoint(checkpoint)
    if "model" not in ckpt or not isinstance(ckpt["model"], Mapping):
        raise ConversionRefused([f"{checkpoint}: no `model` state dict"])
    try:
        hp, where, task = fairseq_ckpt.checkpoint_hparams(ckpt)
    except ValueError as e:
        raise ConversionRefused([f"{checkpoint}: {e}"]) from None
    cfg, problems, notes = map_hparams(hp)
    if problems:
        raise ConversionRefused(problems)
    tensors, problems, dropped = map_state_dict(ckpt["model"], cfg)
    if problems:
        raise ConversionRefused(problems)
    vocab, problems, vnotes = build_vocab(tokens, cfg["vocab_size"], dict_path)
    notes += vnotes
    if problems:
        raise ConversionRefused(problems)
    if spm_path:
        unknown, checked = check_spm(vocab, spm_path)
        what = f"are not pieces of {spm_path}; they can never be produced by its encoder"
    else:
        unknown, checked = check_bpe(vocab, bpe_codes)
        what = f"cannot come out of the merges of {bpe_codes}"
    if unknown:
        msg = f"{unknown} of {checked} dict.txt tokens {what}"
        if unknown * 2 > checked and not allow_vocab_mismatch:
            hint = ""
            if spm_path and looks_subword_nmt(vocab):
                hint = ("; its tokens end in @@: a subword-nmt dictionary, convert it with "
                        "--bpe-codes")
            raise ConversionRefused([msg + f" (wrong {tok_flag} or --dict? "
                                     f"--allow-vocab-mismatch converts anyway){hint}"])
        notes.append("warning: " + msg)
    cfg["source_lang"] = source_lang or hp.get("source_lang") or task.get("source_lang") or "en"
    cfg["target_lang"] = target_lang or hp.get("target_lang") or task.get("target_lang") or "de"
    if bpe_codes:
        cfg["tokenizer"] = "subword-nmt"
        cfg["moses"] = dict(moses) if moses is not None else moses_config(True, True, True)
        problems = moa_io.tokenizer_problems(cfg)
        if problems:
            raise ConversionRefused([p.replace("moses.tokenize false", "--no-moses") +
                                     " (--source-lang/--target-lang name the languages)"
                                     for p in problems])
    cfg["name"] = os.path.basename(os.path.normpath(out))
    cfg["description"] = (f"converted from the fairseq checkpoint {os.path.basename(checkpoint)} "
                          f"({hp.get('arch') or hp.get('_name') or 'unknown arch'}) "
                          "by train/convert_fairseq.py")
    # Write into a fresh directory next to `out`, then move it into place, so
    # that a failure leaves nothing half-written.
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".convert-", dir=parent)
    try:
        moa_io.save_model_dir(tmp, cfg, tensors, vocab, tok_path, dtype)
        os.makedirs(out, exist_ok=True)
        for fname in (moa_io.CONFIG_FILE, moa_io.WEIGHTS_FILE, moa_io.VOCAB_FILE,
                      moa_io.tokenizer_file(cfg)):
            os.replace(os.path.join(tmp, fname), os.path.join(out, fname))
        # a directory converted before with the other tokenizer keeps no stale file
        for other in set(moa_io.TOKENIZER_FILES.values()) - {moa_io.tokenizer_file(cfg)}:
            if os.path.isfile(os.path.join(out, other)):
                os.remove(os.path.join(out, other))
    except (ValueError, moa_io.ModelFormatError) as e:
        raise ConversionRefused([str(e)]) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"hyper-parameters from `{where}`")
    for n in notes:
        log(f"note: {n}")
    if stubbed:
        log("skipped: classes that could not be imported were read through stand-ins "
            "(their data kept): " + ", ".join(stubbed))
    if dropped:
        log("skipped: state-dict entries not needed at inference: "
            + ", ".join(f"{n} × {k}" for k, n in sorted(dropped.items())))
    rest = sorted(k for k in ckpt if k not in ("model", "args", "cfg"))
    if rest:
        log("skipped: checkpoint entries: " + ", ".join(rest))
    if bpe_codes:
        m = cfg["moses"]
        log(f"tokenizer: subword-nmt ({os.path.basename(bpe_codes)} -> bpecodes); Moses "
            + (f"{cfg['source_lang']}->{cfg['target_lang']}, "
               + ", ".join(k for k, v in m.items() if v and k != "tokenize")
               if m.get("tokenize", True) else "off: text must come tokenized"))
    log(f"wrote {out}: d_model {cfg['d_model']}, layers {cfg['encoder_layers']}+"
        f"{cfg['decoder_layers']}, {cfg['num_experts']} experts, top-{cfg['top_k']}, "
        f"head_dim {cfg['head_dim']}, vocab {cfg['vocab_size']}, {len(tensors)} tensors "
        f"({dtype})")
    return cfg


def build_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Convert a checkpoint of the paper's fairseq MoA code into a "
                    "model directory (docs/moa-spec.md §3). fairseq and omegaconf "
                    "need not be installed. Refuses, naming the option, what the "
                    "format cannot express.")
    p.add_argument("--checkpoint", required=True, metavar="CKPT.pt",
                   help="fairseq checkpoint (torch .pt: model state dict, args or cfg)")
    p.add_argument("--dict", required=True, metavar="DICT.txt",
                   help="the fairseq dictionary the model was trained with ('token "
                        "count' lines; the joined source/target dictionary)")
    tok = p.add_mutually_exclusive_group(required=True)
    tok.add_argument("--spm", metavar="SPM.model",
                     help="the SentencePiece model that produced the dictionary's pieces; "
                          "copied into the directory as sentencepiece.model")
    tok.add_argument("--bpe-codes", metavar="CODES",
                     help="the subword-nmt merges (learn_bpe's codes file, fairseq's "
                          "'bpecodes'/'code') that produced the dictionary's pieces from "
                          "Moses-tokenised text; copied as bpecodes, and config.json says "
                          "\"tokenizer\": \"subword-nmt\"")
    p.add_argument("--no-moses", action="store_true",
                   help="with --bpe-codes: the model reads text that is tokenized already "
                        "(split at whitespace, no Moses rules, no detokenizer)")
    p.add_argument("--no-aggressive-dash-splits", action="store_true",
                   help="with --bpe-codes: the data was tokenized without tokenizer.perl -a "
                        "(hyphens inside words stay)")
    p.add_argument("--no-moses-escape", action="store_true",
                   help="with --bpe-codes: the data was tokenized with -no-escape "
                        "(no &amp; &quot; ... entities)")
    p.add_argument("--no-normalize-punctuation", action="store_true",
                   help="with --bpe-codes: the data did not go through "
                        "normalize-punctuation.perl and remove-non-printing-char.perl")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="model directory to write (created; its four files are replaced)")
    p.add_argument("--dtype", default="f32", choices=["f32", "f16", "bf16"],
                   help="storage type of the weights (default f32)")
    p.add_argument("--source-lang", metavar="CODE",
                   help="source language code for config.json (default: from the "
                        "checkpoint, else en)")
    p.add_argument("--target-lang", metavar="CODE",
                   help="target language code for config.json (default: from the "
                        "checkpoint, else de)")
    p.add_argument("--allow-vocab-mismatch", action="store_true",
                   help="convert even when most dictionary tokens are not pieces "
                        "of --spm (normally refused)")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    a = build_arg_parser().parse_args(argv)
    try:
        moses = None
        if a.bpe_codes:
            moses = moses_config(not a.no_aggressive_dash_splits, not a.no_moses_escape,
                                 not a.no_normalize_punctuation, not a.no_moses)
        elif a.no_moses or a.no_aggressive_dash_splits or a.no_moses_escape or \
                a.no_normalize_punctuation:
            raise ConversionRefused(["the Moses options go with --bpe-codes"])
        convert(a.checkpoint, a.dict, a.spm, a.out, a.dtype, a.source_lang,
                a.target_lang, a.allow_vocab_mismatch, bpe_codes=a.bpe_codes, moses=moses)
    except ConversionRefused as e:
        print(f"error: refusing to convert {a.checkpoint}:", file=sys.stderr)
        for problem in e.problems:
            print(f"  - {problem}", file=sys.stderr)
        return 1
    except (OSError, ValueError, EOFError, RuntimeError, pickle.UnpicklingError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
