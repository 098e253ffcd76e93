"""The Optuna study behind a sweep: storage, the study's identity, and the job queue.

Everything goes through Optuna's public API:

* Jobs are *enqueued trials* (``Study.enqueue_trial``) carrying the job in their user attributes
  (``key``, ``values``, ``params``). Each command enqueues, before its workers start, every job
  of its own that has no WAITING, RUNNING, COMPLETE or PRUNED trial: finished jobs are never
  repeated, a job whose trial failed is enqueued again by the *next* command (a trial that
  raised an error is not retried in a loop by the command it failed in).
* Workers take trials with ``Study.optimize(objective, n_trials=1)``: Optuna pops the oldest
  WAITING trial (an atomic WAITING -> RUNNING change in the database), records its heartbeat in
  a thread while it runs, and tells its state at the end.
* A trial whose heartbeat stops (its process was killed, its machine died) is failed after the
  grace period by ``optuna.storages.fail_stale_trials`` (run by Optuna at the start of every
  trial and by idle workers), and ``RetryHeartbeatStaleTrialCallback`` enqueues it again with
  the same user attributes and parameters; its run directory is keyed by the job, so the retry
  continues from the killed attempt's checkpoint.
* Two commands on two machines may enqueue the same job at the same moment. The job then has
  two trials; the *owner* of a job is its lowest-numbered trial that is not FAIL, and a worker
  that pops any other trial of the job ends it at once as FAIL ("duplicate", untrained). The
  owner is a function of the trials' states and numbers alone, both changed atomically by the
  storage, so two trials of one job are never trained at the same time (short of a worker that
  outlives its declared death, see docs/sweeps.md) and a job has at most one result: only its
  owner is told COMPLETE.

SQLite (the default storage, one machine): its driver runs a read and the write that follows
it in separate transactions, so two processes could both move one WAITING trial to RUNNING.
Storages opened here make every SQLite transaction ``BEGIN IMMEDIATE`` (SQLAlchemy's documented
recipe for serializable SQLite): transactions of the sweep's processes then run one at a time.
PostgreSQL locks the trial's row (``SELECT ... FOR UPDATE``) and needs nothing.

Trial user attributes (JSON):
    key, params, values  the job: "l2=0.0001 seed=0", {"l2": 0.0001, "seed": 0} (by flag) and
                         {"l2": 0.0001, "seed": 0} (by setting, what its config is built from)
    run_dir              the job's run directory, relative to the sweep directory
    worker               {"host", "pid", "device", "threads", "trial"} of the attempt (a retry
                         inherits its predecessor's until it starts: "trial" tells them apart)
    failure              {"kind": "error" | "interrupted" | "duplicate" | "surplus", "message"};
                         a FAIL trial without it was failed by a stale heartbeat
    outcome              "diverged" for a PRUNED trial whose loss became inf or nan
    result               final/best holdout accuracy, final train accuracy, seconds, split
"""

from __future__ import annotations

import inspect
import threading
import time
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from reglab.config import SETTINGS, with_defaults
from reglab.errors import ConfigError
from reglab.sweeps.space import Job, is_number, plain

HEARTBEAT_S = 30  # seconds between heartbeats of a running trial
GRACE_INTERVALS = 4  # a trial silent for 4 heartbeat intervals is stale (its worker is dead)
MAX_RETRY = 3  # stale retries of one trial within a command; the next command starts afresh
SQLITE_TIMEOUT_S = 120  # how long an SQLite transaction waits for the file's lock
SPEC_ATTR = "reglab_spec"  # study user attribute: what the sweep's commands must share
HEARTBEAT_ATTR = "reglab_heartbeat"  # study user attribute: the sweep's heartbeat interval

FINISHED_OK = (TrialState.COMPLETE, TrialState.PRUNED)
ACTIVE = (TrialState.RUNNING, TrialState.WAITING)


class SweepError(ConfigError):
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


def _first_line(e: BaseException | None) -> str:
    return str(e).strip().splitlines()[0] if e is not None and str(e).strip() else repr(e)


# --------------------------------------------------------------------------------------------
# Serializable SQLite (see the module docstring).

_SERIAL_URLS: set[str] = set()  # SQLite URLs whose transactions begin IMMEDIATE in this process
_opening = threading.local()  # set while a storage is being built in this thread
_listening = False


def _serialize_sqlite(url: str) -> None:
    """Make every later transaction on ``url`` (an SQLite URL) ``BEGIN IMMEDIATE``."""
    global _listening
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    if not _listening:

        def begin(conn: Any) -> None:
            # only the connections of storages opened here: their driver-level transaction
            # handling is off (isolation_level None); another engine on the same file is left be
            if (conn.engine.url.render_as_string(hide_password=False) in _SERIAL_URLS
                    and conn.connection.dbapi_connection.isolation_level is None
                    and not getattr(_opening, "on", False)):  # fmt: skip
                conn.exec_driver_sql("BEGIN IMMEDIATE")

        event.listen(Engine, "begin", begin)
        _listening = True
    _SERIAL_URLS.add(url)


