"""Checkpoints, guards and run directories that never report a wrong result: a torn or corrupt
checkpoint is detected and the previous one used, a full disk is a clear error that leaves the
previous checkpoint intact, a non-finite loss stops the run on the step it happens naming the
likely cause (or the step is skipped), --overwrite removes every result of the old run, and a
crashed run has no summary.json."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import synthetic_cifar

from reglab.config import TrainConfig
from reglab.training import NonFiniteError, RunDir, train
from reglab.training.checkpoint import (
    CheckpointError,
    checkpoints,
    load_latest,
    read_checkpoint,
    save_checkpoint,
)


def tiny(**kw) -> TrainConfig:
    base = dict(model="airbench", image_size=32, batch_size=16, steps=12, optimizer="sgd",
                lr=0.05, log_every=4, val_every=12, eval_batch_size=32, device="cpu",
                channels_last=False, threads=1, tensorboard=False, checkpoint_every=4)
    base.update(kw)
    return TrainConfig(**base).validate()


def state(step: int) -> dict:
    return {"model": {"w": torch.full((4,), float(step))}, "loop": {"step": step}}


def test_checkpoints_are_verified_and_the_last_good_one_is_used(tmp_path):
    for step in (4, 8, 12):
        save_checkpoint(tmp_path, step, state(step), keep=3)
    assert [s for s, _ in checkpoints(tmp_path)] == [12, 8, 4]
    newest = tmp_path / "step-0000012.pt"
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF  # a flipped byte: torch.load might still read it
    newest.write_bytes(bytes(data))
    (tmp_path / "step-0000008.sha256").unlink()  # a write cut before its checksum
    loaded, notes = load_latest(tmp_path)
    assert loaded["step"] == 4 and torch.equal(loaded["model"]["w"], torch.full((4,), 4.0))
    assert notes == ["skipped the checkpoint of step 12: checksum mismatch (torn or corrupted)",
                     "skipped the checkpoint of step 8: no checksum (cut short)"]  # fmt: skip
    # one named checkpoint: read as load_latest reads it, or refused in one line
    assert read_checkpoint(tmp_path / "step-0000004.pt")["step"] == 4
    with pytest.raises(CheckpointError, match=r"step-0000012.pt not read: checksum mismatch"):
        read_checkpoint(newest)
    save_checkpoint(tmp_path, 16, state(16), keep=2)  # the newest two valid ones are kept
    assert [s for s, _ in checkpoints(tmp_path)] == [16, 4]
    assert torch.load(tmp_path / "step-0000016.pt", weights_only=True)["step"] == 16  # plain torch


def test_a_full_disk_is_a_clear_error_and_the_previous_checkpoint_survives(tmp_path):
    """The write fails for real: a child process whose file size limit (RLIMIT_FSIZE) is smaller
    than the checkpoint, as on a full disk (EFBIG instead of ENOSPC, the same path)."""
    script = textwrap.dedent(f"""
        import resource, signal, torch
        from pathlib import Path
        from reglab.training.checkpoint import CheckpointError, save_checkpoint
        folder = Path({str(tmp_path)!r})
        save_checkpoint(folder, 1, {{"model": {{"w": torch.zeros(10)}}}})
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
        try:
            save_checkpoint(folder, 2, {{"model": {{"w": torch.zeros(100_000)}}}})
        except CheckpointError as e:
            print(e)
    """)
    src = str(Path(__file__).resolve().parents[1] / "src")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": src}, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    message = out.stdout.strip()
    assert message.startswith("cannot write the checkpoint of step 2 in ") and "\n" not in message
    assert "free disk space" in message and "the checkpoint of step 1 is intact" in message
    loaded, notes = load_latest(tmp_path)
    assert loaded["step"] == 1 and notes == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-0000001.pt", "step-0000001.sha256"]


def test_a_diverging_run_stops_on_the_step_naming_the_learning_rate(tmp_path):
    run = RunDir(tmp_path / "r")
    with pytest.raises(NonFiniteError) as info:
        train(tiny(lr=1e6, steps=40, checkpoint_every=2), run_dir=run, data=synthetic_cifar(),
              quiet=True)  # fmt: skip
    message = str(info.value)
    step = int(message.split("at step ")[1].split(" ")[0].rstrip(":"))
    assert "the learning rate 1e+06 is the likely cause: lower --lr" in message
    assert "last good checkpoint" in message
    # caught on the step it happened: every checkpoint on disk is finite and older than it
    for s, path in checkpoints(run.checkpoint_dir):
        assert s < step
        weights = torch.load(path, weights_only=True)["model"]
        assert all(torch.isfinite(t).all() for t in weights.values() if t.is_floating_point())
    assert not (run.path / "summary.json").exists()  # a crashed run is never reported complete


def test_a_regularization_coefficient_that_diverges_is_named(tmp_path):
    with pytest.raises(NonFiniteError, match=r"l2=2000 with lr 0\.05 is unstable on its own .* "
                                             r"lower the coefficient of l2"):  # fmt: skip
        train(tiny(l2=2000.0, steps=60), data=synthetic_cifar(), quiet=True)


def test_non_finite_data_is_named(monkeypatch):
    from reglab.data.pipeline import BatchPipeline

    next_batch = BatchPipeline.next_batch

    def corrupt(self):  # a batch with a NaN pixel, as a broken file or augmentation would give
        x, y = next_batch(self)
        x = x.clone()
        x.view(-1)[0] = float("nan")
        return x, y

    monkeypatch.setattr(BatchPipeline, "next_batch", corrupt)
    with pytest.raises(NonFiniteError, match="at step 1: the input batch itself holds NaN"):
        train(tiny(steps=4), data=synthetic_cifar(), quiet=True)


def test_skip_step_drops_non_finite_updates_and_goes_on(tmp_path, monkeypatch):
    from reglab.training import step as step_module

    calls = {"n": 0}
    original = step_module.grads_finite

    def flaky(params, loss):  # the 3rd and 5th steps' gradients are "not finite"
        calls["n"] += 1
        return torch.tensor(calls["n"] not in (3, 5)) & original(params, loss)

    monkeypatch.setattr(step_module, "grads_finite", flaky)
    result = train(tiny(on_nonfinite="skip-step", steps=8), data=synthetic_cifar(), quiet=True)
    assert result.skipped_steps == [3, 5]


def test_overwrite_removes_every_result_of_the_old_run(tmp_path):
    data = synthetic_cifar()
    path = tmp_path / "r"
    train(tiny(steps=4), run_dir=RunDir(path), data=data, quiet=True)
    assert (path / "summary.json").exists() and checkpoints(path / "checkpoints")
    (path / "metrics.csv").write_text("stale\n")
    run = RunDir(path, mode="overwrite")
    assert not any(path.iterdir())  # nothing of the old run survives into the new one
    with pytest.raises(NonFiniteError):
        train(tiny(lr=1e6, steps=40), run_dir=run, data=data, quiet=True)
    assert not (path / "summary.json").exists()  # the crash is not reported as the old result


def test_overwrite_refuses_a_folder_that_is_not_a_run(tmp_path):
    (tmp_path / "notes.txt").write_text("mine\n")
    with pytest.raises(Exception, match="not a reglab run directory"):
        RunDir(tmp_path, mode="overwrite")
    assert (tmp_path / "notes.txt").read_text() == "mine\n"


def test_resume_keeps_settings_and_refuses_contradictions(tmp_path, capsys, real_data_dir):
    from reglab.cli import main

    run = tmp_path / "r"
    args = ["train", "--preset", "quick-sgd", "--data-dir", str(real_data_dir), "--train-limit",
            "512", "--holdout", "128", "--batch-size", "64", "--steps", "4", "--runs-dir",
            str(tmp_path), "--name", "r", "--threads", "1", "--no-tensorboard"]  # fmt: skip
    assert main(args) == 0
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--lr", "0.5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("reglab: error: --lr 0.5 contradicts the run being resumed (lr: 0.2 in")
    assert main(["train", "--resume", str(run), "--steps", "6", "--threads", "1"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["resumed_at"] == [4]


def test_a_resumed_interval_keeps_its_time_per_batch(tmp_path, monkeypatch):
    """The log interval a checkpoint cuts in two is timed across both processes, and the audit
    and validations are not training time: with a clock that moves 1 s per training step, 50 s
    per audit and 100 s per validation, every logged s / batch is exactly 1, resumed or not, and
    the run's training seconds are its 12 steps."""
    import reglab.training.loop as loop

    clock = [0.0]

    def ticking(fn, seconds):
        def timed(*args, **kw):
            clock[0] += seconds
            return fn(*args, **kw)

        return timed

    monkeypatch.setattr(loop, "train_step", ticking(loop.train_step, 1.0))
    monkeypatch.setattr(loop, "audit_first_step", ticking(loop.audit_first_step, 50.0))
    monkeypatch.setattr(loop, "evaluate", ticking(loop.evaluate, 100.0))
    monkeypatch.setattr(loop.time, "perf_counter", lambda: clock[0])
    data = synthetic_cifar()
    # checkpoints at 4, 8, 12; train rows at 6, 12; validations at 5, 10, 12
    cfg = tiny(log_every=6, checkpoint_every=4, val_every=5)
    first = train(cfg, run_dir=RunDir(tmp_path / "r"), data=data, quiet=True)
    assert [r["s_per_batch"] for r in first.history if r["split"] == "train"] == [1.0, 1.0]
    assert (first.train_seconds, first.total_seconds) == (12.0, 362.0)
    for f in (tmp_path / "r" / "checkpoints").glob("step-0000012.*"):
        f.unlink()  # as if killed between steps 8 and 12: steps 7-8 timed before, 9-12 after
    resumed = train(cfg, run_dir=RunDir(tmp_path / "r", mode="resume"), data=data, quiet=True,
                    resume=True)  # fmt: skip
    rows = [r for r in resumed.history if r["split"] == "train"]
    assert [r["step"] for r in rows] == [6, 12]
    assert [r["s_per_batch"] for r in rows] == [1.0, 1.0]
    assert resumed.train_seconds == 12.0  # steps 1-8 before the kill, 9-12 after
