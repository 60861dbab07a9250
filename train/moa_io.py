"""Read and write a MoA model directory (docs/moa-spec.md §3).

A model directory holds config.json, model.safetensors, vocab.txt and
sentencepiece.model. Everything here is plain numpy: safetensors is a tiny
format (8-byte little-endian header length, a JSON header, raw data), so we
read and write it ourselves.

    config, tensors, vocab = load_model_dir("weights/default")
    save_model_dir("out", config, tensors, dtype="f16", spm_model="x.model",
                   vocab=vocab)

Tensors come back as float32 numpy arrays whatever their stored dtype.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import sys
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

FORMAT = "moa-translation"
FORMAT_VERSION = 1
SPECIAL_IDS = {"bos_id": 0, "pad_id": 1, "eos_id": 2, "unk_id": 3}
SPECIAL_PIECES = ["<s>", "<pad>", "</s>", "<unk>"]

CONFIG_DEFAULTS: Dict[str, Any] = {
    "activation": "relu",
    "normalize_before": False,
    "attention_bias": False,
    "share_embeddings": True,
    "scale_embedding": True,
    "max_positions": 1024,
    "layernorm_eps": 1e-5,
}
CONFIG_REQUIRED = [
    "d_model", "encoder_layers", "decoder_layers", "ffn_dim", "num_experts",
    "top_k", "head_dim", "vocab_size", "bos_id", "pad_id", "eos_id", "unk_id",
    "decoder_start_id", "source_lang", "target_lang",
]

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
VOCAB_FILE = "vocab.txt"
SPM_FILE = "sentencepiece.model"
BPE_CODES_FILE = "bpecodes"
# config.json "tokenizer" -> the file that cuts text into pieces (spec §3)
TOKENIZER_FILES = {"sentencepiece": SPM_FILE, "subword-nmt": BPE_CODES_FILE}
MOSES_OPTIONS = ("tokenize", "aggressive_dash_splits", "escape", "normalize_punctuation",
                 "remove_non_printing")


def tokenizer_file(config: Mapping[str, Any]) -> str:
    """The tokenizer's file in a model directory of this config."""
    return TOKENIZER_FILES.get(config.get("tokenizer", "sentencepiece"), SPM_FILE)


class ModelFormatError(ValueError):
    """A model directory (or one of its files) breaks the spec."""


# --- dtypes -------------------------------------------------------------------

DTYPE_SIZES = {"F32": 4, "F16": 2, "BF16": 2}
DTYPE_ALIASES = {"f32": "F32", "float32": "F32", "f16": "F16",
                 "float16": "F16", "bf16": "BF16", "bfloat16": "BF16"}


def normalize_dtype(dtype: str) -> str:
    """'f16', 'float16', 'F16' -> 'F16'. Raises ValueError for others."""
    d = DTYPE_ALIASES.get(dtype.lower(), dtype.upper())
    if d not in DTYPE_SIZES:
        raise ValueError(f"unknown dtype {dtype!r} (F32, F16 or BF16)")
    return d


