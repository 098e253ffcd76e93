"""The Optuna study behind a sweep: storage, claiming trials, heartbeats, and dead workers.

Every trial is first a WAITING trial in the study, enqueued with its job's key, then claimed by
exactly one worker (the WAITING -> RUNNING change is atomic in the database, as in Optuna's own
``Study.ask``), run, and told COMPLETE (value: the final holdout accuracy), PRUNED (stopped by
the pruner, or diverged) or FAIL. A worker reconciles the study before each claim:

* a RUNNING trial whose heartbeat is older than the grace period is failed (Optuna's
  ``fail_stale_trials``): its worker died on any machine sharing the storage;
* a RUNNING trial claimed on this machine by a process that no longer exists is failed at once
  (no need to wait for the grace period when a sweep is restarted after a crash or a kill);
* every job with no COMPLETE, PRUNED, RUNNING or WAITING trial is enqueued (again): killed and
  crashed trials are run again, finished ones never. A trial that raised an error in this
  command is left for the next run of the command (a bug would otherwise loop).

Enqueueing happens under a file lock in the sweep directory, so workers on one machine never
enqueue a job twice; workers on several machines may, and then the trial with the lower number
owns the job and the other is failed as a duplicate as soon as it is claimed.

Trial user attributes (JSON):
    key, params      the job: "l2=0.0001 seed=0" and {"l2": 0.0001, "seed": 0}
    host, pid, pid_start   the process that claimed the trial (to spot a dead one on this host)
    run_dir          the trial's run directory, relative to the sweep directory
    failure          {"kind": "error" | "interrupted" | "died" | "duplicate", "message": ...}; a
                     FAIL trial without it was failed by a stale heartbeat
    outcome          "diverged" for a PRUNED trial whose loss became inf or nan
    result           final/best holdout accuracy, final train accuracy, seconds
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from reglab.sweeps.space import Job

HEARTBEAT_S = 30  # seconds between heartbeats of a running trial
GRACE_INTERVALS = 4  # a trial silent for 4 heartbeat intervals is stale (its worker is dead)
SQLITE_TIMEOUT_S = 120  # how long a SQLite writer waits for the lock before failing

FINISHED_OK = (TrialState.COMPLETE, TrialState.PRUNED)
ACTIVE = (TrialState.RUNNING, TrialState.WAITING)

optuna.logging.set_verbosity(optuna.logging.WARNING)


class SweepError(ValueError):
    """A sweep that cannot go on as asked; the message is one line naming the fix."""


def default_storage(sweep_dir: str | Path) -> str:
    """The embedded choice: an SQLite file in the sweep directory."""
    return f"sqlite:///{(Path(sweep_dir) / 'study.db').absolute()}"


def redact(url: str) -> str:
    """``url`` with its password hidden, for logs and files."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy knows; say nothing more than the scheme
        return url.split("://", 1)[0] + "://..."


def open_storage(url: str, heartbeat_s: int | None = HEARTBEAT_S) -> RDBStorage:
    """An RDBStorage for any SQLAlchemy URL, with heartbeats (``heartbeat_s`` None: none, for
    read-only views). SQLite writers wait up to SQLITE_TIMEOUT_S for the file lock."""
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}}
    if heartbeat_s is not None:
        kwargs["heartbeat_interval"] = heartbeat_s
        kwargs["grace_period"] = GRACE_INTERVALS * heartbeat_s
    last: Exception | None = None
    for attempt in range(5):  # two processes creating the same new database may collide once
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return RDBStorage(url, **kwargs)
        except Exception as e:  # sqlalchemy's OperationalError, e.g. "table already exists"
            if "unable to open database" in str(e) or "No module named" in str(e):
                break
            last = e
            time.sleep(0.2 * (attempt + 1))
    raise SweepError(f"cannot open the study storage {redact(url)} ({_first_line(last)}): check "
                     "--storage")  # fmt: skip


def _first_line(e: BaseException | None) -> str:
    return str(e).strip().splitlines()[0] if e is not None and str(e).strip() else repr(e)


def open_study(
    storage: RDBStorage,
    name: str,
    spec: dict[str, Any],
    sampler: optuna.samplers.BaseSampler | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
) -> optuna.Study:
    """Create or load the study ``name``; refuse one made for a different sweep (``spec``: what
    must match for two commands to be parts of one sweep, stored in the study's user attributes).
    """
    study = optuna.create_study(
        storage=storage, study_name=name, direction="maximize", load_if_exists=True,
        sampler=sampler, pruner=pruner,
    )  # fmt: skip
    stored = study.user_attrs.get("reglab_spec")
    if stored is None:
        study.set_user_attr("reglab_spec", spec)
    elif stored != spec:
        diff = [k for k in sorted(set(stored) | set(spec)) if stored.get(k) != spec.get(k)]
        details = []
        for k in diff:
            if k == "base" and isinstance(stored.get(k), dict) and isinstance(spec.get(k), dict):
                a, b = stored[k], spec[k]
                fields = [f for f in sorted(set(a) | set(b)) if a.get(f) != b.get(f)]
                details += [f"{f}: study {a.get(f)!r}, now {b.get(f)!r}" for f in fields[:3]]
            else:
                details.append(f"{k}: study {stored.get(k)!r}, now {spec.get(k)!r}")
        raise SweepError(
            f"study {name!r} in {redact(storage.url)} belongs to a different sweep "
            f"({'; '.join(details)}): use another --dir or --study-name for it"
        )
    return study


def machine_id() -> str:
    """This machine: host name and boot id (pids are only comparable within one boot)."""
    boot = ""
    with contextlib.suppress(OSError):
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    return f"{socket.gethostname()}/{boot}"


