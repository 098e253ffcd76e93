"""The report's figures, drawn with matplotlib's object API (Agg canvas; no pyplot state).

λ is the swept regularization coefficient: the first numeric swept value, preferring the
regularization flags (``l2``, a ``reg`` axis whose values are one method's rules such as
``l2=1e-4``, ...). Colours map λ on a log scale; λ = 0 is drawn in black, and on λ axes at a
symbolic position one or more decades left of the smallest positive λ, marked "0" and set off
by a break mark.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import LogNorm, to_hex
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from reglab.reports.load import Run
from reglab.sweeps.select import SettingStats

PREFERRED = ("l2", "reg", "regularizers", "wd", "weight-decay", "weight_decay", "l1", "dropout",
             "block-dropout", "block_dropout", "label-smoothing", "label_smoothing")  # fmt: skip
_RULE = re.compile(r"^([a-z0-9-]+)=([0-9.eE+-]+)$")  # METHOD=COEF, default scope
DPI = 100
ZERO_COLOUR = "#000000"


@dataclass
class LambdaAxis:
    """The numeric λ of each setting (None: the settings have no numeric value in common)."""

    name: str  # the axis, e.g. "l2" or "reg"
    label: str  # e.g. "λ (l2)" or "λ of l2 rules (reg)"
    of: dict[str, float]  # setting label -> λ
    others: dict[str, str]  # setting label -> the other swept values ("" if none)


def _numeric(values: list[Any]) -> tuple[list[float], str] | None:
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return [float(v) for v in values], ""
    if all(isinstance(v, str) for v in values):  # one method's rules: "l2=0.0001"
        matches = [_RULE.match(v.strip()) for v in values]
        if all(matches) and len({m.group(1) for m in matches}) == 1:
            return [float(m.group(2)) for m in matches], matches[0].group(1)
    return None


def lambda_axis(runs: Sequence[Run]) -> LambdaAxis | None:
    """Choose λ among the swept values of ``runs`` (see the module docstring)."""
    keys: list[str] = []
    for r in runs:
        keys += [k for k in r.params if k not in keys]
    order = sorted(keys, key=lambda k: (PREFERRED.index(k) if k in PREFERRED else len(PREFERRED)))
    for k in order:
        have = [r for r in runs if k in r.params]
        found = _numeric([r.params[k] for r in have])
        if found is None or len(have) < len(runs):
            continue
        values, method = found
        label = f"λ of {method} rules ({k})" if method else f"λ ({k})"
        of = {r.setting: v for r, v in zip(have, values)}
        others = {r.setting: " ".join(f"{a}={b}" for a, b in r.params.items() if a != k)
                  for r in have}  # fmt: skip
        return LambdaAxis(k, label, of, others)
    return None


class Colours:
    """λ -> colour: viridis on a log scale for λ > 0, black for λ = 0; without λ, one colour
    per setting (tab10)."""

    def __init__(self, axis: LambdaAxis | None, settings: Sequence[str]):
        self.axis = axis
        positive = sorted({v for v in (axis.of.values() if axis else []) if v > 0})
        self.norm = None
        if positive:
            lo, hi = positive[0], positive[-1]
            if lo == hi:
                lo, hi = lo / 10, hi * 10
            self.norm = LogNorm(lo, hi)
        self.cmap = colormaps["viridis"]
        self.categorical = {s: to_hex(colormaps["tab10"](i % 10)) for i, s in
                            enumerate(dict.fromkeys(settings))}  # fmt: skip

    def __call__(self, setting: str) -> str:
        if self.axis is None or setting not in self.axis.of:
            return self.categorical.get(setting, "#1f77b4")
        v = self.axis.of[setting]
        if v <= 0 or self.norm is None:
            return ZERO_COLOUR
        return to_hex(self.cmap(self.norm(v)))

    def legend(self, fig: Figure, axes: list[Any]) -> None:
        """A colour bar for λ beside ``axes`` (and a "λ = 0" entry), or a legend of settings."""
        if self.axis is not None and self.norm is not None:
            bar = fig.colorbar(ScalarMappable(self.norm, self.cmap), ax=axes, fraction=0.04)
            bar.set_label(self.axis.label)
        handles = []
        if self.axis is not None and any(v <= 0 for v in self.axis.of.values()):
            handles.append(Line2D([], [], color=ZERO_COLOUR, label=f"{self.axis.name} = 0"))
        if self.axis is None and len(self.categorical) > 1:
            handles += [Line2D([], [], color=c, label=s) for s, c in
                        list(self.categorical.items())[:10]]  # fmt: skip
        if handles:
            axes[0].legend(handles=handles, fontsize=8, loc="best")


def save(fig: Figure, path: Path) -> bytes:
    """Write ``fig`` as PNG to ``path`` and return the bytes (to embed in the page)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    data = buf.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


