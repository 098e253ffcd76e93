"""A sweep worker: takes trials with ``Study.optimize`` and trains each in its job's run folder.

A worker runs one trial at a time (``study.optimize(objective, n_trials=1)``: Optuna pops the
oldest WAITING trial, beats its heartbeat while it trains and tells its state) until no trial is
waiting and none of its command's jobs is running anywhere (a running one may still go stale and
be enqueued again, and then this worker takes it). The objective

1. ends a trial that is not its job's owner as FAIL "duplicate", and a trial Optuna created
   because the queue emptied under it as FAIL "surplus", both untrained;
2. gives the trial its values: a grid job's as single-choice parameters, a search job's drawn by
   the sampler (TPE) in the search ranges (a retried trial keeps the values it had);
3. trains in SWEEP/trials/<job>/, resuming from the newest checkpoint there when an earlier
   attempt of the job left one (a killed attempt, or one that raised), else from step 0;
4. reports the holdout accuracy at each validation (the pruner may stop a search trial there)
   and returns the final holdout accuracy. A diverged run is PRUNED with outcome "diverged"; a
   trial that raised is FAIL with the error, and the worker goes on (errors of the sweep's
   settings or data, the same for every trial, stop it); Ctrl-C or SIGTERM fails the trial as
   "interrupted" and stops the worker.

Worker processes (``--workers N``, spawned) are pinned to one device each and stop when their
parent dies: Linux's ``PR_SET_PDEATHSIG`` sends them SIGTERM, and a watchdog thread on
``os.getppid()`` does the same where that is missing.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import os
import signal
import socket
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from reglab.config import ConfigError, TrainConfig
from reglab.data import CIFAR10, DataError, load_cifar10
from reglab.sweeps.space import Job, Range, is_number, job_dir_name, trial_config
from reglab.sweeps.study import (
    GRACE_INTERVALS,
    by_job,
    fail_stale,
    failure,
    key_of,
    load_study,
    owner_of,
    redact,
    requeue,
    trial_by_number,
)
from reglab.training import NonFiniteError, RunDir, RunDirError, train

POLL_S = 1.0  # an idle worker looks at the study this often (at most once per heartbeat)


class Skip(Exception):
    """A trial that is not a job's attempt (duplicate or surplus): FAIL, untrained."""


class TrialError(Exception):
    """A trial that raised: FAIL with the error; the worker goes on with the next trial."""


class Interrupted(KeyboardInterrupt):
    """SIGTERM (e.g. the parent died): the trial is failed as interrupted and the worker stops."""


@dataclass
class SweepSpec:
    """What a worker needs to run any trial of the sweep (picklable for worker processes)."""

    sweep_dir: Path
    settings: dict[str, Any]  # the command's raw setting values, by setting name
    file_values: dict[str, Any] | None  # the --config file's mapping
    file_name: str
    mode: str  # "grid" | "search"
    ranges: list[Range]
    jobs: list[Job]
    storage_url: str
    study_name: str
    heartbeat_s: int
    prune: bool = True

    @property
    def keys(self) -> set[str]:
        return {j.key for j in self.jobs}

    def config(self, values: dict[str, Any]) -> TrainConfig:
        return trial_config(self.settings, self.file_values, values, self.file_name)


def sampler_and_pruner(spec: SweepSpec) -> tuple[optuna.samplers.BaseSampler,
                                                 optuna.pruners.BasePruner]:  # fmt: skip
    if spec.mode == "grid":  # every value is fixed by its job; nothing is sampled or pruned
        return optuna.samplers.RandomSampler(), optuna.pruners.NopPruner()
    sampler = optuna.samplers.TPESampler(
        n_startup_trials=max(3, min(10, len(spec.jobs) // 3)), constant_liar=True
    )
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=0)
              if spec.prune else optuna.pruners.NopPruner())  # fmt: skip
    return sampler, pruner


def write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    tmp.replace(path)


def trial_record(t: FrozenTrial, spec: SweepSpec, attempts: list[int]) -> dict[str, Any]:
    """trial.json: the study's view of the job's latest attempt, beside its run."""
    a = t.user_attrs
    return {
        "number": t.number, "attempts": attempts, "key": a.get("key"),
        "params": a.get("params", {}), "state": t.state.name, "outcome": a.get("outcome"),
        "value": t.value if t.state == TrialState.COMPLETE else None,
        "metric": "final validation accuracy on the holdout (fraction)",
        "result": a.get("result"),
        "failure": failure(t) if t.state == TrialState.FAIL else None,
        "worker": a.get("worker"), "started": t.datetime_start, "finished": t.datetime_complete,
        "study": spec.study_name, "storage": redact(spec.storage_url),
    }  # fmt: skip


