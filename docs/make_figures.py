"""Regenerate the figures and tables of docs/regularization.md and docs/sweep-l2-quick.md (and
the README's λ table) from the committed records in results/.

    python docs/make_figures.py            # write figures and tables
    python docs/make_figures.py --check    # only check that the docs' tables are current

- docs/figures/weight_norm.png and its table, from results/regularization-1epoch/: every run
  becomes one line, labelled by its ``l2``; left the norm of the conv weights over steps, right
  the median effective learning rate η/‖w‖² of the weights followed by batch norm, divided by
  that of the run with the smallest λ (the schedule's η cancels out).
- docs/figures/sweep-l2-quick-*.png and the λ table, from results/sweep-l2-quick/, drawn by
  ``reglab report`` itself (its accuracy and weight-norm figures).
- BENCHMARKS.md's table of the screens of cpu90 (one change each, against the preset's runs of
  the same seeds), from results/cpu90-tuning/, cpu90-widths/ and cpu90-activation/.

The tables are printed as markdown (and written between the generated markers of the docs).
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

import matplotlib
import yaml

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from generated import update

from reglab.reports.load import collect
from reglab.reports.page import write_report
from reglab.sweeps.select import describe, rank, recommend
from reglab.training import read_metrics

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"
FIGURES = ROOT / "docs" / "figures"


def weight_norm_figure(folder: Path = RESULTS / "regularization-1epoch", draw: bool = True) -> str:
    """The weight-norm table of the 1-epoch runs; if ``draw``, docs/figures/weight_norm.png."""
    runs = []
    for run in sorted(p for p in folder.iterdir() if (p / "metrics.jsonl").is_file()):
        config = yaml.safe_load((run / "config.yaml").read_text())
        rows = [r for r in read_metrics(run) if r["split"] == "train"]
        summary = json.loads((run / "summary.json").read_text())
        runs.append((config["l2"], rows, summary))
    runs.sort(key=lambda r: r[0])
    base = {r["step"]: r["eff_lr_bn"] for r in runs[0][1]}  # the smallest λ's η/‖w‖² by step
    if draw:
        draw_weight_norms(runs, base)

    first, last = runs[0][1][0]["step"], runs[0][1][-1]["step"]
    lines = [f"| λ (`--l2`) | ‖w‖ conv, step {first} | ‖w‖ conv, step {last} | η/‖w‖² vs λ = "
             f"{runs[0][0]:g}, step {last} | holdout acc | final train loss |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for l2, rows, s in runs:
        ratio = rows[-1]["eff_lr_bn"] / base[rows[-1]["step"]]
        lines.append(f"| {l2:g} | {rows[0]['weight_norm/conv.weight']:.2f} | "
                     f"{rows[-1]['weight_norm/conv.weight']:.2f} | {ratio:.2f} | "
                     f"{s['final_val_acc']:.4f} | {s['final_train_loss']:.3f} |")  # fmt: skip
    return "\n".join(lines)


def draw_weight_norms(runs: list, base: dict[int, float]) -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3), dpi=100)
    for l2, rows, _ in runs:
        steps = [r["step"] for r in rows]
        left.plot(steps, [r["weight_norm/conv.weight"] for r in rows], label=f"λ = {l2:g}")
        right.plot(steps, [r["eff_lr_bn"] / base[r["step"]] for r in rows], label=f"λ = {l2:g}")
    left.set(xlabel="step", ylabel="‖w‖ of the conv weights", title="weight norm")
    right.set(xlabel="step", ylabel=f"median η/‖w‖², ÷ λ = {runs[0][0]:g}",
              title="effective learning rate (BN), relative")  # fmt: skip
    left.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(FIGURES / "weight_norm.png")
    plt.close(fig)


def sweep_figures(folder: Path = RESULTS / "sweep-l2-quick", draw: bool = True) -> tuple[str, str]:
    """(the λ table, the recommendation) of the sweep; if ``draw``, its figures (drawn by
    ``reglab report``) copied into docs/figures."""
    if draw:
        with tempfile.TemporaryDirectory() as tmp:
            write_report([folder], tmp, "λ sweep of the quick preset")
            for name in ("accuracy", "weight_norms"):
                target = FIGURES / f"sweep-l2-quick-{name.replace('_', '-')}.png"
                shutil.copy(Path(tmp) / "figures" / f"{name}.png", target)
    col = collect([folder])
    ranked = rank([r for r in col.results if r.split == "holdout"])
    norms: dict[str, list[float]] = {}
    for run in col.runs:
        if run.summary and "weight_norm/conv.weight" in run.summary:
            norms.setdefault(run.setting, []).append(run.summary["weight_norm/conv.weight"])
    lines = ["| λ (`--l2`) | holdout accuracy, mean ± std over seeds | seeds "
             "| gap: train − holdout | ‖w‖ of conv weights at the end | s / run |",
             "|---|---|---|---|---|---|"]
    for s in sorted(ranked, key=lambda s: float(s.values.get("l2", 0))):
        seeds = ", ".join(f"{100 * a:.2f}" for a in s.accs)
        norm = sum(norms[s.setting]) / len(norms[s.setting]) if s.setting in norms else None
        best = s is ranked[0]
        cell = f"**{describe(s)}**" if best else describe(s)
        lam = f"**{s.values['l2']:g}**" if best else f"{s.values['l2']:g}"
        lines.append(f"| {lam} | {cell} | {seeds} | {100 * (s.gap_mean or 0):+.2f} | "
                     f"{norm:.1f} | {s.seconds_mean:.0f} |")  # fmt: skip
    rec = recommend(ranked)
    return "\n".join(lines), rec.text if rec else ""


# (variant, results folder, record name with {s} for the seed, seeds); the first is the preset
CPU90_SCREENS = [
    ("preset (today's cpu90: Muon lr 0.18, jitter, widths 32,64,128, GELU, 8 epochs)",
     "cpu90-tuning", "bench-cpu90-muonlr-0.18-seed{s}", (0, 1, 2, 3)),
    ("--augment altflip-translate (no jitter)",
     "cpu90-tuning", "bench-cpu90-augment-altfliptranslate-seed{s}-lr0.18", (0, 1, 2, 3)),
    ("--widths 16,64,128", "cpu90-widths", "bench-cpu90-widths-16-64-128-seed{s}", (0, 3)),
    ("--widths 16,64,128 --epochs 10",
     "cpu90-widths", "bench-cpu90-widths-16-64-128-epochs-10-seed{s}", (0, 1, 3)),
    ("--widths 16,64,128 --epochs 12",
     "cpu90-widths", "bench-cpu90-widths-16-64-128-epochs-12-seed{s}", (0, 3)),
    ("--widths 24,48,96", "cpu90-widths", "bench-cpu90-widths-24-48-96-seed{s}", (0, 3)),
    ("--activation relu (ReLU for all seven GELUs)",
     "cpu90-activation", "bench-cpu90-activation-relu-seed{s}", (0, 3)),
]  # fmt: skip


def cpu90_screens() -> str:
    """The screens' table: holdout accuracy per seed, the mean, and the mean paired difference
    from the preset's run of the same seed, in points."""
    def acc(folder: str, name: str, seed: int) -> float:
        summary = RESULTS / folder / name.format(s=seed) / "summary.json"
        return 100 * json.loads(summary.read_text())["final_val_acc"]

    _, pre_folder, pre_name, _ = CPU90_SCREENS[0]
    seeds = sorted({s for *_, have in CPU90_SCREENS for s in have})
    lines = ["| variant | " + " | ".join(f"seed {s}" for s in seeds)
             + " | mean | paired difference from the preset, mean |",
             "|---|" + "---|" * (len(seeds) + 2)]  # fmt: skip
    for i, (variant, folder, name, have) in enumerate(CPU90_SCREENS):
        accs = {s: acc(folder, name, s) for s in have}
        cells = [f"{accs[s]:.2f}%" if s in accs else "-" for s in seeds]
        diffs = [accs[s] - acc(pre_folder, pre_name, s) for s in have]
        paired = "-" if i == 0 else f"{sum(diffs) / len(diffs):+.2f} over {len(diffs)} seeds"
        mean = sum(accs.values()) / len(accs)
        lines.append(f"| {variant} | {' | '.join(cells)} | {mean:.2f}% | {paired} |")
    return "\n".join(lines)