def _retry_class() -> Any:
    """Optuna's callback class that enqueues a heartbeat-stale trial again (its public name in
    optuna >= 4.9, the older one before)."""
    cls = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)
    return cls if cls is not None else optuna.storages.RetryFailedTrialCallback


def _retry_callback() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.simplefilter("ignore", FutureWarning)
        return _retry_class()(max_retry=MAX_RETRY, inherit_intermediate_values=True)


def open_storage(url: str, heartbeat_s: int | None = None) -> RDBStorage:
    """An RDBStorage for any SQLAlchemy URL. With ``heartbeat_s``: heartbeats every so many
    seconds, stale after GRACE_INTERVALS of them, and stale trials enqueued again."""
    from sqlalchemy.engine import make_url

    kwargs: dict[str, Any] = {}
    sqlite = url.startswith("sqlite")
    if sqlite:  # the driver's own transaction handling off: BEGIN IMMEDIATE is emitted instead
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": SQLITE_TIMEOUT_S,
                                                    "isolation_level": None}}  # fmt: skip
    if heartbeat_s is not None:
        kwargs["heartbeat_interval"] = heartbeat_s
        kwargs["grace_period"] = GRACE_INTERVALS * heartbeat_s
        params = inspect.signature(RDBStorage).parameters
        name = ("heartbeat_stale_trial_callback" if "heartbeat_stale_trial_callback" in params
                else "failed_trial_callback")  # fmt: skip
        kwargs[name] = _retry_callback()
    last: Exception | None = None
    for attempt in range(5):  # two processes creating the same new database may collide once
        _opening.on = True
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                warnings.simplefilter("ignore", FutureWarning)
                storage = RDBStorage(url, **kwargs)
            if sqlite:
                _serialize_sqlite(make_url(url).render_as_string(hide_password=False))
            return storage
        except Exception as e:  # sqlalchemy's OperationalError, e.g. "table already exists"
            if "unable to open database" in str(e) or "No module named" in str(e):
                last = e
                break
            last = e
            time.sleep(0.2 * (attempt + 1))
        finally:
            _opening.on = False
    raise SweepError(f"cannot open the study storage {redact(url)} ({_first_line(last)}): check "
                     "--storage")  # fmt: skip


def _spec_diff(stored: dict[str, Any], spec: dict[str, Any]) -> list[str]:
    details = []
    for k in sorted(set(stored) | set(spec)):
        a, b = stored.get(k), spec.get(k)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            fields = [f for f in sorted(set(a) | set(b)) if a.get(f) != b.get(f)]
            details += [f"{f}: study {a.get(f)!r}, now {b.get(f)!r}" for f in fields[:3]]
        else:
            details.append(f"{k}: study {a!r}, now {b!r}")
    return details


