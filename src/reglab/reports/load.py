"""Finding runs in folders: one run, several runs, one sweep or several.

    a run      a folder with metrics.jsonl (config.yaml, summary.json when it finished)
    a sweep    a folder with trials/ (and sweep.yaml, study.db, final/): its runs are the trial
               attempts, each with trial.json saying its values, state and failure
    otherwise  the runs and sweeps directly inside the folder

A run's *setting* is what distinguishes it: a sweep trial's swept values (trial.json's params,
seed apart), or for loose runs the experiment settings (``reglab.config``'s schema) whose values
differ between them, the seed apart.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from reglab.config import experiment_settings, setting_label
from reglab.sweeps.select import Result
from reglab.training.rundir import read_config


class ReportError(ValueError):
    """Nothing to report, or a folder that is not a run; one line naming the fix."""


@dataclass
class Run:
    path: Path
    name: str
    config: dict[str, Any]
    summary: dict[str, Any] | None
    rows: list[dict[str, Any]]
    trial: dict[str, Any] | None = None
    sweep: str | None = None  # the sweep's folder name
    params: dict[str, Any] = field(default_factory=dict)  # the setting's values, seed apart

    @property
    def seed(self) -> int | None:
        if self.trial and "seed" in self.trial.get("params", {}):
            return self.trial["params"]["seed"]
        return self.config.get("seed")

    @property
    def status(self) -> str:
        """complete | pruned | diverged | failed | unfinished (running, or killed unnoticed)."""
        if self.summary is not None:
            return "complete"
        state = (self.trial or {}).get("state")
        if state == "PRUNED":
            return "diverged" if self.trial.get("outcome") == "diverged" else "pruned"
        if state == "FAIL":
            return "failed"
        return "unfinished"

    @property
    def split(self) -> str:
        if self.summary is not None:
            return self.summary["val_split"]
        return next((r["split"] for r in self.rows if r.get("split") != "train"), "holdout")

    @property
    def setting(self) -> str:
        return setting_label(self.params)

    @property
    def reason(self) -> str:
        """Why a run is not a result (for the page)."""
        if self.status == "failed":
            f = (self.trial or {}).get("failure") or {}
            return f"{f.get('kind', 'stale')}: {f.get('message', 'its heartbeat stopped')}"
        if self.status == "unfinished":
            last = max((r["step"] for r in self.rows), default=0)
            return f"no summary.json (last logged step {last}): still running, or stopped"
        if self.status == "pruned":
            return "stopped early by the pruner"
        if self.status == "diverged":
            return "loss became inf or nan"
        return ""

    def result(self) -> Result | None:
        if self.summary is None:
            return None
        s = self.summary
        return Result(
            setting=self.setting, values=self.params, acc=s["final_val_acc"], split=s["val_split"],
            seed=self.seed, best_acc=s.get("best_val_acc"), train_acc=s.get("final_train_acc"),
            seconds=s.get("total_seconds"), name=self.name, val_images=s.get("val_images"),
        )  # fmt: skip


@dataclass
class Final:
    """A sweep's --final run: the chosen setting on the test set."""

    sweep: str
    path: Path
    info: dict[str, Any]


@dataclass
class Collection:
    kind: str  # run | runs | sweep | sweeps
    sources: list[Path]
    runs: list[Run]
    finals: list[Final]
    sweeps: dict[str, dict[str, Any]]  # sweep name -> its sweep.yaml

    @property
    def results(self) -> list[Result]:
        return [r for run in self.runs if (r := run.result()) is not None]


def _json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _rows(path: Path) -> list[dict[str, Any]]:
    rows = []
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return rows
    for line in lines:
        try:
            rows.append(json.loads(line))
        except ValueError:  # a line cut by a kill
            continue
    return rows


def acting(config: dict[str, Any]) -> dict[str, Any]:
    """The config as it acted: with ``penalty_in_loss`` off (the tutorial's bug reproduced) the
    penalties' coefficients are 0 in effect, and a run is compared as such (its λ is 0)."""
    if config.get("penalty_in_loss", True):
        return config
    from reglab.regularization import find_method, parse_rule

    rules = []
    for text in config.get("regularizers") or []:
        rule = parse_rule(text)
        cls = find_method(rule.method)
        rules.append(text if cls is None or not cls.is_penalty else
                     rule.__class__(rule.method, 0.0, rule.scope).text)  # fmt: skip
    return {**config, "l2": 0.0, "regularizers": rules, "penalty_in_loss": True}


def read_run(path: Path, sweep: str | None = None) -> Run:
    config: dict[str, Any] = {}
    if (path / "config.yaml").is_file():
        config = acting(read_config(path / "config.yaml"))
    run = Run(
        path=path, name=path.name, config=config, summary=_json(path / "summary.json"),
        rows=_rows(path / "metrics.jsonl"), trial=_json(path / "trial.json"), sweep=sweep,
    )  # fmt: skip
    if run.trial is not None:
        run.params = {k: v for k, v in run.trial.get("params", {}).items() if k != "seed"}
    return run


def is_run(path: Path) -> bool:
    return (path / "metrics.jsonl").is_file()


def is_sweep(path: Path) -> bool:
    return (path / "trials").is_dir()


def _varying(runs: list[Run]) -> list[str]:
    """Experiment settings whose values differ between ``runs`` (the seed apart)."""
    stored = [r.config for r in runs if r.config]
    def values(k: str) -> set[str]:
        return {json.dumps(c[k], sort_keys=True, default=str) for c in stored}

    return [k for k in experiment_settings() if k != "seed" and len(values(k)) > 1]


def collect(dirs: list[str | Path]) -> Collection:
    """The runs, sweeps and final test runs in ``dirs`` (see the module docstring)."""
    runs: list[Run] = []
    loose: list[Run] = []
    finals: list[Final] = []
    sweeps: dict[str, dict[str, Any]] = {}
    sources = [Path(d) for d in dirs]

    def add_sweep(path: Path) -> None:
        name = path.resolve().name
        if name in sweeps:
            name = str(path)
        doc = {}
        if (path / "sweep.yaml").is_file():
            doc = yaml.safe_load((path / "sweep.yaml").read_text()) or {}
        sweeps[name] = doc
        for t in sorted((path / "trials").iterdir()):
            if t.is_dir() and is_run(t):
                runs.append(read_run(t, sweep=name))
        info = _json(path / "final" / "final.json")
        if info is not None and (path / "final" / "summary.json").is_file():
            finals.append(Final(name, path / "final", info))

    for d in sources:
        if not d.is_dir():
            raise ReportError(f"{d} is not a folder: give run or sweep directories")
        if is_sweep(d):
            add_sweep(d)
        elif is_run(d):
            loose.append(read_run(d))
        else:
            found = False
            for c in sorted(d.iterdir()):
                if c.is_dir() and is_sweep(c):
                    add_sweep(c)
                    found = True
                elif c.is_dir() and is_run(c):
                    loose.append(read_run(c))
                    found = True
            if not found:
                raise ReportError(
                    f"no runs in {d}: expected a run (metrics.jsonl), a sweep (trials/), or "
                    "folders of them"
                )
    if len(loose) > 1:
        fields = _varying(loose)
        for r in loose:
            r.params = {k: r.config.get(k) for k in fields}
    runs += loose
    if sweeps and not loose:
        kind = "sweep" if len(sweeps) == 1 else "sweeps"
    else:
        kind = "run" if len(runs) == 1 and not sweeps else "runs"
    return Collection(kind, sources, runs, finals, sweeps)
