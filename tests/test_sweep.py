"""Tests of reglab sweep: axes from the settings schema, selection, the study's queue on Optuna's
public API (enqueued trials, Study.optimize, heartbeats and the retry callback), exactly-once
with several workers and several "machines", resuming after SIGKILL, workers that stop with
their parent, holdout-only selection and --final.

The queue tests use a stand-in trainer (``FakeTrainer``: a value computed from the config, no
network), as Optuna's own storage tests use a trivial objective, and run on SQLite and on
PostgreSQL (the ``postgres_url`` fixture: a throwaway local server, or
$REGLAB_TEST_POSTGRES_URL; skipped without either). The real training runs are tiny (300 images,
steps of 50, 200 holdout images, one thread): they check the plumbing, not the accuracy; they
skip when CIFAR-10 is absent, and --final uses a stand-in test set (``cifar_dir`` in conftest).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState
from sqlalchemy.engine import make_url

from reglab.cli import main
from reglab.config import ConfigError
from reglab.sweeps import study as S
from reglab.sweeps.runner import SweepRequest, parse_devices, plan_sweep, prepare
from reglab.sweeps.select import Result, rank, recommend
from reglab.sweeps.space import (
    canon,
    grid_jobs,
    job_dir_name,
    parse_grid,
    parse_search,
    split_values,
)
from reglab.sweeps.worker import Worker

TINY = ["--preset", "quick-sgd", "--train-limit", "300", "--holdout", "200", "--batch-size", "50",
        "--steps", "4", "--val-every", "4", "--log-every", "2", "--no-tta", "--no-audit",
        "--threads", "1"]  # fmt: skip
TESTS = Path(__file__).resolve().parent
SRC = TESTS.parent / "src"


def run_main(capsys, argv):
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def load(sweep: Path) -> optuna.Study:
    return optuna.load_study(study_name=sweep.name, storage=f"sqlite:///{sweep / 'study.db'}")


def reglab(*args: str) -> list[str]:
    return [sys.executable, "-m", "reglab", *args]


def env() -> dict[str, str]:
    """The environment of a child process: this checkout's reglab first."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(SRC), *filter(None, [os.environ.get("PYTHONPATH")])])}  # fmt: skip


def completed_by_key(study: optuna.Study) -> dict[str, list[optuna.trial.FrozenTrial]]:
    out: dict[str, list] = {}
    for t in study.get_trials(states=(TrialState.COMPLETE,)):
        out.setdefault(t.user_attrs["key"], []).append(t)
    return out