def process_start(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks since boot (Linux), to tell a pid that
    was reused from the process that held it; None where /proc does not say."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22, counted after the command name


def process_alive(pid: int, start: str | None) -> bool:
    """True if process ``pid`` exists and, when ``start`` is known, is the same process."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        pass
    now = process_start(pid)
    return start is None or now is None or now == start


def failure(trial: FrozenTrial) -> dict[str, str]:
    """The ``failure`` attribute of a FAIL trial; stale heartbeats left none."""
    return trial.user_attrs.get("failure") or {"kind": "stale", "message": "heartbeat stopped"}


def is_duplicate(trial: FrozenTrial) -> bool:
    return trial.state == TrialState.FAIL and failure(trial)["kind"] == "duplicate"


def fail_trial(storage: RDBStorage, trial: FrozenTrial, kind: str, message: str) -> bool:
    """Mark a RUNNING or WAITING trial FAIL with a reason; False if it had finished already."""
    try:
        storage.set_trial_user_attr(trial._trial_id, "failure", {"kind": kind, "message": message})
        return storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    except UpdateFinishedTrialError:
        return False


def reconcile(
    study: optuna.Study, storage: RDBStorage, jobs: Sequence[Job], since: datetime
) -> list[FrozenTrial]:
    """Fail the trials of dead workers and enqueue every job that needs a run (see the module
    docstring). Returns the trials it failed (their run directories are now stale)."""
    failed: list[FrozenTrial] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
        optuna.storages.fail_stale_trials(study)
    trials = study.get_trials(deepcopy=False)
    failed += [t for t in trials if t.number in before and t.state == TrialState.FAIL
               and "failure" not in t.user_attrs]  # fmt: skip
    me = machine_id()
    grace = GRACE_INTERVALS * (storage.get_heartbeat_interval() or HEARTBEAT_S)
    for t in trials:
        a = t.user_attrs
        if t.state != TrialState.RUNNING:
            continue
        message = None
        if a.get("host") == me and "pid" in a and a["pid"] != os.getpid():
            if not process_alive(a["pid"], a.get("pid_start")):
                message = f"its worker (pid {a['pid']} on this machine) is gone"
        # a worker writes its pid right after the claim; one that never did died then
        elif "pid" not in a and t.datetime_start is not None and (
            (datetime.now() - t.datetime_start).total_seconds() > grace
        ):
            message = "its worker died as it claimed the trial"
        if message is not None and fail_trial(storage, t, "died", message):
            failed.append(storage.get_trial(t._trial_id))
    if failed:
        trials = study.get_trials(deepcopy=False)

    by_key: dict[str, list[FrozenTrial]] = {}
    for t in trials:
        if "key" in t.user_attrs and not is_duplicate(t):
            by_key.setdefault(t.user_attrs["key"], []).append(t)
    for job in jobs:
        mine = by_key.get(job.key, [])
        if any(t.state in FINISHED_OK + ACTIVE for t in mine):
            continue
        if any(failure(t)["kind"] in ("error", "interrupted") and t.datetime_complete is not None
               and t.datetime_complete >= since for t in mine):  # fmt: skip
            continue  # failed in this command: retried when the command is run again
        # a search trial is retried with the values it had drawn
        fixed = next((t.params for t in reversed(mine) if t.params), {})
        study.enqueue_trial(fixed, user_attrs={"key": job.key, "params": job.params})
    return failed


def claim(study: optuna.Study, storage: RDBStorage, keys: set[str]) -> FrozenTrial | None:
    """Take the lowest-numbered WAITING trial of one of ``keys`` (RUNNING from now on, this
    process's); None when there is none left."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        if t.user_attrs.get("key") not in keys:
            continue
        try:
            if not storage.set_trial_state_values(t._trial_id, TrialState.RUNNING):
                continue  # another worker took it first
        except UpdateFinishedTrialError:
            continue
        if storage.get_heartbeat_interval() is not None:  # alive from the first moment
            storage.record_heartbeat(t._trial_id)
        pid = os.getpid()
        for k, v in (("host", machine_id()), ("pid", pid), ("pid_start", process_start(pid))):
            storage.set_trial_user_attr(t._trial_id, k, v)
        return storage.get_trial(t._trial_id)
    return None


def owner_of(study: optuna.Study, trial: FrozenTrial) -> int | None:
    """The number of an earlier trial that owns ``trial``'s job (finished well, running or
    waiting), or None if ``trial`` is the job's owner."""
    key = trial.user_attrs.get("key")
    for t in study.get_trials(deepcopy=False):
        if (t.number < trial.number and t.user_attrs.get("key") == key
                and t.state in FINISHED_OK + ACTIVE):  # fmt: skip
            return t.number
    return None


class Heartbeat:
    """Records the trial's heartbeat every ``storage.heartbeat_interval`` seconds in a thread,
    from the claim until the trial is told; without it the trial looks dead after the grace."""

    def __init__(self, storage: RDBStorage, trial_id: int):
        self.storage, self.trial_id = storage, trial_id
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name="reglab-heartbeat")

    def _run(self) -> None:
        interval = self.storage.get_heartbeat_interval()
        while not self.stop.wait(interval):
            with contextlib.suppress(Exception):  # a missed beat is retried at the next one
                self.storage.record_heartbeat(self.trial_id)

    def __enter__(self) -> Heartbeat:
        if self.storage.get_heartbeat_interval() is not None:
            self.storage.record_heartbeat(self.trial_id)
            self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join()


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` between processes of this machine (no-op without fcntl)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: duplicates are then resolved by owner_of
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
