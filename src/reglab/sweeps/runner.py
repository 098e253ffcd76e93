"""Running a sweep: the request, its checks, the study's queue, the workers, the ranking, --final.

    SWEEP/
        sweep.yaml        the command, its axes or ranges, storage and study (rewritten by each run)
        study.db          the Optuna study (SQLite; absent when --storage names another database)
        trials/KEY/       one ordinary run directory per job (config.yaml, metrics.jsonl,
                          checkpoints/, summary.json) and trial.json (the latest attempt's number,
                          every attempt's number, key, params, state, worker, failure). Every
                          attempt of a job runs here: a killed or failed attempt's checkpoint is
                          where the next attempt continues.
        final/            --final: the chosen setting retrained on all training images (holdout
                          0) and evaluated once on the test set; final.json says what and how.

Selection uses the holdout only: a config that validates on the test set is refused, and the
test set is read once, by --final, for the setting the holdout chose.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import re
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from reglab.config import ConfigError, TrainConfig, build_config, load_config_file, setting_label
from reglab.data import DataError, load_cifar10
from reglab.sweeps.select import Result, SettingStats, describe, pct, rank, recommend
from reglab.sweeps.space import (
    Axis,
    experiment_values,
    grid_jobs,
    parse_grid,
    parse_search,
    search_jobs,
)
from reglab.sweeps.study import (
    HEARTBEAT_S,
    SweepError,
    by_job,
    default_storage,
    enqueue_jobs,
    failure,
    is_extra,
    load_study,
    open_study,
    redact,
)
from reglab.sweeps.worker import (
    DataCache,
    SweepSpec,
    Worker,
    default_trainer,
    pin_device,
    sampler_and_pruner,
    worker_process,
    write_json,
)
from reglab.training import RunDir, train

FINAL_VAL_EVERY = 10**9  # --final validates (on the test set) only after the last step


@dataclass
class SweepRequest:
    """A ``reglab sweep`` command, as ``reglab.cli.cmd_sweep`` passes it."""

    sweep_dir: Path
    settings: dict[str, Any] = field(default_factory=dict)  # raw flag values, by setting name
    config_file: str | None = None
    grid: list[str] = field(default_factory=list)
    seeds: int = 1
    trials: int | None = None
    search: list[str] = field(default_factory=list)
    prune: bool = True
    storage: str | None = None
    study_name: str | None = None
    workers: int = 1
    devices: str | None = None  # "cuda:0,cuda:1"; None: every visible GPU, else the CPU
    heartbeat: int | None = None  # None: the study's (HEARTBEAT_S for a new one)
    final: bool = False
    command: str = ""


@dataclass
class SweepPlan:
    """A checked request: what the workers run (``spec``) and how this command runs it."""

    spec: SweepSpec
    base: TrainConfig
    axes: list[Axis]
    devices: list[str]  # one per worker
    threads: int | None  # torch threads per worker
    final: bool
    command: str
    heartbeat: int | None  # as asked (None: the study's)
    started: datetime = field(default_factory=datetime.now)

    @property
    def workers(self) -> int:
        return len(self.devices)

    def study_spec(self) -> dict[str, Any]:
        """What two commands must share to be parts of one sweep (stored in the study): the
        kind of sweep, the experiment settings of the base config and the search ranges."""
        return json.loads(json.dumps({
            "mode": self.spec.mode, "base": experiment_values(self.base),
            "metric": "final_val_acc",
            "search": [r.describe() for r in self.spec.ranges] or None,
        }, default=str))  # fmt: skip


def cpu_cores() -> int:
    """Cores this process may use (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def parse_devices(text: str | None, workers: int) -> list[str]:
    """The device of each worker: ``text``'s devices in turn (default: every visible GPU, else
    the CPU). ``cpu:N`` is the CPU under another name (a stand-in for tests)."""
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if text is None:
        pool = [f"cuda:{i}" for i in range(gpus)] or ["cpu"]
    else:
        pool = [d.strip() for d in text.split(",") if d.strip()]
        if not pool:
            raise SweepError("--devices is empty; e.g. --devices cuda:0,cuda:1")
        for d in pool:
            m = re.fullmatch(r"(cpu|cuda)(?::(\d+))?", d)
            if m is None:
                raise SweepError(f"--devices {text}: {d!r} is not a device; write cpu, cuda or "
                                 "cuda:N")  # fmt: skip
            if m.group(1) == "cuda" and not gpus:
                raise SweepError(f"--devices {text}: no CUDA GPU is visible here; use cpu")
            if m.group(1) == "cuda" and m.group(2) is not None and int(m.group(2)) >= gpus:
                raise SweepError(f"--devices {text}: {d} does not exist ({gpus} GPU(s) visible: "
                                 f"cuda:0..cuda:{gpus - 1})")  # fmt: skip
    return [pool[i % len(pool)] for i in range(workers)]


def check_data_dir(data_dir: str | None) -> None:
    """An explicit --data-dir must exist: a typo should not start a download elsewhere."""
    if data_dir is not None and not Path(data_dir).expanduser().is_dir():
        raise ConfigError(
            f"data dir {data_dir} does not exist: fix --data-dir, or create the folder to let "
            "reglab download CIFAR-10 into it"
        )


def plan_sweep(request: SweepRequest) -> SweepPlan:
    """Check a request and turn it into a plan (ConfigError or SweepError, one line, for
    anything that would make the sweep wrong or unresumable). Writes nothing."""
    r = request
    if "name" in r.settings or "runs_dir" in r.settings:
        raise SweepError("--name and --runs-dir do not apply to a sweep: its trials are run "
                         "directories under SWEEP/trials (choose SWEEP with --dir)")  # fmt: skip
    if "device" in r.settings and r.devices is not None:
        raise SweepError("--device and --devices: a sweep's workers take their devices from "
                         "--devices; give only that")  # fmt: skip
    file_values = load_config_file(r.config_file) if r.config_file else None
    file_name = str(r.config_file)
    base = build_config(None, file_values, r.settings, file_name=file_name)
    check_data_dir(base.data_dir)
    if r.grid and r.trials:
        raise SweepError("--grid and --trials are two kinds of sweep; give one of them")
    if not r.grid and not r.trials:
        raise SweepError("say what to sweep: --grid AXIS=V1,V2,... (e.g. --grid l2=0,1e-4,1e-3) "
                         "or --trials N for a search")  # fmt: skip
    if r.workers < 1:
        raise SweepError(f"--workers must be >= 1 (got {r.workers})")
    if r.heartbeat is not None and r.heartbeat < 1:
        raise SweepError(f"--heartbeat must be >= 1 second (got {r.heartbeat})")
    axes: list[Axis] = []
    ranges = []
    if r.grid:
        if r.search:
            raise SweepError("--search gives the ranges of --trials, not of a --grid")
        axes = parse_grid(r.grid, r.seeds, base.seed)
        jobs = grid_jobs(axes)
        mode = "grid"
    else:
        if r.seeds != 1:
            raise SweepError("--seeds is for grids; a search spends its trials on new settings "
                             "(compare seeds later with a --grid of the chosen values)")
        ranges = parse_search(r.search)
        jobs = search_jobs(r.trials or 0)
        mode = "search"
    spec = SweepSpec(
        sweep_dir=Path(r.sweep_dir), settings=dict(r.settings), file_values=file_values,
        file_name=file_name, mode=mode, ranges=ranges, jobs=jobs,
        storage_url=r.storage or default_storage(r.sweep_dir),
        study_name=r.study_name or Path(r.sweep_dir).resolve().name,
        heartbeat_s=r.heartbeat or HEARTBEAT_S, prune=r.prune,
    )  # fmt: skip
    # every trial's config is checked now, not after hours of the others
    for job in jobs:
        cfg = spec.config(job.values)
        if cfg.holdout == 0:
            what = "this config" if base.holdout == 0 else f"trial {job.key}"
            raise SweepError(
                f"a sweep selects on a holdout, never on the test set, but {what} validates on "
                "the test set (holdout 0): pass --holdout N (e.g. --holdout 10000, as the quick "
                "preset does); --final evaluates the chosen setting once on the test set"
            )
    asked = r.devices
    if "device" in r.settings and base.device != "auto":  # --device: every worker on it
        asked = base.device
    devices = parse_devices(asked, r.workers)
    threads = base.threads if "threads" in r.settings else max(1, cpu_cores() // r.workers)
    return SweepPlan(spec=spec, base=base, axes=axes, devices=devices, threads=threads,
                     final=r.final, command=r.command, heartbeat=r.heartbeat)  # fmt: skip


# --------------------------------------------------------------------------------------------
# What the study says: results, progress, one line per trial, the live view.


@dataclass
class Progress:
    total: int
    done: int  # jobs with a COMPLETE or PRUNED trial
    running: int
    failed: int  # jobs whose latest attempt failed and that nothing runs or waits for
    ranked: list[SettingStats]
    pruned: int = 0
    trials: list[FrozenTrial] = field(default_factory=list, repr=False)


def results_of(trials: list[FrozenTrial], keys: set[str]) -> list[Result]:
    """One result per job of ``keys`` with a COMPLETE trial (its only one)."""
    out = []
    for key, ts in by_job(trials, keys).items():
        t = next((t for t in ts if t.state == TrialState.COMPLETE), None)
        if t is None or "result" not in t.user_attrs:
            continue
        r, params = t.user_attrs["result"], t.user_attrs.get("params", {})
        out.append(Result(
            setting=setting_label(params), values={k: v for k, v in params.items() if k != "seed"},
            acc=r["final_acc"], split=r["split"], seed=params.get("seed"),
            best_acc=r.get("best_acc"), train_acc=r.get("train_acc"), seconds=r.get("seconds"),
            name=key, val_images=r.get("val_images"),
        ))  # fmt: skip
    return out


def progress_of(trials: list[FrozenTrial], keys: set[str]) -> Progress:
    done = running = failed = pruned = 0
    for ts in by_job(trials, keys).values():
        states = {t.state for t in ts}
        if states & {TrialState.COMPLETE, TrialState.PRUNED}:
            done += 1
            pruned += TrialState.COMPLETE not in states
        elif TrialState.RUNNING in states:
            running += 1
        elif TrialState.FAIL in states and TrialState.WAITING not in states:
            failed += 1
    return Progress(len(keys), done, running, failed, rank(results_of(trials, keys)), pruned,
                    trials)  # fmt: skip


def status_text(p: Progress) -> str:
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
        resumed = f"; resumed at step {r['resumed_at'][-1]}" if r.get("resumed_at") else ""
        return (f"{head}: {r.get('split', 'holdout')} acc {pct(r.get('final_acc'))} final, "
                f"{pct(r.get('best_acc'))} best; train acc {pct(r.get('train_acc'))}; "
                f"{r.get('seconds', 0):.0f} s{resumed}")  # fmt: skip
    if t.state == TrialState.PRUNED:
        if a.get("outcome") == "diverged":
            return f"{head}: diverged ({a.get('failure_message', 'loss not finite')})"
        last = max(t.intermediate_values.items(), default=None)
        at = f" at step {last[0]} (holdout acc {pct(last[1])})" if last else ""
        return f"{head}: pruned{at}"
    f = failure(t)
    return f"{head}: failed ({f['kind']}: {f['message']})"


class LiveView:
    """Jobs done / running / failed and the best so far, polled from the study every
    ``interval`` seconds: a tqdm bar on a terminal, else one line per finished trial."""

    def __init__(self, plan: SweepPlan, out: IO[str] | None = None, interval: float = 2.0):
        self.plan, self.interval = plan, interval
        self.out = out or sys.stdout
        self.tty = sys.stderr.isatty()
        self.study = load_study(plan.spec.storage_url, plan.spec.study_name)
        self.seen: set[int] = set()
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True, name="reglab-live-view")
        self.bar: Any = None
        self.progress: Progress | None = None

    def poll(self, announce: bool = True) -> Progress:
        trials = self.study.get_trials(deepcopy=False)
        keys = self.plan.spec.keys
        p = progress_of(trials, keys)
        for t in trials:
            if t.state.is_finished() and t.number not in self.seen:
                self.seen.add(t.number)
                if announce and t.user_attrs.get("key") in keys and not is_extra(t):
                    line = f"[sweep] {trial_line(t)} | {status_text(p)}"
                    if self.bar is not None:
                        self.bar.write(line, file=sys.stderr)
                    else:
                        print(line, file=self.out, flush=True)
        if self.bar is not None:
            self.bar.n = p.done
            self.bar.set_postfix_str(status_text(p).split(" done, ", 1)[1], refresh=True)
        self.progress = p
        return p

    def loop(self) -> None:
        while not self.stop_event.wait(self.interval):
            with contextlib.suppress(Exception):  # a view never stops the sweep; next poll
                self.poll()

    def first_look(self) -> Progress:
        """The study as this command finds it (its finished trials are not announced)."""
        return self.poll(announce=False)

    def start(self) -> None:
        p = self.progress or self.first_look()
        if self.tty:
            from tqdm import tqdm

            self.bar = tqdm(total=p.total, initial=p.done, unit="job", dynamic_ncols=True,
                            desc="sweep")  # fmt: skip
        self.thread.start()

    def stop(self) -> Progress:
        self.stop_event.set()
        if self.thread.is_alive():
            self.thread.join()
        p = self.poll()
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


def redact_command(text: str) -> str:
    """``text`` with the password of any URL in it shown as ***."""
    return re.sub(r"(://[^\s:/@]*:)[^\s@]*@", r"\1***@", text)


def write_sweep_yaml(plan: SweepPlan) -> None:
    command = plan.command if plan.command.startswith("reglab") else f"reglab {plan.command}"
    spec = plan.spec
    doc = {
        "command": redact_command(command.strip()),
        "mode": spec.mode,
        "axes": {a.name: list(a.tokens) for a in plan.axes} or None,
        "search": [r.describe() for r in spec.ranges] or None,
        "trials": len(spec.jobs),
        "selection": "mean final holdout accuracy over seeds (summary final_val_acc)",
        "storage": redact(spec.storage_url),
        "study": spec.study_name,
        "heartbeat_s": spec.heartbeat_s,
        "workers": [{"device": d, "threads": plan.threads} for d in plan.devices],
        "started": plan.started.isoformat(timespec="seconds"),
        "base": plan.base.to_dict(),
    }
    text = yaml.safe_dump(json.loads(json.dumps(doc, default=str)), sort_keys=False)
    (spec.sweep_dir / "sweep.yaml").write_text(text)


def run_workers(plan: SweepPlan) -> list[int]:
    """--workers N: N spawned processes (no forked torch state), each on its device; their exit
    codes in order. They stop by themselves when this process dies."""
    ctx = multiprocessing.get_context("spawn")
    me = os.getpid()
    procs = [ctx.Process(target=worker_process, name=f"reglab-worker-{i}",
                         args=(plan.spec, i, device, plan.threads, me))
             for i, device in enumerate(plan.devices)]  # fmt: skip
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join()
    except KeyboardInterrupt:  # Ctrl-C reached the workers too; they fail their trials and stop
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()
                p.join(timeout=30)
            if p.is_alive():
                p.kill()
        raise
    return [p.exitcode if p.exitcode is not None else -1 for p in procs]


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


def prepare(plan: SweepPlan, say: Callable[[str], None]) -> optuna.Study:
    """Create or load the study, check it is this sweep's, and enqueue this command's jobs that
    need a run. Returns the study (read-only storage)."""
    spec = plan.spec
    spec.sweep_dir.mkdir(parents=True, exist_ok=True)
    trials_dir = spec.sweep_dir / "trials"
    trials_dir.mkdir(exist_ok=True)
    sampler, pruner = sampler_and_pruner(spec)
    study, spec.heartbeat_s = open_study(spec.storage_url, spec.study_name, plan.study_spec(),
                                         plan.heartbeat, sampler, pruner)  # fmt: skip
    if not by_job(study.get_trials(deepcopy=False)) and any(
        (d / "config.yaml").is_file() for d in trials_dir.iterdir()
    ):
        raise SweepError(
            f"{trials_dir} holds runs, but study {spec.study_name!r} in "
            f"{redact(spec.storage_url)} has no trials (a lost study.db, or another --storage / "
            "--study-name): use a new --dir, or the storage and study these trials belong to"
        )
    enqueue_jobs(study, spec.jobs)
    return study


def run_sweep(request: SweepRequest, out: IO[str] | None = None) -> int:
    """Run (or resume) the sweep, print the ranking, and with --final retrain and test the
    chosen setting. Returns the exit status: 0, or 1 when jobs failed."""
    out = out or sys.stdout

    def say(line: str) -> None:
        print(line, file=out, flush=True)

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    plan = plan_sweep(request)
    spec, b = plan.spec, plan.base
    if plan.final:
        check_test_set(b)
    # the data once here: errors before anything is written, and reused by an in-process worker
    cache = DataCache()
    if plan.workers == 1:
        cache(b)
    else:
        load_cifar10(b.data_dir, holdout=b.holdout, train_limit=1)
    prepare(plan, say)
    write_sweep_yaml(plan)

    view = LiveView(plan, out)
    p = view.first_look()
    what = (f"grid of {' x '.join(f'{len(a.values)} {a.name}' for a in plan.axes)}"
            if spec.mode == "grid" else
            f"search of {', '.join(r.describe() for r in spec.ranges)}")  # fmt: skip
    devices = ", ".join(sorted(set(plan.devices)))
    say(f"[sweep] {spec.sweep_dir}: {what} = {p.total} trials, {p.done} done already; study "
        f"{spec.study_name!r} in {redact(spec.storage_url)}; {plan.workers} worker(s) on "
        f"{devices} x {plan.threads} thread(s); selection on the holdout ({b.holdout:,} "
        "images)")  # fmt: skip
    codes: list[int] = []
    view.start()
    try:
        if plan.workers == 1:
            pin_device(plan.devices[0])
            Worker(spec, plan.devices[0], plan.threads, trainer=default_trainer(cache)).run()
        else:
            codes = run_workers(plan)
    finally:
        p = view.stop()
    say(f"[sweep] {status_text(p)}")
    print_ranking(p, say)
    if p.done < p.total:
        if p.running:
            say(f"[sweep] {p.running} trial(s) still running in other workers")
        if p.failed:
            say(f"[sweep] {p.failed} trial(s) failed (see trials/*/trial.json); run the same "
                "command again to retry them")  # fmt: skip
    if any(c != 0 for c in codes):
        say(f"[sweep] worker exit codes: {codes}")
    say(f"[sweep] report: reglab report {spec.sweep_dir}")
    if plan.final:
        if p.done < p.total:
            raise SweepError(
                f"--final needs a finished sweep ({p.done}/{p.total} trials done, {p.running} "
                f"running, {p.failed} failed): run the command again when they are done"
            )
        if not p.ranked:
            raise SweepError("--final: no trial finished with a result (all pruned or diverged)")
        run_final(plan, p.ranked[0], p.trials, say)
    return 1 if p.failed or any(c != 0 for c in codes) else 0


def run_final(
    plan: SweepPlan, best: SettingStats, trials: list[FrozenTrial], say: Callable[[str], None]
) -> dict[str, Any]:
    """Retrain ``best`` on all training images (holdout 0, the config's seed) and evaluate it
    once on the test set, in SWEEP/final; an existing final run of the same setting is reused,
    one of another setting is refused (testing two settings is selecting on the test set)."""
    spec = plan.spec
    path = spec.sweep_dir / "final"
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
    key = best.runs[0].name
    done = next(t for t in trials if t.user_attrs.get("key") == key
                and t.state == TrialState.COMPLETE)  # fmt: skip
    values = {k: v for k, v in done.user_attrs.get("values", {}).items() if k != "seed"}
    cfg = spec.config(values)
    cfg = cfg.replace(holdout=0, val_every=FINAL_VAL_EVERY, device=plan.devices[0],
                      threads=plan.base.threads or cpu_cores(), name="final",
                      runs_dir=str(spec.sweep_dir))  # fmt: skip
    if path.exists() and any(path.iterdir()):
        say(f"[final] replacing the unfinished final run in {path}")
    say(f"[final] retraining {best.setting} (chosen on the holdout: {describe(best)}) with "
        f"holdout 0 (all training images), seed {cfg.seed}; the test set is evaluated once, "
        "at the end")  # fmt: skip
    data = load_cifar10(cfg.data_dir, holdout=0, train_limit=cfg.train_limit)
    result = train(cfg, run_dir=RunDir(path, mode="overwrite"), data=data, quiet=True)
    if result.val_split != "test":  # the loader said test; anything else is a bug here
        raise SweepError(f"--final validated on {result.val_split}, not the test set")
    info = {
        "setting": best.setting, "values": best.values,
        "chosen_by": "mean final holdout accuracy over seeds",
        "holdout": {"mean": best.mean, "std": best.std, "seeds": best.n,
                    "images": best.val_images},
        "test": {"acc": result.final_val_acc, "loss": result.final_val_loss,
                 "images": result.val_images},
        "train_images": len(data.train_images), "seconds": result.total_seconds,
        "config": cfg.to_dict(),
    }  # fmt: skip
    write_json(info_path, info)
    say(f"[final] {best.setting}: test acc {pct(result.final_val_acc)} (official test set, "
        f"{result.val_images:,} images, evaluated once; holdout acc was {describe(best)}) "
        f"in {path}")  # fmt: skip
    return info