def gone(pid: int) -> bool:
    """True if process ``pid`` has ended (a zombie waiting for its reaper counts as ended)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def _wait(predicate, timeout: float, proc: subprocess.Popen | None = None) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with contextlib.suppress(Exception):  # e.g. the study is being created
            if predicate():
                return
        if proc is not None and proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            raise AssertionError(f"the sweep exited ({proc.returncode}) before the condition: "
                                 f"{out}")  # fmt: skip
        time.sleep(0.05)
    raise AssertionError("timed out")


# --------------------------------------------------------------------------------------------
# A stand-in trainer: the value is a function of the config, the call is logged.


def fake_acc(l2: float, seed: int) -> float:
    return round(0.5 + 10 * l2 + 0.001 * seed, 9)


@dataclass
class FakeResult:
    final_val_acc: float
    best_val_acc: float
    final_train_acc: float
    total_seconds: float = 0.01
    val_split: str = "holdout"
    val_images: int = 200
    resumed_at: list[int] = field(default_factory=list)


class FakeTrainer:
    """Trains nothing: writes config.yaml, reports once, returns ``fake_acc`` of the config, and
    logs each call (run directory, l2, seed, device, value). ``fail``: keys that raise."""

    def __init__(self, fail: tuple[str, ...] = (), hang: bool = False):
        self.calls: list[dict[str, Any]] = []
        self.fail, self.hang = fail, hang

    def __call__(self, cfg, run_dir, on_validation, resume) -> FakeResult:
        run_dir.write_config(cfg.to_dict())
        if self.hang:  # a worker that is killed while it trains
            while True:
                time.sleep(1)
        value = fake_acc(cfg.l2, cfg.seed)
        on_validation(4, {"acc": value})
        if run_dir.path.name in self.fail:
            raise RuntimeError("boom")
        self.calls.append({"dir": run_dir.path.name, "l2": cfg.l2, "seed": cfg.seed,
                           "device": cfg.device, "value": value, "resume": resume})  # fmt: skip
        return FakeResult(value, value, value + 0.05)


def sweep_request(sweep: Path, url: str, name: str, grid=("l2=0,1e-3",), **kw) -> SweepRequest:
    """A request as `reglab sweep --dir SWEEP --holdout 200 --grid ... --storage URL
    --study-name NAME --heartbeat 1` makes it (no data dir: the fake trainer reads no data)."""
    settings = {"holdout": "200", "steps": "4", **kw.pop("settings", {})}
    return SweepRequest(sweep_dir=sweep, settings=settings, grid=list(grid), storage=url,
                        study_name=name, heartbeat=kw.pop("heartbeat", 1), **kw)  # fmt: skip


# --------------------------------------------------------------------------------------------
# Axes and ranges


def test_grid_values_parse_like_their_settings():
    axes = parse_grid(["l2=0,1e-4,0.001", "augment=flip,none", "tta=true,false"], seeds=2)
    assert [a.name for a in axes] == ["seed", "l2", "augment", "tta"]  # seed outermost
    assert axes[1].values == (0.0, 1e-4, 1e-3)
    assert axes[3].values == (True, False)
    jobs = grid_jobs(axes)
    assert len(jobs) == 2 * 3 * 2 * 2
    assert jobs[0].key == "l2=0 augment=flip tta=true seed=0"  # seed last in keys
    assert jobs[0].values == {"l2": 0.0, "augment": "flip", "tta": True, "seed": 0}
    assert [j.values["seed"] for j in jobs[:12]] == [0] * 12  # one seed of each setting first


def test_grid_list_values_and_repeatable_settings():
    axes = parse_grid(["lr-milestones=0.5,0.75|0.3,0.6,0.9",
                       "reg=l2=1e-4|wd=5e-4+l1=1e-5@conv.weight,linear.weight|l2=1e+2"])
    milestones, reg = axes[1], axes[2]
    assert milestones.setting == "lr_milestones"
    assert milestones.values == ((0.5, 0.75), (0.3, 0.6, 0.9))
    assert reg.setting == "regularizers" and reg.name == "reg"
    assert reg.values[0] == ["l2=1e-4"]
    assert reg.values[1] == ["wd=5e-4", "l1=1e-5@conv.weight,linear.weight"]
    assert len(reg.values[2]) == 1  # '+' before a digit is part of the number
    assert split_values("a,b|") == ["a,b"]
    assert canon(1e-4) == "0.0001" and canon(0.0) == "0" and canon((0.5, 0.75)) == "0.5,0.75"
    job = grid_jobs(axes)[1]
    assert job.values["lr_milestones"] == [0.5, 0.75]  # JSON, read back by the schema
    widths = parse_grid(["widths=16,64,128|32,64,128"])[1]  # whole numbers, not floats
    assert widths.values == ((16, 64, 128), (32, 64, 128))
    assert [j.params["widths"] for j in grid_jobs([widths])] == ["16,64,128", "32,64,128"]


@pytest.mark.parametrize(
    "spec, needle",
    [
        ("l2", "expected AXIS=V1,V2"),
        ("nosuchflag=1,2", "unknown setting 'nosuchflag'"),
        ("l2=a,b", "'a' is not a number"),
        ("l2=-1", "must be >= 0"),
        ("optimizer=sgd,lion", "unknown optimizer 'lion'"),
        ("l2=1e-4,0.0001", "are the same value"),
        ("runs-dir=a,b", "--runs-dir is a system setting"),
        ("device=cpu,cuda", "--device is a system setting"),
        ("preset=quick,gpu", "--preset is a system setting"),
    ],
)
def test_bad_grid_axes_are_one_line_errors(spec, needle):
    with pytest.raises(ConfigError) as info:
        parse_grid([spec])
    assert needle in str(info.value) and "\n" not in str(info.value), str(info.value)


def test_search_ranges():
    (r,) = parse_search([])
    assert (r.name, r.low, r.high, r.log) == ("l2", 1e-6, 1e-1, True)
    lr, ls = parse_search(["lr=0.05:0.5", "label-smoothing=0:0.3"])
    assert lr.log and not ls.log and ls.setting == "label_smoothing"
    with pytest.raises(ConfigError, match="log range needs LOW > 0"):
        parse_search(["l2=0:1e-2:log"])
    with pytest.raises(ConfigError, match="only numeric settings"):
        parse_search(["optimizer=1:2"])
    with pytest.raises(ConfigError, match="system setting"):
        parse_search(["threads=1:4"])


def test_job_directories_are_named_by_the_job_and_never_shared():
    assert job_dir_name("l2=0.0001 seed=0") == "l2=0.0001_seed=0"
    assert job_dir_name("search-0003") == "search-0003"
    a = job_dir_name("reg=l1=1e-5@conv.weight seed=0")
    # the same text once '@' and ' ' are replaced: a hash tells them apart
    assert a != job_dir_name("reg=l1=1e-5_conv.weight seed=0")
    long = [job_dir_name("x" * 100 + str(i)) for i in range(2)]
    assert long[0] != long[1] and all(len(n) <= 80 for n in long)


def test_devices_are_taken_in_turn(monkeypatch):
    assert parse_devices("cpu:0,cpu:1", 3) == ["cpu:0", "cpu:1", "cpu:0"]
    with pytest.raises(ConfigError, match="is not a device"):
        parse_devices("gpu0", 1)
    import torch

    if not torch.cuda.is_available():
        assert parse_devices(None, 2) == ["cpu", "cpu"]  # CPU-only: every worker on the CPU
        with pytest.raises(ConfigError, match="no CUDA GPU is visible"):
            parse_devices("cuda:0", 1)
    monkeypatch.setattr("reglab.sweeps.runner.cpu_cores", lambda: 8)
    plan = plan_sweep(SweepRequest(sweep_dir=Path("s"), settings={"holdout": "200"},
                                   grid=["l2=0"], workers=3))  # fmt: skip
    assert plan.threads == 2  # the cores split among the workers
    plan = plan_sweep(SweepRequest(sweep_dir=Path("s"), settings={"holdout": "200",
                                   "threads": "1"}, grid=["l2=0"], workers=3))  # fmt: skip
    assert plan.threads == 1


# --------------------------------------------------------------------------------------------
# Selection


def _results(setting, accs, split="holdout"):
    return [Result(setting, {}, a, split, seed=i, train_acc=a + 0.05, val_images=10_000)
            for i, a in enumerate(accs)]  # fmt: skip


def test_rank_and_how_sure():
    ranked = rank(_results("a", [0.80, 0.81, 0.79]) + _results("b", [0.70, 0.71, 0.69]))
    assert [s.setting for s in ranked] == ["a", "b"]
    assert ranked[0].mean == pytest.approx(0.80) and ranked[0].std == pytest.approx(0.01)
    assert ranked[0].gap_mean == pytest.approx(0.05)
    rec = recommend(ranked)
    assert rec.verdict == "clear" and rec.basis == "seeds" and "holdout acc 80.00%" in rec.text
    close = recommend(rank(_results("a", [0.800, 0.815]) + _results("b", [0.805, 0.80])))
    assert close.verdict == "undecided"
    # one seed each: only the holdout's sampling error is known, and the text says so
    one = recommend(rank(_results("a", [0.80]) + _results("b", [0.79])))
    assert one.basis == "sampling" and one.se == pytest.approx(0.0057, abs=1e-4)
    assert "not measured" in one.text


# --------------------------------------------------------------------------------------------
# The queue on Optuna's API, with the stand-in trainer (SQLite and PostgreSQL)


@pytest.fixture
def study_name():
    """A study name no other test uses: the PostgreSQL database is shared by the session (and
    may be a real server's)."""
    return f"t-{uuid.uuid4().hex[:12]}"


def _delete_study(url: str, name: str) -> None:
    with contextlib.suppress(KeyError):
        optuna.delete_study(study_name=name, storage=url)


@pytest.fixture(params=["sqlite", "postgresql"])
def study_url(request, tmp_path, study_name):
    """The storage URL of each backend: an SQLite file, then the PostgreSQL test server (the
    test's study is deleted there afterwards)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'study.db'}"
        return
    url = request.getfixturevalue("postgres_url")
    yield url
    _delete_study(url, study_name)


@pytest.fixture
def pg_study(postgres_url, study_name):
    """(URL, study name) of a new study in the PostgreSQL test database, deleted afterwards."""
    yield postgres_url, study_name
    _delete_study(postgres_url, study_name)


def test_jobs_are_enqueued_once_and_each_runs_once(tmp_path, study_url, study_name):
    plan = plan_sweep(sweep_request(tmp_path / "s", study_url, study_name, seeds=2))
    study = prepare(plan, print)
    prepare(plan, print)  # a second command (or machine) finds every job enqueued
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.WAITING] * 4
    assert [t.user_attrs["key"] for t in trials] == ["l2=0 seed=0", "l2=0.001 seed=0",
                                                     "l2=0 seed=1", "l2=0.001 seed=1"]
    trainer = FakeTrainer()
    assert Worker(plan.spec, trainer=trainer).run() == 4
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    for t, call in zip(trials, trainer.calls):
        assert t.params == {"l2": call["l2"], "seed": call["seed"]}  # numbers are parameters
        assert t.value == fake_acc(t.params["l2"], t.params["seed"]) == call["value"]
        assert t.user_attrs["run_dir"] == f"trials/{call['dir']}"
        record = json.loads((plan.spec.sweep_dir / t.user_attrs["run_dir"] /
                             "trial.json").read_text())  # fmt: skip
        assert record["state"] == "COMPLETE" and record["attempts"] == [t.number]
    # the same command again: nothing enqueued, nothing run
    prepare(plan, print)
    assert Worker(plan.spec, trainer=trainer).run() == 0
    assert len(study.get_trials()) == 4 and len(trainer.calls) == 4


def test_a_job_enqueued_twice_runs_once(tmp_path, study_url, study_name):
    """Two machines that both saw the job missing enqueue it twice: the lower trial owns it,
    the other is failed as a duplicate without training."""
    plan = plan_sweep(sweep_request(tmp_path / "s", study_url, study_name, grid=["l2=1e-3"]))
    study = prepare(plan, print)
    job = plan.spec.jobs[0]
    study.enqueue_trial({"l2": 1e-3, "seed": 0}, user_attrs={"key": job.key,
                        "params": job.params, "values": job.values})  # fmt: skip
    trainer = FakeTrainer()
    assert Worker(plan.spec, trainer=trainer).run() == 1
    first, second = study.get_trials()
    assert first.state == TrialState.COMPLETE and len(trainer.calls) == 1
    assert second.state == TrialState.FAIL and S.failure(second)["kind"] == "duplicate"
    assert S.is_extra(second) and "run_dir" not in second.user_attrs


def test_errors_are_retried_by_the_next_command_not_this_one(tmp_path, study_url, study_name):
    plan = plan_sweep(sweep_request(tmp_path / "s", study_url, study_name))
    study = prepare(plan, print)
    assert Worker(plan.spec, trainer=FakeTrainer(fail=("l2=0_seed=0",))).run() == 2
    states = [(t.user_attrs["key"], t.state) for t in study.get_trials()]
    assert states == [("l2=0 seed=0", TrialState.FAIL), ("l2=0.001 seed=0", TrialState.COMPLETE)]
    assert S.failure(study.get_trials()[0]) == {"kind": "error", "message": "RuntimeError: boom"}
    prepare(plan, print)  # the next command
    trainer = FakeTrainer()
    assert Worker(plan.spec, trainer=trainer).run() == 1
    last = study.get_trials()[-1]
    assert last.state == TrialState.COMPLETE and last.user_attrs["key"] == "l2=0 seed=0"
    assert trainer.calls[0]["resume"]  # it continues in the failed attempt's run directory


def test_a_study_of_another_sweep_is_refused(tmp_path, study_url, study_name):
    prepare(plan_sweep(sweep_request(tmp_path / "a", study_url, study_name)), print)
    # system settings may differ between the commands of one sweep (another machine)
    prepare(plan_sweep(sweep_request(tmp_path / "b", study_url, study_name,
                               settings={"threads": "3", "device": "cpu"})), print)  # fmt: skip
    with pytest.raises(S.SweepError, match=r"lr: study 0\.01, now 0\.2") as info:
        prepare(plan_sweep(sweep_request(tmp_path / "c", study_url, study_name,
                                   settings={"lr": "0.2"})), print)  # fmt: skip
    password = make_url(study_url).password
    assert not password or password not in str(info.value)  # shown as ***
    with pytest.raises(S.SweepError, match="uses a heartbeat of 1 s"):
        prepare(plan_sweep(sweep_request(tmp_path / "d", study_url, study_name, heartbeat=5)),
                print)  # fmt: skip


def test_a_study_made_before_a_setting_became_a_system_setting_is_still_the_sweep(tmp_path):
    """A study's stored spec is read as this version would write it: one written when val_every
    counted (or before sync_bn existed: it ran with the default) still belongs to the same
    sweep; one whose settings differ, or that lacks a setting this sweep sets away from its
    default, does not."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    plan = plan_sweep(sweep_request(tmp_path / "s", url, "old"))
    spec = plan.study_spec()
    old = {**spec, "base": {k: v for k, v in spec["base"].items() if k != "sync_bn"}}
    old["base"]["val_every"] = 123
    study = optuna.create_study(study_name="old", storage=url, direction="maximize")
    study.set_user_attr(S.SPEC_ATTR, old)
    prepare(plan, print)
    assert optuna.load_study(study_name="old", storage=url).user_attrs[S.HEARTBEAT_ATTR] == 1
    other = {**old, "base": {**old["base"], "lr": 0.5}}
    study.set_user_attr(S.SPEC_ATTR, other)
    with pytest.raises(S.SweepError, match=r"lr: study 0\.5, now 0\.01"):
        prepare(plan, print)
    translated = plan_sweep(sweep_request(tmp_path / "t", url, "old",
                                          settings={"tta_translate": "true"}))  # fmt: skip
    study.set_user_attr(S.SPEC_ATTR, old)  # made before tta_translate existed: it was off
    with pytest.raises(S.SweepError, match=r"tta_translate: study False, now True"):
        prepare(translated, print)


def test_a_trial_taken_by_a_worker_that_died_at_once_is_run_again(tmp_path, study_name):
    """Optuna's stale check needs a first heartbeat; a trial popped by a process that died
    before it is failed and enqueued again after a grace period of being watched."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    plan = plan_sweep(sweep_request(tmp_path / "s", url, study_name, grid=["l2=1e-3"]))
    prepare(plan, print)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        popped = S.load_study(url, study_name, heartbeat_s=1).ask()  # RUNNING, never beating
    trainer = FakeTrainer()
    assert Worker(plan.spec, trainer=trainer).run() == 1
    first, retry = optuna.load_study(study_name=study_name, storage=url).get_trials()
    assert first.number == popped.number and first.state == TrialState.FAIL
    assert retry.state == TrialState.COMPLETE and retry.user_attrs["key"] == "l2=0.001 seed=0"


def _hung_worker(sweep: Path, url: str, name: str) -> subprocess.Popen:
    """A worker process (another machine) that takes one trial and hangs in it, beating."""
    code = (
        "import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1])\n"
        "from test_sweep import FakeTrainer, sweep_request\n"
        "from reglab.sweeps.runner import plan_sweep\n"
        "from reglab.sweeps.worker import Worker\n"
        "plan = plan_sweep(sweep_request(Path(sys.argv[2]), sys.argv[3], sys.argv[4], "
        "grid=['l2=1e-3']))\n"
        "Worker(plan.spec, trainer=FakeTrainer(hang=True)).run()\n"
    )
    return subprocess.Popen([sys.executable, "-c", code, str(TESTS), str(sweep), url, name],
                            env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)  # fmt: skip


def test_a_killed_workers_trial_goes_stale_and_is_retried_in_its_run_dir(tmp_path, pg_study):
    """Optuna's heartbeat: a worker on another machine is SIGKILLed in a trial; after the grace
    period fail_stale_trials fails it and RetryHeartbeatStaleTrialCallback enqueues it again, with
    its values; the retry continues in the same run directory."""
    url, name = pg_study
    plan = plan_sweep(sweep_request(tmp_path / "s", url, name, grid=["l2=1e-3"]))
    study = prepare(plan, print)
    proc = _hung_worker(tmp_path / "s", url, name)
    try:
        run = tmp_path / "s" / "trials" / "l2=0.001_seed=0"
        _wait(lambda: (run / "config.yaml").is_file(), 60, proc)  # in its trial
    finally:
        proc.kill()
        proc.wait()
    trainer = FakeTrainer()
    started = time.monotonic()
    assert Worker(plan.spec, trainer=trainer).run() == 1  # waits for the grace period (4 s)
    assert time.monotonic() - started >= 3
    dead, retry = study.get_trials()
    assert dead.state == TrialState.FAIL and S.failure(dead)["kind"] == "stale"
    assert retry.state == TrialState.COMPLETE and retry.params == dead.params
    assert retry.user_attrs["run_dir"] == dead.user_attrs["run_dir"]
    assert trainer.calls[0]["resume"]  # the killed attempt's config.yaml was there
    record = json.loads((tmp_path / "s" / retry.user_attrs["run_dir"] / "trial.json").read_text())
    assert record["attempts"] == [dead.number, retry.number]


WORKER_SCRIPT = """
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from test_sweep import FakeTrainer, sweep_request
from reglab.sweeps.runner import plan_sweep, prepare
from reglab.sweeps.worker import Worker

a = json.loads(sys.argv[2])
plan = plan_sweep(sweep_request(Path(a["dir"]), a["url"], a["name"], grid=a["grid"],
                                seeds=a["seeds"]))
prepare(plan, print)  # every machine's command enqueues what it finds missing
trainer = FakeTrainer()
ran = Worker(plan.spec, device=a["device"], trainer=trainer).run(max_trials=a["m"])
Path(a["log"]).write_text(json.dumps({"ran": ran, "calls": trainer.calls}))
"""


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_n_worker_processes_times_m_trials(tmp_path, study_name, backend, request):
    """In the style of Optuna's storage tests: N processes (each its own "machine": its own
    sweep folder and device), all enqueueing the same N x M jobs into one study at once, then
    each running M trials: exactly N x M COMPLETE trials, one per job, whose parameters and
    values are what the process that ran each one trained and returned."""
    if backend == "postgresql":
        url = request.getfixturevalue("postgres_url")
        request.addfinalizer(lambda: _delete_study(url, study_name))
    else:
        url = f"sqlite:///{tmp_path / 'study.db'}"
    n, m = 3, 4
    grid = ["l2=0,1e-4,1e-3,1e-2,1e-1,1"]  # 6 x 2 seeds = N x M jobs
    procs, logs = [], []
    for i in range(n):
        logs.append(tmp_path / f"log{i}.json")
        args = {"dir": str(tmp_path / f"m{i}" / "s"), "url": url, "name": study_name,
                "grid": grid, "seeds": 2, "device": f"cpu:{i}", "m": m, "log": str(logs[i])}
        procs.append(subprocess.Popen(
            [sys.executable, "-c", WORKER_SCRIPT, str(TESTS), json.dumps(args)], env=env(),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))  # fmt: skip
    try:
        outs = [p.communicate(timeout=240)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert all(p.returncode == 0 for p in procs), outs
    runs = [json.loads(log.read_text()) for log in logs]
    assert [r["ran"] for r in runs] == [m] * n  # each process ran M trials
    # the processes enqueued some jobs twice; copies still waiting when they stopped are
    # ended as duplicates, untrained, by the next worker to come along
    plan = plan_sweep(sweep_request(tmp_path / "late", url, study_name, grid=grid, seeds=2))
    assert Worker(plan.spec, trainer=FakeTrainer()).run() == 0
    trials = optuna.load_study(study_name=study_name, storage=url).get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == n * m
    assert len({t.user_attrs["key"] for t in complete}) == n * m  # one per job: none twice
    assert all(S.is_extra(t) for t in trials if t.state != TrialState.COMPLETE), [
        (t.number, t.state, t.user_attrs) for t in trials if t.state != TrialState.COMPLETE]
    calls = {(i, c["dir"]): c for i, r in enumerate(runs) for c in r["calls"]}
    assert len(calls) == n * m  # every trained trial is one of the COMPLETE ones
    for t in complete:
        i = int(t.user_attrs["worker"]["device"].split(":")[1])
        call = calls[(i, Path(t.user_attrs["run_dir"]).name)]  # trained by that process
        assert t.params == {"l2": call["l2"], "seed": call["seed"]} == {
            k: v for k, v in t.user_attrs["values"].items()}
        assert t.value == call["value"] == fake_acc(call["l2"], call["seed"])
        assert call["device"] == f"cpu:{i}"
        assert (tmp_path / f"m{i}" / "s" / t.user_attrs["run_dir"] / "config.yaml").is_file()


# --------------------------------------------------------------------------------------------
# Honest selection


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--holdout", "0", "--grid", "l2=0,1e-4"], "a sweep selects on a holdout"),
        (["--grid", "holdout=0,500"], "but trial holdout=0 seed=0 validates on the test set"),
        (["--grid", "l2=0", "--trials", "3"], "give one of them"),
        ([], "say what to sweep"),
        (["--trials", "3", "--seeds", "2"], "--seeds is for grids"),
        (["--grid", "l2=0", "--name", "x"], "--name and --runs-dir do not apply"),
        (["--grid", "threads=1,2"], "--threads is a system setting"),
        (["--grid", "l2=0", "--devices", "tpu:0"], "is not a device"),
    ],
)
def test_bad_sweeps_are_refused_before_anything_runs(capsys, tmp_path, extra, needle):
    sweep = tmp_path / "s"
    code, _, err = run_main(capsys, ["sweep", "--dir", str(sweep), *TINY, *extra])
    assert code == 2 and needle in err, err
    assert len(err.strip().splitlines()) == 1 and not sweep.exists()


def test_final_without_a_test_set_fails_before_the_sweep(capsys, tmp_path, cifar_dir):
    data_dir = cifar_dir(test=False)
    sweep = tmp_path / "s"
    code, _, err = run_main(capsys, [
        "sweep", "--dir", str(sweep), "--data-dir", str(data_dir), *TINY, "--holdout", "50",
        "--train-limit", "100", "--grid", "l2=0,1e-3", "--final"])  # fmt: skip
    assert code == 2, err
    assert "--final evaluates the chosen setting once on the official test set" in err
    assert "test_batch.bin" in err and len(err.strip().splitlines()) == 1
    assert not sweep.exists()  # nothing was written, no trial trained


def test_final_retrains_on_all_data_and_tests_once(capsys, tmp_path, cifar_dir):
    data_dir = cifar_dir(test=True, n_test=30)
    sweep = tmp_path / "s"
    argv = ["sweep", "--dir", str(sweep), "--data-dir", str(data_dir), *TINY, "--holdout", "50",
            "--train-limit", "150", "--grid", "l2=0,1e-3", "--final"]  # fmt: skip
    code, out, err = run_main(capsys, argv)
    assert code == 0, err
    info = json.loads((sweep / "final" / "final.json").read_text())
    assert info["setting"] in ("l2=0", "l2=0.001") and info["test"]["images"] == 30
    assert info["holdout"]["images"] == 50 and info["config"]["holdout"] == 0
    assert info["train_images"] == 150  # train_limit kept; the holdout images are back in
    rows = [json.loads(x) for x in (sweep / "final" / "metrics.jsonl").read_text().splitlines()]
    assert [r["split"] for r in rows if r["split"] != "train"] == ["test"]  # evaluated once
    assert "holdout acc" in out and "test acc" in out and "evaluated once" in out
    # the same command again: nothing retrained, the test result is read back
    mtime = (sweep / "final" / "summary.json").stat().st_mtime
    code, out, err = run_main(capsys, argv)
    assert code == 0 and "already evaluated" in out and "2 done already" in out
    assert (sweep / "final" / "summary.json").stat().st_mtime == mtime
    # and the report shows the test number in its own section
    from reglab.reports.page import write_report

    page = write_report([sweep]).read_text()
    assert "Test set (evaluated once" in page and info["setting"] in page


def test_search_draws_in_its_range(capsys, tmp_path, cifar_dir):
    data_dir = cifar_dir()
    sweep = tmp_path / "s"
    code, _, err = run_main(capsys, [
        "sweep", "--dir", str(sweep), "--data-dir", str(data_dir), *TINY, "--holdout", "50",
        "--train-limit", "100", "--trials", "3", "--search", "l2=1e-5:1e-2"])  # fmt: skip
    assert code == 0, err
    trials = load(sweep).get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 3
    for t in trials:
        assert 1e-5 <= t.params["l2"] <= 1e-2
        assert t.intermediate_values  # holdout acc reported at each validation (for pruning)
        assert t.user_attrs["run_dir"] == f"trials/{t.user_attrs['key']}"
        cfg = (sweep / t.user_attrs["run_dir"] / "config.yaml").read_text()
        assert f"l2: {t.params['l2']}" in cfg


# --------------------------------------------------------------------------------------------
# Real data: kill and resume, worker processes, PostgreSQL


def _checkpointed(sweep: Path, n: int = 1, step: int = 4) -> bool:
    """True once ``n`` trials of the sweep have a checkpoint of ``step`` or later (older ones are
    pruned as new ones come) and no summary."""
    found = {c.parent.parent for c in sweep.glob("trials/*/checkpoints/step-*.sha256")
             if int(c.stem.split("-")[1]) >= step
             and not (c.parent.parent / "summary.json").exists()}  # fmt: skip
    return len(found) >= n


def _holdout_rows(run: Path) -> list[tuple]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"], r["acc"]) for r in rows if r["split"] == "holdout"]


def test_a_sigkilled_trial_resumes_from_its_checkpoint_with_the_same_result(
    capsys, tmp_path, real_data_dir
):
    """SIGKILL mid-trial (heartbeat 1 s): the same command again waits out the grace period,
    Optuna fails the trial as stale and enqueues it again, and the retry continues from the
    killed attempt's checkpoint; its result equals an uninterrupted run's, bit for bit."""
    args = [*TINY, "--steps", "20", "--checkpoint-every", "2", "--heartbeat", "1",
            "--data-dir", str(real_data_dir), "--grid", "l2=1e-3"]  # fmt: skip
    sweep = tmp_path / "s"
    cmd = reglab("sweep", "--dir", str(sweep), *args)
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)  # fmt: skip
    try:
        _wait(lambda: _checkpointed(sweep), 120, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    (killed,) = load(sweep).get_trials()
    assert killed.state == TrialState.RUNNING  # as the kill left it

    again = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    dead, retry = load(sweep).get_trials()
    assert dead.state == TrialState.FAIL and S.failure(dead)["kind"] == "stale"
    assert retry.state == TrialState.COMPLETE and retry.user_attrs["result"]["resumed_at"]
    run = sweep / retry.user_attrs["run_dir"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["resumed_at"] and summary["resumed_at"][0] >= 4
    assert "resumed at step" in again.stdout

    code, _, err = run_main(capsys, ["sweep", "--dir", str(tmp_path / "ref"), *args])
    assert code == 0, err
    ref = tmp_path / "ref" / retry.user_attrs["run_dir"]
    assert json.loads((ref / "summary.json").read_text())["final_val_acc"] == (
        summary["final_val_acc"])  # fmt: skip
    assert _holdout_rows(ref) == _holdout_rows(run)  # every validation, not only the last


def test_killing_the_sweep_stops_its_workers_and_a_rerun_resumes(tmp_path, real_data_dir):
    """--workers 2 (spawned processes): SIGKILL of the sweep's main process ends its workers
    (they notice their parent is gone and fail their trials as interrupted); the same command
    again runs every job exactly once more, continuing the interrupted ones from their
    checkpoints."""
    sweep = tmp_path / "s"
    cmd = reglab("sweep", "--dir", str(sweep), "--data-dir", str(real_data_dir), *TINY,
                 "--steps", "30", "--checkpoint-every", "2", "--heartbeat", "1",
                 "--grid", "l2=0,1e-3", "--workers", "2")  # fmt: skip
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)  # fmt: skip
    try:
        _wait(lambda: _checkpointed(sweep, n=2), 180, proc)
        pids = {t.user_attrs["worker"]["pid"] for t in load(sweep).get_trials()
                if t.state == TrialState.RUNNING}  # fmt: skip
        assert len(pids) == 2 and proc.pid not in pids
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        _wait(lambda: all(gone(pid) for pid in pids), 20)  # the workers stopped too
    finally:
        if proc.poll() is None:
            proc.kill()
    interrupted = [t for t in load(sweep).get_trials() if t.state == TrialState.FAIL]
    assert len(interrupted) == 2
    assert all(S.failure(t)["kind"] == "interrupted" for t in interrupted), [
        (t.user_attrs, t.datetime_complete) for t in interrupted]

    again = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "2 worker(s) on cpu x 1 thread(s)" in again.stdout
    study = load(sweep)
    complete = completed_by_key(study)
    assert sorted(complete) == [f"l2={v} seed=0" for v in ("0", "0.001")]
    assert all(len(ts) == 1 for ts in complete.values())  # none twice, none lost
    for t in interrupted:  # continued from the checkpoint it had when it was killed
        (rerun,) = complete[t.user_attrs["key"]]
        assert rerun.user_attrs["result"]["resumed_at"][0] >= 4
        assert rerun.user_attrs["run_dir"] == t.user_attrs["run_dir"]
    others = [t for t in study.get_trials() if t.state not in (TrialState.COMPLETE,)]
    assert all(t in interrupted or S.is_extra(t) for t in others)
    assert len(list((sweep / "trials").iterdir())) == 2
    assert again.stdout.count("[sweep] trial ") == 2  # the live view: one line per trial


def _pg_sweep(machine: Path, data_dir: Path, url: str, name: str, grid: str,
              *extra: str) -> list[str]:  # fmt: skip
    """The command as docs/sweeps.md has it for several machines: the same on each, with the
    machine's own --dir and devices (the study is named, so the folder's name need not match)."""
    return reglab("sweep", "--dir", str(machine / "sweep"), "--data-dir", str(data_dir), *TINY,
                  "--grid", grid, "--storage", url, "--study-name", name, *extra)  # fmt: skip


def _no_password(url: str, output: str, folder: Path) -> None:
    """The URL's password is neither in ``output`` nor in any file under ``folder``."""
    password = make_url(url).password
    if not password:
        return
    assert password not in output
    for f in folder.rglob("*"):
        assert not f.is_file() or password.encode() not in f.read_bytes(), f


