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
        "comma-separated, PRESET one of: tutorial, quick, quick-sgd, cpu90, gpu, cpu94"
    ]
    assert proc.stdout == ""