def _bf16_bits_to_f32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _f32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """Round-to-nearest-even float32 -> bfloat16 bit patterns (finite input)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounding = ((u >> 16) & 1) + np.uint32(0x7FFF)
    return ((u + rounding) >> 16).astype(np.uint16)


def round_to_dtype(x: np.ndarray, dtype: str) -> np.ndarray:
    """Returns x (float32) rounded to dtype and widened back to float32."""
    d = normalize_dtype(dtype)
    x = np.asarray(x, dtype=np.float32)
    if d == "F32":
        return x.copy()
    if d == "F16":
        return x.astype(np.float16).astype(np.float32)
    return _bf16_bits_to_f32(_f32_to_bf16_bits(x)).reshape(x.shape)


def _encode(x: np.ndarray, dtype: str) -> bytes:
    x = np.asarray(x, dtype=np.float32)
    if dtype == "F32":
        return x.astype("<f4").tobytes()
    if dtype == "F16":
        h = x.astype("<f2")
        if not np.all(np.isfinite(h)):
            raise ValueError("value out of float16 range")
        return h.tobytes()
    return _f32_to_bf16_bits(x).astype("<u2").tobytes()


def _decode(raw: bytes, dtype: str, shape: Tuple[int, ...]) -> np.ndarray:
    if dtype == "F32":
        a = np.frombuffer(raw, dtype="<f4").astype(np.float32)
    elif dtype == "F16":
        a = np.frombuffer(raw, dtype="<f2").astype(np.float32)
    else:
        a = _bf16_bits_to_f32(np.frombuffer(raw, dtype="<u2"))
    return a.reshape(shape)


# --- safetensors -------------------------------------------------------------

def write_safetensors(path: str, tensors: Mapping[str, np.ndarray],
                      dtype: str = "F32",
                      metadata: Optional[Mapping[str, str]] = None) -> None:
    """Writes tensors (any float arrays) as one dtype, in name order."""
    d = normalize_dtype(dtype)
    header: Dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    blobs = []
    offset = 0
    for name in sorted(tensors):
        arr = np.asarray(tensors[name], dtype=np.float32)
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"tensor {name} holds NaN or infinity")
        blob = _encode(arr, d)
        header[name] = {"dtype": d, "shape": list(arr.shape),
                        "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    hjson = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hjson += b" " * (-len(hjson) % 8)  # keeps the data 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hjson)))
        f.write(hjson)
        for blob in blobs:
            f.write(blob)


def read_safetensors_header(path: str) -> Tuple[Dict[str, Any], int]:
    """Returns (header without __metadata__, byte offset where data starts)."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ModelFormatError(f"{path}: shorter than 8 bytes")
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:
                raise ModelFormatError(
                    f"{path}: header length {n} runs past the end of the file")
            raw = f.read(n)
    except OSError as e:
        raise ModelFormatError(f"{path}: {e.strerror}") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFormatError(f"{path}: header is not JSON ({e})") from None
    if not isinstance(header, dict):
        raise ModelFormatError(f"{path}: header is not a JSON object")
    header.pop("__metadata__", None)
    _check_entries(path, header, size - 8 - n)
    return header, 8 + n


def _check_entries(path: str, header: Dict[str, Any], data_size: int) -> None:
    ranges = []
    for name, e in header.items():
        if not isinstance(e, dict) or "dtype" not in e or "shape" not in e \
                or "data_offsets" not in e:
            raise ModelFormatError(f"{path}: tensor {name}: bad header entry")
        if e["dtype"] not in DTYPE_SIZES:
            raise ModelFormatError(
                f"{path}: tensor {name}: unknown dtype {e['dtype']!r}")
        shape, offs = e["shape"], e["data_offsets"]
        if not (isinstance(shape, list) and all(
                isinstance(s, int) and s >= 0 for s in shape)):
            raise ModelFormatError(f"{path}: tensor {name}: bad shape {shape}")
        if not (isinstance(offs, list) and len(offs) == 2 and all(
                isinstance(o, int) for o in offs)):
            raise ModelFormatError(
                f"{path}: tensor {name}: bad data_offsets {offs}")
        begin, end = offs
        if not 0 <= begin <= end <= data_size:
            raise ModelFormatError(
                f"{path}: tensor {name}: bytes {begin}..{end} leave the file "
                f"({data_size} data bytes)")
        want = math.prod(shape) * DTYPE_SIZES[e["dtype"]]
        if end - begin != want:
            raise ModelFormatError(
                f"{path}: tensor {name}: {end - begin} bytes for shape {shape} "
                f"{e['dtype']} (expected {want})")
        ranges.append((begin, end, name))
    ranges.sort()
    for (b0, e0, n0), (b1, e1, n1) in zip(ranges, ranges[1:]):
        if b1 < e0:
            raise ModelFormatError(f"{path}: tensors {n0} and {n1} overlap")


def read_safetensors(path: str) -> Dict[str, np.ndarray]:
    """Reads every tensor, widened to float32. Refuses NaN and infinity."""
    header, start = read_safetensors_header(path)
    out: Dict[str, np.ndarray] = {}
    with open(path, "rb") as f:
        for name, e in header.items():
            begin, end = e["data_offsets"]
            f.seek(start + begin)
            arr = _decode(f.read(end - begin), e["dtype"], tuple(e["shape"]))
            if not np.all(np.isfinite(arr)):
                raise ModelFormatError(
                    f"{path}: tensor {name} holds NaN or infinity")
            out[name] = arr
    return out


