"""A run directory: everything a run leaves, and nothing stale.

    config.yaml         every setting of the run, after preset, config file and flags
    metrics.jsonl       one row per log point: step, epoch, split, loss, acc, lr, penalty, elapsed;
                        train rows add grad_norm, weight_norm/<group>, eff_lr_bn, sparsity/<method>
    metrics.csv         the same rows as a table (written at the end)
    weights.jsonl       per train log point, per tensor: norm, grad_norm, zeros, eff_lr
    regularization.txt  the rules and the parameter groups they apply to, as printed at the start
    audit.txt           the first step's check that each regularizer changes what its formula says
    checkpoints/        step-N.pt + step-N.sha256, the newest two (see training.checkpoint)
    tensorboard/        TensorBoard event files
    summary.json        written last, only by a run that finished: final and best validation
                        figures, time, and what is needed to reproduce the run

A directory that already holds a run is never written into unless ``overwrite`` is set, and then
every result of the old run is removed first; ``resume`` continues the run it holds.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import yaml

from reglab.config import experiment_settings, with_defaults
from reglab.errors import ConfigError, ReglabError

RESULT_FILES = ("config.yaml", "metrics.jsonl", "metrics.csv", "weights.jsonl",
                "regularization.txt", "audit.txt", "summary.json")  # fmt: skip
RESULT_DIRS = ("checkpoints", "tensorboard")


class RunDirError(ReglabError):
    pass


def is_run_dir(path: Path) -> bool:
    return any((path / n).exists() for n in (*RESULT_FILES, *RESULT_DIRS))


class RunDir:
    """``mode``: "new" (the folder must be absent or empty), "overwrite" (an existing run's
    results are removed first) or "resume" (the folder must hold a run)."""

    def __init__(self, path: str | Path, mode: str = "new", writer: bool = True):
        self.path = Path(path)
        self.writer = writer  # False on the ranks > 0 of a distributed run: nothing is written
        self.metrics_path = self.path / "metrics.jsonl"
        self.weights_path = self.path / "weights.jsonl"
        self.checkpoint_dir = self.path / "checkpoints"
        if self.path.exists() and not self.path.is_dir():
            raise RunDirError(f"run directory {self.path} is a file; choose another --name")
        holds_files = self.path.is_dir() and any(self.path.iterdir())
        if mode == "resume":
            if not (self.path / "config.yaml").is_file():
                raise RunDirError(f"{self.path} holds no run to resume (no config.yaml); give "
                                  "the run directory of a run reglab started")  # fmt: skip
        elif holds_files and mode == "new":
            raise RunDirError(
                f"run directory {self.path} already exists and is not empty; choose another "
                "--name, pass --resume to continue it, or --overwrite to replace its results"
            )
        elif holds_files and mode == "overwrite" and not is_run_dir(self.path):
            raise RunDirError(f"{self.path} is not a reglab run directory, so --overwrite will "
                              "not empty it; choose another --name")  # fmt: skip
        self.created = not self.path.exists()
        self.mode = mode
        if not writer:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        if mode == "overwrite":
            self.remove_results()
        (self.path / "summary.json").unlink(missing_ok=True)  # only a finished run has one

    def remove_results(self) -> None:
        for name in RESULT_FILES:
            (self.path / name).unlink(missing_ok=True)
        for name in RESULT_DIRS:
            shutil.rmtree(self.path / name, ignore_errors=True)

    def discard_if_unused(self) -> bool:
        """Remove the directory if this run created it and it holds no result yet (a run that
        stopped before its first log line or audit report); True if it was removed."""
        if not self.writer or not self.created or not self.path.exists():
            return False
        if (self.path / "audit.txt").exists() or self.checkpoint_dir.exists():
            return False
        if self.metrics_path.exists() and self.metrics_path.stat().st_size > 0:
            return False
        shutil.rmtree(self.path)
        return True

    @staticmethod
    def default_name(label: str) -> str:
        return f"{label}-{time.strftime('%Y%m%d-%H%M%S')}"

    def read_config(self) -> dict[str, Any]:
        """The run's config.yaml, settings added since it was written at their defaults."""
        return read_config(self.path / "config.yaml")

    def write_config(self, config: dict[str, Any]) -> None:
        self.write_text("config.yaml", yaml.safe_dump(config, sort_keys=False))

    def restart_logs(self, rows: list[dict[str, Any]], last_step: int) -> None:
        """Metrics as they were at a checkpoint: ``rows`` exactly, weights rows up to
        ``last_step`` (a resumed run then appends what comes after)."""
        if not self.writer:
            return
        self.metrics_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        if self.weights_path.exists():
            kept = [line for line in self.weights_path.read_text().splitlines()
                    if line.strip() and json.loads(line)["step"] <= last_step]  # fmt: skip
            self.weights_path.write_text("".join(line + "\n" for line in kept))

    def log(self, row: dict[str, Any]) -> None:
        if self.writer:
            with self.metrics_path.open("a") as f:
                f.write(json.dumps(row) + "\n")

    def log_weights(self, row: dict[str, Any]) -> None:
        if self.writer:
            with self.weights_path.open("a") as f:
                f.write(json.dumps(row) + "\n")

    def write_text(self, name: str, text: str) -> None:
        if self.writer:
            (self.path / name).write_text(text.rstrip("\n") + "\n")

    def write_summary(self, summary: dict[str, Any]) -> None:
        self.write_text("summary.json", json.dumps(summary, indent=2))


