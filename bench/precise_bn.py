"""Holdout accuracy of a run's kept checkpoints with its running batch-norm statistics, and with
the statistics recomputed on training batches ("precise BN").

    python bench/precise_bn.py RUN [RUN ...] [--batches 100]

A single validation of the tutorial's network reads its batch norms' running statistics, which
tf-slim's decay 0.999 (PyTorch momentum 0.001) averages over the last ~1,000 steps of a network
still changing fast, with their start values (mean 0, variance 1) still weighing 0.999^step. The
same weights, their statistics reset and averaged (momentum None: a plain mean) over
``--batches`` training batches of the run's own pipeline (its augmentation and input
standardization; the same batches for every checkpoint of a run and for runs of the same data
seed), then evaluated on the same holdout in fp32, say what the weights learned. Each RUN is a
run folder with its checkpoints (reglab keeps the last two).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from reglab.config import build_config
from reglab.training.builder import build
from reglab.training.checkpoint import checkpoints, read_checkpoint
from reglab.training.rundir import read_config
from reglab.training.step import evaluate


def precise_bn(model: torch.nn.Module, batches) -> None:
    """Reset every batch norm's running statistics and set them to their plain mean over
    ``batches`` (forward passes in training mode, no gradient)."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    was_training = model.training
    model.train()
    with torch.no_grad():
        for x in batches:
            model(x)
    model.train(was_training)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN")
    p.add_argument("--batches", type=int, default=100, help="training batches (100)")
    args = p.parse_args()
    print(f"Command: `python bench/precise_bn.py {' '.join(sys.argv[1:])}`\n")
    print("| run | step | holdout acc, running statistics | holdout acc, recomputed on "
          f"{args.batches} training batches |\n|---|---|---|---|")  # fmt: skip
    for run in args.runs:
        stored = read_config(run / "config.yaml")  # the run's settings, as --resume reads them
        cfg = build_config(None, stored, {"precision": "fp32", "audit": False,
                                          "tensorboard": False}, file_name=f"{run}/config.yaml")
        s = build(cfg)
        torch.manual_seed(0)
        train = [s.pipeline.next_batch()[0] for _ in range(args.batches)]
        for step, path in sorted(checkpoints(run / "checkpoints")):
            s.model.load_state_dict(read_checkpoint(path)["model"])
            val = s.pipeline.eval_batches(s.data.val_images, s.data.val_labels, 500)
            _, running, _ = evaluate(s.model, val)
            precise_bn(s.model, train)
            val = s.pipeline.eval_batches(s.data.val_images, s.data.val_labels, 500)
            _, recomputed, _ = evaluate(s.model, val)
            print(f"| {run.name} | {step} | {100 * running:.2f}% | {100 * recomputed:.2f}% |",
                  flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