def curves(runs: Sequence[Run], colours: Colours) -> Figure:
    """Loss and accuracy over steps, training (running, last log interval) and validation."""
    fig = Figure(figsize=(11, 7), layout="constrained")
    axes = fig.subplots(2, 2, sharex=True)
    split = next((r.split for r in runs), "holdout")
    titles = {(0, 0): "training loss (running)", (0, 1): f"{split} loss",
              (1, 0): "training accuracy (running)", (1, 1): f"{split} accuracy"}  # fmt: skip
    for run in runs:
        colour = colours(run.setting)
        style = "-" if run.status == "complete" else ":"
        for col, which in enumerate(("train", "val")):
            rows = [r for r in run.rows if (r.get("split") == "train") == (which == "train")]
            steps = [r["step"] for r in rows]
            axes[0][col].plot(steps, [r["loss"] for r in rows], style, color=colour, lw=1.2,
                              alpha=0.85)  # fmt: skip
            axes[1][col].plot(steps, [100 * r["acc"] for r in rows], style, color=colour,
                              lw=1.2, alpha=0.85)  # fmt: skip
    for (i, j), title in titles.items():
        axes[i][j].set_title(title, fontsize=10)
        axes[i][j].grid(alpha=0.3)
    for j in range(2):
        axes[1][j].set_xlabel("step")
        axes[1][j].set_ylabel("accuracy (%)")
        axes[0][j].set_ylabel("cross-entropy")
    colours.legend(fig, list(axes[:, 1]))
    fig.suptitle("Training curves (dotted: pruned, diverged or unfinished runs)", fontsize=11)
    return fig


def _zero_position(positive: Sequence[float]) -> float:
    lo, hi = min(positive), max(positive)
    span = math.log10(hi / lo) if hi > lo else 1.0
    return lo / 10 ** max(1.0, round(span / 4))


def _x_positions(axis: LambdaAxis, settings: Sequence[str]) -> tuple[dict[str, float], bool]:
    """x of each setting on the λ axis; True when a log axis (with a symbolic 0) is used."""
    values = {s: axis.of[s] for s in settings if s in axis.of}
    positive = [v for v in values.values() if v > 0]
    if not positive:
        return values, False
    zero = _zero_position(positive)
    return {s: (v if v > 0 else zero) for s, v in values.items()}, True


def _log_axis_with_zero(ax: Any, xs: dict[str, float], axis: LambdaAxis) -> None:
    positive = [axis.of[s] for s in xs if axis.of[s] > 0]
    ax.set_xscale("log")
    lo, hi = min(positive), max(positive)
    has_zero = any(axis.of[s] <= 0 for s in xs)
    ticks = [10.0**e for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)]
    labels = [f"1e{round(math.log10(t))}" if t != 1 else "1" for t in ticks]
    if has_zero:
        zero = _zero_position(positive)
        ticks, labels = [zero, *ticks], ["0", *labels]
        brk = math.sqrt(zero * lo)  # the break mark halfway (on the log scale) to the first λ
        ax.axvline(brk, color="0.6", lw=0.8, ls=":")
        ax.plot([brk / 1.12, brk * 1.12], [-0.015, 0.015], color="0.3", lw=1,
                transform=ax.get_xaxis_transform(), clip_on=False)  # fmt: skip
    ax.set_xticks(ticks, labels)
    ax.minorticks_off()
    pad = 10**0.3
    ax.set_xlim(min(ticks) / pad, max(ticks) * pad)