def read_config(path: str | Path) -> dict[str, Any]:
    """A stored config.yaml as this version reads it (:func:`reglab.config.with_defaults`);
    ConfigError if it is not YAML holding a mapping of settings."""
    try:
        config = yaml.safe_load(Path(path).read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path} is not valid YAML ({str(e).splitlines()[0]}): the run's "
                          "config.yaml was damaged; restore it or start a new run") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path} holds a {type(config).__name__}, not the mapping of settings "
                          "a run writes: restore it or start a new run")  # fmt: skip
    return with_defaults(config)


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a run's metrics.jsonl (``path`` is the run directory or the file)."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


COMPACT_FILES = ("config.yaml", "metrics.jsonl", "summary.json", "regularization.txt",
                 "audit.txt", "trial.json")  # fmt: skip


def differing_settings(a: Path, b: Path) -> list[str]:
    """The experiment settings on which two runs' config.yaml files disagree (system settings
    such as threads or the data folder may differ between the processes of one run)."""
    ca, cb = read_config(a), read_config(b)
    def value(config: dict[str, Any], k: str) -> str:  # tuples and lists alike
        return json.dumps(config[k], sort_keys=True, default=str)

    return [k for k in experiment_settings() if value(ca, k) != value(cb, k)]


def compact_copy(run: str | Path, dest: str | Path) -> Path:
    """Copy a run's compact record (COMPACT_FILES that exist: no checkpoints, no event files) to
    ``dest``/<run name>. A sweep (a folder with trials/) is copied whole that way: its
    sweep.yaml, each trial's record under trials/, and final/. Returns the copy's path."""
    run, dest = Path(run), Path(dest)
    target = dest / run.name
    if (run / "trials").is_dir():
        target.mkdir(parents=True, exist_ok=True)
        if (run / "sweep.yaml").is_file():
            shutil.copy2(run / "sweep.yaml", target / "sweep.yaml")
        for trial in sorted(p for p in (run / "trials").iterdir() if p.is_dir()):
            if (trial / "metrics.jsonl").is_file():
                compact_copy(trial, target / "trials")
        if (run / "final" / "metrics.jsonl").is_file():
            compact_copy(run / "final", target)
            if (run / "final" / "final.json").is_file():
                shutil.copy2(run / "final" / "final.json", target / "final" / "final.json")
        return target
    if not (run / "metrics.jsonl").is_file():
        if is_run_dir(run):
            raise RunDirError(f"{run} has logged no metrics yet: export it after its first log "
                              "point")  # fmt: skip
        raise RunDirError(f"{run} has no metrics.jsonl: give run or sweep directories")
    if (target / "config.yaml").is_file() and (run / "config.yaml").is_file():
        differs = differing_settings(target / "config.yaml", run / "config.yaml")
        if differs:
            raise RunDirError(f"{target} holds the record of another run ({differs[0]} differs): "
                              "export to another --compact-to folder, or remove it first")
    target.mkdir(parents=True, exist_ok=True)
    for name in COMPACT_FILES:
        if (run / name).is_file():
            shutil.copy2(run / name, target / name)
    return target
