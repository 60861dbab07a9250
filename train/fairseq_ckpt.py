#!/usr/bin/python3
"""fairseq checkpoints of the paper's MoA code (docs/moa-spec.md §3): write
them from a MoATransformer (for tests of the converter), and read them back
without fairseq or omegaconf installed.

A checkpoint is a torch-pickled dict: `model` (the state dict: the spec's
tensor names plus training-only entries: `*.q_proj.w_noise`,
`*.embed_positions._float_tensor`, `encoder.version`/`decoder.version`, and
the `*.ffd.N.*` aliases of fc1/fc2 that the paper's layers register through an
nn.Sequential: encoder ffd.0 = fc1, ffd.3 = fc2; decoder ffd.0 = fc1,
ffd.2 = fc2), hyper-parameters in `args` (argparse.Namespace) or `cfg`
(a nested config whose `model` section holds them; older fairseq pickles an
omegaconf DictConfig there), and training state (`optimizer_history`,
`extra_state`, `last_optimizer_state`).

    save_fairseq_checkpoint(model, config, "ckpt.pt")     # config.json keys
    write_fairseq_dict(vocab, "dict.txt")
    ckpt, stubbed = load_fairseq_checkpoint("ckpt.pt")
    hparams = to_plain(ckpt["args"])

Reading uses a tolerant unpickler (torch.load(pickle_module=...)): a class
whose module cannot be imported (fairseq.*, omegaconf.*, ...) is replaced by
a stand-in (StubObject) that keeps whatever the pickle gives it (constructor
arguments, __setstate__ state, items), so values such as
`cfg.model.encoder_embed_dim` can still be read; `to_plain` turns stand-ins,
Namespaces and omegaconf-style containers into dicts, lists and scalars.
"""

from __future__ import annotations

import argparse
import enum
import io
import pickle
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple

import torch

FAIRSEQ_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]
OVERWRITE_FLAG = "#fairseq:overwrite"

# EncDecBaseConfig fields of fairseq's TransformerConfig: cfg.model.encoder.X
# is the flat (argparse) name encoder_X.
NESTED_FIELDS = ("embed_path", "embed_dim", "ffn_embed_dim", "layers", "attention_heads",
                 "normalize_before", "learned_pos", "layerdrop", "layers_to_keep",
                 "input_dim", "output_dim")


# --- writing (tests, examples) -------------------------------------------------

def config_to_fairseq_args(config: Mapping[str, Any]) -> Dict[str, Any]:
    """config.json keys -> the paper's fairseq hyper-parameters (flat argparse
    names), with realistic training settings around them."""
    d = config["d_model"]
    shared = bool(config.get("share_embeddings", True))
    pre = bool(config.get("normalize_before", False))
    maxpos = int(config.get("max_positions", 1024))
    return {
        # model
        "arch": "moa_transformer_base", "_name": "moa_transformer_base",
        "encoder_embed_dim": d, "decoder_embed_dim": d,
        "encoder_layers": config["encoder_layers"], "decoder_layers": config["decoder_layers"],
        "encoder_ffn_embed_dim": config["ffn_dim"], "decoder_ffn_embed_dim": config["ffn_dim"],
        "encoder_attention_heads": config["top_k"], "decoder_attention_heads": config["top_k"],
        "num_expert": config["num_experts"], "head_dim": config["head_dim"],
        "encoder_normalize_before": pre, "decoder_normalize_before": pre,
        "activation_fn": config.get("activation", "relu"),
        "share_all_embeddings": shared, "share_decoder_input_output_embed": shared,
        "no_scale_embedding": not config.get("scale_embedding", True),
        "max_source_positions": maxpos, "max_target_positions": maxpos,
        "encoder_learned_pos": False, "decoder_learned_pos": False,
        "layernorm_embedding": False, "no_token_positional_embeddings": False,
        "adaptive_input": False, "adaptive_softmax_cutoff": None,
        "tie_adaptive_weights": False, "no_cross_attention": False,
        "cross_self_attention": False, "decoder_output_dim": d, "decoder_input_dim": d,
        "encoder_embed_path": None, "decoder_embed_path": None,
        "encoder_layers_to_keep": None, "decoder_layers_to_keep": None,
        "encoder_layerdrop": 0.0, "decoder_layerdrop": 0.0,
        "quant_noise_pq": 0.0, "quant_noise_pq_block_size": 8, "quant_noise_scalar": 0.0,
        "ffd_type": "normal", "gating": "noisy", "sample_topk": 0,
        "cvloss": 0.0, "switchloss": 0.01, "zloss": 0.001,
        "scale_attn": False, "scale_fc": False, "scale_heads": False, "scale_resids": False,
        "dropout": 0.2, "attention_dropout": 0.1, "activation_dropout": 0.1,
        "checkpoint_activations": False, "offload_activations": False,
        # task, optimisation
        "task": "translation", "data": "data-bin/en-de",
        "source_lang": config.get("source_lang", "en"),
        "target_lang": config.get("target_lang", "de"),
        "criterion": "label_smoothed_cross_entropy", "label_smoothing": 0.1,
        "optimizer": "adam", "adam_betas": "(0.9, 0.98)", "adam_eps": 1e-08,
        "weight_decay": 0.0, "clip_norm": 0.0, "lr": [0.0007],
        "lr_scheduler": "inverse_sqrt", "warmup_updates": 4000, "warmup_init_lr": 1e-07,
        "max_tokens": 4096, "update_freq": [1], "max_update": 100000,
        "seed": 1, "fp16": True, "save_dir": "checkpoints/moa",
    }


