"""Test-time augmentation on a trained run: holdout accuracy and evaluation time of each scheme.

    python bench/tta_compare.py runs/NAME [--fractions 0.25,0.5]

Loads the run's newest checkpoint and its settings, then evaluates the same model on the same
validation images without TTA, with the mirror image (--tta), with airbench's six views
(--tta --tta-translate), and with the six views, or the mirror image alone, for only the least
confident fraction of each batch (--tta-fraction, hiverge's selective TTA). Seconds are wall
time of the evaluation alone.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from reglab.cli import resume_config
from reglab.training.builder import build
from reglab.training.checkpoint import load_latest
from reglab.training.rundir import read_config
from reglab.training.step import evaluate


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path)
    p.add_argument("--data-dir")
    p.add_argument("--fractions", default="0.25,0.5")
    a = p.parse_args()
    flags = {"data_dir": a.data_dir} if a.data_dir else {}
    cfg = resume_config(a.run, read_config(a.run / "config.yaml"), flags)
    state, _ = load_latest(a.run / "checkpoints")
    if state is None:
        raise SystemExit(f"no valid checkpoint in {a.run / 'checkpoints'}")
    setup = build(cfg)
    setup.model.load_state_dict(state["model"])
    step = state["loop"]["step"]
    print(f"Command: python bench/tta_compare.py {' '.join(sys.argv[1:])}")
    print(f"run {a.run.name}, step {step} of {setup.steps}; {len(setup.data.val_images):,} "
          f"{setup.data.val_split} images, batches of {cfg.eval_batch_size}")  # fmt: skip
    schemes = [("none", False, False, 1.0), ("flip (--tta)", True, False, 1.0),
               ("flip + translate, 6 views", True, True, 1.0)]  # fmt: skip
    for f in map(float, a.fractions.split(",")):
        schemes += [(f"6 views for the least confident {f:g}", True, True, f),
                    (f"flip for the least confident {f:g}", True, False, f)]  # fmt: skip
    print("| TTA | holdout acc | evaluation seconds |\n|---|---|---|")
    for label, flip, translate, fraction in schemes:
        batches = setup.pipeline.eval_batches(setup.data.val_images, setup.data.val_labels,
                                              cfg.eval_batch_size)  # fmt: skip
        t0 = time.perf_counter()
        _, acc, _ = evaluate(setup.model, batches, flip, tta_translate=translate,
                             tta_fraction=fraction)  # fmt: skip
        print(f"| {label} | {100 * acc:.2f}% | {time.perf_counter() - t0:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
