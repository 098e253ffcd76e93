"""Tests of reglab report: finding runs and sweeps, the figures, the page (and that it renders
in headless Chromium with every figure decoded). Runs are written by hand: no training."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml

from reglab.cli import main
from reglab.reports.figures import lambda_axis
from reglab.reports.load import ReportError, collect
from reglab.reports.page import write_report


def fake_run(path: Path, l2: float, seed: int, acc: float, *, params: dict | None = None,
             state: str | None = "COMPLETE", norms: bool = True, split: str = "holdout",
             steps: int = 40) -> Path:  # fmt: skip
    """A run directory as the loop writes it: config.yaml, metrics.jsonl, summary.json (when
    finished) and, for sweep trials, trial.json. Accuracy rises towards ``acc``."""
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(yaml.safe_dump({"model": "airbench", "l2": l2, "seed": seed,
                                                      "lr": 0.2, "threads": 1}))  # fmt: skip
    rows = []
    for step in range(10, steps + 1, 10):
        f = step / steps
        train = {"step": step, "epoch": f, "split": "train", "loss": 2.3 - f, "acc": acc * f + 0.06,
                 "lr": 0.1, "penalty": l2, "elapsed": step}  # fmt: skip
        if norms:
            train["weight_norm/conv.weight"] = 20 - 50 * l2 * f
            train["weight_norm/linear.weight"] = 2 - 5 * l2 * f
        rows.append(train)
        rows.append({"step": step, "epoch": f, "split": split, "loss": 2.4 - f, "acc": acc * f,
                     "lr": 0.1, "penalty": l2, "elapsed": step})  # fmt: skip
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if state in ("COMPLETE", None):
        (path / "summary.json").write_text(json.dumps({
            "val_split": split, "final_val_acc": acc, "best_val_acc": acc + 0.002,
            "best_val_step": steps - 10, "final_train_acc": acc + 0.06, "final_val_loss": 1.4,
            "total_seconds": 30.0 + seed, "steps": steps, "val_images": 10_000,
        }))  # fmt: skip
    if state is not None:
        trial = {"state": state, "params": {**(params or {"l2": l2}), "seed": seed},
                 "failure": {"kind": "died", "message": "its worker is gone"}
                 if state == "FAIL" else None}  # fmt: skip
        (path / "trial.json").write_text(json.dumps(trial))
    return path


@pytest.fixture
def sweep(tmp_path) -> Path:
    """λ ∈ {0, 1e-4, 1e-3, 1e-2} x 2 seeds; 1e-3 best; one killed attempt; a --final result."""
    root = tmp_path / "l2-sweep"
    accs = {0.0: 0.80, 1e-4: 0.81, 1e-3: 0.84, 1e-2: 0.78}
    n = 0
    for seed in (0, 1):
        for l2, acc in accs.items():
            fake_run(root / "trials" / f"{n:04d}-l2={l2:g}_seed={seed}", l2, seed,
                     acc + 0.004 * seed)  # fmt: skip
            n += 1
    fake_run(root / "trials" / f"{n:04d}-l2=0.01_seed=9", 1e-2, 9, 0.5, state="FAIL")
    (root / "sweep.yaml").write_text(yaml.safe_dump({"command": "reglab sweep --grid l2=..."}))
    final = root / "final"
    fake_run(final, 1e-3, 0, 0.835, state=None, split="test")
    (final / "final.json").write_text(json.dumps({
        "setting": "l2=0.001", "holdout": {"mean": 0.842, "std": 0.003, "seeds": 2},
        "test": {"acc": 0.835, "images": 10_000}, "train_images": 50_000,
    }))  # fmt: skip
    return root


def test_a_sweep_is_found_and_its_failed_attempt_is_not_a_result(sweep):
    col = collect([sweep])
    assert col.kind == "sweep" and len(col.runs) == 9 and len(col.results) == 8
    (failed,) = [r for r in col.runs if r.status == "failed"]
    assert "died" in failed.reason
    assert [f.info["setting"] for f in col.finals] == ["l2=0.001"]


def test_sweep_report_has_every_figure_table_and_the_recommendation(sweep):
    page_path = write_report([sweep])
    assert page_path == sweep / "report.html"
    for name in ("curves.png", "accuracy.png", "weight_norms.png"):
        png = sweep / "figures" / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size < 200_000
    page = page_path.read_text()
    assert page.count('<img src="data:image/png;base64,') == 3  # self-contained
    assert not re.search(r'(src|href)="(?!data:)', page)  # nothing loaded from elsewhere
    # the settings table is sorted by holdout accuracy, best first, with time per run
    table = page.split("Settings, by holdout accuracy", 1)[1]
    order = [table.index(f"<td class=\"l\">l2={v}</td>") for v in ("0.001", "0.0001", "0", "0.01")]
    assert order == sorted(order)
    assert "84.20% ± 0.28 (2 seeds)" in page  # mean ± std over seeds
    assert "time per run (s)" in page and "holdout acc, final" in page
    assert "Best on the holdout set: l2=0.001" in page and "the choice is clear" in page
    assert "test acc (once)" in page and "83.50%" in page  # the --final result, labelled
    assert "its worker is gone" in page  # the failed attempt, explained


def test_lambda_zero_and_rule_values(sweep):
    axis = lambda_axis(collect([sweep]).runs)
    assert axis.name == "l2" and axis.of["l2=0"] == 0.0 and axis.of["l2=0.001"] == 1e-3
    runs = collect([sweep]).runs[:2]
    runs[0].params, runs[1].params = {"reg": "wd=0.0005"}, {"reg": "wd=0.005"}
    axis = lambda_axis(runs)
    assert axis.label == "λ of wd rules (reg)" and sorted(axis.of.values()) == [5e-4, 5e-3]
    runs[1].params = {"reg": "l1=0.005"}  # different methods: no common λ
    assert lambda_axis(runs) is None


def test_loose_runs_are_compared_by_what_differs(tmp_path, capsys):
    for i, l2 in enumerate((0.0, 5e-4)):
        fake_run(tmp_path / "runs" / f"r{i}", l2, seed=0, acc=0.8 + i / 100, state=None,
                 norms=False)  # fmt: skip
    col = collect([tmp_path / "runs"])
    assert col.kind == "runs" and [r.params for r in col.runs] == [{"l2": 0.0}, {"l2": 0.0005}]
    assert main(["report", str(tmp_path / "runs")]) == 0
    page = (tmp_path / "runs" / "report.html").read_text()
    assert "No weight norms in these metrics" in page
    assert not (tmp_path / "runs" / "figures" / "weight_norms.png").exists()
    assert "one seed" in page or "1 seed" in page


def test_one_run_and_errors(tmp_path, capsys):
    run = fake_run(tmp_path / "one", 1e-4, 0, 0.8, state=None)
    assert collect([run]).kind == "run"
    page = write_report([run]).read_text()
    assert "Only one setting" in page and page.count("<img") == 2  # curves and weight norms
    with pytest.raises(ReportError, match="no runs in"):
        collect([_empty(tmp_path)])
    code = main(["report", str(run), str(run)])
    assert code == 2 and "--out DIR" in capsys.readouterr().err


def _empty(tmp_path: Path) -> Path:
    empty = tmp_path / "empty"
    empty.mkdir()
    return empty


def test_zero_lambda_is_drawn_at_a_marked_position(sweep):
    from reglab.reports import figures as F
    from reglab.sweeps.select import rank

    col = collect([sweep])
    fig = F.accuracy_vs_lambda(rank(col.results), lambda_axis(col.runs))
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert ax.get_xscale() == "log" and labels[0] == "0" and "1e-4" in labels
    zero = ax.get_xticks()[0]
    assert 0 < zero < 1e-4 and math.log10(1e-4 / zero) >= 1  # a decade or more left of 1e-4


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install chromium)")
def test_page_renders_in_headless_chromium_with_every_figure(sweep):
    page = write_report([sweep])
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--no-first-run", f"--user-data-dir={profile}", "--dump-dom",
             page.resolve().as_uri()],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    body = re.search(r"<body[^>]*>", done.stdout)
    assert body, done.stderr[-2000:]
    # the page's own script counts the decoded images (complete, naturalWidth > 0) and errors
    assert 'data-figures="3/3"' in body.group(0), body.group(0)
    assert 'data-errors="0"' in body.group(0), body.group(0)
    assert "Uncaught" not in done.stderr
