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
