"""Tests of reglab sweep: axis parsing, selection, the study's bookkeeping (claims, dead workers,
duplicates), resuming after a kill, two workers on one study, holdout-only selection, --final,
and a study in PostgreSQL shared by the workers of two "machines".

Training runs are tiny (300 images, 4 steps of 50, 200 holdout images, one thread): they check
the plumbing, not the accuracy. Real-data tests skip when CIFAR-10 is absent; --final uses a
stand-in test set (``cifar_dir`` in conftest.py). The bookkeeping tests run on SQLite and on
PostgreSQL (the ``postgres_url`` fixture: a throwaway local server, or
$REGLAB_TEST_POSTGRES_URL; skipped without either).
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
from datetime import datetime
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from sqlalchemy.engine import make_url

from reglab.cli import main
from reglab.config import ConfigError
from reglab.sweeps import study as S
from reglab.sweeps.select import Result, rank, recommend
from reglab.sweeps.space import Job, canon, grid_jobs, parse_grid, parse_search, split_values

TINY = ["--preset", "quick", "--train-limit", "300", "--holdout", "200", "--batch-size", "50",
        "--steps", "4", "--val-every", "4", "--log-every", "2", "--no-tta", "--no-audit",
        "--threads", "1"]  # fmt: skip


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


def completed_by_key(study: optuna.Study) -> dict[str, list[optuna.trial.FrozenTrial]]:
    out: dict[str, list] = {}
    for t in study.get_trials(states=(TrialState.COMPLETE,)):
        out.setdefault(t.user_attrs["key"], []).append(t)
    return out


# --------------------------------------------------------------------------------------------
# Axes and ranges


def test_grid_values_parse_like_their_flags():
    axes = parse_grid(["l2=0,1e-4,0.001", "augment=flip,none", "tta=true,false"], seeds=2)
    assert [a.name for a in axes] == ["seed", "l2", "augment", "tta"]  # seed outermost
    assert axes[1].values == (0.0, 1e-4, 1e-3)
    assert axes[3].values == (True, False)
    jobs = grid_jobs(axes)
    assert len(jobs) == 2 * 3 * 2 * 2
    assert jobs[0].key == "l2=0 augment=flip tta=true seed=0"  # seed last in keys
    assert jobs[0].overrides == {"l2": 0.0, "augment": "flip", "tta": True, "seed": 0}
    assert [j.overrides["seed"] for j in jobs[:12]] == [0] * 12  # one seed of each setting first


def test_grid_list_values_and_repeatable_flags():
    axes = parse_grid(["lr-milestones=0.5,0.75|0.3,0.6,0.9",
                       "reg=l2=1e-4|wd=5e-4+l1=1e-5@conv.weight,linear.weight|l2=1e+2"],
                      )  # fmt: skip
    milestones, reg = axes[1], axes[2]
    assert milestones.dest == "lr_milestones"
    assert milestones.values == ((0.5, 0.75), (0.3, 0.6, 0.9))
    assert reg.dest == "regularizers"
    assert reg.values[0] == ["l2=1e-4"]
    assert reg.values[1] == ["wd=5e-4", "l1=1e-5@conv.weight,linear.weight"]
    assert reg.values[2] == ["l2=1e+2"]  # '+' before a digit is part of the number
    assert split_values("a,b|") == ["a,b"]
    assert canon(1e-4) == "0.0001" and canon(0.0) == "0" and canon((0.5, 0.75)) == "0.5,0.75"


@pytest.mark.parametrize(
    "spec, needle",
    [
        ("l2", "expected AXIS=V1,V2"),
        ("nosuchflag=1,2", "no such flag of reglab train"),
        ("l2=a,b", "bad value 'a'"),
        ("optimizer=sgd,lion", "invalid choice 'lion'"),
        ("l2=1e-4,0.0001", "are the same value"),
        ("runs-dir=a,b", "cannot be swept"),
    ],
)
def test_bad_grid_axes_are_one_line_errors(spec, needle):
    with pytest.raises(ConfigError) as info:
        parse_grid([spec])
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_search_ranges():
    (r,) = parse_search([])
    assert (r.name, r.low, r.high, r.log) == ("l2", 1e-6, 1e-1, True)
    lr, ls = parse_search(["lr=0.05:0.5", "label-smoothing=0:0.3"])
    assert lr.log and not ls.log and ls.dest == "label_smoothing"
    with pytest.raises(ConfigError, match="log range needs LOW > 0"):
        parse_search(["l2=0:1e-2:log"])
    with pytest.raises(ConfigError, match="only numeric flags"):
        parse_search(["optimizer=1:2"])


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
# The study's bookkeeping, without training


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
def study(study_url, study_name):
    storage = S.open_storage(study_url, heartbeat_s=1)
    return S.open_study(storage, study_name, {"mode": "grid"}), storage


def test_claims_are_exclusive_and_jobs_enqueued_once(study):
    st, storage = study
    jobs = [Job("a"), Job("b")]
    since = datetime.now()
    S.reconcile(st, storage, jobs, since)
    S.reconcile(st, storage, jobs, since)  # idempotent: nothing enqueued twice
    assert len(st.get_trials()) == 2
    first = S.claim(st, storage, {"a", "b"})
    second = S.claim(st, storage, {"a", "b"})
    assert {first.user_attrs["key"], second.user_attrs["key"]} == {"a", "b"}
    assert S.claim(st, storage, {"a", "b"}) is None
    assert first.user_attrs["pid"] == os.getpid() and first.user_attrs["host"] == S.machine_id()


def test_a_dead_workers_trial_is_failed_and_run_again(study):
    st, storage = study
    S.reconcile(st, storage, [Job("a")], datetime.now())
    t = S.claim(st, storage, {"a"})
    dead = subprocess.Popen(["true"])
    dead.wait()
    storage.set_trial_user_attr(t._trial_id, "pid", dead.pid)  # as if that process claimed it
    storage.set_trial_user_attr(t._trial_id, "pid_start", "1")
    failed = S.reconcile(st, storage, [Job("a")], datetime.now())
    assert [f.number for f in failed] == [t.number]
    assert S.failure(st.trials[t.number])["kind"] == "died"
    assert [x.state for x in st.get_trials()] == [TrialState.FAIL, TrialState.WAITING]


def test_a_trial_claimed_by_a_worker_that_died_at_once_is_run_again(study, monkeypatch):
    st, storage = study
    S.reconcile(st, storage, [Job("a")], datetime.now())
    (waiting,) = st.get_trials()
    storage.set_trial_state_values(waiting._trial_id, TrialState.RUNNING)  # no pid, no beat
    assert S.reconcile(st, storage, [Job("a")], datetime.now()) == []  # within the grace
    monkeypatch.setattr(S, "GRACE_INTERVALS", 0)
    (failed,) = S.reconcile(st, storage, [Job("a")], datetime.now())
    assert S.failure(failed)["message"] == "its worker died as it claimed the trial"
    assert st.get_trials()[-1].state == TrialState.WAITING


def test_a_silent_trial_of_another_machine_is_failed_after_the_grace(
    study_url, study_name, monkeypatch
):
    monkeypatch.setattr(S, "GRACE_INTERVALS", 1)
    storage = S.open_storage(study_url, heartbeat_s=1)  # grace 1 s
    st = S.open_study(storage, study_name, {"mode": "grid"})
    S.reconcile(st, storage, [Job("a")], datetime.now())
    t = S.claim(st, storage, {"a"})
    storage.set_trial_user_attr(t._trial_id, "host", "elsewhere/boot")
    storage.record_heartbeat(t._trial_id)
    assert S.reconcile(st, storage, [Job("a")], datetime.now()) == []  # still beating
    time.sleep(2.2)
    failed = S.reconcile(st, storage, [Job("a")], datetime.now())
    assert [f.number for f in failed] == [t.number]
    assert st.get_trials()[-1].state == TrialState.WAITING


def test_errors_are_retried_by_the_next_command_not_this_one(study):
    st, storage = study
    start = datetime.now()
    S.reconcile(st, storage, [Job("a")], start)
    t = S.claim(st, storage, {"a"})
    S.fail_trial(storage, t, "error", "boom")
    S.reconcile(st, storage, [Job("a")], start)
    assert len(st.get_trials()) == 1  # not in the command where it failed
    S.reconcile(st, storage, [Job("a")], datetime.now())  # the next command
    assert st.get_trials()[-1].state == TrialState.WAITING


def test_a_job_enqueued_twice_runs_once(study):
    st, storage = study
    for _ in range(2):  # two machines that both saw the job missing
        st.enqueue_trial({}, user_attrs={"key": "a", "params": {}})
    second = S.claim(st, storage, {"a"})
    first_claimed_later = S.claim(st, storage, {"a"})
    assert S.owner_of(st, second) is None  # the lower number owns the job
    assert S.owner_of(st, first_claimed_later) == second.number


def test_a_study_of_another_sweep_is_refused(study_url, study_name):
    S.open_study(S.open_storage(study_url), study_name, {"mode": "grid", "base": {"lr": 0.1}})
    with pytest.raises(S.SweepError, match=r"lr: study 0\.1, now 0\.2") as info:
        S.open_study(S.open_storage(study_url), study_name, {"mode": "grid", "base": {"lr": 0.2}})
    password = make_url(study_url).password
    assert not password or password not in str(info.value)  # shown as ***


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
    assert not any((sweep / "trials").iterdir())  # no trial was trained


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
    assert code == 0 and "already evaluated" in out
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
        cfg = (sweep / t.user_attrs["run_dir"] / "config.yaml").read_text()
        assert f"l2: {t.params['l2']}" in cfg


# --------------------------------------------------------------------------------------------
# Real data: kill and resume, two workers


def _wait(predicate, timeout: float, proc: subprocess.Popen | None = None) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the sweep exited ({proc.returncode}) before the condition")
        time.sleep(0.05)
    raise AssertionError("timed out")


def _training_second_trial(sweep: Path) -> bool:
    """True once one trial is COMPLETE and another has started training (its config written)."""
    if not (sweep / "study.db").exists():
        return False
    try:
        trials = load(sweep).get_trials()
    except Exception:  # the study is being created
        return False
    return any(t.state == TrialState.COMPLETE for t in trials) and any(
        t.state == TrialState.RUNNING and "run_dir" in t.user_attrs
        and (sweep / t.user_attrs["run_dir"] / "config.yaml").exists() for t in trials
    )  # fmt: skip


def test_killed_sweep_resumes_without_repeating_finished_trials(tmp_path, real_data_dir):
    sweep = tmp_path / "s"
    cmd = reglab("sweep", "--dir", str(sweep), "--data-dir", str(real_data_dir), *TINY,
                 "--grid", "l2=0,1e-3", "--seeds", "2")  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait(lambda: _training_second_trial(sweep), 120, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    before = load(sweep).get_trials()
    done = {t.user_attrs["key"]: t.number for t in before if t.state == TrialState.COMPLETE}
    (killed,) = [t for t in before if t.state == TrialState.RUNNING]
    stamps = {n: (sweep / before[n].user_attrs["run_dir"] / "summary.json").stat().st_mtime_ns
              for n in done.values()}  # fmt: skip

    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    study = load(sweep)
    complete = completed_by_key(study)
    assert sorted(complete) == sorted(f"l2={v} seed={s}" for v in ("0", "0.001") for s in (0, 1))
    assert all(len(ts) == 1 for ts in complete.values())  # nothing ran twice
    for key, number in done.items():  # the finished trials are the same, files untouched
        assert complete[key][0].number == number
        path = sweep / study.trials[number].user_attrs["run_dir"] / "summary.json"
        assert path.stat().st_mtime_ns == stamps[number]
    dead = study.trials[killed.number]
    assert dead.state == TrialState.FAIL and S.failure(dead)["kind"] == "died"
    stale = sweep / dead.user_attrs["run_dir"]
    assert json.loads((stale / "trial.json").read_text())["state"] == "FAIL"
    assert not (stale / "summary.json").exists()
    rerun = complete[killed.user_attrs["key"]][0]
    assert rerun.user_attrs["run_dir"] != dead.user_attrs["run_dir"]  # a fresh directory
    assert f"{len(done)} done already" in again.stdout
    assert "Best on the holdout set" in again.stdout


def test_two_worker_processes_share_one_study(tmp_path, real_data_dir):
    """--workers 2: two processes claim from one SQLite study (their first reconcile races
    for the enqueue lock); every job runs exactly once."""
    sweep = tmp_path / "s"
    cmd = reglab("sweep", "--dir", str(sweep), "--data-dir", str(real_data_dir), *TINY,
                 "--grid", "l2=0,1e-4,1e-3,1e-2", "--workers", "2")  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 worker(s) x 1 thread(s)" in done.stdout
    study = load(sweep)
    complete = completed_by_key(study)
    assert len(complete) == 4 and all(len(ts) == 1 for ts in complete.values())  # none lost
    trials = study.get_trials()
    assert len(trials) == 4, [(t.number, t.state, t.user_attrs) for t in trials]  # none twice
    assert len(list((sweep / "trials").iterdir())) == 4
    assert done.stdout.count("[sweep] trial ") == 4  # the live view: one line per trial


# --------------------------------------------------------------------------------------------
# PostgreSQL: one study shared by the workers of several machines


@pytest.fixture
def pg_study(postgres_url, study_name):
    """(URL, study name) of a new study in the PostgreSQL test database, deleted afterwards."""
    yield postgres_url, study_name
    _delete_study(postgres_url, study_name)


def _pg_sweep(machine: Path, data_dir: Path, url: str, name: str, grid: str) -> list[str]:
    """The command as docs/sweeps.md has it for several machines: the same on each, with the
    machine's own --dir (the study is named, so the folder's name need not match)."""
    return reglab("sweep", "--dir", str(machine / "sweep"), "--data-dir", str(data_dir), *TINY,
                  "--grid", grid, "--storage", url, "--study-name", name)  # fmt: skip


def _no_password(url: str, output: str, folder: Path) -> None:
    """The URL's password is neither in ``output`` nor in any file under ``folder``."""
    password = make_url(url).password
    if not password:
        return
    assert password not in output
    for f in folder.rglob("*"):
        assert not f.is_file() or password.encode() not in f.read_bytes(), f


