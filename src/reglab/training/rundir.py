"""A run directory: the resolved config, the metrics, the summary and the checkpoint.

    config.yaml      every setting of the run, after presets, config file and flags
    metrics.jsonl    one row per log point: step, epoch, split, loss, acc, lr, penalty, elapsed;
                     train rows add grad_norm, weight_norm/<group>, eff_lr_bn, sparsity/<method>
    weights.jsonl    per train log point, per tensor: norm, grad_norm, zeros, eff_lr (diagnostics)
    regularization.txt  the rules and the parameter groups they apply to, as printed at the start
    audit.txt        the first step's check that each regularizer changes what its formula says
    summary.json     final and best validation figures, time, throughput
    checkpoint.pt    model, optimizer, step and config (torchvision references' contents)

A directory that already holds files is never written into unless ``overwrite`` is set.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch
import yaml


class RunDirError(ValueError):
    pass


class RunDir:
    def __init__(self, path: str | Path, overwrite: bool = False):
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise RunDirError(f"run directory {self.path} is a file; choose another --name")
        if self.path.is_dir() and any(self.path.iterdir()) and not overwrite:
            raise RunDirError(
                f"run directory {self.path} already exists and is not empty; choose another "
                "--name or pass --overwrite to replace its results"
            )
        self.created = not self.path.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.path / "metrics.jsonl"
        self.metrics_path.write_text("")  # a fresh log (overwrite was asked for, or it is new)
        self.weights_path = self.path / "weights.jsonl"
        self.weights_path.unlink(missing_ok=True)

    def discard_if_unused(self) -> bool:
        """Remove the directory if this run created it and it holds no result yet (a run that
        stopped before its first log line or audit report); True if it was removed."""
        if not self.created or self.metrics_path.stat().st_size > 0:
            return False
        if (self.path / "audit.txt").exists():  # a failed audit's report is worth keeping
            return False
        shutil.rmtree(self.path)
        return True

    @staticmethod
    def default_name(label: str) -> str:
        return f"{label}-{time.strftime('%Y%m%d-%H%M%S')}"

    def write_config(self, config: dict[str, Any]) -> None:
        (self.path / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    def log(self, row: dict[str, Any]) -> None:
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(row) + "\n")

    def log_weights(self, row: dict[str, Any]) -> None:
        with self.weights_path.open("a") as f:
            f.write(json.dumps(row) + "\n")

    def write_text(self, name: str, text: str) -> None:
        (self.path / name).write_text(text.rstrip("\n") + "\n")

    def write_summary(self, summary: dict[str, Any]) -> None:
        (self.path / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        tmp = self.path / "checkpoint.pt.tmp"
        torch.save(state, tmp)
        tmp.replace(self.path / "checkpoint.pt")


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a run's metrics.jsonl (``path`` is the run directory or the file)."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