class DataCache:
    """CIFAR-10 loaded once per (folder, holdout, train limit) in a worker."""

    def __init__(self) -> None:
        self.data: dict[tuple, CIFAR10] = {}

    def __call__(self, cfg: TrainConfig) -> CIFAR10:
        key = (cfg.data_dir, cfg.holdout, cfg.train_limit)
        if key not in self.data:
            self.data[key] = load_cifar10(cfg.data_dir, holdout=cfg.holdout,
                                          train_limit=cfg.train_limit)  # fmt: skip
        return self.data[key]


def default_trainer(cache: DataCache) -> Callable[..., Any]:
    def trainer(cfg: TrainConfig, run_dir: RunDir, on_validation: Callable, resume: bool) -> Any:
        return train(cfg, run_dir=run_dir, data=cache(cfg), on_validation=on_validation,
                     quiet=True, resume=resume)  # fmt: skip

    return trainer


class Worker:
    """Runs the sweep's trials on one device (see the module docstring). ``trainer(cfg,
    run_dir, on_validation, resume)`` trains one trial and returns its RunResult (tests pass a
    stand-in)."""

    def __init__(
        self,
        spec: SweepSpec,
        device: str = "cpu",
        threads: int | None = None,
        trainer: Callable[..., Any] | None = None,
        say: Callable[[str], None] | None = None,
    ):
        optuna.logging.set_verbosity(optuna.logging.ERROR)  # reglab says what happened
        self.spec, self.device, self.threads = spec, device, threads
        sampler, pruner = sampler_and_pruner(spec)
        self.study = load_study(spec.storage_url, spec.study_name, spec.heartbeat_s, sampler,
                                pruner)  # fmt: skip
        self.trainer = trainer or default_trainer(DataCache())
        self.say = say or (lambda line: print(line, file=sys.stderr, flush=True))
        self.current: int | None = None  # the number of the trial being run
        self.unstarted: dict[int, float] = {}  # RUNNING trials without a worker, first seen
        self.ran = 0  # trials this worker trained to an end (COMPLETE, PRUNED or FAIL error)

    # ----------------------------------------------------------------------------- the loop

    def run(self, max_trials: int | None = None) -> int:
        """Run trials until none is left (or ``max_trials`` of them have been trained);
        returns how many were trained."""
        while max_trials is None or self.ran < max_trials:
            fail_stale(self.study)
            trials = self.study.get_trials(deepcopy=False)
            if any(t.state == TrialState.WAITING and key_of(t) is not None for t in trials):
                self.one()
                continue
            mine = self.spec.keys
            running = [t for t in trials if t.state == TrialState.RUNNING and key_of(t) in mine]
            if not running:
                break
            self.fail_unstarted(running)
            time.sleep(min(POLL_S, self.spec.heartbeat_s))  # it may go stale: then ours
        return self.ran

    def fail_unstarted(self, running: list[FrozenTrial]) -> None:
        """Fail and enqueue again a trial that has been RUNNING without starting (no ``worker``
        attribute of its own) for a grace period, as this worker watched: its process died
        between Optuna's pop and the first heartbeat, and Optuna's stale check never sees a
        trial that never beat."""
        now = time.monotonic()
        grace = GRACE_INTERVALS * self.spec.heartbeat_s
        for t in running:
            # "worker" names the attempt it was written for: a retry carries its predecessor's
            if t.user_attrs.get("worker", {}).get("trial") == t.number:
                self.unstarted.pop(t.number, None)
                continue
            if now - self.unstarted.setdefault(t.number, now) <= grace:
                continue
            try:  # an atomic RUNNING -> FAIL: of several watchers, one goes on
                self.study.tell(t.number, state=TrialState.FAIL)
            except (ValueError, optuna.exceptions.UpdateFinishedTrialError):
                continue
            requeue(self.study, t)

    def one(self) -> None:
        """One ``optimize`` call: one trial popped, run and told."""
        self.current = None
        try:
            self.study.optimize(self.objective, n_trials=1, catch=(Skip, TrialError),
                                callbacks=[self.after])  # fmt: skip
        except (KeyboardInterrupt, Exception):
            t = trial_by_number(self.study, self.current) if self.current is not None else None
            if t is not None and self.declared_dead(t):
                self.say(f"[sweep] trial {t.number} ({key_of(t)}) was declared dead while it "
                         "ran (no heartbeat for the grace period); its retry continues the job")
                return
            if t is not None:
                self.after(self.study, t)
            raise

    def attempts(self, t: FrozenTrial) -> list[int]:
        """The numbers of the attempts of ``t``'s job up to ``t``."""
        ts = by_job(self.study.get_trials(deepcopy=False)).get(key_of(t) or "", [])
        return [x.number for x in ts if x.number <= t.number]

    def declared_dead(self, t: FrozenTrial) -> bool:
        """True if ``t`` was failed by a heartbeat check while this worker ran it (so that
        Optuna could not tell its end): FAIL without a reason of ours."""
        return t.state == TrialState.FAIL and "failure" not in t.user_attrs

    def after(self, study: optuna.Study, t: FrozenTrial) -> None:
        """trial.json beside the run, with the trial's final state."""
        rel = t.user_attrs.get("run_dir")
        if rel and t.number == self.current and (self.spec.sweep_dir / rel).is_dir():
            t = trial_by_number(self.study, t.number) or t
            write_json(self.spec.sweep_dir / rel / "trial.json",
                       trial_record(t, self.spec, self.attempts(t)))  # fmt: skip

    # -------------------------------------------------------------------------- the objective

    def objective(self, trial: optuna.Trial) -> float:
        """Run one trial (see the module docstring). Every way out but a result leaves the
        reason in the trial's ``failure`` or ``outcome`` attribute."""
        self.current = trial.number
        key = trial.user_attrs.get("key")
        if key is None:
            trial.set_user_attr("failure", {"kind": "surplus", "message": "created by Optuna "
                                            "when no job was left to take"})  # fmt: skip
            raise Skip("surplus")
        owner = owner_of(self.study.get_trials(deepcopy=False), key)
        if owner != trial.number:
            trial.set_user_attr("failure", {"kind": "duplicate", "message": f"trial {owner} "
                                            f"has job {key}"})  # fmt: skip
            raise Skip("duplicate")

        def fail(kind: str, message: str) -> None:
            with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                trial.set_user_attr("failure", {"kind": kind, "message": message[:2000]})

        try:
            result = self.train_trial(trial, key)
        except optuna.TrialPruned:
            self.ran += 1
            raise
        except NonFiniteError as e:  # a diverged run is a result for its values, not a crash
            trial.set_user_attr("outcome", "diverged")
            trial.set_user_attr("failure_message", str(e))
            self.ran += 1
            raise optuna.TrialPruned(str(e)) from None
        except KeyboardInterrupt:
            fail("interrupted", "interrupted (Ctrl-C, SIGTERM, or the sweep's main process "
                 "ended)")  # fmt: skip
            raise
        except (ConfigError, DataError, RunDirError) as e:  # the same for every trial: stop
            fail("error", str(e))
            raise
        except optuna.exceptions.UpdateFinishedTrialError:
            raise  # declared dead meanwhile (see one())
        except Exception as e:  # recorded in the study; the sweep goes on
            text = "".join(traceback.format_exception(type(e), e, e.__traceback__))
            self.say(f"[sweep] trial {trial.number} ({key}) raised:\n{text.rstrip()}")
            fail("error", f"{type(e).__name__}: {e}")
            self.ran += 1
            raise TrialError(str(e)) from e
        self.ran += 1
        trial.set_user_attr("result", {
            "final_acc": result.final_val_acc, "best_acc": result.best_val_acc,
            "train_acc": result.final_train_acc, "seconds": result.total_seconds,
            "split": result.val_split, "val_images": result.val_images,
            "resumed_at": list(getattr(result, "resumed_at", None) or []),
        })  # fmt: skip
        return result.final_val_acc

    def train_trial(self, trial: optuna.Trial, key: str) -> Any:
        """The trial's values (grid: its job's, numbers also as Optuna parameters; search:
        drawn, or kept from an earlier attempt), its config on this worker's device, and its
        training in the job's run directory."""
        spec = self.spec
        values = dict(trial.user_attrs.get("values", {}))
        params = dict(trial.user_attrs.get("params", {}))
        for name, value in params.items():
            if any(r.name == name for r in spec.ranges) or not is_number(value):
                continue
            if isinstance(value, int):
                trial.suggest_int(name, value, value)
            else:
                trial.suggest_float(name, value, value)
        for r in spec.ranges:
            if r.integer:
                v: Any = trial.suggest_int(r.name, int(r.low), int(r.high), log=r.log)
            else:
                v = trial.suggest_float(r.name, r.low, r.high, log=r.log)
            values[r.setting], params[r.name] = v, v
        rel = f"trials/{job_dir_name(key)}"
        worker = {"host": socket.gethostname(), "pid": os.getpid(), "device": self.device,
                  "threads": self.threads, "trial": trial.number}  # fmt: skip
        for k, v in (("params", params), ("values", values), ("run_dir", rel),
                     ("worker", worker)):  # fmt: skip
            trial.set_user_attr(k, v)

        cfg = spec.config(values)
        cfg = cfg.replace(device=self.device, threads=self.threads or cfg.threads,
                          name=Path(rel).name, runs_dir=str(spec.sweep_dir / "trials"),
                          overwrite=False)  # fmt: skip
        run_dir, resume = self.open_run_dir(spec.sweep_dir / rel)
        frozen = trial_by_number(self.study, trial.number)
        if frozen is not None:
            write_json(run_dir.path / "trial.json", trial_record(frozen, spec,
                                                                 self.attempts(frozen)))

        def on_validation(step: int, row: dict[str, Any]) -> None:
            with warnings.catch_warnings():  # a resumed trial reports some steps again
                warnings.simplefilter("ignore")
                trial.report(row["acc"], step)
            if spec.mode == "search" and spec.prune and trial.should_prune():
                raise optuna.TrialPruned(f"pruned at step {step}")

        return self.trainer(cfg, run_dir, on_validation, resume)

    @staticmethod
    def open_run_dir(path: Path) -> tuple[RunDir, bool]:
        """The job's run directory: resumed when an earlier attempt left its config there (from
        its newest valid checkpoint, or from step 0 without one), else started afresh."""
        if (path / "config.yaml").is_file():
            return RunDir(path, mode="resume"), True
        (path / "trial.json").unlink(missing_ok=True)
        busy = path.is_dir() and any(path.iterdir())
        return RunDir(path, mode="overwrite" if busy else "new"), False