def test_workers_on_two_machines_share_one_postgresql_study(tmp_path, real_data_dir, pg_study):
    """Two `reglab sweep --storage postgresql://...` processes, each with its own --dir as on two
    machines (no file lock between them: both may enqueue a job; then the lower trial number
    owns it and the other is failed as a duplicate, untrained): every job runs exactly once."""
    url, name = pg_study
    values = ("0", "0.0001", "0.001", "0.01", "0.1", "1")
    machines = [tmp_path / "m1", tmp_path / "m2"]
    procs = [subprocess.Popen(_pg_sweep(m, real_data_dir, url, name, "l2=" + ",".join(values)),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for m in machines]  # fmt: skip
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
    trials = study.get_trials()
    extra = [t for t in trials if t.state != TrialState.COMPLETE]
    assert all(S.is_duplicate(t) and "run_dir" not in t.user_attrs for t in extra), [
        (t.number, t.state, t.user_attrs) for t in extra]  # fmt: skip
    # each run directory is on the machine whose worker trained it, and nowhere else
    where = {p.pid: m for p, m in zip(procs, machines)}
    for (t,) in complete.values():
        mine = where[t.user_attrs["pid"]] / "sweep"
        assert (mine / t.user_attrs["run_dir"] / "summary.json").is_file()
        record = json.loads((mine / t.user_attrs["run_dir"] / "trial.json").read_text())
        assert record["state"] == "COMPLETE" and record["study"] == name
    dirs = [d.name for m in machines for d in (m / "sweep" / "trials").iterdir()]
    assert sorted(dirs) == sorted(Path(t.user_attrs["run_dir"]).name
                                  for (t,) in complete.values())  # fmt: skip
    # the last to finish saw the whole sweep done, an earlier one the other's running trials;
    # the password is in no output or file
    assert any(f"{len(values)}/{len(values)} done" in out for out in outs), outs
    for m, out in zip(machines, outs):
        assert f"{len(values)}/{len(values)} done" in out or "running in other workers" in out
        _no_password(url, out, m)


def test_a_postgresql_sweep_run_again_repeats_nothing(tmp_path, real_data_dir, pg_study):
    url, name = pg_study
    cmd = _pg_sweep(tmp_path / "m1", real_data_dir, url, name, "l2=0,1e-3")
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stdout + first.stderr
    before = optuna.load_study(study_name=name, storage=url).get_trials()
    assert [t.state for t in before] == [TrialState.COMPLETE] * 2
    sweep = tmp_path / "m1" / "sweep"
    stamps = {p: p.stat().st_mtime_ns for p in sweep.glob("trials/*/summary.json")}
    assert len(stamps) == 2

    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "2 trials, 2 done already" in again.stdout
    assert "[sweep] trial " not in again.stdout  # nothing ran
    after = optuna.load_study(study_name=name, storage=url).get_trials()
    assert [(t.number, t.state, t.value) for t in after] == [
        (t.number, t.state, t.value) for t in before]  # fmt: skip
    assert {p: p.stat().st_mtime_ns for p in sweep.glob("trials/*/summary.json")} == stamps
    assert "Best on the holdout set" in again.stdout
    # and a second machine joining the finished sweep finds nothing to do either
    other = subprocess.run(_pg_sweep(tmp_path / "m2", real_data_dir, url, name, "l2=0,1e-3"),
                           capture_output=True, text=True, timeout=300)  # fmt: skip
    assert other.returncode == 0, other.stdout + other.stderr
    assert "2 done already" in other.stdout
    assert len(optuna.load_study(study_name=name, storage=url).get_trials()) == 2
    assert not any((tmp_path / "m2" / "sweep" / "trials").iterdir())
