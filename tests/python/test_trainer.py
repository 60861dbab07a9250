#!/usr/bin/python3
"""Tests of the trainer (train/train.py) as a user runs it, and of what it
hands on: the fairseq-layout checkpoint (--save-fairseq ->
train/convert_fairseq.py) and the model directory of train/export_model.py.

A miniature corpus (the 300 fixture pairs of tests/fixtures/sample.en-de.tsv:
240 train as .tsv.xz, 30 valid, 30 test) is tokenised by `train/data.py cache`
with the fixture SentencePiece model (tests/fixtures/spm), and
`/usr/bin/python3 train/train.py` trains a tiny model on it (d 32, 1+1
layers, E 4, k 2, h 8, ffn 64; 5 batches an epoch, 12 updates; CPU, 1
thread) in a temporary directory:

- determinism: two fresh runs with the same seed end with bit-identical
  weights, optimizer state and RNG states (another seed differs);
- resume: 6 updates, stop, resume to 12 == 12 updates in one go, bit for bit
  (weights, optimizer, RNG), with the recorded step and data position;
- losses: the first update's gradient (read back from Adam's first moment in
  a 1-update checkpoint) is that of label-smoothed (0.1) cross-entropy plus
  0.01 x switch loss plus 0.001 x z-loss, recomputed here independently;
  log.jsonl holds finite switch/z values and expert load per MoA module;
- fairseq layout: --save-fairseq output converts (dict.txt from
  fairseq_ckpt.write_fairseq_dict) to a model directory whose C-engine scores
  equal the reference's on the trainer's own weights (1e-4 per token);
- export: export_model.py export writes a spec §3 directory (F32 and the
  default F16) that the C engine scores like the reference (1e-4 per token);
- continuation (--init-from): a run started from an exported directory holds
  exactly its weights before the first update, carries its update count,
  epoch and clock on, re-warms the learning rate, and resumes bit for bit;
- snapshots and averaging: --snapshot-minutes keeps the newest
  --keep-snapshots weight snapshots, and train/average_checkpoints.py writes
  their exact mean in a checkpoint that export_model.py exports.

The C-engine parts are skipped, with a message, when build/release/moa-translate
is not built (`make`).

    /usr/bin/python3 tests/python/run_python_tests.py tests/python/test_trainer.py
"""

from __future__ import annotations

import importlib.util
import json
import lzma
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import unittest
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "train"))

import data as datamod  # noqa: E402
import fairseq_ckpt  # noqa: E402
import moa_io  # noqa: E402
import moa_reference as ref  # noqa: E402

PYTHON = "/usr/bin/python3"
TRAIN = os.path.join(REPO, "train", "train.py")
DATA = os.path.join(REPO, "train", "data.py")
EXPORT = os.path.join(REPO, "train", "export_model.py")
CONVERT = os.path.join(REPO, "train", "convert_fairseq.py")
CLI = os.path.join(REPO, "build", "release", "moa-translate")
SAMPLE = os.path.join(REPO, "tests", "fixtures", "sample.en-de.tsv")
SPM = os.path.join(REPO, "tests", "fixtures", "spm", "sentencepiece.model")
VOCAB = os.path.join(REPO, "tests", "fixtures", "spm", "vocab.txt")

TOL_CLI = 1e-4          # C engine vs reference, per token log-prob
MAX_EXEMPT = 0.10       # router near-ties (spec §5) may exempt at most this share of pairs

# The model and batching of every run; 1500 padded tokens a batch makes 5
# batches an epoch of the 240 training pairs, so 12 updates cross two epoch
# ends and the resumed half starts inside epoch 1.
DIMS = ["--d-model", "32", "--encoder-layers", "1", "--decoder-layers", "1",
        "--experts", "4", "--top-k", "2", "--head-dim", "8", "--ffn-dim", "64"]
BATCHES_PER_EPOCH = 5
MAX_TOKENS = 1500
N_UPDATES = 12
SEED = 7
DEFAULT_LR = 1.5e-3  # train.py --lr default
SPEC_KEYS = ["format", "format_version", "d_model", "encoder_layers", "decoder_layers",
             "ffn_dim", "activation", "normalize_before", "num_experts", "top_k",
             "head_dim", "attention_bias", "vocab_size", "share_embeddings",
             "scale_embedding", "max_positions", "layernorm_eps", "bos_id", "pad_id",
             "eos_id", "unk_id", "decoder_start_id", "source_lang", "target_lang"]
ARCH = {"d_model": 32, "encoder_layers": 1, "decoder_layers": 1, "ffn_dim": 64,
        "num_experts": 4, "top_k": 2, "head_dim": 8, "activation": "relu",
        "normalize_before": False, "vocab_size": 1000}


def _load_train_module():
    """train/train.py as a module (its main() is not run)."""
    spec = importlib.util.spec_from_file_location("moa_train_under_test", TRAIN)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(cmd: List[str], what: str, timeout: int = 180) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", OMP_NUM_THREADS="1")
    p = subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8", env=env,
                       timeout=timeout)
    if p.returncode != 0:
        raise AssertionError(f"{what} exited {p.returncode}:\n{' '.join(cmd)}\n"
                             f"{p.stderr[-3000:]}\n{p.stdout[-1000:]}")
    return p