# --------------------------------------------------------------------------------------------
# Worker processes.

PR_SET_PDEATHSIG = 1


def stop_with_parent(parent_pid: int) -> None:
    """SIGTERM this process when ``parent_pid`` (its parent) ends: prctl(PR_SET_PDEATHSIG) on
    Linux, and a watchdog thread on os.getppid() everywhere (also covering the moment before
    prctl took effect)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, daemon=True, name="reglab-parent-watch").start()


def _on_sigterm(signum: int, frame: Any) -> None:
    """The first SIGTERM interrupts the trial; later ones (the parent-death signal and the
    watchdog may both send one) would interrupt the recording of that, and are ignored."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Interrupted(f"signal {signum}")


def pin_device(device: str) -> None:
    """Make ``device`` this process's default CUDA device (a cuda:N worker)."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.set_device(torch.device(device))


def worker_process(spec: SweepSpec, index: int, device: str, threads: int | None,
                   parent_pid: int) -> None:  # fmt: skip
    """The target of a spawned worker process; its exit code says how it ended (0: no trial
    left, 1: a setting or data error, 130: interrupted)."""
    signal.signal(signal.SIGTERM, _on_sigterm)
    stop_with_parent(parent_pid)
    if os.getppid() != parent_pid:  # the parent died before the watch began
        sys.exit(130)
    try:
        pin_device(device)
        Worker(spec, device, threads,
               say=lambda line: print(f"[worker {index}] {line}", file=sys.stderr,
                                      flush=True)).run()  # fmt: skip
    except KeyboardInterrupt:
        sys.exit(130)
    except (ConfigError, DataError, RunDirError) as e:
        print(f"reglab: error: [worker {index}, {device}] {e}", file=sys.stderr, flush=True)
        sys.exit(1)