def _nest_model_section(flat: Mapping[str, Any]) -> Dict[str, Any]:
    """Flat names -> TransformerConfig layout: encoder_X -> encoder.X."""
    out: Dict[str, Any] = {"encoder": {}, "decoder": {}}
    for k, v in flat.items():
        side, _, field = k.partition("_")
        if side in ("encoder", "decoder") and field in NESTED_FIELDS:
            out[side][field] = v
        else:
            out[k] = v
    out["quant_noise"] = {"pq": out.pop("quant_noise_pq", 0.0),
                          "pq_block_size": out.pop("quant_noise_pq_block_size", 8),
                          "scalar": out.pop("quant_noise_scalar", 0.0)}
    return out


def fairseq_state_dict(model: torch.nn.Module, config: Mapping[str, Any],
                       w_noise: bool = True, ffd_aliases: bool = True,
                       extra: Optional[Mapping[str, torch.Tensor]] = None
                       ) -> Dict[str, torch.Tensor]:
    """The state dict the paper's fairseq model would hold for `model`: the
    spec names (with the decoder's embedding and output projection written out
    even when tied, as fairseq does) plus training-only entries."""
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if "decoder.output_projection.weight" not in sd:   # tied: fairseq lists it
        sd["decoder.output_projection.weight"] = sd["decoder.embed_tokens.weight"]
    if w_noise:
        for k in [k for k in sd if k.endswith(".q_proj.w_gate")]:
            sd[k[:-len("w_gate")] + "w_noise"] = torch.zeros_like(sd[k])
    sd["encoder.embed_positions._float_tensor"] = torch.FloatTensor(1)
    sd["decoder.embed_positions._float_tensor"] = torch.FloatTensor(1)
    sd["encoder.version"] = torch.Tensor([3])
    sd["decoder.version"] = torch.Tensor([3])
    if ffd_aliases:
        for side, fc2_index in (("encoder", 3), ("decoder", 2)):
            n = config[f"{side}_layers"]
            for i in range(n):
                p = f"{side}.layers.{i}"
                for part in ("weight", "bias"):
                    sd[f"{p}.ffd.0.{part}"] = sd[f"{p}.fc1.{part}"]
                    sd[f"{p}.ffd.{fc2_index}.{part}"] = sd[f"{p}.fc2.{part}"]
    for k, v in (extra or {}).items():
        sd[k] = v
    return sd