def safetensors_dtypes(path: str) -> Dict[str, str]:
    """Stored dtype of each tensor (for reports)."""
    header, _ = read_safetensors_header(path)
    return {name: e["dtype"] for name, e in header.items()}


# --- config.json --------------------------------------------------------------

def complete_config(raw: Mapping[str, Any], path: str = CONFIG_FILE) -> Dict[str, Any]:
    """Applies defaults and checks ranges; raises ModelFormatError."""
    cfg = dict(CONFIG_DEFAULTS)
    cfg.update(raw)
    cfg.setdefault("format", FORMAT)
    cfg.setdefault("format_version", FORMAT_VERSION)
    missing = [k for k in CONFIG_REQUIRED if k not in cfg]
    if missing:
        raise ModelFormatError(f"{path}: missing keys {', '.join(missing)}")
    problems = _config_problems(cfg)
    if problems:
        raise ModelFormatError(f"{path}: {'; '.join(problems)}")
    return cfg


def _config_problems(c: Mapping[str, Any]) -> List[str]:
    p = []
    if c["format"] != FORMAT:
        p.append(f"format is {c['format']!r}, not {FORMAT!r}")
    if c["format_version"] != FORMAT_VERSION:
        p.append(f"format_version {c['format_version']} is not supported")
    ints = ["d_model", "encoder_layers", "decoder_layers", "ffn_dim",
            "num_experts", "top_k", "head_dim", "vocab_size", "max_positions"]
    for k in ints:
        if not isinstance(c[k], int) or isinstance(c[k], bool) or c[k] < 1:
            p.append(f"{k} must be a positive integer (is {c[k]!r})")
    if p:
        return p
    if c["d_model"] % 2:
        p.append(f"d_model {c['d_model']} is odd")
    if c["d_model"] < 4:
        p.append("d_model must be at least 4 (sinusoidal positions)")
    if c["top_k"] > c["num_experts"]:
        p.append(f"top_k {c['top_k']} > num_experts {c['num_experts']}")
    if c["vocab_size"] < 4:
        p.append("vocab_size must be at least 4")
    if c["max_positions"] < 3:
        p.append("max_positions must be at least 3")
    if c["activation"] not in ("relu", "gelu"):
        p.append(f"activation {c['activation']!r} is not relu or gelu")
    for k, v in SPECIAL_IDS.items():
        if c[k] != v:
            p.append(f"{k} must be {v} (is {c[k]!r})")
    s = c["decoder_start_id"]
    if not isinstance(s, int) or not 0 <= s < c["vocab_size"]:
        p.append(f"decoder_start_id {s!r} is not a vocabulary id")
    eps = c["layernorm_eps"]
    if not isinstance(eps, (int, float)) or not 0 < eps < 1:
        p.append(f"layernorm_eps {eps!r} out of range")
    for k in ("normalize_before", "attention_bias", "share_embeddings",
              "scale_embedding"):
        if not isinstance(c[k], bool):
            p.append(f"{k} must be true or false")
    return p + tokenizer_problems(c)


def tokenizer_problems(c: Mapping[str, Any]) -> List[str]:
    """The keys the tokenizer reads (tokenizer/moa_tokenizer.cc checks the same)."""
    kind = c.get("tokenizer", "sentencepiece")
    if kind not in TOKENIZER_FILES:
        return [f"tokenizer {kind!r} is not 'sentencepiece' or 'subword-nmt'"]
    if kind != "subword-nmt":
        return []
    m = c.get("moses", {})
    if m is False:
        return []
    if not isinstance(m, dict):
        return ["moses must be an object or false"]
    p = [f"moses.{k} is not a Moses option ({', '.join(MOSES_OPTIONS)})"
         for k in m if k not in MOSES_OPTIONS]
    p += [f"moses.{k} must be true or false" for k, v in m.items()
          if k in MOSES_OPTIONS and not isinstance(v, bool)]
    if p or m.get("tokenize", True) is False:
        return p
    here = os.path.dirname(os.path.abspath(__file__))
    if here not in sys.path:
        sys.path.insert(0, here)
    import moses   # train/moses.py, imported only for subword-nmt models
    for k in ("source_lang", "target_lang"):
        if moses.lang_of(c.get(k)) is None:
            p.append(f"{k} {c.get(k)!r}: the Moses rules here are those of en and de "
                     "(moses.tokenize false takes text that is already tokenized)")
    return p