def _equal_nested(a: Any, b: Any, where: str = "") -> List[str]:
    """Paths where two nested structures (dicts, lists, tuples, tensors,
    arrays, scalars) differ; tensors must be bit-identical."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)) \
                or a.dtype != b.dtype or a.shape != b.shape or not torch.equal(a, b):
            return [where or "tensor"]
        return []
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return [] if np.array_equal(np.asarray(a), np.asarray(b)) else [where]
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return [f"{where}: keys {sorted(map(str, set(a) ^ set(b)))}"]
        return [p for k in a for p in _equal_nested(a[k], b[k], f"{where}.{k}")]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{where}: lengths {len(a)} / {len(b)}"]
        return [p for i, (x, y) in enumerate(zip(a, b))
                for p in _equal_nested(x, y, f"{where}[{i}]")]
    return [] if a == b else [f"{where}: {a!r} != {b!r}"]


def _read_log(work: str) -> List[Dict[str, Any]]:
    with open(os.path.join(work, "log.jsonl"), encoding="utf-8") as f:
        return [json.loads(ln) for ln in f if ln.strip()]


class TrainerTest(unittest.TestCase):
    tmp = ""
    data = ""
    corpus = ""
    pairs: List[Tuple[str, str]] = []
    _runs: Dict[str, str] = {}
    _cache: Dict[str, Any] = {}

    @classmethod
    def setUpClass(cls) -> None:
        cls._threads = torch.get_num_threads()
        torch.set_num_threads(1)
        cls.tmp = tempfile.mkdtemp(prefix="moa-test-trainer-")
        cls._runs, cls._cache = {}, {}
        with open(SAMPLE, encoding="utf-8") as f:
            lines = [ln.rstrip("\n") for ln in f if ln.strip()]
        assert len(lines) == 300, len(lines)
        cls.corpus = os.path.join(cls.tmp, "corpus")
        os.makedirs(cls.corpus)
        with lzma.open(os.path.join(cls.corpus, "train.en-de.tsv.xz"), "wt",
                       encoding="utf-8") as f:
            f.write("".join(ln + "\n" for ln in lines[:240]))
        for name, part in (("valid", lines[240:270]), ("test", lines[270:300])):
            with open(os.path.join(cls.corpus, f"{name}.en-de.tsv"), "w",
                      encoding="utf-8") as f:
                f.write("".join(ln + "\n" for ln in part))
        # Scored pairs: held out from training (valid + test parts).
        cls.pairs = [tuple(ln.split("\t", 1)) for ln in lines[240:300]]
        cls.data = os.path.join(cls.tmp, "data")
        _run([PYTHON, DATA, "--corpus", cls.corpus, "cache", "--spm", SPM, "--vocab", VOCAB,
              "--out", cls.data], "train/data.py cache")

    @classmethod
    def tearDownClass(cls) -> None:
        torch.set_num_threads(cls._threads)
        shutil.rmtree(cls.tmp, ignore_errors=True)

    # --- helpers ------------------------------------------------------------------------

    @classmethod
    def train_args(cls, work: str, *extra: str) -> List[str]:
        return (["--data", cls.data, "--work", work, "--spm", SPM, "--vocab", VOCAB,
                 "--corpus", cls.corpus, "--max-tokens", str(MAX_TOKENS), "--warmup", "4",
                 "--threads", "1", "--log-every", "1", "--bleu-sentences", "4"]
                + DIMS + list(extra))

    @classmethod
    def train(cls, name: str, *extra: str, work: Optional[str] = None) -> str:
        """Runs train/train.py once per (name, extra) and returns its work dir."""
        key = name + " " + " ".join(extra)
        if key not in cls._runs:
            work = work or os.path.join(cls.tmp, name)
            _run([PYTHON, TRAIN] + cls.train_args(work, *extra), f"train.py ({name})")
            cls._runs[key] = work
        return cls._runs[key]

    @classmethod
    def main_run(cls) -> str:
        """The reference run: seed 7, 12 updates, final valid loss/BLEU, and
        the fairseq-layout copy of the final model."""
        work = os.path.join(cls.tmp, "a")
        return cls.train("a", "--seed", str(SEED), "--max-updates", str(N_UPDATES),
                         "--save-fairseq", os.path.join(work, "fairseq.pt"), work=work)

    @staticmethod
    def ckpt(work: str) -> Dict[str, Any]:
        return torch.load(os.path.join(work, "checkpoint_last.pt"))

    @staticmethod
    def model_of(state: Dict[str, Any]) -> ref.MoATransformer:
        model = ref.MoATransformer(ref.MoAConfig.from_dict(state["config"]))
        model.load_state_dict(state["model"], strict=True)
        return model.eval()

    @classmethod
    def tokenized_pairs(cls) -> Tuple[List[List[int]], List[List[int]]]:
        tok = datamod.Tokenizer(SPM, VOCAB)
        return (tok.encode_many([s for s, _ in cls.pairs]),
                tok.encode_many([t for _, t in cls.pairs]))

    @classmethod
    def reference_scores(cls, model: ref.MoATransformer) -> List[ref.ScoreResult]:
        srcs, tgts = cls.tokenized_pairs()
        return ref.score_batch(model, srcs, tgts)

    def cli_scores(self, model_dir: str) -> List[Dict[str, Any]]:
        tsv = os.path.join(self.tmp, "pairs.tsv")
        with open(tsv, "w", encoding="utf-8") as f:
            f.write("".join(f"{s}\t{t}\n" for s, t in self.pairs))
        p = _run([CLI, "--model", model_dir, "--score", tsv, "--json", "--threads", "1"],
                 f"moa-translate --score ({model_dir})", timeout=60)
        rows = [json.loads(ln) for ln in p.stdout.splitlines() if ln.strip()]
        self.assertEqual(len(rows), len(self.pairs))
        return rows

    def assert_scores_match(self, ref_rows: List[ref.ScoreResult], cli_rows: List[Dict[str, Any]],
                            what: str) -> float:
        """Token ids identical; token log-probs within TOL_CLI before any
        router near-tie (spec §5). Returns the largest difference."""
        srcs, tgts = self.tokenized_pairs()
        max_diff, compared, exempt, total = 0.0, 0, 0, 0
        bad = []
        for i, (r, c) in enumerate(zip(ref_rows, cli_rows)):
            self.assertEqual(c["index"], i)
            self.assertEqual(c["source_ids"], srcs[i], f"{what}: pair {i} source ids")
            self.assertEqual(c["target_ids"], tgts[i], f"{what}: pair {i} target ids")
            self.assertEqual(len(c["token_logprobs"]), len(tgts[i]))
            n = len(tgts[i])
            total += n
            upto = n if r.router_near_tie_pos is None else r.router_near_tie_pos
            exempt += r.router_near_tie_pos is not None
            for t in range(upto):
                d = abs(r.token_logprobs[t] - c["token_logprobs"][t])
                max_diff = max(max_diff, d)
                compared += 1
                if not d <= TOL_CLI:
                    bad.append(f"pair {i} token {t}: ref {r.token_logprobs[t]:.6f} "
                               f"cli {c['token_logprobs'][t]:.6f}")
        self.assertFalse(bad, f"{what}: {len(bad)} token log-probs differ by more than "
                              f"{TOL_CLI}: {bad[:5]}")
        self.assertLessEqual(exempt, MAX_EXEMPT * len(ref_rows),
                             f"{what}: {exempt} of {len(ref_rows)} pairs have router near-ties")
        self.assertGreater(compared, 0.8 * total)
        return max_diff

    # --- a) determinism -----------------------------------------------------------------

    def test_a_deterministic_given_seed(self):
        a = self.ckpt(self.main_run())
        wb = self.train("b", "--seed", str(SEED), "--max-updates", str(N_UPDATES))
        b = self.ckpt(wb)
        self.assertEqual(a["scheduler"]["step"], N_UPDATES)
        self.assertEqual(b["scheduler"]["step"], N_UPDATES)
        self.assertEqual(_equal_nested(a["model"], b["model"]), [],
                         "two runs with the same seed gave different weights")
        self.assertEqual(_equal_nested(a["optimizer"], b["optimizer"]), [])
        self.assertEqual(_equal_nested(a["rng"], b["rng"]), [])
        self.assertEqual(a["data"], b["data"])
        # Training changed the weights, and the logged losses are identical too.
        la = [r["loss"] for r in _read_log(self.main_run()) if r["type"] == "train"]
        lb = [r["loss"] for r in _read_log(wb) if r["type"] == "train"]
        self.assertEqual(len(la), N_UPDATES)
        self.assertEqual(la, lb)
        # Another seed gives other weights (the comparison above can fail).
        c = self.ckpt(self.train("c", "--seed", str(SEED + 1), "--max-updates", str(N_UPDATES)))
        differ = _equal_nested(a["model"], c["model"])
        self.assertGreater(len(differ), len(a["model"]) // 2,
                           "another seed should change (nearly) every tensor")

    # --- b) resume ----------------------------------------------------------------------

    def test_b_resume_is_bit_identical(self):
        full = self.ckpt(self.main_run())
        work = os.path.join(self.tmp, "resumed")
        half_n = N_UPDATES // 2
        self.train("resumed-half", "--seed", str(SEED), "--max-updates", str(half_n), work=work)
        half = self.ckpt(work)
        # The recorded position: 6 updates = one epoch of 5 batches + 1 batch.
        self.assertEqual(half["scheduler"]["step"], half_n)
        self.assertEqual((half["data"]["epoch"], half["data"]["position"]),
                         divmod(half_n, BATCHES_PER_EPOCH))
        self.assertTrue(half["done"])
        # Resume in the same work dir with a larger --max-updates (and a
        # different architecture and seed, which the checkpoint must override:
        # the rest of the epoch must keep the checkpoint's batch order).
        p = _run([PYTHON, TRAIN] + self.train_args(work, "--seed", str(SEED + 5),
                                                   "--max-updates", str(N_UPDATES),
                                                   "--d-model", "48"),
                 "train.py (resume)")
        self.assertIn("its architecture wins", p.stderr)
        self.assertIn("checkpoint's seed", p.stderr)
        log = _read_log(work)
        resumes = [r for r in log if r["type"] == "resume"]
        self.assertEqual(len(resumes), 1)
        self.assertEqual((resumes[0]["step"], resumes[0]["epoch"], resumes[0]["position"]),
                         (half_n,) + divmod(half_n, BATCHES_PER_EPOCH))
        res = self.ckpt(work)
        self.assertEqual(res["scheduler"]["step"], N_UPDATES)
        self.assertEqual((res["data"]["epoch"], res["data"]["position"]),
                         divmod(N_UPDATES, BATCHES_PER_EPOCH))
        self.assertEqual(res["data"], full["data"])
        self.assertEqual(res["config"], full["config"])
        self.assertEqual(_equal_nested(res["model"], full["model"]), [],
                         "resumed weights differ from the uninterrupted run's")
        self.assertEqual(_equal_nested(res["optimizer"], full["optimizer"]), [],
                         "resumed optimizer state differs from the uninterrupted run's")
        self.assertEqual(_equal_nested(res["rng"], full["rng"]), [])
        # The second half's train losses equal the uninterrupted run's.
        full_losses = {r["step"]: r["loss"] for r in _read_log(self.main_run())
                       if r["type"] == "train"}
        res_losses = {r["step"]: r["loss"] for r in log if r["type"] == "train"}
        self.assertEqual(sorted(res_losses), list(range(1, N_UPDATES + 1)))
        self.assertEqual(res_losses, full_losses)
        # The half run moved the weights: the comparison above can fail.
        self.assertNotEqual(_equal_nested(half["model"], full["model"]), [])

    # --- c) losses and logs -------------------------------------------------------------

    def test_c_first_update_gradient_is_smoothed_ce_plus_router_losses(self):
        """One update with the default loss settings; Adam's first moment after
        one step is (1 - beta1) x the clipped gradient. It must equal the
        gradient of LS(0.1) CE / target tokens + 0.01 switch + 0.001 z,
        computed here independently, and differ from it without any one term."""
        work = self.train("one", "--seed", str(SEED), "--max-updates", "1",
                          "--no-final-eval")
        state = self.ckpt(work)
        tm = _load_train_module()
        a = tm.build_arg_parser().parse_args(self.train_args(work, "--seed", str(SEED)))
        self.assertEqual((a.label_smoothing, a.switch_loss, a.z_loss), (0.1, 0.01, 0.001))
        tok = datamod.Tokenizer(SPM, VOCAB)
        cfg = tm.model_config(a, len(tok.vocab))
        self.assertEqual(cfg, state["config"])
        # The trainer's start: seeds, model, initial weights, first batch.
        random.seed(a.seed)
        np.random.seed(a.seed)
        torch.manual_seed(a.seed)
        model = tm.build_model(cfg, a)
        tm.init_weights(model, cfg)
        model.train()
        split = datamod.Split(self.data, "train")
        batch = datamod.make_batches(split, datamod.usable(split, a.max_len), a.max_tokens,
                                     a.seed, 0, a.max_sentences)[0]
        src, sl, prev, gold, tl = [torch.from_numpy(x) for x in split.collate(batch)]
        logits, routings = model(src, sl, prev, tl)

        # Label-smoothed cross-entropy: target distribution 1 - eps on the gold
        # token, eps / (V - 1) on each other token; pads ignored.
        lp = torch.log_softmax(logits.double(), dim=-1)
        real = gold != cfg["pad_id"]
        lp, g = lp[real], gold[real]
        v = lp.shape[-1]
        ntok = int(tl.sum())
        self.assertEqual(int(real.sum()), ntok)
        q = torch.full_like(lp, 0.1 / (v - 1))
        q[torch.arange(len(g)), g] = 0.9
        ce_ls = -(q * lp).sum()
        nll = -lp[torch.arange(len(g)), g].sum()
        # Router losses, summed over the MoA modules, real query tokens only.
        flat = routings["encoder"] + routings["decoder_self"] + routings["decoder_cross"]
        self.assertEqual(len(flat), 3)
        e, k = cfg["num_experts"], cfg["top_k"]
        switch = torch.zeros((), dtype=torch.float64)
        zloss = torch.zeros((), dtype=torch.float64)
        for r in flat:
            x = r.logits.double()
            x = x[r.real] if r.real is not None else x.reshape(-1, e)
            picks = torch.topk(x, k, dim=-1).indices
            f = torch.bincount(picks.reshape(-1), minlength=e).double() / picks.numel()
            p_mean = torch.softmax(x, dim=-1).mean(0)
            switch = switch + e * (f * p_mean).sum()
            zloss = zloss + torch.logsumexp(x, dim=-1).pow(2).mean()

        params = list(model.parameters())
        exp_avg = state["optimizer"]["state"]
        self.assertEqual(len(exp_avg), len(params))
        beta1 = a.adam_betas[0]
        trainer_grad = [exp_avg[i]["exp_avg"].double() / (1 - beta1) for i in range(len(params))]

        def grads(objective: torch.Tensor) -> List[torch.Tensor]:
            gs = torch.autograd.grad(objective, params, retain_graph=True, allow_unused=True)
            gs = [torch.zeros_like(p) if gr is None else gr for p, gr in zip(params, gs)]
            norm = torch.sqrt(sum((gr.double() ** 2).sum() for gr in gs))
            coef = min(1.0, a.clip_norm / (float(norm) + 1e-6))   # clip_grad_norm_
            return [gr.double() * coef for gr in gs]

        def rel_diff(gs: List[torch.Tensor]) -> float:
            num = max(float((x - y).abs().max()) for x, y in zip(gs, trainer_grad))
            return num / max(float(y.abs().max()) for y in trainer_grad)

        full = rel_diff(grads(ce_ls / ntok + 0.01 * switch + 0.001 * zloss))
        no_ls = rel_diff(grads(nll / ntok + 0.01 * switch + 0.001 * zloss))
        no_switch = rel_diff(grads(ce_ls / ntok + 0.001 * zloss))
        no_z = rel_diff(grads(ce_ls / ntok + 0.01 * switch))
        self.assertLess(full, 1e-4, f"trainer gradient differs from LS CE + switch + z "
                                    f"(relative {full:.2e})")
        for name, d in (("label smoothing", no_ls), ("switch loss", no_switch),
                        ("z-loss", no_z)):
            self.assertGreater(d, 20 * max(full, 1e-6),
                               f"without {name} the gradient would be nearly the same: "
                               f"{d:.2e} vs {full:.2e}; the test cannot tell")
        # The logged values of update 1 are these losses.
        step1 = [r for r in _read_log(work) if r["type"] == "train" and r["step"] == 1]
        self.assertEqual(len(step1), 1)
        rec = step1[0]
        self.assertAlmostEqual(rec["loss"], float(ce_ls) / ntok, delta=2e-4)
        self.assertAlmostEqual(rec["nll"], float(nll) / ntok, delta=2e-4)
        self.assertAlmostEqual(rec["switch"], float(switch), delta=2e-4)
        self.assertAlmostEqual(rec["z"], float(zloss), delta=2e-4)
        self.assertEqual(rec["tgt_tokens"], ntok)

    def test_c_log_has_router_losses_and_expert_load(self):
        work = self.main_run()
        log = _read_log(work)
        start = [r for r in log if r["type"] == "start"]
        self.assertEqual(len(start), 1)
        self.assertEqual(start[0]["args"]["label_smoothing"], 0.1)
        modules = ["encoder.0.self", "decoder.0.self", "decoder.0.cross"]
        train = [r for r in log if r["type"] == "train"]
        self.assertEqual([r["step"] for r in train], list(range(1, N_UPDATES + 1)))
        for r in train:
            for key in ("loss", "nll", "switch", "z", "lr"):
                self.assertIsInstance(r[key], (int, float), f"step {r['step']} {key}")
                self.assertTrue(math.isfinite(r[key]), f"step {r['step']} {key} = {r[key]}")
            # switch = sum over 3 modules of E * sum_e f_e P_e: 1 each when balanced,
            # below E; z = sum of mean logsumexp^2 > 0. (Their exact values are
            # checked in test_c_first_update_gradient_...)
            self.assertGreater(r["switch"], 0.5 * len(modules))
            self.assertLess(r["switch"], 4 * len(modules))
            self.assertGreater(r["z"], 0.0)
            self.assertEqual(sorted(r["expert_load"]), sorted(modules))
            for m, shares in r["expert_load"].items():
                self.assertEqual(len(shares), 4, m)
                self.assertAlmostEqual(sum(shares), 1.0, delta=1e-3)
                self.assertTrue(all(0 <= s <= 1 for s in shares))
        valid = [r for r in log if r["type"] == "valid"]
        self.assertEqual(len(valid), 1)
        self.assertTrue(valid[0]["final"])
        self.assertTrue(math.isfinite(valid[0]["loss"]) and math.isfinite(valid[0]["nll"]))
        self.assertEqual(sorted(valid[0]["expert_load"]), sorted(modules))
        bleu = [r for r in log if r["type"] == "bleu"]
        self.assertEqual(len(bleu), 1)
        self.assertEqual(bleu[0]["sentences"], 4)
        stop = [r for r in log if r["type"] == "stop"]
        self.assertEqual([(r["reason"], r["step"]) for r in stop], [("max updates", N_UPDATES)])
        with open(os.path.join(work, "done.json")) as f:
            done = json.load(f)
        self.assertEqual((done["reason"], done["step"]), ("max updates", N_UPDATES))

    # --- d) fairseq layout --------------------------------------------------------------

    @classmethod
    def converted(cls) -> str:
        if "converted" not in cls._cache:
            work = cls.main_run()
            dict_txt = os.path.join(cls.tmp, "dict.txt")
            fairseq_ckpt.write_fairseq_dict(moa_io.read_vocab(VOCAB), dict_txt)
            out = os.path.join(cls.tmp, "converted")
            _run([PYTHON, CONVERT, "--checkpoint", os.path.join(work, "fairseq.pt"),
                  "--dict", dict_txt, "--spm", SPM, "--out", out], "convert_fairseq.py")
            cls._cache["converted"] = out
        return cls._cache["converted"]

    def test_d_fairseq_checkpoint_converts_to_the_trained_weights(self):
        state = self.ckpt(self.main_run())
        log = _read_log(self.main_run())
        self.assertEqual([r["path"] for r in log if r["type"] == "fairseq"],
                         [os.path.join(self.main_run(), "fairseq.pt")])
        out = self.converted()
        cfg, tensors, vocab = moa_io.load_model_dir(out)
        for k, v in ARCH.items():
            self.assertEqual(cfg[k], v, k)
        self.assertEqual(vocab, moa_io.read_vocab(VOCAB))
        self.assertEqual(set(moa_io.safetensors_dtypes(os.path.join(out, moa_io.WEIGHTS_FILE))
                             .values()), {"F32"})
        expected = {k: v.numpy() for k, v in state["model"].items()
                    if k != "decoder.embed_tokens.weight"}      # shared: stored once
        self.assertEqual(sorted(tensors), sorted(expected))
        for name, arr in expected.items():
            self.assertTrue(np.array_equal(tensors[name], arr), name)
        # The reference on the converted directory scores like the checkpoint.
        a = self.reference_scores(self.model_of(state))
        b = self.reference_scores(ref.MoATransformer.from_dir(out))
        for x, y in zip(a, b):
            self.assertEqual(x.token_logprobs, y.token_logprobs)

    def test_d_fairseq_converted_scores_in_c_engine(self):
        if not os.access(CLI, os.X_OK):
            self.skipTest(f"{os.path.relpath(CLI, REPO)} is not built (run `make`): "
                          "C-engine scores of the converted fairseq checkpoint not checked")
        ref_rows = self.reference_scores(self.model_of(self.ckpt(self.main_run())))
        diff = self.assert_scores_match(ref_rows, self.cli_scores(self.converted()),
                                        "converted fairseq checkpoint")
        self.assertLessEqual(diff, TOL_CLI)

    # --- e) export ----------------------------------------------------------------------

    @classmethod
    def exported(cls, dtype: str) -> str:
        key = "export-" + dtype
        if key not in cls._cache:
            out = os.path.join(cls.tmp, key)
            args = [] if dtype == "default" else ["--dtype", dtype]
            _run([PYTHON, EXPORT, "export", "--checkpoint",
                  os.path.join(cls.main_run(), "checkpoint_last.pt"), "--spm", SPM,
                  "--vocab", VOCAB, "--out", out] + args, "export_model.py export")
            cls._cache[key] = out
        return cls._cache[key]

    def test_e_export_writes_spec_model_directory(self):
        state = self.ckpt(self.main_run())
        for dtype, st_dtype in (("f32", "F32"), ("default", "F16")):
            out = self.exported(dtype)
            self.assertEqual(sorted(os.listdir(out)), sorted(
                [moa_io.CONFIG_FILE, moa_io.WEIGHTS_FILE, moa_io.VOCAB_FILE, moa_io.SPM_FILE]))
            with open(os.path.join(out, moa_io.CONFIG_FILE), encoding="utf-8") as f:
                raw = json.load(f)
            missing = [k for k in SPEC_KEYS if k not in raw]
            self.assertEqual(missing, [], f"config.json lacks spec §3 keys ({dtype})")
            self.assertEqual((raw["format"], raw["format_version"]), ("moa-translation", 1))
            for k, v in ARCH.items():
                self.assertEqual(raw[k], v, k)
            self.assertEqual([raw[k] for k in ("bos_id", "pad_id", "eos_id", "unk_id")],
                             [0, 1, 2, 3])
            self.assertEqual(raw["metrics"]["training"]["updates"], N_UPDATES)
            with open(os.path.join(out, moa_io.VOCAB_FILE), encoding="utf-8") as f:
                lines = f.read().split("\n")
            self.assertEqual(lines[-1], "")
            self.assertEqual(len(lines) - 1, raw["vocab_size"])
            self.assertEqual(lines[:4], ["<s>", "<pad>", "</s>", "<unk>"])
            with open(os.path.join(out, moa_io.SPM_FILE), "rb") as f1, open(SPM, "rb") as f2:
                self.assertEqual(f1.read(), f2.read())
            wpath = os.path.join(out, moa_io.WEIGHTS_FILE)
            self.assertEqual(set(moa_io.safetensors_dtypes(wpath).values()), {st_dtype})
            cfg, tensors, _ = moa_io.load_model_dir(out)
            self.assertEqual(moa_io.check_tensors(wpath, cfg, dict(tensors)), [])
            for name, t in state["model"].items():
                if name == "decoder.embed_tokens.weight":
                    self.assertNotIn(name, tensors)         # shared with the encoder's
                    continue
                want = t.numpy() if st_dtype == "F32" else t.numpy().astype(np.float16)
                self.assertTrue(np.array_equal(tensors[name], want.astype(np.float32)),
                                f"{name} ({dtype})")

    def test_e_export_scores_in_c_engine(self):
        if not os.access(CLI, os.X_OK):
            self.skipTest(f"{os.path.relpath(CLI, REPO)} is not built (run `make`): "
                          "C-engine scores of the exported model not checked")
        ref_rows = self.reference_scores(self.model_of(self.ckpt(self.main_run())))
        self.assert_scores_match(ref_rows, self.cli_scores(self.exported("f32")),
                                 "F32 export vs the checkpoint")
        # The default (F16) export: the C engine against the reference on the
        # same rounded weights.
        f16 = self.exported("default")
        self.assert_scores_match(self.reference_scores(ref.MoATransformer.from_dir(f16)),
                                 self.cli_scores(f16), "F16 export")

    # --- f) continuation from an exported model, snapshots, averaging ------------------

    def test_f_lr_rewarm_after_init(self):
        tr = _load_train_module()
        # Without a continuation: the plain schedule.
        self.assertEqual(tr.lr_at(2, 1e-3, 4), 1e-3 * 2 / 4)
        self.assertAlmostEqual(tr.lr_at(16, 1e-3, 4), 1e-3 * 0.5)
        # Continued at update 100 with a 10-update re-warm-up: the inverse
        # square root goes on, scaled by 1/10, 2/10, ... then left alone.
        base = 1e-3 * math.sqrt(4 / 101)
        self.assertAlmostEqual(tr.lr_at(101, 1e-3, 4, 100, 10), base / 10)
        self.assertAlmostEqual(tr.lr_at(105, 1e-3, 4, 100, 10),
                               1e-3 * math.sqrt(4 / 105) * 5 / 10)
        self.assertAlmostEqual(tr.lr_at(110, 1e-3, 4, 100, 10), 1e-3 * math.sqrt(4 / 110))

    def test_f_cooldown_factor(self):
        tr = _load_train_module()
        self.assertEqual(tr.cooldown_factor(0, 600, 0), 1.0)          # off
        self.assertEqual(tr.cooldown_factor(10, float("inf"), 60), 1.0)  # no budget
        self.assertEqual(tr.cooldown_factor(500, 600, 60), 1.0)       # before the decay
        self.assertAlmostEqual(tr.cooldown_factor(570, 600, 60), 0.5)
        self.assertAlmostEqual(tr.cooldown_factor(594, 600, 60), 0.1)
        self.assertEqual(tr.cooldown_factor(600, 600, 60), 0.0)
        self.assertEqual(tr.cooldown_factor(650, 600, 60), 0.0)

    def test_f_cooldown_run_decays_the_logged_lr(self):
        # A budget of 8 s of training time, all of it cool-down: every
        # update's lr is the schedule's times (budget - time before it) / 8 s,
        # bounded here by the logged clock after the previous and after this
        # update (logged to 0.1 s). How many updates fit does not matter.
        budget = 8.0  # many updates of this tiny model on any machine; two are needed
        work = self.train("cool", "--seed", str(SEED), "--time-budget-minutes",
                          str(budget / 60), "--cooldown-minutes", str(budget / 60),
                          "--no-final-eval")
        tr = _load_train_module()
        rows = [r for r in _read_log(work) if r["type"] == "train"]
        self.assertGreaterEqual(len(rows), 2)
        prev_t = 0.0
        factors = []
        for r in rows:
            f = r["lr"] / tr.lr_at(r["step"], DEFAULT_LR, 4)
            lo = (budget - r["train_seconds"] - 0.06) / budget
            hi = (budget - prev_t + 0.06) / budget
            self.assertTrue(lo - 1e-3 <= f <= min(1.0, hi) + 1e-3,
                            f"update {r['step']}: factor {f:.4f} outside [{lo:.4f}, {hi:.4f}]")
            factors.append(f)
            prev_t = r["train_seconds"]
        self.assertEqual(factors, sorted(factors, reverse=True))
        self.assertLess(factors[-1], 1.0)
        stop = [r for r in _read_log(work) if r["type"] == "stop"]
        self.assertEqual(stop[0]["reason"], "time budget")

    def test_f_init_from_starts_at_the_exported_weights(self):
        src = self.exported("f32")
        with open(os.path.join(src, moa_io.CONFIG_FILE), encoding="utf-8") as f:
            training = json.load(f)["metrics"]["training"]
        self.assertEqual(training["updates"], N_UPDATES)
        # --max-updates equal to the model's own count: no update is made, so
        # the checkpoint holds the directory's weights exactly.
        work = self.train("init0", "--seed", str(SEED), "--init-from", src,
                          "--max-updates", str(N_UPDATES), "--no-final-eval")
        state = self.ckpt(work)
        _, tensors, _ = moa_io.load_model_dir(src)
        for name, t in state["model"].items():
            key = "encoder.embed_tokens.weight" if name == "decoder.embed_tokens.weight" \
                else name
            self.assertTrue(np.array_equal(t.numpy(), tensors[key]), name)
        self.assertEqual(state["scheduler"]["step"], N_UPDATES)
        self.assertEqual(state["scheduler"]["init_step"], N_UPDATES)
        self.assertEqual(state["data"]["epoch"], training["epoch"] + 1)
        self.assertAlmostEqual(state["train_seconds"], training["train_seconds"], places=3)
        init = [r for r in _read_log(work) if r["type"] == "init"]
        self.assertEqual(len(init), 1)
        self.assertEqual(init[0]["step"], N_UPDATES)

    def test_f_init_from_trains_rewarmed_and_resumes_exactly(self):
        src = self.exported("f32")
        flags = ("--seed", str(SEED), "--init-from", src, "--init-warmup", "3",
                 "--no-final-eval")
        full = self.train("init4", *flags, "--max-updates", str(N_UPDATES + 4))
        log = [r for r in _read_log(full) if r["type"] == "train"]
        self.assertEqual([r["step"] for r in log], list(range(N_UPDATES + 1, N_UPDATES + 5)))
        tr = _load_train_module()
        for r in log:   # --lr default 1.5e-3, --warmup 4 (train_args)
            want = tr.lr_at(r["step"], 1.5e-3, 4, N_UPDATES, 3)
            self.assertAlmostEqual(r["lr"], round(want, 7), places=7)
        self.assertLess(log[0]["lr"], log[2]["lr"])       # re-warming
        # 2 updates, stop, resume to 4 (the checkpoint wins over --init-from).
        half = os.path.join(self.tmp, "init2+2")
        _run([PYTHON, TRAIN] + self.train_args(half, *flags, "--max-updates",
                                               str(N_UPDATES + 2)), "train.py (init 2)")
        _run([PYTHON, TRAIN] + self.train_args(half, *flags, "--max-updates",
                                               str(N_UPDATES + 4)), "train.py (resume 2)")
        a, b = self.ckpt(full), self.ckpt(half)
        for key in ("model", "optimizer", "scheduler"):
            self.assertEqual(_equal_nested(a[key], b[key]), [], key)
        # Weights moved away from the starting point.
        _, tensors, _ = moa_io.load_model_dir(src)
        moved = [n for n, t in a["model"].items()
                 if n in tensors and not np.array_equal(t.numpy(), tensors[n])]
        self.assertTrue(moved)

    def test_f_snapshots_and_their_average(self):
        # A snapshot at every update (a tiny interval of training time), the
        # newest 3 kept.
        work = self.train("snap", "--seed", str(SEED), "--max-updates", "6",
                          "--snapshot-minutes", "1e-9", "--keep-snapshots", "3",
                          "--no-final-eval")
        sdir = os.path.join(work, "snapshots")
        names = sorted(os.listdir(sdir))
        self.assertEqual(names, [f"snapshot_{i:07d}.pt" for i in (4, 5, 6)])
        snaps = [torch.load(os.path.join(sdir, n)) for n in names]
        self.assertEqual(_equal_nested(snaps[-1]["model"], self.ckpt(work)["model"]), [])
        out = os.path.join(self.tmp, "avg.pt")
        _run([PYTHON, os.path.join(REPO, "train", "average_checkpoints.py"), "--last", "3",
              sdir, "--out", out], "average_checkpoints.py")
        avg = torch.load(out)
        for name in snaps[0]["model"]:
            want = sum(s["model"][name].double() for s in snaps) / 3
            self.assertTrue(torch.allclose(avg["model"][name].double(), want, atol=1e-7,
                                           rtol=0), name)
        self.assertEqual(avg["scheduler"]["step"], 6)
        self.assertFalse(torch.equal(avg["model"]["encoder.embed_tokens.weight"],
                                     snaps[-1]["model"]["encoder.embed_tokens.weight"]))
        # The averaged checkpoint exports like any other.
        exp = os.path.join(self.tmp, "avg-export")
        _run([PYTHON, EXPORT, "export", "--checkpoint", out, "--spm", SPM, "--vocab", VOCAB,
              "--out", exp, "--dtype", "f32"], "export_model.py export (average)")
        _, tensors, _ = moa_io.load_model_dir(exp)
        self.assertTrue(np.array_equal(tensors["encoder.embed_tokens.weight"],
                                       avg["model"]["encoder.embed_tokens.weight"].numpy()))
        # Too few snapshots: refused by name.
        p = subprocess.run([PYTHON, os.path.join(REPO, "train", "average_checkpoints.py"),
                            "--last", "4", sdir, "--out", out], capture_output=True, text=True)
        self.assertEqual(p.returncode, 1)
        self.assertIn("has 3 snapshots", p.stderr)

    def test_f_sigterm_pauses_with_a_checkpoint_and_resumes_exactly(self):
        # A run long enough never to end by itself here; SIGTERM once its
        # first update is logged (a state, not a time): whichever update it
        # lands in finishes, the checkpoint holds it, the exit status is 75.
        work = os.path.join(self.tmp, "paused")
        env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", OMP_NUM_THREADS="1")
        proc = subprocess.Popen([PYTHON, TRAIN] + self.train_args(
            work, "--seed", str(SEED), "--max-updates", "100000", "--no-final-eval"),
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        try:
            for line in proc.stdout:
                if line.startswith("{") and json.loads(line)["type"] == "train":
                    proc.send_signal(15)
                    break
            proc.stdout.read()
            rc = proc.wait(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
        self.assertEqual(rc, 75)
        log = _read_log(work)
        pause = [r for r in log if r["type"] == "pause"]
        self.assertEqual(len(pause), 1)
        self.assertEqual(pause[0]["signal"], "SIGTERM")
        at = pause[0]["step"]
        self.assertGreaterEqual(at, 1)
        self.assertFalse(any(r["type"] == "stop" for r in log))
        ck = self.ckpt(work)
        self.assertEqual(ck["scheduler"]["step"], at)
        self.assertFalse(ck["done"])
        # The same command, bounded two updates further, against a run that
        # was never paused.
        _run([PYTHON, TRAIN] + self.train_args(work, "--seed", str(SEED), "--max-updates",
                                               str(at + 2), "--no-final-eval"),
             "train.py (after the pause)")
        whole = self.ckpt(self.train(f"unpaused-{at + 2}", "--seed", str(SEED), "--max-updates",
                                     str(at + 2), "--no-final-eval"))
        res = self.ckpt(work)
        self.assertEqual(res["scheduler"]["step"], at + 2)
        self.assertEqual(_equal_nested(res["model"], whole["model"]), [],
                         "weights after pause and resume differ from the unpaused run's")
        self.assertEqual(_equal_nested(res["optimizer"], whole["optimizer"]), [])


if __name__ == "__main__":
    unittest.main()