def save_fairseq_checkpoint(model: torch.nn.Module, config: Mapping[str, Any], path: str,
                            *, style: str = "args",
                            overrides: Optional[Mapping[str, Any]] = None,
                            drop: Iterable[str] = (),
                            wrap_cfg: Optional[Callable[[Dict[str, Any]], Any]] = None,
                            state_dict: Optional[Dict[str, torch.Tensor]] = None,
                            training: Optional[Mapping[str, Any]] = None) -> None:
    """Writes `model` (a MoATransformer) and its config.json dict as a checkpoint
    of the paper's fairseq code.

    style: "args" (hyper-parameters in an argparse.Namespace under `args`,
    `cfg` None), "cfg" (args None; `cfg` a nested dict whose `model` section
    holds the flat names), "cfg-nested" (the `model` section in
    TransformerConfig layout: model.encoder.embed_dim, ...) or "cfg-namespace"
    (args None; `cfg.model` and `cfg.task` argparse Namespaces holding every
    flat argument plus `_name`: how fairseq >= 0.10 saves a model whose
    architecture registers its arguments with add_args, as the paper's
    moa_transformer does). overrides/drop
    change or remove hyper-parameters (flat names) before nesting; wrap_cfg
    turns the cfg dict into any object (e.g. config classes to pickle);
    state_dict replaces fairseq_state_dict(model, config); training gives the
    run's progress (num_updates, epoch, train_seconds) instead of the example
    values tests use."""
    tr = {"num_updates": 1234, "epoch": 3, "train_seconds": 5321.7, "val_loss": 3.871}
    tr.update(training or {})
    hp = config_to_fairseq_args(config)
    hp.update(overrides or {})
    for name in drop:
        hp.pop(name, None)
    sd = state_dict if state_dict is not None else fairseq_state_dict(model, config)
    ckpt: Dict[str, Any] = {
        "model": sd,
        "optimizer_history": [{
            "criterion_name": "LabelSmoothedCrossEntropyCriterion",
            "optimizer_name": "FairseqAdam",
            "lr_scheduler_state": {"best": tr["val_loss"]},
            "num_updates": tr["num_updates"],
        }],
        "extra_state": {
            "epoch": tr["epoch"], "batch_offset": 0, "val_loss": tr["val_loss"],
            "train_iterator": {"version": 2, "epoch": tr["epoch"], "iterations_in_epoch": 0,
                               "shuffle": True},
            "metrics": {},
            "previous_training_time": tr["train_seconds"],
        },
        "last_optimizer_state": {
            "state": {0: {"step": tr["num_updates"], "exp_avg": torch.zeros(2),
                          "exp_avg_sq": torch.zeros(2)}},
            "param_groups": [{"lr": 0.0007, "betas": (0.9, 0.98), "eps": 1e-08,
                              "weight_decay": 0.0, "params": [0]}],
        },
        "task_state": {},
    }
    if style == "args":
        ckpt["args"] = argparse.Namespace(**hp)
        ckpt["cfg"] = None
    elif style in ("cfg", "cfg-nested", "cfg-namespace"):
        model_section: Any = _nest_model_section(hp) if style == "cfg-nested" else dict(hp)
        task_section: Any = {"_name": "translation", "data": "data-bin/en-de",
                             "source_lang": hp.get("source_lang"),
                             "target_lang": hp.get("target_lang")}
        if style == "cfg-namespace":
            model_section = argparse.Namespace(**{**hp, "_name": hp.get("arch")})
            task_section = argparse.Namespace(**{**hp, "_name": hp.get("task")})
        cfg = {
            "_name": None,
            "common": {"_name": None, "fp16": True, "seed": 1, "log_interval": 100},
            "distributed_training": {"_name": None, "distributed_world_size": 1},
            "dataset": {"_name": None, "max_tokens": 4096},
            "optimization": {"_name": None, "lr": [0.0007], "max_update": 100000,
                             "update_freq": [1], "clip_norm": 0.0},
            "checkpoint": {"_name": None, "save_dir": "checkpoints/moa"},
            "model": model_section,
            "task": task_section,
            "criterion": {"_name": "label_smoothed_cross_entropy", "label_smoothing": 0.1},
            "optimizer": {"_name": "adam", "adam_betas": "(0.9, 0.98)", "adam_eps": 1e-08},
            "lr_scheduler": {"_name": "inverse_sqrt", "warmup_updates": 4000},
        }
        ckpt["args"] = None
        ckpt["cfg"] = wrap_cfg(cfg) if wrap_cfg else cfg
    else:
        raise ValueError(f"unknown style {style!r} (args, cfg, cfg-nested, cfg-namespace)")
    torch.save(ckpt, path)


