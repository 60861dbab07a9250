#!/usr/bin/python3
"""Tests of train/fairseq_ckpt.py and train/convert_fairseq.py.

A random MoATransformer (train/moa_reference.py) is saved as a checkpoint of
the paper's fairseq code (hyper-parameters in `args`, in a `cfg` dict, or in
pickled config objects of a module that cannot be imported at load time),
converted, and the model directory is checked: forced-decoding scores of the
converted model equal the original's (1e-5), and, when
build/release/moa-translate exists, the C engine's --score output equals them
(1e-4). Every unsupported option is refused with a message naming it.

    /usr/bin/python3 tests/python/run_python_tests.py
"""

from __future__ import annotations

import argparse
import contextlib
import enum
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import types
import unittest
from typing import Any, Dict, List, Optional

import numpy as np
import torch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "train"))

import convert_fairseq as cf  # noqa: E402
import fairseq_ckpt as fc  # noqa: E402
import moa_io  # noqa: E402
import moa_reference as ref  # noqa: E402

SPM_DIR = os.path.join(REPO, "tests", "fixtures", "spm")
SPM = os.path.join(SPM_DIR, "sentencepiece.model")
SAMPLE = os.path.join(REPO, "tests", "fixtures", "sample.en-de.tsv")
CLI = os.path.join(REPO, "build", "release", "moa-translate")
PYTHON = "/usr/bin/python3"
TOL_REF = 1e-5
TOL_CLI = 1e-4


def fixture_vocab() -> List[str]:
    return moa_io.read_vocab(os.path.join(SPM_DIR, "vocab.txt"))


def small_config(**kw: Any) -> Dict[str, Any]:
    cfg = {"d_model": 16, "encoder_layers": 2, "decoder_layers": 2, "ffn_dim": 32,
           "num_experts": 4, "top_k": 2, "head_dim": 8, "vocab_size": 1000,
           "activation": "relu", "normalize_before": False, "attention_bias": False,
           "share_embeddings": True, "scale_embedding": True, "max_positions": 256,
           "layernorm_eps": 1e-5, "bos_id": 0, "pad_id": 1, "eos_id": 2, "unk_id": 3,
           "decoder_start_id": 2, "source_lang": "en", "target_lang": "de"}
    cfg.update(kw)
    return moa_io.complete_config(cfg)


def random_model(cfg: Dict[str, Any], seed: int) -> ref.MoATransformer:
    """Every parameter drawn from a seeded generator (MoA expert weights are
    created with torch.empty, so they must be filled)."""
    model = ref.MoATransformer(ref.MoAConfig.from_dict(cfg))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if "layer_norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * noise)
            elif name.endswith("bias"):
                p.copy_(0.1 * noise)
            elif name.endswith("w_gate"):
                p.copy_(noise)                  # spread router logits
            else:
                fan_in = p.shape[-2] if name.endswith("experts.w") else p.shape[-1]
                p.copy_(noise / math.sqrt(fan_in))
    return model.eval()


def sample_pairs(n: int = 6) -> List[List[str]]:
    with open(SAMPLE, encoding="utf-8") as f:
        return [ln.rstrip("\n").split("\t", 1) for ln in f][:n]


def quiet_convert(*args: Any, **kw: Any) -> List[str]:
    lines: List[str] = []
    cf.convert(*args, log=lines.append, **kw)
    return lines


# --- a fake omegaconf, importable only while the checkpoint is written ---------

FAKE_MODULES = ["omegaconf", "omegaconf.base", "omegaconf.nodes", "omegaconf.dictconfig",
                "fairseq", "fairseq.dataclass", "fairseq.dataclass.constants"]


