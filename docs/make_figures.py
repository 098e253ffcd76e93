"""Draw docs/figures/weight_norm.png from reglab runs (see docs/regularization.md for the runs).

    python docs/make_figures.py RUNS_DIR [--out docs/figures/weight_norm.png]

Every run directory under RUNS_DIR holding a metrics.jsonl becomes one line, labelled with its
``l2`` setting: left, the norm of the conv weights (the default scope without the classifier)
over steps; right, the median effective learning rate η/‖w‖² of the weights followed by batch
norm, divided by that of the run with the smallest λ (the schedule's η cancels out). Also prints
each run's numbers as a markdown table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib
import yaml

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from reglab.training import read_metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs_dir", type=Path)
    default_out = Path(__file__).parent / "figures" / "weight_norm.png"
    parser.add_argument("--out", type=Path, default=default_out)
    args = parser.parse_args()

    runs = []
    for run in sorted(p for p in args.runs_dir.iterdir() if (p / "metrics.jsonl").is_file()):
        config = yaml.safe_load((run / "config.yaml").read_text())
        rows = [r for r in read_metrics(run) if r["split"] == "train"]
        summary = json.loads((run / "summary.json").read_text())
        runs.append((config["l2"], rows, summary))
    runs.sort(key=lambda r: r[0])

    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3), dpi=100)
    base = {r["step"]: r["eff_lr_bn"] for r in runs[0][1]}
    for l2, rows, _ in runs:
        steps = [r["step"] for r in rows]
        left.plot(steps, [r["weight_norm/conv.weight"] for r in rows], label=f"λ = {l2:g}")
        right.plot(steps, [r["eff_lr_bn"] / base[r["step"]] for r in rows], label=f"λ = {l2:g}")
    left.set(xlabel="step", ylabel="‖w‖ of the conv weights", title="weight norm")
    right.set(xlabel="step", ylabel=f"median η/‖w‖², ÷ λ = {runs[0][0]:g}",
              title="effective learning rate (BN), relative")  # fmt: skip
    left.legend(fontsize=8)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KB)")

    first, last = runs[0][1][0]["step"], runs[0][1][-1]["step"]
    print(f"| λ (--l2) | ‖w‖ conv, step {first} | ‖w‖ conv, step {last} | η/‖w‖² vs λ = "
          f"{runs[0][0]:g}, step {last} | holdout acc | final train loss |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for l2, rows, s in runs:
        ratio = rows[-1]["eff_lr_bn"] / base[rows[-1]["step"]]
        print(f"| {l2:g} | {rows[0]['weight_norm/conv.weight']:.2f} | "
              f"{rows[-1]['weight_norm/conv.weight']:.2f} | {ratio:.2f} | "
              f"{s['final_val_acc']:.4f} | {s['final_train_loss']:.3f} |")  # fmt: skip


if __name__ == "__main__":
    main()