def write_fairseq_dict(vocab: List[str], path: str,
                       counts: Optional[List[int]] = None) -> None:
    """dict.txt as fairseq writes it: `piece count` lines, without the four
    specials (dropped here when vocab starts with them). Counts default to a
    fake decreasing frequency."""
    pieces = vocab[4:] if vocab[:4] == FAIRSEQ_SPECIALS else list(vocab)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for i, piece in enumerate(pieces):
            count = counts[i] if counts is not None else max(0, 100000 - 97 * i)
            f.write(f"{piece} {count}\n")


# --- reading -------------------------------------------------------------------

class DictFormatError(ValueError):
    pass


def read_fairseq_dict(path: str) -> List[str]:
    """The tokens of a fairseq dict.txt in id order (ids 4, 5, ...). Lines are
    `token count` (the token is everything before the last space), optionally
    followed by `#fairseq:overwrite`, which allows a duplicate. Raises
    DictFormatError like fairseq's Dictionary.add_from_file would."""
    try:
        with open(path, encoding="utf-8", newline="\n") as f:
            lines = f.read().split("\n")
    except OSError as e:
        raise DictFormatError(f"{path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise DictFormatError(f"{path}: not UTF-8") from None
    if lines and lines[-1] == "":
        lines.pop()
    tokens: List[str] = []
    seen = set(FAIRSEQ_SPECIALS)
    for n, raw in enumerate(lines, 1):
        line = raw.rstrip("\r")
        try:
            token, field = line.rstrip().rsplit(" ", 1)
            overwrite = field == OVERWRITE_FLAG
            if overwrite:
                token, field = token.rsplit(" ", 1)
            int(field)
        except ValueError:
            raise DictFormatError(
                f"{path}:{n}: expected 'token count' (got {line[:60]!r})") from None
        if token in seen and not overwrite:
            raise DictFormatError(
                f"{path}:{n}: duplicate token {token!r} (fairseq needs {OVERWRITE_FLAG})")
        seen.add(token)
        tokens.append(token)
    return tokens


class _StubMeta(type):
    """Class-level attribute access on a stand-in class yields a stand-in
    member that remembers the name: Python 3.11 pickles an enum member as
    getattr(EnumClass, name)."""

    def __getattr__(cls, name: str) -> Any:
        if name.startswith("__") or name.startswith("_stub"):
            raise AttributeError(name)
        member = cls.__new__(cls)
        member.__dict__["_stub_member"] = name
        return member


class StubObject(metaclass=_StubMeta):
    """Stand-in for an instance of a class that could not be imported. It keeps
    what unpickling gives it: constructor arguments (`_stub_args`), the state
    passed to __setstate__ (`_stub_state`), items and list entries. Attribute
    and item access look through that (omegaconf containers keep their values
    in `_content`, value nodes in `_val`)."""

    _stub_qualname = "?"
    _stub_args: Tuple[Any, ...] = ()
    _stub_kwargs: Dict[str, Any] = {}
    _stub_state: Any = None

    def __new__(cls, *args: Any, **kwargs: Any) -> "StubObject":
        self = object.__new__(cls)
        self.__dict__["_stub_args"] = args
        self.__dict__["_stub_kwargs"] = kwargs
        return self

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.__dict__["_stub_state"] = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.__dict__.setdefault("_stub_items", {})[key] = value

    def append(self, value: Any) -> None:
        self.__dict__.setdefault("_stub_list", []).append(value)

    def extend(self, values: Iterable[Any]) -> None:
        self.__dict__.setdefault("_stub_list", []).extend(values)

    def _stub_fields(self) -> Dict[str, Any]:
        """Name -> raw value of everything the object holds."""
        out: Dict[str, Any] = {}
        state = self.__dict__.get("_stub_state")
        if isinstance(state, tuple) and len(state) == 2:   # (dict, slots)
            for part in state:
                if isinstance(part, dict):
                    out.update(part)
        elif isinstance(state, dict):
            content = state.get("_content")
            out.update(content if isinstance(content, dict) else state)
        out.update(self.__dict__.get("_stub_kwargs", {}))
        out.update(self.__dict__.get("_stub_items", {}))
        return out

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name.startswith("_stub"):
            raise AttributeError(name)
        fields = self._stub_fields()
        if name in fields:
            return _unwrap_node(fields[name])
        raise AttributeError(f"{self._stub_qualname} stand-in has no {name!r}")

    def __getitem__(self, key: Any) -> Any:
        fields = self._stub_fields()
        if key in fields:
            return _unwrap_node(fields[key])
        lst = self.__dict__.get("_stub_list")
        if isinstance(key, int) and lst is not None:
            return _unwrap_node(lst[key])
        raise KeyError(key)

    def __repr__(self) -> str:
        return f"<stand-in for {self._stub_qualname}>"


def _unwrap_node(value: Any) -> Any:
    """An omegaconf-style value node (state with `_val`) -> its value."""
    if isinstance(value, StubObject):
        state = value.__dict__.get("_stub_state")
        if isinstance(state, dict) and "_val" in state and "_content" not in state:
            return _unwrap_node(state["_val"])
    return value


class TolerantPickle:
    """A pickle module for torch.load(pickle_module=...): find_class returns a
    StubObject subclass for classes whose module is missing (or lacks the
    name); `stubbed` lists them as 'module.Name'. Everything else is the
    standard pickle module's."""

    __name__ = "tolerant_pickle"

    def __init__(self) -> None:
        self.stubbed: Dict[str, type] = {}
        self.used = False
        registry = self

        class Unpickler(pickle.Unpickler):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **kwargs)
                registry.used = True

            def find_class(self, module: str, name: str) -> Any:
                try:
                    return super().find_class(module, name)
                except (ImportError, AttributeError):
                    return registry.stub(module, name)

        self.Unpickler = Unpickler

    def __getattr__(self, name: str) -> Any:
        return getattr(pickle, name)

    def stub(self, module: str, name: str) -> type:
        qual = f"{module}.{name}"
        if qual not in self.stubbed:
            cls = type(name, (StubObject,), {"_stub_qualname": qual, "__module__": module})
            self.stubbed[qual] = cls
        return self.stubbed[qual]

    def load(self, f: Any, **kwargs: Any) -> Any:
        return self.Unpickler(f, **kwargs).load()

    def loads(self, data: bytes, **kwargs: Any) -> Any:
        return self.Unpickler(io.BytesIO(data), **kwargs).load()


