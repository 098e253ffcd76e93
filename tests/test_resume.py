"""A run killed with SIGKILL at any moment and resumed is the same run: final weights identical
bit for bit on CPU, the same metrics.jsonl rows (elapsed time aside).

The kills are real SIGKILLs of a real ``reglab train`` process, delivered from inside it at
chosen points by a fault injector that the test puts on the subprocess's path (tests/ only:
nothing in reglab knows about it): at a training step, in the middle of a validation, and in the
middle of a checkpoint write (a torn temporary file; a checkpoint renamed into place but killed
before its checksum).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

INJECTOR = textwrap.dedent('''
    """Kill this process (SIGKILL) at the point REGLAB_KILL names: step:N (before update N+1),
    eval:N (inside the N-th validation, after its first batch), ckpt-torn:N (half-way through
    writing the N-th checkpoint file), ckpt-unsummed:N (N-th checkpoint in place, no checksum)."""
    import os, signal

    what, _, n = os.environ.get("REGLAB_KILL", ":0").partition(":")
    n = int(n or 0)
    counts = {}

    def hit(kind):
        counts[kind] = counts.get(kind, 0) + 1
        return kind == what and counts[kind] == n

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    from reglab.data import pipeline
    from reglab.training import checkpoint, loop

    next_batch = pipeline.BatchPipeline.next_batch
    def patched_next_batch(self):
        if hit("step"):
            die()
        return next_batch(self)
    pipeline.BatchPipeline.next_batch = patched_next_batch

    evaluate = loop.evaluate
    def patched_evaluate(model, batches, *args, **kwargs):
        kill = hit("eval")
        def feed():
            for i, b in enumerate(batches):
                if kill and i == 1:
                    die()
                yield b
        return evaluate(model, feed(), *args, **kwargs)
    loop.evaluate = patched_evaluate

    write_atomic = checkpoint.write_atomic
    def patched_write_atomic(path, data):
        if path.suffix == ".pt" and hit("ckpt-torn"):
            tmp = path.with_name("." + path.name + ".tmp")
            with open(tmp, "wb") as f:
                f.write(data[: len(data) // 2])
            die()
        write_atomic(path, data)
        if path.suffix == ".pt" and hit("ckpt-unsummed"):
            die()
    checkpoint.write_atomic = patched_write_atomic

    from reglab.cli import main
    raise SystemExit(main())
''')


def reglab(tmp: Path, args: list[str], kill: str | None = None) -> subprocess.CompletedProcess:
    (tmp / "inject_kill.py").write_text(INJECTOR)
    env = {**os.environ, "REGLAB_KILL": kill or "", "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).resolve().parents[1] / "src"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, str(tmp / "inject_kill.py"), *args], env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    last = max((run / "checkpoints").glob("step-*.pt"))
    return torch.load(last, weights_only=True)["model"]


def rows(run: Path) -> list[dict]:
    out = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        r.pop("elapsed"), r.pop("s_per_batch", None)
        out.append(r)
    return out


def check_kills_and_resume(tmp: Path, base: list[str], kills: list[str]) -> None:
    ref = reglab(tmp, [*base, "--runs-dir", str(tmp), "--name", "reference"])
    assert ref.returncode == 0, ref.stderr[-2000:]
    args = [*base, "--runs-dir", str(tmp), "--name", "killed"]
    for kill in kills:
        p = reglab(tmp, args, kill=kill)
        assert p.returncode == -9, f"{kill}: the process was not killed ({p.returncode}) " + (
            p.stderr[-1500:])  # fmt: skip
        args = ["train", "--resume", str(tmp / "killed"), "--threads", "1"]
    done = reglab(tmp, args)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "[resume]: continuing from the checkpoint of step" in done.stdout
    a, b = final_weights(tmp / "reference"), final_weights(tmp / "killed")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after kill and resume"
    assert rows(tmp / "reference") == rows(tmp / "killed")
    summary = json.loads((tmp / "killed" / "summary.json").read_text())
    assert summary["status"] == "complete" and len(summary["resumed_at"]) == len(kills)


@pytest.mark.slow
def test_quick_sgd_preset_killed_anywhere_resumes_bit_exact(tmp_path, real_data_dir):
    base = ["train", "--preset", "quick-sgd", "--data-dir", str(real_data_dir), "--threads", "1",
            "--train-limit", "2048", "--holdout", "300", "--batch-size", "64", "--steps", "24",
            "--warmup-steps", "5", "--log-every", "4", "--val-every", "5",
            "--checkpoint-every", "3", "--eval-batch-size", "100", "--no-tensorboard"]  # fmt: skip
    rng = random.Random(7)  # random steps, reproducibly; then the places that must be survived
    steps = sorted(rng.sample(range(3, 22), 2))
    kills = [f"step:{steps[0]}", "ckpt-torn:3", f"step:{steps[1] - steps[0]}", "eval:1",
             "ckpt-unsummed:2"]  # fmt: skip
    check_kills_and_resume(tmp_path, base, kills)


@pytest.mark.slow
def test_tutorial_network_killed_and_resumed_is_bit_exact(tmp_path, real_data_dir):
    base = ["train", "--preset", "tutorial", "--data-dir", str(real_data_dir), "--threads", "1",
            "--image-size", "32", "--batch-size", "16", "--steps", "120", "--train-limit", "2048",
            "--holdout", "300", "--log-every", "20", "--val-every", "30",
            "--checkpoint-every", "25", "--eval-batch-size", "100",
            "--no-tensorboard"]  # fmt: skip
    check_kills_and_resume(tmp_path, base, ["step:45", "eval:2", "ckpt-torn:2"])


@pytest.mark.slow
def test_airbench_methods_killed_and_resumed_are_bit_exact(tmp_path, real_data_dir):
    """Lookahead's slow copy, the alternating flip's epoch (and the colour jitter's draws from
    the pipeline's generator) and Muon's momentum (with the whitening bias fading over the
    first 8 steps, and the first epoch at 16 px: progressive resizing's 0.73 of 22 steps are
    16) survive kills: in the checkpoint of step 16 (the epoch boundary, where the size
    changes: 16 steps of 64 images), at step 18 and in the last validation, so the run
    finishes from step 20, inside the second epoch."""
    base = ["train", "--preset", "cpu94", "--model", "airbench", "--data-dir", str(real_data_dir),
            "--threads", "1", "--train-limit", "1024", "--holdout", "500", "--batch-size", "64",
            "--steps", "22", "--warmup-steps", "5", "--log-every", "6", "--val-every", "11",
            "--checkpoint-every", "4", "--eval-batch-size", "250", "--no-tta-translate",
            "--lookahead-every", "5", "--norm-bias-lr-scale", "64", "--no-train-norm-weights",
            "--augment", "altflip-translate-jitter", "--optimizer", "muon", "--l2", "0",
            "--whiten-bias-epochs", "0.5", "--low-res-fraction", "0.73", "--low-res-size", "16",
            "--no-tensorboard"]  # fmt: skip
    check_kills_and_resume(tmp_path, base, ["ckpt-torn:4", "step:6", "eval:1"])