def generated() -> list[tuple[Path, str, str]]:
    """(doc, marker, content) of every generated block, from results/ (no figures drawn)."""
    blocks = []
    if (RESULTS / "regularization-1epoch").is_dir():
        table = weight_norm_figure(draw=False)
        blocks.append((ROOT / "docs" / "regularization.md", "weight-norm", table))
    if (RESULTS / "sweep-l2-quick").is_dir():
        table, verdict = sweep_figures(draw=False)
        for path in (ROOT / "docs" / "sweep-l2-quick.md", ROOT / "README.md"):
            blocks.append((path, "sweep-l2-quick", table))
        blocks.append((ROOT / "docs" / "sweep-l2-quick.md", "sweep-l2-quick-verdict", verdict))
    if (RESULTS / "cpu90-activation").is_dir():
        blocks.append((ROOT / "BENCHMARKS.md", "cpu90-screens", cpu90_screens()))
    return blocks


def main(argv: list[str]) -> int:
    check = "--check" in argv
    if not check:
        FIGURES.mkdir(parents=True, exist_ok=True)
        if (RESULTS / "regularization-1epoch").is_dir():
            weight_norm_figure()
        if (RESULTS / "sweep-l2-quick").is_dir():
            sweep_figures()
    return update(generated(), check, "python docs/make_figures.py")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