def load_fairseq_checkpoint(path: str) -> Tuple[Dict[str, Any], List[str]]:
    """torch.load on the CPU with the tolerant unpickler. Returns (checkpoint
    dict, sorted names of the classes replaced by stand-ins).

    Debian's torch 1.13 ignores torch.load's pickle_module argument (it resets
    it to the standard pickle whenever weights_only is false), so the module
    global `torch.serialization.pickle` is swapped for the duration of the
    call as well (not thread-safe; this is a command-line tool)."""
    import torch.serialization as serialization
    mod = TolerantPickle()
    saved = serialization.pickle
    serialization.pickle = mod
    try:
        ckpt = torch.load(path, map_location="cpu", pickle_module=mod)
    finally:
        serialization.pickle = saved
    if not mod.used:
        raise RuntimeError(f"{path}: torch.load did not use the tolerant unpickler")
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path}: not a fairseq checkpoint (a {type(ckpt).__name__}, "
                         "not a dict)")
    return ckpt, sorted(mod.stubbed)


def to_plain(obj: Any, _active: Optional[set] = None) -> Any:
    """Namespaces, dicts, omegaconf-style containers (real or stand-ins) and
    enums -> plain dicts, lists and scalars. Back-references (`_parent`) are
    not followed; a cycle yields None. Tensors are kept as they are."""
    active = set() if _active is None else _active
    if obj is None or isinstance(obj, (bool, int, float, str, bytes, torch.Tensor)):
        return obj
    if isinstance(obj, enum.Enum):
        return to_plain(obj.value, active)
    if id(obj) in active:
        return None
    active.add(id(obj))
    try:
        if isinstance(obj, argparse.Namespace):
            return {k: to_plain(v, active) for k, v in vars(obj).items()}
        if isinstance(obj, Mapping):
            return {k: to_plain(v, active) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [to_plain(v, active) for v in obj]
        if isinstance(obj, StubObject):
            return _stub_to_plain(obj, active)
        if hasattr(obj, "__dict__"):    # an importable config object
            return {k: to_plain(v, active) for k, v in vars(obj).items()
                    if not k.startswith("_")}
        return obj
    finally:
        active.discard(id(obj))


def _stub_to_plain(obj: StubObject, active: set) -> Any:
    d = obj.__dict__
    if "_stub_member" in d:                                 # Class.NAME (enum member)
        return d["_stub_member"]
    state = d.get("_stub_state")
    if isinstance(state, dict) and "_content" in state:    # omegaconf container
        content = state["_content"]
        if isinstance(content, dict):
            return {k: to_plain(v, active) for k, v in content.items()}
        if isinstance(content, (list, tuple)):
            return [to_plain(v, active) for v in content]
        return None if content in ("???", None) else to_plain(content, active)
    if isinstance(state, dict) and "_val" in state:         # omegaconf value node
        return to_plain(state["_val"], active)
    if "_stub_items" in d or isinstance(state, (dict, tuple)) or d.get("_stub_kwargs"):
        fields = {k: v for k, v in obj._stub_fields().items()
                  if k not in ("_parent", "_metadata", "_flags_cache")}
        return {k: to_plain(v, active) for k, v in fields.items()}
    if "_stub_list" in d:
        return [to_plain(v, active) for v in d["_stub_list"]]
    args = d.get("_stub_args", ())
    if len(args) == 1:          # e.g. an enum member pickled as Class(value)
        return to_plain(args[0], active)
    if args:
        return [to_plain(v, active) for v in args]
    return None


def flatten_model_section(section: Mapping[str, Any]) -> Dict[str, Any]:
    """TransformerConfig layout -> flat argparse names: encoder.X -> encoder_X,
    quant_noise.pq -> quant_noise_pq. Flat names win over nested ones."""
    out: Dict[str, Any] = {}
    nested: Dict[str, Any] = {}
    for k, v in section.items():
        if k in ("encoder", "decoder") and isinstance(v, Mapping):
            for field, value in v.items():
                nested[f"{k}_{field}"] = value
        elif k == "quant_noise" and isinstance(v, Mapping):
            for field, value in v.items():
                nested[f"quant_noise_{field}"] = value
        else:
            out[k] = v
    for k, v in nested.items():
        out.setdefault(k, v)
    return out


def checkpoint_hparams(ckpt: Mapping[str, Any]) -> Tuple[Dict[str, Any], str, Dict[str, Any]]:
    """(flat model hyper-parameters, where they came from, task section) of a
    loaded checkpoint: `args` when present (as fairseq does), else
    `cfg.model`. Raises ValueError when neither holds a model section."""
    args = ckpt.get("args")
    if args is not None:
        plain = to_plain(args)
        if isinstance(plain, Mapping):
            return flatten_model_section(plain), "args", plain
    cfg = ckpt.get("cfg")
    if cfg is not None:
        plain = to_plain(cfg)
        if isinstance(plain, Mapping) and isinstance(plain.get("model"), Mapping):
            task = plain.get("task") if isinstance(plain.get("task"), Mapping) else {}
            return flatten_model_section(plain["model"]), "cfg.model", dict(task)
    raise ValueError("the checkpoint holds no hyper-parameters (neither `args` nor "
                     "`cfg` with a `model` section)")