@contextlib.contextmanager
def fake_omegaconf():
    """Registers modules named omegaconf.* / fairseq.dataclass.constants with
    look-alike classes (DictConfig keeps nodes in `_content`, each node its
    value in `_val` and a `_parent` back-reference; an enum for activation_fn),
    yields a function that wraps a nested dict, and removes the modules again."""
    mods = {name: types.ModuleType(name) for name in FAKE_MODULES}

    def place(cls: type, module: str) -> type:
        cls.__module__ = module
        cls.__qualname__ = cls.__name__
        setattr(mods[module], cls.__name__, cls)
        return cls

    class Metadata:
        def __init__(self, key: Any, optional: bool = True) -> None:
            self.key = key
            self.optional = optional
            self.ref_type = Any
            self.flags = {}

    class AnyNode:
        def __init__(self, value: Any, key: Any, parent: Any) -> None:
            self._val = value
            self._metadata = Metadata(key)
            self._parent = parent

    class DictConfig:
        def __init__(self, content: Dict[str, Any], key: Any = None, parent: Any = None) -> None:
            self._metadata = Metadata(key)
            self._parent = parent
            self._flags_cache = None
            self._content = {k: (DictConfig(v, k, self) if isinstance(v, dict)
                                 else v if isinstance(v, enum.Enum)
                                 else AnyNode(v, k, self)) for k, v in content.items()}

        def __getstate__(self) -> Dict[str, Any]:
            state = dict(self.__dict__)
            state.pop("_flags_cache", None)
            return state

        def __setstate__(self, state: Dict[str, Any]) -> None:
            self.__dict__.update(state)

    Choices = enum.Enum("Choices", {"relu": "relu", "gelu": "gelu"})
    place(Metadata, "omegaconf.base")
    place(AnyNode, "omegaconf.nodes")
    place(DictConfig, "omegaconf.dictconfig")
    place(Choices, "fairseq.dataclass.constants")
    saved = {name: sys.modules.get(name) for name in FAKE_MODULES}
    sys.modules.update(mods)

    def wrap(cfg: Dict[str, Any]) -> Any:
        model = cfg["model"]
        model["activation_fn"] = Choices(model["activation_fn"])
        return DictConfig(cfg)

    try:
        yield wrap
    finally:
        for name, mod in saved.items():
            if mod is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = mod


# --- tests -----------------------------------------------------------------------