def accuracy_vs_lambda(stats: Sequence[SettingStats], axis: LambdaAxis | None) -> Figure:
    """Final and best validation accuracy (mean ± std over seeds, seeds as dots) and the
    train - validation gap, against λ (or against the settings when there is no λ)."""
    fig = Figure(figsize=(11, 4.5), layout="constrained")
    ax_acc, ax_gap = fig.subplots(1, 2)
    split = stats[0].split if stats else "holdout"
    settings = [s.setting for s in stats]
    use_lambda = axis is not None and all(s in axis.of for s in settings)
    if use_lambda:
        xs, log = _x_positions(axis, settings)
        series: dict[str, list[SettingStats]] = {}
        for s in stats:
            series.setdefault(axis.others.get(s.setting, ""), []).append(s)
        if len(series) > 8:  # too many combinations for lines: points only
            series = {"": list(stats)}
            joined = False
        else:
            joined = True
    else:
        order = sorted(stats, key=lambda s: s.setting)
        xs = {s.setting: float(i) for i, s in enumerate(order)}
        series, log, joined = {"": order}, False, False
    markers = "osD^v<>p"
    for k, (other, group) in enumerate(series.items()):
        group = sorted(group, key=lambda s: xs[s.setting])
        x = [xs[s.setting] for s in group]
        suffix = f" ({other})" if other else ""
        m = markers[k % len(markers)]
        ls = "-" if joined else "none"
        ax_acc.errorbar(x, [100 * s.mean for s in group],
                        yerr=[100 * (s.std or 0) for s in group], marker=m, ls=ls, capsize=3,
                        label=f"final{suffix}")  # fmt: skip
        best = [(xv, s.best_mean) for xv, s in zip(x, group) if s.best_mean is not None]
        if best:
            ax_acc.plot([b[0] for b in best], [100 * b[1] for b in best], marker=m, ls=":",
                        alpha=0.7, label=f"best during training{suffix}")  # fmt: skip
        for xv, s in zip(x, group):
            ax_acc.plot([xv] * s.n, [100 * a for a in s.accs], ".", color="0.4", alpha=0.6, ms=4)
        gaps = [(xv, s) for xv, s in zip(x, group) if s.gap_mean is not None]
        if gaps:
            ax_gap.errorbar([g[0] for g in gaps], [100 * g[1].gap_mean for g in gaps],
                            yerr=[100 * (g[1].gap_std or 0) for g in gaps], marker=m, ls=ls,
                            capsize=3, label=other or None)  # fmt: skip
    for ax in (ax_acc, ax_gap):
        ax.grid(alpha=0.3)
        if use_lambda and log:
            _log_axis_with_zero(ax, xs, axis)
        elif not use_lambda:
            ax.set_xticks(list(xs.values()), list(xs), rotation=30, ha="right", fontsize=8)
        ax.set_xlabel(axis.label if use_lambda else "setting")
    ax_acc.set_ylabel(f"{split} accuracy (%)")
    ax_acc.set_title(f"{split} accuracy: mean ± std over seeds (dots: single seeds)", fontsize=10)
    ax_acc.legend(fontsize=8)
    ax_gap.axhline(0, color="0.5", lw=0.8)
    ax_gap.set_ylabel(f"train acc − {split} acc (points)")
    ax_gap.set_title("Generalisation gap (running train acc of the last interval)", fontsize=10)
    if len(series) > 1:
        ax_gap.legend(fontsize=8)
    return fig


def norm_keys(runs: Sequence[Run]) -> list[str]:
    """The weight-norm fields of the metrics rows ("weight_norm", "weight_norm/<group>")."""
    keys: list[str] = []
    for run in runs:
        for row in run.rows:
            keys += [k for k, v in row.items() if k.startswith("weight_norm")
                     and isinstance(v, (int, float)) and k not in keys]  # fmt: skip
    # the weights the default scope regularises first, then the rest
    return sorted(keys, key=lambda k: (not k.endswith(("conv.weight", "linear.weight")), k))


def weight_norms(runs: Sequence[Run], colours: Colours, keys: Sequence[str]) -> Figure:
    """Each weight-norm field over steps, one panel per field (at most 6)."""
    keys = list(keys)[:6]
    cols = min(3, len(keys))
    nrows = math.ceil(len(keys) / cols)
    fig = Figure(figsize=(4 * cols + 1, 3.2 * nrows + 0.6), layout="constrained")
    axes = fig.subplots(nrows, cols, squeeze=False)
    flat = [a for row in axes for a in row]
    for ax, key in zip(flat, keys):
        for run in runs:
            rows = [r for r in run.rows if isinstance(r.get(key), (int, float))]
            style = "-" if run.status == "complete" else ":"
            ax.plot([r["step"] for r in rows], [r[key] for r in rows], style,
                    color=colours(run.setting), lw=1.2, alpha=0.85)  # fmt: skip
        ax.set_title(key.replace("weight_norm/", "‖w‖ of ").replace("weight_norm", "‖w‖"),
                     fontsize=10)  # fmt: skip
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in flat[len(keys):]:
        ax.set_visible(False)
    colours.legend(fig, flat[: len(keys)])
    fig.suptitle("Weight norms over training (L2 norm of the group's weights)", fontsize=11)
    return fig
