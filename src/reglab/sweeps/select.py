"""Choosing a setting from finished runs, and saying how sure the choice is.

Settings are ranked by their mean FINAL validation accuracy over seeds (the model a retrain
would give; the best-during-training accuracy is shown but not used, since picking the best
checkpoint on the validation set is one more selection on it). The split the accuracies come
from is carried along and printed with every number.

How sure: the margin between the best setting and the runner-up, against the standard error of
that difference. With two or more seeds each, the error comes from the seeds' spread; with one
seed, only the validation set's sampling error is known, sqrt(p(1-p)/n) per run (at n = 10,000
and p = 0.8, 0.4 points), and seed-to-seed variation, usually larger, is not measured.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Result:
    """One finished run. Accuracies are fractions in [0, 1]; ``split`` names the validation
    set (holdout or test); ``train_acc`` is the running training accuracy of the last log
    interval (augmented batches, batch norm in train mode)."""

    setting: str  # e.g. "l2=0.0001", the swept values without the seed
    values: dict[str, Any]  # those values
    acc: float  # final validation accuracy
    split: str
    seed: int | None = None
    best_acc: float | None = None
    train_acc: float | None = None
    seconds: float | None = None
    name: str = ""
    val_images: int | None = None


@dataclass
class SettingStats:
    """A setting over its seeds: mean and sample standard deviation (None with one seed)."""

    setting: str
    values: dict[str, Any]
    split: str
    accs: list[float]
    seeds: list[int | None]
    mean: float
    std: float | None
    best_mean: float | None
    gap_mean: float | None  # train acc - validation acc, mean over seeds
    gap_std: float | None
    seconds_mean: float | None
    val_images: int | None
    runs: list[Result] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.accs)


def _mean(xs: Sequence[float | None]) -> float | None:
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def _std(xs: Sequence[float | None]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.stdev(xs) if len(xs) >= 2 else None


def rank(results: Sequence[Result]) -> list[SettingStats]:
    """Settings sorted by mean final validation accuracy, best first (ties: fewer seeds last)."""
    groups: dict[tuple[str, str], list[Result]] = {}
    for r in results:
        groups.setdefault((r.split, r.setting), []).append(r)
    stats = []
    for (split, setting), runs in groups.items():
        runs = sorted(runs, key=lambda r: (r.seed is None, r.seed or 0))
        accs = [r.acc for r in runs]
        gaps = [r.train_acc - r.acc if r.train_acc is not None else None for r in runs]
        stats.append(SettingStats(
            setting=setting, values=runs[0].values, split=split, accs=accs,
            seeds=[r.seed for r in runs], mean=sum(accs) / len(accs), std=_std(accs),
            best_mean=_mean([r.best_acc for r in runs]), gap_mean=_mean(gaps), gap_std=_std(gaps),
            seconds_mean=_mean([r.seconds for r in runs]), val_images=runs[0].val_images,
            runs=runs,
        ))  # fmt: skip
    return sorted(stats, key=lambda s: (-s.mean, -s.n, s.setting))


@dataclass
class Recommendation:
    best: SettingStats
    runner_up: SettingStats | None
    margin: float | None  # best.mean - runner_up.mean, fraction
    se: float | None  # standard error of that difference, fraction
    basis: str  # "seeds" or "sampling" (where se comes from)
    verdict: str  # clear | likely | undecided | alone
    text: str


def pct(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None else f"{100 * x:.{digits}f}%"


def describe(s: SettingStats) -> str:
    """'81.23% ± 0.40 (3 seeds)' or '81.23% (1 seed)', the split named by the caller."""
    spread = f" ± {100 * s.std:.2f}" if s.std is not None else ""
    return f"{pct(s.mean)}{spread} ({s.n} seed{'s' if s.n != 1 else ''})"


def recommend(ranked: Sequence[SettingStats]) -> Recommendation | None:
    """The best setting of ``ranked`` (from ``rank``, one split) and how sure the choice is."""
    if not ranked:
        return None
    best = ranked[0]
    split = best.split
    if len(ranked) == 1:
        text = (f"Only one setting ({best.setting}): {split} acc {describe(best)}; "
                "nothing to choose between.")  # fmt: skip
        return Recommendation(best, None, None, None, "seeds", "alone", text)
    second = ranked[1]
    margin = best.mean - second.mean
    if best.std is not None and second.std is not None:
        se = math.sqrt(best.std**2 / best.n + second.std**2 / second.n)
        basis = "seeds"
    else:
        n = best.val_images or 10_000
        se = math.sqrt(sum(s.mean * (1 - s.mean) / (n * s.n) for s in (best, second)))
        basis = "sampling"
    ratio = margin / se if se > 0 else math.inf
    verdict = "clear" if ratio >= 2 else "likely" if ratio >= 1 else "undecided"
    head = (f"Best on the {split} set: {best.setting}, {split} acc {describe(best)}. Runner-up: "
            f"{second.setting}, {describe(second)}. Margin {100 * margin:.2f} points against a "
            f"standard error of {100 * se:.2f} points")  # fmt: skip
    if basis == "seeds":
        head += " (from the spread across seeds)"
    else:
        head += (f" (the {split} set's sampling error only, {best.val_images or 10_000:,} "
                 "images; seed-to-seed variation is not measured with one seed)")  # fmt: skip
    tail = {
        "clear": "the choice is clear (margin at least 2 standard errors).",
        "likely": "the choice is likely but not certain (1-2 standard errors); more seeds "
                  "would settle it.",
        "undecided": f"{best.setting} and {second.setting} are not distinguishable (margin "
                     "under 1 standard error); either is as good on this evidence.",
    }[verdict]  # fmt: skip
    return Recommendation(best, second, margin, se, basis, verdict, f"{head}: {tail}")