class ConvertRoundTripTest(unittest.TestCase):
    def setUp(self) -> None:
        self.tmp = tempfile.mkdtemp(prefix="test-convert-")
        self.dict_path = os.path.join(self.tmp, "dict.txt")
        fc.write_fairseq_dict(fixture_vocab(), self.dict_path)

    def tearDown(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    def check_same_scores(self, model: ref.MoATransformer, out: str) -> None:
        """Reference scores of the converted directory == the original model's
        (1e-5); the C engine's --score on the directory == them too (1e-4)."""
        converted = ref.MoATransformer.from_dir(out)
        tok = ref.Tokenizer(out, converted.cfg)
        pairs = sample_pairs()
        srcs = [tok.encode(s) for s, _ in pairs]
        tgts = [tok.encode(t) for _, t in pairs]
        want = ref.score_batch(model, srcs, tgts)
        got = ref.score_batch(converted, srcs, tgts)
        for w, g in zip(want, got):
            np.testing.assert_allclose(g.token_logprobs, w.token_logprobs, rtol=0, atol=TOL_REF)
        if not os.access(CLI, os.X_OK):
            return
        tsv = os.path.join(self.tmp, "pairs.tsv")
        with open(tsv, "w", encoding="utf-8") as f:
            for s, t in pairs:
                f.write(f"{s}\t{t}\n")
        proc = subprocess.run([CLI, "--model", out, "--score", tsv],
                              capture_output=True, text=True, timeout=120)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        rows = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.strip()]
        self.assertEqual(len(rows), len(pairs))
        compared = 0
        for row, s, t, w in zip(rows, srcs, tgts, want):
            self.assertEqual(row["source_ids"], s)
            self.assertEqual(row["target_ids"], t)
            if w.router_near_tie_pos is not None:   # spec §5: may differ from there
                n = w.router_near_tie_pos
                np.testing.assert_allclose(row["token_logprobs"][:n], w.token_logprobs[:n],
                                           rtol=0, atol=TOL_CLI)
                continue
            np.testing.assert_allclose(row["token_logprobs"], w.token_logprobs,
                                       rtol=0, atol=TOL_CLI)
            compared += 1
        self.assertGreaterEqual(compared, len(pairs) - 1)

    def test_args_namespace_checkpoint(self):
        cfg = small_config()
        model = random_model(cfg, seed=11)
        ckpt = os.path.join(self.tmp, "checkpoint_best.pt")
        fc.save_fairseq_checkpoint(model, cfg, ckpt, style="args")
        out = os.path.join(self.tmp, "model")
        log = quiet_convert(ckpt, self.dict_path, SPM, out)
        self.assertTrue(any("w_noise" in ln and ln.startswith("skipped:") for ln in log), log)
        written, tensors, vocab = moa_io.load_model_dir(out)
        for k in ("d_model", "encoder_layers", "decoder_layers", "ffn_dim", "num_experts",
                  "top_k", "head_dim", "vocab_size", "share_embeddings", "normalize_before",
                  "activation", "attention_bias", "decoder_start_id"):
            self.assertEqual(written[k], cfg[k], k)
        self.assertEqual(written["max_positions"], 256)
        self.assertEqual(vocab, fixture_vocab())
        self.assertNotIn("decoder.embed_tokens.weight", tensors)
        self.assertFalse(any("ffd" in n or "w_noise" in n or "version" in n for n in tensors))
        self.check_same_scores(model, out)

    def test_cfg_dict_prenorm_gelu_bias_separate_embeddings(self):
        cfg = small_config(normalize_before=True, activation="gelu", attention_bias=True,
                           share_embeddings=False, decoder_layers=1)
        model = random_model(cfg, seed=12)
        ckpt = os.path.join(self.tmp, "ckpt.pt")
        fc.save_fairseq_checkpoint(model, cfg, ckpt, style="cfg")
        out = os.path.join(self.tmp, "model")
        log = quiet_convert(ckpt, self.dict_path, SPM, out, source_lang="fr")
        self.assertIn("hyper-parameters from `cfg.model`", log)
        written, tensors, _ = moa_io.load_model_dir(out)
        self.assertTrue(written["normalize_before"])
        self.assertTrue(written["attention_bias"])
        self.assertFalse(written["share_embeddings"])
        self.assertEqual(written["activation"], "gelu")
        self.assertEqual((written["source_lang"], written["target_lang"]), ("fr", "de"))
        self.assertIn("decoder.output_projection.weight", tensors)
        self.assertIn("encoder.layer_norm.weight", tensors)
        self.check_same_scores(model, out)

    def test_cfg_with_classes_of_a_missing_module(self):
        cfg = small_config(activation="gelu")
        model = random_model(cfg, seed=13)
        ckpt = os.path.join(self.tmp, "ckpt.pt")
        with fake_omegaconf() as wrap:
            fc.save_fairseq_checkpoint(model, cfg, ckpt, style="cfg-nested", wrap_cfg=wrap)
        self.assertNotIn("omegaconf.dictconfig", sys.modules)
        with self.assertRaises(ImportError):
            __import__("omegaconf.dictconfig")
        loaded, stubbed = fc.load_fairseq_checkpoint(ckpt)
        self.assertIn("omegaconf.dictconfig.DictConfig", stubbed)
        self.assertIn("omegaconf.nodes.AnyNode", stubbed)
        self.assertIn("fairseq.dataclass.constants.Choices", stubbed)
        # attribute-style access through the stand-ins
        self.assertEqual(loaded["cfg"].model.encoder.embed_dim, 16)
        self.assertEqual(loaded["cfg"]["model"].num_expert, 4)
        out = os.path.join(self.tmp, "model")
        log = quiet_convert(ckpt, self.dict_path, SPM, out)
        skipped = [ln for ln in log if ln.startswith("skipped:")]
        self.assertTrue(any("omegaconf.dictconfig.DictConfig" in ln for ln in skipped), log)
        written, _, _ = moa_io.load_model_dir(out)
        self.assertEqual(written["activation"], "gelu")
        self.assertEqual(written["d_model"], 16)
        self.check_same_scores(model, out)

    def test_cfg_model_namespace(self):
        # fairseq >= 0.10 saving a model whose architecture registers add_args
        # (the paper's moa_transformer): args None, cfg.model and cfg.task
        # argparse Namespaces of every flat argument.
        cfg = small_config()
        model = random_model(cfg, seed=17)
        ckpt = os.path.join(self.tmp, "ckpt.pt")
        fc.save_fairseq_checkpoint(model, cfg, ckpt, style="cfg-namespace",
                                   overrides={"source_lang": "de", "target_lang": "en",
                                              "gating": "normal"},
                                   state_dict=fc.fairseq_state_dict(model, cfg, w_noise=False))
        loaded, _ = fc.load_fairseq_checkpoint(ckpt)
        self.assertIsNone(loaded["args"])
        self.assertIsInstance(loaded["cfg"]["model"], argparse.Namespace)
        out = os.path.join(self.tmp, "model")
        log = quiet_convert(ckpt, self.dict_path, SPM, out)
        self.assertIn("hyper-parameters from `cfg.model`", log)
        written, _, _ = moa_io.load_model_dir(out)
        self.assertEqual((written["source_lang"], written["target_lang"]), ("de", "en"))
        self.assertEqual(written["num_experts"], cfg["num_experts"])
        self.check_same_scores(model, out)

    def test_cfg_model_namespace_in_omegaconf(self):
        # Older fairseq pickled the DictConfig itself: the Namespace sits in a node.
        cfg = small_config(encoder_layers=1, decoder_layers=1)
        model = random_model(cfg, seed=18)
        ckpt = os.path.join(self.tmp, "ckpt.pt")
        with fake_omegaconf():
            dict_config = sys.modules["omegaconf.dictconfig"].DictConfig
            fc.save_fairseq_checkpoint(model, cfg, ckpt, style="cfg-namespace",
                                       wrap_cfg=dict_config)
        out = os.path.join(self.tmp, "model")
        log = quiet_convert(ckpt, self.dict_path, SPM, out)
        self.assertIn("hyper-parameters from `cfg.model`", log)
        self.assertTrue(any("omegaconf.nodes.AnyNode" in ln for ln in log), log)
        self.check_same_scores(model, out)

    def test_ffd_type_values_the_authors_treat_as_dense(self):
        cfg = small_config(encoder_layers=1, decoder_layers=1)
        model = random_model(cfg, seed=19)
        for value in ("dense", "", None):
            ckpt = os.path.join(self.tmp, "ckpt.pt")
            fc.save_fairseq_checkpoint(model, cfg, ckpt, overrides={"ffd_type": value})
            out = os.path.join(self.tmp, f"model-{value}")
            log = quiet_convert(ckpt, self.dict_path, SPM, out)
            if value is not None:
                self.assertTrue(any("every value but 'moe'" in ln for ln in log), log)
            moa_io.load_model_dir(out)

    def test_dictionary_padded_with_madeupwords(self):
        # 994 real ids (4 specials + 990 pieces); fairseq pads the embedding to
        # 1000 rows, dict.txt lists only the 990 pieces.
        cfg = small_config()
        model = random_model(cfg, seed=14)
        ckpt = os.path.join(self.tmp, "ckpt.pt")
        fc.save_fairseq_checkpoint(model, cfg, ckpt)
        short = os.path.join(self.tmp, "dict-short.txt")
        fc.write_fairseq_dict(fixture_vocab()[:994], short)
        out = os.path.join(self.tmp, "model")
        log = quiet_convert(ckpt, short, SPM, out)
        self.assertTrue(any("madeupword0000" in ln for ln in log), log)
        vocab = moa_io.read_vocab(os.path.join(out, "vocab.txt"), 1000)
        self.assertEqual(vocab[:994], fixture_vocab()[:994])
        self.assertEqual(vocab[994:], [f"madeupword{i:04d}" for i in range(6)])
        self.check_same_scores(model, out)

    def test_f16_and_only_ffd_aliases(self):
        # A layer whose FFN appears only as ffd.0 / ffd.3 is read as fc1 / fc2.
        cfg = small_config()
        model = random_model(cfg, seed=15)
        sd = fc.fairseq_state_dict(model, cfg)
        for part in ("weight", "bias"):
            del sd[f"encoder.layers.1.fc1.{part}"]
            del sd[f"encoder.layers.1.fc2.{part}"]
        ckpt = os.path.join(self.tmp, "ckpt.pt")
        fc.save_fairseq_checkpoint(model, cfg, ckpt, state_dict=sd)
        out = os.path.join(self.tmp, "model")
        quiet_convert(ckpt, self.dict_path, SPM, out, dtype="f16")
        dtypes = set(moa_io.safetensors_dtypes(os.path.join(out, "model.safetensors")).values())
        self.assertEqual(dtypes, {"F16"})
        _, tensors, _ = moa_io.load_model_dir(out)
        want = model.state_dict()["encoder.layers.1.fc2.weight"].numpy()
        np.testing.assert_allclose(tensors["encoder.layers.1.fc2.weight"], want, atol=1e-2)

    def test_cli(self):
        cfg = small_config(encoder_layers=1, decoder_layers=1)
        model = random_model(cfg, seed=16)
        ckpt = os.path.join(self.tmp, "ckpt.pt")
        fc.save_fairseq_checkpoint(model, cfg, ckpt)
        out = os.path.join(self.tmp, "model")
        script = os.path.join(REPO, "train", "convert_fairseq.py")
        proc = subprocess.run([PYTHON, script, "--checkpoint", ckpt, "--dict", self.dict_path,
                               "--spm", SPM, "--out", out, "--dtype", "f32",
                               "--source-lang", "en", "--target-lang", "de"],
                              capture_output=True, text=True, timeout=300)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertIn("skipped:", proc.stdout)
        moa_io.load_model_dir(out)
        bad = os.path.join(self.tmp, "bad.pt")
        fc.save_fairseq_checkpoint(model, cfg, bad, overrides={"encoder_learned_pos": True})
        proc = subprocess.run([PYTHON, script, "--checkpoint", bad, "--dict", self.dict_path,
                               "--spm", SPM, "--out", os.path.join(self.tmp, "bad")],
                              capture_output=True, text=True, timeout=300)
        self.assertEqual(proc.returncode, 1)
        self.assertIn("encoder_learned_pos", proc.stderr)
        self.assertFalse(os.path.exists(os.path.join(self.tmp, "bad")))
        helptext = cf.build_arg_parser().format_help()
        for flag in ("--checkpoint", "--dict", "--spm", "--out", "--dtype", "--source-lang",
                     "--target-lang", "--allow-vocab-mismatch"):
            self.assertIn(flag, helptext)


