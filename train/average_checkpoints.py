#!/usr/bin/python3
"""Averages the weights of several train.py snapshots or checkpoints (as
fairseq's scripts/average_checkpoints.py does): every parameter becomes the
arithmetic mean of its values in the inputs. The output is a checkpoint that
train/export_model.py export reads (config, model, and the newest input's
update count, epoch and training seconds); it has no optimizer state, so it
cannot be resumed.

    /usr/bin/python3 train/average_checkpoints.py --last 5 build/model/run/snapshots \\
        --out build/model/avg5.pt
    /usr/bin/python3 train/average_checkpoints.py --inputs a.pt b.pt --out avg.pt
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Dict, List, Optional

import torch


def snapshot_files(directory: str, last: int) -> List[str]:
    """The newest `last` snapshot_<update>.pt files of directory, oldest first."""
    names = sorted(f for f in os.listdir(directory)
                   if f.startswith("snapshot_") and f.endswith(".pt"))
    if len(names) < last:
        raise SystemExit(f"error: {directory} has {len(names)} snapshots, --last {last} "
                         "asks for more")
    return [os.path.join(directory, f) for f in names[-last:]]


def _progress(state: Dict[str, Any]) -> Dict[str, Any]:
    """(update, epoch, training seconds) of a snapshot or a full checkpoint."""
    if "scheduler" in state:
        return {"step": state["scheduler"]["step"], "epoch": state["data"]["epoch"],
                "train_seconds": state["train_seconds"]}
    return {"step": state["step"], "epoch": state["epoch"],
            "train_seconds": state["train_seconds"]}


def average(paths: List[str]) -> Dict[str, Any]:
    """The averaged checkpoint of paths (all of one architecture)."""
    if not paths:
        raise SystemExit("error: nothing to average")
    total: Optional[Dict[str, torch.Tensor]] = None
    cfg, newest = None, None
    for p in paths:
        state = torch.load(p, map_location="cpu")
        model = state["model"]
        if total is None:
            cfg = state["config"]
            total = {k: v.detach().double().clone() for k, v in model.items()}
        else:
            if state["config"] != cfg or set(model) != set(total):
                raise SystemExit(f"error: {p} is not the same architecture as {paths[0]}")
            for k, v in model.items():
                total[k] += v.detach().double()
        prog = _progress(state)
        if newest is None or prog["step"] > newest["step"]:
            newest = prog
    assert total is not None and newest is not None
    n = len(paths)
    return {"config": cfg, "model": {k: (v / n).float() for k, v in total.items()},
            "scheduler": {"step": newest["step"]}, "data": {"epoch": newest["epoch"]},
            "train_seconds": newest["train_seconds"],
            "averaged": [os.path.basename(p) for p in paths]}


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--inputs", nargs="+", metavar="PT", help="snapshots/checkpoints to average")
    g.add_argument("--last", nargs=2, metavar=("N", "DIR"),
                   help="the newest N snapshot_<update>.pt files of DIR (train.py "
                        "--snapshot-minutes)")
    p.add_argument("--out", required=True, help="the averaged checkpoint to write")
    a = p.parse_args(argv)
    paths = a.inputs if a.inputs else snapshot_files(a.last[1], int(a.last[0]))
    avg = average(paths)
    tmp = a.out + ".tmp"
    torch.save(avg, tmp)
    os.replace(tmp, a.out)
    print(f"average_checkpoints: {len(paths)} inputs ({', '.join(avg['averaged'])}) -> {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