def read_config(path: str) -> Dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except OSError as e:
        raise ModelFormatError(f"{path}: {e.strerror}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFormatError(f"{path}: not JSON ({e})") from None
    if not isinstance(raw, dict):
        raise ModelFormatError(f"{path}: not a JSON object")
    return complete_config(raw, path)


def write_config(path: str, config: Mapping[str, Any]) -> None:
    cfg = dict(config)
    cfg["format"] = FORMAT
    cfg["format_version"] = FORMAT_VERSION
    complete_config(cfg, path)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(cfg, f, indent=2, ensure_ascii=False)
        f.write("\n")


# --- tensors the config calls for --------------------------------------------

def _attention_shapes(prefix: str, c: Mapping[str, Any]) -> Dict[str, Tuple[int, ...]]:
    d, e, h = c["d_model"], c["num_experts"], c["head_dim"]
    s = {f"{prefix}.k_proj.weight": (h, d), f"{prefix}.v_proj.weight": (h, d),
         f"{prefix}.q_proj.w_gate": (d, e),
         f"{prefix}.q_proj.experts.w": (e, d, h),
         f"{prefix}.q_proj.output_experts.w": (e, h, d)}
    if c["attention_bias"]:
        s[f"{prefix}.k_proj.bias"] = (h,)
        s[f"{prefix}.v_proj.bias"] = (h,)
    return s


def _ffn_ln_shapes(prefix: str, c: Mapping[str, Any], lns: List[str]) -> Dict[str, Tuple[int, ...]]:
    d, f = c["d_model"], c["ffn_dim"]
    s = {f"{prefix}.fc1.weight": (f, d), f"{prefix}.fc1.bias": (f,),
         f"{prefix}.fc2.weight": (d, f), f"{prefix}.fc2.bias": (d,)}
    for ln in lns:
        s[f"{prefix}.{ln}.weight"] = (d,)
        s[f"{prefix}.{ln}.bias"] = (d,)
    return s


def expected_shapes(c: Mapping[str, Any]) -> Tuple[Dict[str, Tuple[int, ...]], Dict[str, Tuple[int, ...]]]:
    """(required, optional) tensor name -> shape for a completed config."""
    d, v = c["d_model"], c["vocab_size"]
    req: Dict[str, Tuple[int, ...]] = {"encoder.embed_tokens.weight": (v, d)}
    opt: Dict[str, Tuple[int, ...]] = {}
    for i in range(c["encoder_layers"]):
        p = f"encoder.layers.{i}"
        req.update(_attention_shapes(f"{p}.self_attn", c))
        req.update(_ffn_ln_shapes(p, c, ["self_attn_layer_norm", "final_layer_norm"]))
    for i in range(c["decoder_layers"]):
        p = f"decoder.layers.{i}"
        req.update(_attention_shapes(f"{p}.self_attn", c))
        req.update(_attention_shapes(f"{p}.encoder_attn", c))
        req.update(_ffn_ln_shapes(p, c, ["self_attn_layer_norm",
                                         "encoder_attn_layer_norm",
                                         "final_layer_norm"]))
    if c["normalize_before"]:
        for p in ("encoder.layer_norm", "decoder.layer_norm"):
            req[f"{p}.weight"] = (d,)
            req[f"{p}.bias"] = (d,)
    shared = {"decoder.embed_tokens.weight": (v, d),
              "decoder.output_projection.weight": (v, d)}
    (opt if c["share_embeddings"] else req).update(shared)
    return req, opt


def check_tensors(path: str, c: Mapping[str, Any],
                  tensors: Dict[str, np.ndarray]) -> List[str]:
    """Checks names and shapes against the config; drops tensors the config
    does not call for and returns warnings about them. Raises on errors."""
    req, opt = expected_shapes(c)
    missing = [n for n in req if n not in tensors]
    if missing:
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        raise ModelFormatError(f"{path}: missing tensor {', '.join(missing[:3])}{more}")
    for name, shape in {**req, **opt}.items():
        if name in tensors and tuple(tensors[name].shape) != shape:
            raise ModelFormatError(
                f"{path}: tensor {name} has shape {list(tensors[name].shape)}, "
                f"config.json implies {list(shape)}")
    for name in opt:
        if name in tensors and not np.array_equal(
                tensors[name], tensors["encoder.embed_tokens.weight"]):
            raise ModelFormatError(
                f"{path}: {name} differs from encoder.embed_tokens.weight but "
                "share_embeddings is true")
    warnings = []
    for name in sorted(set(tensors) - set(req) - set(opt)):
        warnings.append(f"{path}: ignoring tensor {name} (not called for by config.json)")
        del tensors[name]
    return warnings


# --- vocab.txt ----------------------------------------------------------------

def read_vocab(path: str, vocab_size: Optional[int] = None) -> List[str]:
    try:
        with open(path, encoding="utf-8", newline="\n") as f:
            text = f.read()
    except OSError as e:
        raise ModelFormatError(f"{path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ModelFormatError(f"{path}: not UTF-8") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    vocab = [ln[:-1] if ln.endswith("\r") else ln for ln in lines]
    if vocab[:4] != SPECIAL_PIECES:
        raise ModelFormatError(f"{path}: lines 0-3 must be {' '.join(SPECIAL_PIECES)}")
    if vocab_size is not None and len(vocab) != vocab_size:
        raise ModelFormatError(
            f"{path}: {len(vocab)} lines, config.json says vocab_size {vocab_size}")
    return vocab


def write_vocab(path: str, vocab: List[str]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for piece in vocab:
            f.write(piece + "\n")


# --- the whole directory -------------------------------------------------------

def load_model_dir(path: str, warn: bool = True) -> Tuple[Dict[str, Any], Dict[str, np.ndarray], List[str]]:
    """Returns (config, float32 tensors, vocab). Raises ModelFormatError.
    Tensors the config does not call for are dropped with a warning on stderr."""
    if not os.path.isdir(path):
        raise ModelFormatError(f"{path}: not a directory")
    if not os.path.isfile(os.path.join(path, CONFIG_FILE)):
        raise ModelFormatError(f"{os.path.join(path, CONFIG_FILE)}: missing file")
    cfg = read_config(os.path.join(path, CONFIG_FILE))
    for fname in (WEIGHTS_FILE, VOCAB_FILE, tokenizer_file(cfg)):
        if not os.path.isfile(os.path.join(path, fname)):
            raise ModelFormatError(f"{os.path.join(path, fname)}: missing file")
    wpath = os.path.join(path, WEIGHTS_FILE)
    tensors = read_safetensors(wpath)
    for w in check_tensors(wpath, cfg, tensors):
        if warn:
            print(f"warning: {w}", file=sys.stderr)
    vocab = read_vocab(os.path.join(path, VOCAB_FILE), cfg["vocab_size"])
    return cfg, tensors, vocab


def save_model_dir(path: str, config: Mapping[str, Any],
                   tensors: Mapping[str, np.ndarray], vocab: List[str],
                   spm_model: str, dtype: str = "F32") -> None:
    """Writes the four files (creating path). Checks names and shapes first.
    spm_model is the tokenizer's file: the SentencePiece model, or the BPE
    codes when config says "tokenizer": "subword-nmt" (copied as bpecodes)."""
    cfg = complete_config(dict(config), os.path.join(path, CONFIG_FILE))
    if len(vocab) != cfg["vocab_size"]:
        raise ValueError(f"vocab has {len(vocab)} pieces, config says {cfg['vocab_size']}")
    tensors = {k: np.asarray(v, dtype=np.float32) for k, v in tensors.items()}
    warnings = check_tensors(os.path.join(path, WEIGHTS_FILE), cfg, tensors)
    if warnings:
        raise ValueError("; ".join(warnings))
    os.makedirs(path, exist_ok=True)
    write_config(os.path.join(path, CONFIG_FILE), cfg)
    write_safetensors(os.path.join(path, WEIGHTS_FILE), tensors, dtype,
                      metadata={"format": FORMAT})
    write_vocab(os.path.join(path, VOCAB_FILE), vocab)
    dst = os.path.join(path, tokenizer_file(cfg))
    if os.path.abspath(spm_model) != os.path.abspath(dst):
        shutil.copyfile(spm_model, dst)