class ReadDictTest(unittest.TestCase):
    def test_read_dict(self):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "dict.txt")
            with open(path, "w", encoding="utf-8") as f:
                f.write("▁the 100\n, 50\nde 3 #fairseq:overwrite\nde 2 #fairseq:overwrite\n")
            self.assertEqual(fc.read_fairseq_dict(path), ["▁the", ",", "de", "de"])
            with open(path, "w", encoding="utf-8") as f:
                f.write("a 1\na 2\n")
            with self.assertRaisesRegex(ValueError, "duplicate"):
                fc.read_fairseq_dict(path)
            with open(path, "w", encoding="utf-8") as f:
                f.write("a 1\nbroken\n")
            with self.assertRaisesRegex(ValueError, "dict.txt:2"):
                fc.read_fairseq_dict(path)


# Hyper-parameter refusals: (test name, overrides, dropped names, words the
# message must hold).
HPARAM_REFUSALS = [
    ("decoder_attention_heads", {"decoder_attention_heads": 4}, (), ["decoder_attention_heads"]),
    ("encoder_learned_pos", {"encoder_learned_pos": True}, (), ["encoder_learned_pos"]),
    ("decoder_learned_pos", {"decoder_learned_pos": True}, (), ["decoder_learned_pos"]),
    ("layernorm_embedding", {"layernorm_embedding": True}, (), ["layernorm_embedding"]),
    ("ffd_type_moe", {"ffd_type": "moe"}, (), ["ffd_type", "moe"]),
    ("scale_attn", {"scale_attn": True}, (), ["scale_attn"]),
    ("scale_fc", {"scale_fc": True}, (), ["scale_fc"]),
    ("scale_heads", {"scale_heads": True}, (), ["scale_heads"]),
    ("scale_resids", {"scale_resids": True}, (), ["scale_resids"]),
    ("share_decoder_input_output_embed",
     {"share_all_embeddings": False, "share_decoder_input_output_embed": True}, (),
     ["share_decoder_input_output_embed"]),
    ("decoder_embed_dim", {"decoder_embed_dim": 32}, (), ["decoder_embed_dim"]),
    ("decoder_ffn_embed_dim", {"decoder_ffn_embed_dim": 64}, (), ["decoder_ffn_embed_dim"]),
    ("no_token_positional_embeddings", {"no_token_positional_embeddings": True}, (),
     ["no_token_positional_embeddings"]),
    ("activation_fn", {"activation_fn": "gelu_fast"}, (), ["activation_fn", "gelu_fast"]),
    ("missing_head_dim", {}, ("head_dim",), ["head_dim"]),
    ("missing_num_expert", {}, ("num_expert",), ["num_expert"]),
    ("missing_encoder_embed_dim", {}, ("encoder_embed_dim",), ["encoder_embed_dim"]),
    ("top_k_above_experts", {"encoder_attention_heads": 8, "decoder_attention_heads": 8}, (),
     ["top_k 8 > num_experts 4"]),
]


class RefusalTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        cls.tmp = tempfile.mkdtemp(prefix="test-refuse-")
        cls.cfg = small_config(encoder_layers=1, decoder_layers=1)
        cls.model = random_model(cls.cfg, seed=21)
        cls.dict_path = os.path.join(cls.tmp, "dict.txt")
        fc.write_fairseq_dict(fixture_vocab(), cls.dict_path)

    @classmethod
    def tearDownClass(cls) -> None:
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def refused(self, name: str, words: List[str], dict_path: Optional[str] = None,
                style: str = "args", **save_kw: Any) -> str:
        ckpt = os.path.join(self.tmp, f"{name}.pt")
        fc.save_fairseq_checkpoint(self.model, self.cfg, ckpt, style=style, **save_kw)
        out = os.path.join(self.tmp, f"out-{name}")
        with self.assertRaises(cf.ConversionRefused) as ctx:
            quiet_convert(ckpt, dict_path or self.dict_path, SPM, out)
        message = "\n".join(ctx.exception.problems)
        for w in words:
            self.assertIn(w, message)
        self.assertFalse(os.path.exists(out), "nothing may be written on refusal")
        return message

    def test_unknown_state_dict_entry(self):
        extra = {"encoder.layers.0.self_attn.bias_k": torch.zeros(1, 1, 16),
                 "decoder.layers.0.c_attn": torch.ones(2)}
        sd = fc.fairseq_state_dict(self.model, self.cfg, extra=extra)
        self.refused("unknown", ["encoder.layers.0.self_attn.bias_k", "decoder.layers.0.c_attn"],
                     state_dict=sd)

    def test_ffd_alias_that_differs(self):
        sd = fc.fairseq_state_dict(self.model, self.cfg)
        sd["encoder.layers.0.ffd.3.weight"] = sd["encoder.layers.0.ffd.3.weight"] + 1.0
        self.refused("ffd", ["encoder.layers.0.ffd.3.weight"], state_dict=sd)

    def test_shared_embedding_that_differs(self):
        sd = fc.fairseq_state_dict(self.model, self.cfg)
        sd["decoder.output_projection.weight"] = sd["decoder.output_projection.weight"] * 2.0
        self.refused("shared", ["decoder.output_projection.weight", "share_all_embeddings"],
                     state_dict=sd)

    def test_wrong_shape(self):
        sd = fc.fairseq_state_dict(self.model, self.cfg)
        sd["encoder.layers.0.self_attn.k_proj.weight"] = torch.zeros(4, 16)
        self.refused("shape", ["encoder.layers.0.self_attn.k_proj.weight"], state_dict=sd)

    def test_dictionary_of_another_size(self):
        small = os.path.join(self.tmp, "dict-small.txt")
        fc.write_fairseq_dict(fixture_vocab()[:500], small)
        self.refused("dictsize", ["dict-small.txt", "1000 rows"], dict_path=small)

    def test_dictionary_not_from_this_spm(self):
        other = os.path.join(self.tmp, "dict-other.txt")
        fc.write_fairseq_dict([f"tok{i}" for i in range(996)], other)
        self.refused("spm", ["sentencepiece.model", "--allow-vocab-mismatch"], dict_path=other)

    def test_refusal_in_nested_cfg(self):
        self.refused("nested", ["decoder_learned_pos"], style="cfg-nested",
                     overrides={"decoder_learned_pos": True})

    def test_all_problems_listed(self):
        msg = self.refused("several", ["scale_fc", "layernorm_embedding", "head_dim"],
                           overrides={"scale_fc": True, "layernorm_embedding": True},
                           drop=("head_dim",))
        self.assertGreaterEqual(msg.count("\n"), 2)


