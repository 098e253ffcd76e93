"""bench/bench.py's --presets: entries split at the commas that start a preset, so a flag's own
commas (--widths 16,64,128, --lr-milestones 0.5,0.75) stay with it; an unknown preset is one line
before anything is measured."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("reglab_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("text", "entries"),
    [
        ("quick", ["quick"]),
        ("quick,quick-sgd,cpu90", ["quick", "quick-sgd", "cpu90"]),
        ("quick, cpu90 --low-res-fraction 0", ["quick", "cpu90 --low-res-fraction 0"]),
        ("cpu90,cpu90 --widths 16,64,128", ["cpu90", "cpu90 --widths 16,64,128"]),
        ("cpu90 --widths 16,64,128,quick", ["cpu90 --widths 16,64,128", "quick"]),
        ("quick-sgd --lr-milestones 0.5,0.75,quick",
         ["quick-sgd --lr-milestones 0.5,0.75", "quick"]),
    ],
)
def test_presets_split_at_the_commas_that_start_a_preset(bench, text, entries):
    assert bench.split_presets(text) == entries


@pytest.mark.parametrize(("text", "unknown"), [("cpu90,cpu91", "cpu91"), ("fast", "fast"),
                                               ("quick,--seed 1", "--seed")])  # fmt: skip
def test_an_unknown_preset_is_named(bench, text, unknown):
    with pytest.raises(SystemExit, match=f"unknown preset '{unknown}'"):
        bench.split_presets(text)


def test_the_command_stops_before_measuring(tmp_path):
    proc = subprocess.run([sys.executable, str(BENCH), "--presets", "quick,cpu91"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "bench.py: --presets: unknown preset 'cpu91' in 'quick,cpu91'; give PRESET [FLAGS], "
        "comma-separated, PRESET one of: tutorial, quick, quick-sgd, cpu90, gpu, gpu94, cpu94"
    ]
    assert proc.stdout == ""


def test_abba_ratio_cancels_a_linear_drift(bench):
    """B takes 0.9x A's time; the machine slows by k per run over the order A, B, B, A."""
    for k in (0.0, 0.05, 0.2):
        a1, b1, b2, a2 = (base * (1 + k * i) for i, base in enumerate((100, 90, 90, 100)))
        assert bench.abba_ratio(a1, b1, b2, a2) == pytest.approx(0.9, rel=1e-12)
        assert b1 / a1 == pytest.approx(0.9 * (1 + k))  # one pair alone carries the drift


def test_abba_runs_a_b_b_a_and_says_whether_each_pair_learned_the_same(bench, monkeypatch):
    calls = []
    accs = {"quick": [0.87, 0.87], "quick --epochs 2": [0.80, 0.80]}
    seconds = iter([100.0, 90.0, 99.0, 110.0])

    def fake_run(name, data_dir, device, keep, seed, rep=1):
        calls.append((name, rep))
        return f"| {name} {rep} |", {"train_seconds": next(seconds),
                                     "final_val_acc": accs[name][rep - 1]}  # fmt: skip

    monkeypatch.setattr(bench, "preset_run", fake_run)
    table = bench.preset_runs(["quick", "quick --epochs 2"], None, "cpu", abba=True)
    assert calls == [("quick", 1), ("quick --epochs 2", 1), ("quick --epochs 2", 2),
                     ("quick", 2)]  # fmt: skip
    last = table.splitlines()[-1]
    assert f"{(90 + 99) / (100 + 110):.3f}x" in last and "the same final accuracy" in last
    assert "first pair 0.900x, second pair 0.900x" in last
    accs["quick"][1] = 0.86
    seconds = iter([100.0, 90.0, 99.0, 110.0])
    assert "DIFFERENT final accuracies" in bench.preset_runs(
        ["quick", "quick --epochs 2"], None, "cpu", abba=True)  # fmt: skip


def test_abba_needs_two_entries(tmp_path):
    proc = subprocess.run([sys.executable, str(BENCH), "--abba", "--presets", "quick"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 1 and proc.stderr.startswith("bench.py: --abba compares two")


@pytest.mark.parametrize("preset", ["quick", "cpu94"])
def test_throughput_steps_are_at_the_tables_image_size(bench, preset):
    """quick and cpu94 train their first steps at 24 px (progressive resizing); the throughput
    table's row says 32 px, so every batch it times must be 32 px (a mix of sizes once read
    --malloc system as 0.71x keep for the quick row)."""
    s = bench.setup_for("airbench", 32, 8, preset, "fp32", True, "cpu")
    batches = 2 * s.pipeline.steps_per_epoch + 3  # past the preset's low-res steps
    sizes = {tuple(s.pipeline.next_batch()[0].shape[-2:]) for _ in range(batches)}
    assert sizes == {(32, 32)}


def test_gpu_compare_states_each_preset_against_airbench94():
    """bench/gpu_compare.py's closing lines: the issue's two criteria for each reglab row with as
    many runs as airbench94's, median training time over airbench94's and median accuracy less
    airbench94's (hand-computed medians; a one-run row is not compared)."""
    spec = importlib.util.spec_from_file_location("reglab_gpu_compare",
                                                  BENCH.parent / "gpu_compare.py")  # fmt: skip
    gpu_compare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_compare)
    ab = [{"train_seconds": s, "acc": a} for s, a in ((2.0, 0.936), (2.4, 0.934), (2.2, 0.938))]
    table = {
        "reglab gpu preset": [{"train_seconds": s, "acc": a}
                              for s, a in ((1.9, 0.930), (2.0, 0.940), (1.7, 0.935))],
        "reglab quick preset": [{"train_seconds": 0.5, "acc": 0.87}],
        "airbench94": ab,
    }  # fmt: skip
    assert gpu_compare.against_airbench(table, ab) == {
        "reglab gpu preset": f"time ratio {1.9 / 2.2:.2f}, accuracy -0.10 points"}