def test_machines_with_worker_processes_on_their_devices_share_a_postgresql_study(
    tmp_path, real_data_dir, pg_study
):
    """Two `reglab sweep --storage postgresql://...` commands as on two machines: one with two
    worker processes on devices cpu:0 and cpu:1 (CPU stand-ins for cuda:0 and cuda:1), one with
    a single worker on cpu:2. Every job runs exactly once, on a worker pinned to its device;
    the same command again repeats nothing."""
    url, name = pg_study
    values = ("0", "0.0001", "0.001", "0.01", "0.1")
    grid = "l2=" + ",".join(values)
    machines = [tmp_path / "m1", tmp_path / "m2"]
    cmds = [_pg_sweep(machines[0], real_data_dir, url, name, grid, "--workers", "2",
                      "--devices", "cpu:0,cpu:1"),
            _pg_sweep(machines[1], real_data_dir, url, name, grid, "--devices", "cpu:2")]
    procs = [subprocess.Popen(c, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for c in cmds]  # fmt: skip
    try:
        outs = [p.communicate(timeout=300)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out
    study = optuna.load_study(study_name=name, storage=url)
    complete = completed_by_key(study)
    assert sorted(complete) == sorted(f"l2={v} seed=0" for v in values)  # none lost
    assert all(len(ts) == 1 for ts in complete.values())  # none twice
    extra = [t for t in study.get_trials() if t.state != TrialState.COMPLETE]
    assert all(S.is_extra(t) and "run_dir" not in t.user_attrs for t in extra), [
        (t.number, t.state, t.user_attrs) for t in extra]  # fmt: skip
    # each run is in the folder of the machine that trained it, on the worker's own device
    device_of_pid: dict[int, str] = {}
    for (t,) in complete.values():
        w = t.user_attrs["worker"]
        assert device_of_pid.setdefault(w["pid"], w["device"]) == w["device"]  # pinned
        mine = machines[0 if w["device"] in ("cpu:0", "cpu:1") else 1] / "sweep"
        run = mine / t.user_attrs["run_dir"]
        assert (run / "summary.json").is_file()
        assert f"device: {w['device']}" in (run / "config.yaml").read_text()
        record = json.loads((run / "trial.json").read_text())
        assert record["state"] == "COMPLETE" and record["study"] == name
    dirs = [d.name for m in machines for d in (m / "sweep" / "trials").iterdir()]
    assert sorted(dirs) == sorted(Path(t.user_attrs["run_dir"]).name
                                  for (t,) in complete.values())  # fmt: skip
    assert all(f"{len(values)}/{len(values)} done" in out for out in outs), outs
    for m, out in zip(machines, outs):
        _no_password(url, out, m)

    before = [(t.number, t.state, t.value) for t in study.get_trials()]
    again = subprocess.run(cmds[1], env=env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"{len(values)} trials, {len(values)} done already" in again.stdout
    assert "[sweep] trial " not in again.stdout  # nothing ran
    after = optuna.load_study(study_name=name, storage=url).get_trials()
    assert [(t.number, t.state, t.value) for t in after] == before
    assert "Best on the holdout set" in again.stdout