def comparable(stored: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    """``stored`` as this version reads it: its base's experiment settings, each one it lacks at
    its default (a study made before a setting existed ran with that default) and none that has
    since become a system setting (a study made when val_every counted is still the sweep)."""
    a = stored.get("base")
    if not isinstance(a, dict) or not isinstance(spec.get("base"), dict):
        return stored
    base = {k: plain(v) for k, v in with_defaults(a).items()
            if k in SETTINGS and SETTINGS[k].kind == "experiment"}  # fmt: skip
    return {**stored, "base": base}


def open_study(
    url: str,
    name: str,
    spec: dict[str, Any],
    heartbeat_s: int | None = None,
    sampler: optuna.samplers.BaseSampler | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
) -> tuple[optuna.Study, int]:
    """Create or load the study ``name`` in the storage at ``url`` (creation is atomic in the
    storage: one of several processes creates it, the others load it) and check that it belongs
    to this sweep: ``spec`` (the kind of sweep, its search ranges and the experiment settings of
    its base config, stored in the study) must match. Returns the study and its heartbeat
    interval: the one stored in it (``heartbeat_s`` None, or equal), or ``heartbeat_s`` (else
    HEARTBEAT_S) for a new study."""
    study = optuna.create_study(
        storage=open_storage(url), study_name=name, direction="maximize", load_if_exists=True,
        sampler=sampler, pruner=pruner,
    )  # fmt: skip
    attrs = study.user_attrs
    if SPEC_ATTR not in attrs:
        study.set_user_attr(SPEC_ATTR, spec)
    if HEARTBEAT_ATTR not in attrs:
        study.set_user_attr(HEARTBEAT_ATTR, heartbeat_s or HEARTBEAT_S)
    attrs = study.user_attrs  # two commands creating it at once: the last write stands
    stored = comparable(attrs[SPEC_ATTR], spec)
    if stored != spec:
        raise SweepError(
            f"study {name!r} in {redact(url)} belongs to a different sweep "
            f"({'; '.join(_spec_diff(stored, spec))}): use another --dir or --study-name for it"
        )
    beat = int(attrs[HEARTBEAT_ATTR])
    if heartbeat_s is not None and heartbeat_s != beat:
        raise SweepError(
            f"study {name!r} uses a heartbeat of {beat} s (every worker of a sweep must beat as "
            f"often as the others expect), not {heartbeat_s}: leave out --heartbeat"
        )
    return study, beat


def load_study(url: str, name: str, heartbeat_s: int | None = None,
               sampler: optuna.samplers.BaseSampler | None = None,
               pruner: optuna.pruners.BasePruner | None = None) -> optuna.Study:  # fmt: skip
    """The existing study ``name`` (for workers and read-only views)."""
    return optuna.load_study(study_name=name, storage=open_storage(url, heartbeat_s),
                             sampler=sampler, pruner=pruner)  # fmt: skip


# --------------------------------------------------------------------------------------------
# Jobs and their trials.


def key_of(t: FrozenTrial) -> str | None:
    return t.user_attrs.get("key")


def failure(t: FrozenTrial) -> dict[str, str]:
    """The ``failure`` attribute of a FAIL trial; a stale heartbeat leaves none."""
    return t.user_attrs.get("failure") or {
        "kind": "stale", "message": "its worker stopped beating (killed, or its machine lost)"}


def is_extra(t: FrozenTrial) -> bool:
    """A trial that never was a job's attempt: a duplicate of an enqueued job, or a surplus
    trial that Optuna created when the queue was empty."""
    return t.state == TrialState.FAIL and failure(t)["kind"] in ("duplicate", "surplus")


def by_job(trials: Iterable[FrozenTrial], keys: Iterable[str] | None = None
           ) -> dict[str, list[FrozenTrial]]:  # fmt: skip
    """The attempts of each job (duplicates and surplus trials left out), in trial order."""
    wanted = set(keys) if keys is not None else None
    out: dict[str, list[FrozenTrial]] = {}
    for t in sorted(trials, key=lambda t: t.number):
        k = key_of(t)
        if k is not None and not is_extra(t) and (wanted is None or k in wanted):
            out.setdefault(k, []).append(t)
    return out


def owner_of(trials: Iterable[FrozenTrial], key: str) -> int | None:
    """The number of the trial that owns job ``key``: its lowest-numbered trial not FAIL."""
    live = [t.number for t in trials if key_of(t) == key and t.state != TrialState.FAIL]
    return min(live, default=None)


def enqueue_jobs(study: optuna.Study, jobs: Sequence[Job]) -> list[str]:
    """Enqueue every job of ``jobs`` that has no WAITING, RUNNING, COMPLETE or PRUNED trial
    (a search job whose earlier attempt drew values is enqueued with them). Returns the keys
    enqueued."""
    attempts = by_job(study.get_trials(deepcopy=False))
    added = []
    for job in jobs:
        mine = attempts.get(job.key, [])
        if any(t.state in FINISHED_OK + ACTIVE for t in mine):
            continue
        drawn = next((t for t in reversed(mine) if t.params), None)
        params = dict(drawn.params) if drawn is not None else {
            k: v for k, v in job.params.items() if is_number(v)}  # fmt: skip
        attrs = {"key": job.key, "params": dict(job.params), "values": dict(job.values)}
        if drawn is not None:
            attrs.update(params=drawn.user_attrs.get("params", job.params),
                         values=drawn.user_attrs.get("values", job.values))  # fmt: skip
        study.enqueue_trial(params, user_attrs=attrs)
        added.append(job.key)
    return added


def requeue(study: optuna.Study, t: FrozenTrial) -> None:
    """Enqueue job ``t`` again, with its values (what the retry callback does for a stale one)."""
    a = t.user_attrs
    params = dict(t.params) or {k: v for k, v in a.get("params", {}).items() if is_number(v)}
    study.enqueue_trial(params, user_attrs={k: a[k] for k in ("key", "params", "values")
                                            if k in a})  # fmt: skip


def fail_stale(study: optuna.Study) -> None:
    """Optuna's ``fail_stale_trials``: RUNNING trials silent past the grace period become FAIL
    and the storage's retry callback enqueues them again."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def trial_by_number(study: optuna.Study, number: int) -> FrozenTrial | None:
    return next((t for t in study.get_trials(deepcopy=False) if t.number == number), None)
