"""Every table of results in README.md and docs/ is what the committed records in results/ give:
the generators' --check mode recomputes each generated block and compares."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("script", ["make_figures.py", "make_tutorial.py"])
def test_published_tables_regenerate_from_results(script):
    proc = subprocess.run([sys.executable, str(ROOT / "docs" / script), "--check"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.fixture
def make_tutorial(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "docs"))
    import make_tutorial

    return make_tutorial


def tutorial_run(mt, lam: float, holdout: dict[int, float], done: bool = True):
    rows = [{"split": "holdout", "step": s, "acc": a, "loss": 1.0} for s, a in holdout.items()]
    return mt.TutorialRun(f"run-{lam:g}", lam, f"λ = {lam:g}", {}, rows,
                          {"steps": max(holdout)} if done else None)  # fmt: skip


def test_the_tutorials_answer_is_a_winner_only_beyond_noise_at_every_late_validation(
    make_tutorial,
):
    mt = make_tutorial
    steps = (4000, 8000, 12000, 16000, 20000)
    low = tutorial_run(mt, 1e-4, dict(zip(steps, (0.60, 0.65, 0.68, 0.69, 0.70))))
    high = tutorial_run(mt, 1e-3, dict(zip(steps, (0.58, 0.62, 0.69, 0.71, 0.73))))
    text = mt.answer([low, high])
    # 73% against 70% on 10,000 images each: se = sqrt(.73*.27/1e4 + .7*.3/1e4) = 0.638 points
    se = (0.73 * 0.27 / 1e4 + 0.70 * 0.30 / 1e4) ** 0.5
    assert text.startswith("**1e-4 or 1e-3? 1e-3** for the tutorial's own network")
    assert f"3.00 points apart, {0.03 / se:.1f} times" in text
    assert f"difference ({100 * se:.2f} points)" in text
    assert "(steps 12,000, 16,000, 20,000) 1e-4 − 1e-3 was -1.00, -2.00, -3.00 points" in text
    assert "moved by up to 2.00 points" in text  # 1e-3: 69% -> 71% -> 73%
    # behind at one of the last three validations: not a winner, however large the last gap
    flip = tutorial_run(mt, 1e-3, dict(zip(steps, (0.58, 0.62, 0.67, 0.71, 0.73))))
    assert "Neither can be told from the other" in mt.answer([low, flip])
    # within twice the sampling error at the end: not a winner either
    close = tutorial_run(mt, 1e-3, dict(zip(steps, (0.58, 0.62, 0.69, 0.70, 0.705))))
    assert "Neither can be told from the other" in mt.answer([low, close])
    # a run short of 20,000 steps: no answer yet
    short = tutorial_run(mt, 1e-3, dict(zip(steps[:3], (0.58, 0.62, 0.69))), done=False)
    assert "Not answered yet" in mt.answer([low, short])
    # the README's short form adds λ = 0 once it has finished, and says whether it is ahead
    zero = tutorial_run(mt, 0.0, dict(zip(steps, (0.65, 0.66, 0.70, 0.72, 0.74))))
    assert "held out 74.00% at step 20,000, ahead of both." in mt.answer([low, high, zero], True)
    behind = tutorial_run(mt, 0.0, dict(zip(steps, (0.65, 0.66, 0.70, 0.72, 0.71))))
    assert "not ahead of both" in mt.answer([low, high, behind], short=True)
    unfinished = tutorial_run(mt, 0.0, dict(zip(steps[:4], (0.65, 0.66, 0.70, 0.72))), False)
    assert "λ = 0" not in mt.answer([low, high, unfinished], short=True)