def _make_refusal_test(overrides: Dict[str, Any], drop: tuple, words: List[str], name: str):
    def test(self: RefusalTest) -> None:
        self.refused(name, words, overrides=overrides, drop=drop)
    return test


for _name, _over, _drop, _words in HPARAM_REFUSALS:
    setattr(RefusalTest, f"test_option_{_name}", _make_refusal_test(_over, _drop, _words, _name))


class TolerantLoadTest(unittest.TestCase):
    def test_to_plain_namespace_and_nested(self):
        import argparse
        ns = argparse.Namespace(a=1, b=[1, 2], c={"x": argparse.Namespace(y=2)})
        self.assertEqual(fc.to_plain(ns), {"a": 1, "b": [1, 2], "c": {"x": {"y": 2}}})
        flat = fc.flatten_model_section({"encoder": {"embed_dim": 8, "layers": 2},
                                         "encoder_layers": 3, "num_expert": 4})
        self.assertEqual(flat, {"encoder_embed_dim": 8, "encoder_layers": 3, "num_expert": 4})

    def test_legacy_serialization_with_missing_classes(self):
        # Old fairseq checkpoints use torch's pre-zip format.
        with tempfile.TemporaryDirectory() as d:
            with fake_omegaconf() as wrap:
                path = os.path.join(d, "old.pt")
                cfg = wrap({"model": {"activation_fn": "relu", "head_dim": 8},
                            "task": {"source_lang": "en"}})
                torch.save({"model": {"w": torch.ones(2)}, "cfg": cfg}, path,
                           _use_new_zipfile_serialization=False)
            ckpt, stubbed = fc.load_fairseq_checkpoint(path)
        self.assertIn("omegaconf.dictconfig.DictConfig", stubbed)
        self.assertEqual(fc.to_plain(ckpt["cfg"]),
                         {"model": {"activation_fn": "relu", "head_dim": 8},
                          "task": {"source_lang": "en"}})
        self.assertEqual(ckpt["model"]["w"].tolist(), [1.0, 1.0])

    def test_not_a_checkpoint(self):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "x.pt")
            torch.save([1, 2, 3], path)
            with self.assertRaises(ValueError):
                fc.load_fairseq_checkpoint(path)


if __name__ == "__main__":
    unittest.main()
