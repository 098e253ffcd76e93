"""Running a sweep: workers claim trials from the study and train each in its own run directory.

    SWEEP/
        sweep.yaml        the command, its axes or ranges, storage and study (rewritten by each run)
        study.db          the Optuna study (SQLite; absent when --storage names another database)
        .lock             serialises enqueueing between the workers of this machine
        trials/NNNN-KEY/  one ordinary run directory per trial attempt (config.yaml, metrics.jsonl,
                          summary.json, checkpoint.pt) and trial.json (number, key, params, state,
                          worker, failure). NNNN is the study's trial number: an attempt that was
                          killed keeps its directory, marked FAIL in trial.json, and the job is
                          run again as a new trial in a new directory, never in the stale one.
        final/            --final: the chosen setting retrained on all training images (holdout
                          0) and evaluated once on the test set; final.json says what and how.

Selection uses the holdout only: a config that validates on the test set is refused, and the
test set is read once, by --final, for the setting the holdout chose.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import multiprocessing
import os
import shlex
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from reglab.config import ConfigError, TrainConfig
from reglab.data import CIFAR10, DataError, load_cifar10
from reglab.sweeps.select import Result, SettingStats, describe, pct, rank, recommend
from reglab.sweeps.space import (
    Axis,
    Job,
    Range,
    canon,
    grid_jobs,
    parse_grid,
    parse_search,
    search_jobs,
    setting_label,
    train_parser,
    trial_config,
)
from reglab.sweeps.study import (
    HEARTBEAT_S,
    Heartbeat,
    SweepError,
    claim,
    default_storage,
    fail_trial,
    failure,
    file_lock,
    is_duplicate,
    open_storage,
    open_study,
    owner_of,
    reconcile,
    redact,
)
from reglab.training.rundir import RunDir, RunDirError

# Settings that say where and how a run executes, not what it learns: two commands that differ
# only in these are parts of the same sweep (e.g. workers on machines with other data paths).
SYSTEM_FIELDS = ("data_dir", "device", "threads", "compile", "channels_last", "verbose", "runs_dir",
                 "name", "overwrite", "eval_batch_size", "log_every", "audit")  # fmt: skip
FINAL_VAL_EVERY = 10**9  # --final validates (on the test set) only after the last step


def cpu_cores() -> int:
    """Cores this process may use (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


@dataclass
class SweepPlan:
    """Everything a worker needs, picklable for worker processes."""

    sweep_dir: Path
    base_args: argparse.Namespace  # the train flags of the command
    base: TrainConfig
    mode: str  # "grid" | "search"
    axes: list[Axis]
    ranges: list[Range]
    jobs: list[Job]
    storage_url: str
    study_name: str
    workers: int = 1
    threads: int = 1  # torch threads per worker
    heartbeat_s: int = HEARTBEAT_S
    prune: bool = True
    command: str = ""
    started: datetime = field(default_factory=datetime.now)

    @property
    def keys(self) -> set[str]:
        return {j.key for j in self.jobs}

    def spec(self) -> dict[str, Any]:
        """What two commands must share to be parts of one sweep (stored in the study)."""
        base = {k: v for k, v in self.base.to_dict().items() if k not in SYSTEM_FIELDS}
        return json.loads(json.dumps({
            "mode": self.mode, "base": base, "metric": "final_val_acc",
            "search": [r.describe() for r in self.ranges] or None,
        }, default=str))  # fmt: skip


_DEFAULTS = {"final": False, "seeds": 1, "workers": 1, "prune": True}  # left out of _command


def _command(args: argparse.Namespace) -> str:
    """The sweep's command line, rebuilt from the flags that were given (the --storage password
    hidden: the line is written to sweep.yaml)."""
    words = ["reglab", "sweep"]
    for dest, value in vars(args).items():
        if value is None or dest in ("func", "command") or _DEFAULTS.get(dest, ...) == value:
            continue
        if dest == "storage":
            value = redact(value)
        flag = "--" + dest.replace("_", "-")
        if isinstance(value, bool):
            words.append(flag if value else f"--no-{dest.replace('_', '-')}")
        elif isinstance(value, list):
            for v in value:
                words += [flag, str(v)]
        elif isinstance(value, tuple):
            words += [flag, ",".join(map(str, value))]
        else:
            words += [flag, str(value)]
    return " ".join(shlex.quote(w) for w in words)


def plan_from_args(args: argparse.Namespace) -> SweepPlan:
    """Check a ``reglab sweep`` command and turn it into a plan (ConfigError or SweepError,
    one line, for anything that would make the sweep wrong or unresumable)."""
    from reglab.cli import check_data_dir, config_from_args

    if args.name or args.runs_dir:
        raise SweepError("--name and --runs-dir do not apply to a sweep: its trials are run "
                         "directories under SWEEP/trials (choose SWEEP with --dir)")  # fmt: skip
    base = config_from_args(args)
    check_data_dir(base.data_dir)
    if args.grid and args.trials:
        raise SweepError("--grid and --trials are two kinds of sweep; give one of them")
    if not args.grid and not args.trials:
        raise SweepError("say what to sweep: --grid AXIS=V1,V2,... (e.g. --grid l2=0,1e-4,1e-3) "
                         "or --trials N for a search")  # fmt: skip
    if args.workers < 1:
        raise SweepError(f"--workers must be >= 1 (got {args.workers})")
    heartbeat = HEARTBEAT_S if args.heartbeat is None else args.heartbeat
    if heartbeat < 1:
        raise SweepError(f"--heartbeat must be >= 1 second (got {heartbeat})")
    parser = train_parser()
    axes: list[Axis] = []
    ranges: list[Range] = []
    if args.grid:
        if args.search:
            raise SweepError("--search gives the ranges of --trials, not of a --grid")
        axes = parse_grid(args.grid, args.seeds, base.seed, parser)
        jobs = grid_jobs(axes)
        mode = "grid"
    else:
        if args.seeds != 1:
            raise SweepError("--seeds is for grids; a search spends its trials on new settings "
                             "(compare seeds later with a --grid of the chosen values)")
        ranges = parse_search(args.search or [], parser)
        jobs = search_jobs(args.trials)
        mode = "search"
    # every trial's config is checked now, not after hours of the others
    for job in jobs:
        cfg = trial_config(args, job.overrides)
        if cfg.holdout == 0:
            what = "this config" if base.holdout == 0 else f"trial {job.key}"
            raise SweepError(
                f"a sweep selects on a holdout, never on the test set, but {what} validates on "
                "the test set (holdout 0): pass --holdout N (e.g. --holdout 10000, as the quick "
                "preset does); --final evaluates the chosen setting once on the test set"
            )
    sweep_dir = Path(args.dir)
    storage_url = args.storage or default_storage(sweep_dir)
    threads = base.threads or max(1, cpu_cores() // args.workers)
    return SweepPlan(
        sweep_dir=sweep_dir, base_args=args, base=base, mode=mode, axes=axes, ranges=ranges,
        jobs=jobs, storage_url=storage_url, study_name=args.study_name or sweep_dir.resolve().name,
        workers=args.workers, threads=threads, heartbeat_s=heartbeat, prune=args.prune,
        command=_command(args),
    )  # fmt: skip


def _sampler_and_pruner(plan: SweepPlan):
    if plan.mode == "grid":  # every value is fixed by its job; nothing is sampled or pruned
        return optuna.samplers.RandomSampler(), optuna.pruners.NopPruner()
    sampler = optuna.samplers.TPESampler(
        n_startup_trials=max(3, min(10, len(plan.jobs) // 3)), constant_liar=True
    )
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=0)
              if plan.prune else optuna.pruners.NopPruner())  # fmt: skip
    return sampler, pruner


def _slug(text: str, limit: int = 80) -> str:
    keep = "".join(c if c.isalnum() or c in "._=,+-" else "_" for c in text.replace(" ", "_"))
    return keep[:limit]


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    tmp.replace(path)


def trial_record(t: FrozenTrial, study_name: str, storage: str) -> dict[str, Any]:
    """trial.json: the study's view of one attempt, beside its run."""
    a = t.user_attrs
    return {
        "number": t.number, "key": a.get("key"), "params": a.get("params", {}),
        "state": t.state.name, "outcome": a.get("outcome"),
        "value": t.value if t.state == TrialState.COMPLETE else None,
        "metric": "final validation accuracy on the holdout (fraction)",
        "result": a.get("result"),
        "failure": a.get("failure") if t.state == TrialState.FAIL else None,
        "worker": {"host": a.get("host"), "pid": a.get("pid")},
        "started": t.datetime_start, "finished": t.datetime_complete,
        "study": study_name, "storage": redact(storage),
    }  # fmt: skip


def mark_stale(plan: SweepPlan, trials: list[FrozenTrial]) -> None:
    """Say in their trial.json that these attempts failed (their directories are not results)."""
    for t in trials:
        rel = t.user_attrs.get("run_dir")
        if rel and (plan.sweep_dir / rel).is_dir():
            _write_json(plan.sweep_dir / rel / "trial.json",
                        trial_record(t, plan.study_name, plan.storage_url))  # fmt: skip


class Worker:
    """Claims and runs trials until none is left for this command's jobs."""

    def __init__(self, plan: SweepPlan, data_cache: dict[tuple, CIFAR10] | None = None):
        self.plan = plan
        self.storage = open_storage(plan.storage_url, plan.heartbeat_s)
        sampler, pruner = _sampler_and_pruner(plan)
        self.study = open_study(self.storage, plan.study_name, plan.spec(), sampler, pruner)
        self.jobs = {j.key: j for j in plan.jobs}
        self.data_cache = data_cache if data_cache is not None else {}

    def data_for(self, cfg: TrainConfig) -> CIFAR10:
        key = (cfg.data_dir, cfg.holdout, cfg.train_limit)
        if key not in self.data_cache:
            self.data_cache[key] = load_cifar10(cfg.data_dir, holdout=cfg.holdout,
                                                train_limit=cfg.train_limit)  # fmt: skip
        return self.data_cache[key]

    def run(self, max_trials: int | None = None) -> int:
        """Run trials; returns how many this worker ran."""
        done = 0
        while max_trials is None or done < max_trials:
            with file_lock(self.plan.sweep_dir / ".lock"):
                stale = reconcile(self.study, self.storage, self.plan.jobs, self.plan.started)
            mark_stale(self.plan, stale)
            t = claim(self.study, self.storage, self.plan.keys)
            if t is None:
                break
            with Heartbeat(self.storage, t._trial_id):
                self.run_trial(t)
            done += 1
        return done

    def run_trial(self, t: FrozenTrial) -> None:
        plan, storage, tid = self.plan, self.storage, t._trial_id
        owner = owner_of(self.study, t)
        if owner is not None:  # enqueued twice from two machines: trial `owner` has the job
            fail_trial(storage, t, "duplicate", f"trial {owner} runs the same job")
            return
        trial = optuna.Trial(self.study, tid)
        job = self.jobs[t.user_attrs["key"]]
        overrides, params = dict(job.overrides), dict(job.params)
        try:
            for r in plan.ranges:
                if r.integer:
                    value = trial.suggest_int(r.name, int(r.low), int(r.high), log=r.log)
                else:
                    value = trial.suggest_float(r.name, r.low, r.high, log=r.log)
                overrides[r.dest], params[r.name] = value, value
            if plan.ranges:
                storage.set_trial_user_attr(tid, "params", params)
            label = " ".join(f"{k}={canon(v) if not isinstance(v, float) else f'{v:.4g}'}"
                             for k, v in params.items())  # fmt: skip
            rel = f"trials/{t.number:04d}" + (f"-{_slug(label)}" if label else "")
            storage.set_trial_user_attr(tid, "run_dir", rel)
            cfg = trial_config(plan.base_args, overrides)
            cfg = dataclasses.replace(cfg, threads=plan.threads, name=Path(rel).name,
                                      runs_dir=str(plan.sweep_dir / "trials"))  # fmt: skip
            run_dir = RunDir(plan.sweep_dir / rel)
            _write_json(run_dir.path / "trial.json",
                        trial_record(storage.get_trial(tid), plan.study_name, plan.storage_url))

            def on_validation(step: int, row: dict[str, Any]) -> None:
                trial.report(row["acc"], step)
                if plan.mode == "search" and plan.prune and trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at step {step}")

            summary = train(cfg, run_dir, data=self.data_for(cfg), on_validation=on_validation,
                            quiet=True)  # fmt: skip
            storage.set_trial_user_attr(tid, "result", {
                "final_acc": summary["final_val_acc"], "best_acc": summary["best_val_acc"],
                "train_acc": summary["final_train_acc"], "seconds": summary["total_seconds"],
                "split": summary["val_split"], "val_images": summary["val_images"],
            })  # fmt: skip
            self.study.tell(trial, summary["final_val_acc"])
        except optuna.TrialPruned:
            self.study.tell(trial, state=TrialState.PRUNED)
        except FloatingPointError as e:  # a diverged run is a result for its values, not a crash
            storage.set_trial_user_attr(tid, "outcome", "diverged")
            storage.set_trial_user_attr(tid, "failure_message", str(e))
            self.study.tell(trial, state=TrialState.PRUNED)
        except KeyboardInterrupt:
            fail_trial(storage, t, "interrupted", "interrupted (Ctrl-C)")
            raise
        except (ConfigError, DataError, RunDirError) as e:  # the same for every trial: stop
            fail_trial(storage, t, "error", str(e))
            raise
        except Exception as e:  # recorded in the study; the sweep goes on
            fail_trial(storage, t, "error", f"{type(e).__name__}: {e}".splitlines()[0])
            print(f"reglab: trial {t.number} ({job.key}) failed: {type(e).__name__}: {e}",
                  file=sys.stderr, flush=True)  # fmt: skip
        finally:
            rel = storage.get_trial(tid).user_attrs.get("run_dir")
            if rel and (plan.sweep_dir / rel).is_dir():
                _write_json(plan.sweep_dir / rel / "trial.json",
                            trial_record(storage.get_trial(tid), plan.study_name,
                                         plan.storage_url))  # fmt: skip


def train(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """reglab.training.train without the in-process model object (imported when first used)."""
    from reglab.training import train as train_run

    summary = train_run(*args, **kwargs)
    summary.pop("model_object", None)
    return summary


def _worker_process(plan: SweepPlan) -> None:
    """Entry point of a worker process (--workers N): trials quiet, errors as one line."""
    from reglab.sweeps.study import SweepError as _SweepError

    try:
        Worker(plan).run()
    except KeyboardInterrupt:
        sys.exit(130)
    except (ConfigError, DataError, RunDirError, _SweepError) as e:
        print(f"reglab: error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)


# --------------------------------------------------------------------------------------------
# What the study says: counts, results, the live view.


@dataclass
class Progress:
    total: int
    done: int  # jobs with a COMPLETE or PRUNED trial
    running: int
    failed: int  # jobs whose last attempt failed and that nothing is retrying
    ranked: list[SettingStats]
    pruned: int = 0


def results_of(trials: list[FrozenTrial], keys: set[str]) -> list[Result]:
    """The finished (COMPLETE) trials of ``keys`` as selection results."""
    out = []
    for t in trials:
        a = t.user_attrs
        if t.state != TrialState.COMPLETE or a.get("key") not in keys or "result" not in a:
            continue
        r, params = a["result"], a.get("params", {})
        out.append(Result(
            setting=setting_label(params), values={k: v for k, v in params.items() if k != "seed"},
            acc=r["final_acc"], split=r["split"], seed=params.get("seed"),
            best_acc=r.get("best_acc"), train_acc=r.get("train_acc"), seconds=r.get("seconds"),
            name=a["key"], val_images=r.get("val_images"),
        ))  # fmt: skip
    return out


def progress_of(trials: list[FrozenTrial], keys: set[str]) -> Progress:
    by_key: dict[str, list[FrozenTrial]] = {}
    for t in trials:
        if t.user_attrs.get("key") in keys and not is_duplicate(t):
            by_key.setdefault(t.user_attrs["key"], []).append(t)
    done = running = failed = pruned = 0
    for ts in by_key.values():
        states = {t.state for t in ts}
        if states & {TrialState.COMPLETE, TrialState.PRUNED}:
            done += 1
            pruned += TrialState.COMPLETE not in states
        elif TrialState.RUNNING in states:
            running += 1
        elif TrialState.FAIL in states and TrialState.WAITING not in states:
            failed += 1
    return Progress(len(keys), done, running, failed, rank(results_of(trials, keys)), pruned)


def _status_text(p: Progress) -> str:
    text = f"{p.done}/{p.total} done, {p.running} running, {p.failed} failed"
    if p.pruned:
        text += f" ({p.pruned} pruned)"
    if p.ranked:
        b = p.ranked[0]
        text += f" | best {b.split} acc {describe(b)}: {b.setting}"
    return text


def trial_line(t: FrozenTrial) -> str:
    """One line for a finished trial, naming the split of each number."""
    a = t.user_attrs
    head = f"trial {t.number} {a.get('key', '?')}"
    drawn = {k: v for k, v in a.get("params", {}).items() if isinstance(v, float)}
    if drawn and a.get("key", "").startswith("search-"):
        head += " (" + " ".join(f"{k}={v:.4g}" for k, v in drawn.items()) + ")"
    if t.state == TrialState.COMPLETE:
        r = a.get("result", {})
        return (f"{head}: {r.get('split', 'holdout')} acc {pct(r.get('final_acc'))} final, "
                f"{pct(r.get('best_acc'))} best; train acc {pct(r.get('train_acc'))}; "
                f"{r.get('seconds', 0):.0f} s")  # fmt: skip
    if t.state == TrialState.PRUNED:
        if a.get("outcome") == "diverged":
            return f"{head}: diverged ({a.get('failure_message', 'loss not finite')})"
        last = max(t.intermediate_values.items(), default=None)
        at = f" at step {last[0]} (holdout acc {pct(last[1])})" if last else ""
        return f"{head}: pruned{at}"
    f = failure(t)
    return f"{head}: failed ({f['kind']}: {f['message']})"


class LiveView:
    """Trials done / running / failed and the best so far, polled from the study every
    ``interval`` seconds: a tqdm bar on a terminal, else one line per finished trial."""

    def __init__(self, plan: SweepPlan, out: IO[str] | None = None, interval: float = 2.0):
        self.plan, self.interval = plan, interval
        self.out = out or sys.stdout
        self.tty = sys.stderr.isatty()
        self.study = optuna.load_study(study_name=plan.study_name,
                                       storage=open_storage(plan.storage_url, None))  # fmt: skip
        self.seen: set[int] = set()
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True, name="reglab-live-view")
        self.bar = None
        self.progress: Progress | None = None

    def _poll(self, announce: bool = True) -> Progress:
        trials = self.study.get_trials(deepcopy=False)
        p = progress_of(trials, self.plan.keys)
        for t in trials:
            if t.state.is_finished() and t.number not in self.seen:
                self.seen.add(t.number)
                if announce and t.user_attrs.get("key") in self.plan.keys and not is_duplicate(t):
                    line = f"[sweep] {trial_line(t)} | {_status_text(p)}"
                    if self.bar is not None:
                        self.bar.write(line, file=sys.stderr)
                    else:
                        print(line, file=self.out, flush=True)
        if self.bar is not None:
            self.bar.n = p.done
            self.bar.set_postfix_str(_status_text(p).split(" done, ", 1)[1], refresh=True)
        self.progress = p
        return p

    def _loop(self) -> None:
        while not self.stop_event.wait(self.interval):
            with contextlib.suppress(Exception):  # a view never stops the sweep; next poll
                self._poll()

    def first_look(self) -> Progress:
        """The study as this command finds it (its finished trials are not announced)."""
        return self._poll(announce=False)

    def start(self) -> None:
        p = self.progress or self.first_look()
        if self.tty:
            from tqdm import tqdm

            self.bar = tqdm(total=p.total, initial=p.done, unit="trial", dynamic_ncols=True,
                            desc="sweep")  # fmt: skip
        self.thread.start()

    def stop(self) -> Progress:
        self.stop_event.set()
        if self.thread.is_alive():
            self.thread.join()
        p = self._poll()
        if self.bar is not None:
            self.bar.close()
        return p


# --------------------------------------------------------------------------------------------
# The command.


def check_test_set(cfg: TrainConfig) -> None:
    """Fail now, not after the sweep, when --final has no test set to evaluate on."""
    try:
        load_cifar10(cfg.data_dir, holdout=0, train_limit=1)
    except DataError as e:
        text = str(e)
        if text.startswith("no test set"):
            where = text.split(":", 1)[0]
            raise DataError(
                f"--final evaluates the chosen setting once on the official test set, and there "
                f"is {where}: add the official test_batch.bin there, or run the sweep without "
                "--final (its holdout results stand on their own)"
            ) from None
        raise


def _write_sweep_yaml(plan: SweepPlan) -> None:
    doc = {
        "command": plan.command,
        "mode": plan.mode,
        "axes": {a.name: list(a.tokens) for a in plan.axes} or None,
        "search": [r.describe() for r in plan.ranges] or None,
        "trials": len(plan.jobs),
        "selection": "mean final holdout accuracy over seeds (summary final_val_acc)",
        "storage": redact(plan.storage_url),
        "study": plan.study_name,
        "started": plan.started.isoformat(timespec="seconds"),
        "base": plan.base.to_dict(),
    }
    (plan.sweep_dir / "sweep.yaml").write_text(yaml.safe_dump(json.loads(json.dumps(doc,
                                               default=str)), sort_keys=False))  # fmt: skip


def _run_workers(plan: SweepPlan) -> list[int]:
    """--workers N: N processes (spawned: no forked torch state), exit codes in order."""
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_worker_process, args=(plan,), name=f"reglab-worker-{i}")
             for i in range(plan.workers)]  # fmt: skip
    for p in procs:
        p.start()
        time.sleep(0.5)  # stagger the first claims (and torch imports) a little
    try:
        for p in procs:
            p.join()
    except KeyboardInterrupt:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()
        raise
    return [p.exitcode or 0 for p in procs]


def print_ranking(progress: Progress, say: Callable[[str], None]) -> None:
    if not progress.ranked:
        return
    split = progress.ranked[0].split
    say(f"settings by mean final {split} accuracy (train acc: running accuracy of the last log "
        "interval; gap = train - " + split + "):")  # fmt: skip
    rows = [("setting", f"{split} acc (final)", f"{split} acc (best)", "gap", "s / run")]
    for s in progress.ranked:
        gap = f"{100 * s.gap_mean:+.2f}" if s.gap_mean is not None else "n/a"
        secs = f"{s.seconds_mean:.0f}" if s.seconds_mean is not None else "n/a"
        rows.append((s.setting, describe(s), pct(s.best_mean), gap, secs))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        say("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    rec = recommend(progress.ranked)
    if rec is not None:
        say(rec.text)


def run_sweep(plan: SweepPlan, final: bool = False, out: IO[str] | None = None) -> int:
    """Run (or resume) the sweep, print the ranking, and with ``final`` retrain and test the
    chosen setting. Returns the exit status: 0, or 1 when trials failed."""
    out = out or sys.stdout

    def say(line: str) -> None:
        print(line, file=out, flush=True)

    plan.sweep_dir.mkdir(parents=True, exist_ok=True)
    (plan.sweep_dir / "trials").mkdir(exist_ok=True)
    storage = open_storage(plan.storage_url, plan.heartbeat_s)
    sampler, pruner = _sampler_and_pruner(plan)
    study = open_study(storage, plan.study_name, plan.spec(), sampler, pruner)
    if not study.get_trials(deepcopy=False) and any((plan.sweep_dir / "trials").iterdir()):
        raise SweepError(
            f"{plan.sweep_dir}/trials holds runs, but study {plan.study_name!r} in "
            f"{redact(plan.storage_url)} has no trials (a lost study.db, or another --storage / "
            "--study-name): use a new --dir, or the storage and study these trials belong to"
        )
    _write_sweep_yaml(plan)
    if final:
        check_test_set(plan.base)
    # the data once here: errors before any worker starts, and reused by an in-process worker
    cache: dict[tuple, CIFAR10] = {}
    b = plan.base
    if plan.workers == 1:
        cache[(b.data_dir, b.holdout, b.train_limit)] = load_cifar10(
            b.data_dir, holdout=b.holdout, train_limit=b.train_limit)  # fmt: skip
    else:
        load_cifar10(b.data_dir, holdout=b.holdout, train_limit=1)

    view = LiveView(plan, out)
    p = view.first_look()
    what = (f"grid of {' x '.join(f'{len(a.values)} {a.name}' for a in plan.axes)}"
            if plan.mode == "grid" else
            f"search of {', '.join(r.describe() for r in plan.ranges)}")  # fmt: skip
    say(f"[sweep] {plan.sweep_dir}: {what} = {p.total} trials, {p.done} done already; study "
        f"{plan.study_name!r} in {redact(plan.storage_url)}; {plan.workers} worker(s) x "
        f"{plan.threads} thread(s); selection on the holdout ({plan.base.holdout:,} "
        "images)")  # fmt: skip
    codes: list[int] = []
    view.start()
    try:
        if plan.workers == 1:
            Worker(plan, cache).run()
        else:
            codes = _run_workers(plan)
    finally:
        p = view.stop()
    say(f"[sweep] {_status_text(p)}")
    print_ranking(p, say)
    if p.done < p.total:
        if p.running:
            say(f"[sweep] {p.running} trial(s) still running in other workers")
        if p.failed:
            say(f"[sweep] {p.failed} trial(s) failed (see trials/*/trial.json); run the same "
                "command again to retry them")  # fmt: skip
    if any(c not in (0, None) for c in codes):
        say(f"[sweep] worker exit codes: {codes}")
    say(f"[sweep] report: reglab report {plan.sweep_dir}")
    if final:
        if p.done < p.total:
            raise SweepError(
                f"--final needs a finished sweep ({p.done}/{p.total} trials done, {p.running} "
                f"running, {p.failed} failed): run the command again when they are done"
            )
        if not p.ranked:
            raise SweepError("--final: no trial finished with a result (all pruned or diverged)")
        run_final(plan, p.ranked[0], say)
    return 1 if p.failed else 0


def run_final(plan: SweepPlan, best: SettingStats, say: Callable[[str], None]) -> dict[str, Any]:
    """Retrain ``best`` on all training images (holdout 0, the config's seed) and evaluate it
    once on the test set, in SWEEP/final; an existing final run of the same setting is reused,
    one of another setting is refused (testing two settings is selecting on the test set)."""
    path = plan.sweep_dir / "final"
    info_path = path / "final.json"
    if info_path.is_file() and (path / "summary.json").is_file():
        info = json.loads(info_path.read_text())
        if info.get("setting") != best.setting:
            raise SweepError(
                f"{path} holds the test result of {info.get('setting')!r}, but the holdout now "
                f"chooses {best.setting!r}: testing a second setting is selecting on the test "
                f"set; if that is really meant, move {path} away first"
            )
        say(f"[final] already evaluated: {info['setting']}: test acc {pct(info['test']['acc'])} "
            f"(test set, {info['test']['images']:,} images, evaluated once) in {path}")  # fmt: skip
        return info
    overrides: dict[str, Any] = {}
    key = best.runs[0].name
    job = next((j for j in plan.jobs if j.key == key), None)
    if job is not None:
        overrides = {d: v for d, v in job.overrides.items() if d != "seed"}
    for r in plan.ranges:
        overrides[r.dest] = best.values[r.name]
    cfg = trial_config(plan.base_args, overrides)
    cfg = dataclasses.replace(cfg, holdout=0, val_every=FINAL_VAL_EVERY,
                              threads=plan.base.threads or cpu_cores(), name="final",
                              runs_dir=str(plan.sweep_dir))  # fmt: skip
    if path.exists() and any(path.iterdir()):
        say(f"[final] replacing the unfinished final run in {path}")
    say(f"[final] retraining {best.setting} (chosen on the holdout: {describe(best)}) with "
        f"holdout 0 (all training images), seed {cfg.seed}; the test set is evaluated once, "
        "at the end")  # fmt: skip
    data = load_cifar10(cfg.data_dir, holdout=0, train_limit=cfg.train_limit)
    summary = train(cfg, RunDir(path, overwrite=True), data=data, quiet=True)
    if summary["val_split"] != "test":  # the loader said test; anything else is a bug here
        raise SweepError(f"--final validated on {summary['val_split']}, not the test set")
    info = {
        "setting": best.setting, "values": best.values,
        "chosen_by": "mean final holdout accuracy over seeds",
        "holdout": {"mean": best.mean, "std": best.std, "seeds": best.n,
                    "images": best.val_images},
        "test": {"acc": summary["final_val_acc"], "loss": summary["final_val_loss"],
                 "images": summary["val_images"]},
        "train_images": len(data.train_images), "seconds": summary["total_seconds"],
        "config": cfg.to_dict(),
    }  # fmt: skip
    _write_json(info_path, info)
    say(f"[final] {best.setting}: test acc {pct(summary['final_val_acc'])} (official test set, "
        f"{summary['val_images']:,} images, evaluated once; holdout acc was {describe(best)}) "
        f"in {path}")  # fmt: skip
    return info
