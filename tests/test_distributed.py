"""torchrun data parallelism on CPU (gloo): 2 processes with batch B each are one process with
batch 2B (same images, same augmentation, gradients averaged), the regularization reaches the
gradients exactly once (not twice, not never), only rank 0 writes, and resume works under
torchrun.

The network is a small conv net without batch norm, registered by the test's entry script: batch
norm is per process by default (and torch's SyncBatchNorm runs on GPUs only), which would make
2 x B differ from 2B by design; with plain convolutions the only difference left is the order of
floating-point sums, so weights agree to 1e-5.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

ENTRY = textwrap.dedent("""
    import torch.nn as nn
    import reglab

    @reglab.register_model("plain-cnn", min_image_size=8)
    def plain_cnn(num_classes=10, dropout=0.0, block_dropout=0.0):
        return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                             nn.Flatten(), nn.Linear(32, num_classes))

    from reglab.cli import main
    raise SystemExit(main())
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(tmp: Path, args: list[str], nproc: int = 1) -> subprocess.CompletedProcess:
    entry = tmp / "entry.py"
    entry.write_text(ENTRY)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).resolve().parents[1] / "src"), os.environ.get("PYTHONPATH", "")])}
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}",
               "--master-addr=127.0.0.1", f"--master-port={free_port()}", str(entry)]  # fmt: skip
    else:
        cmd = [sys.executable, str(entry)]
    proc = subprocess.run([*cmd, *args], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def weights(run: Path) -> dict[str, torch.Tensor]:
    last = max((run / "checkpoints").glob("step-*.pt"))
    return torch.load(last, weights_only=True)["model"]


def distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.mark.slow
def test_two_gloo_processes_equal_one_process_with_the_global_batch(tmp_path, real_data_dir):
    common = ["train", "--model", "plain-cnn", "--image-size", "32", "--data-dir",
              str(real_data_dir), "--train-limit", "1024", "--holdout", "128", "--steps", "8",
              "--lr", "0.05", "--augment", "flip-crop", "--device", "cpu", "--threads", "1",
              "--log-every", "4", "--val-every", "8", "--checkpoint-every", "4",
              "--precision", "fp32", "--no-tensorboard", "--runs-dir", str(tmp_path)]  # fmt: skip
    # fp32: the tolerances are fp32 rounding's (auto is bf16 on AVX512-BF16 / AMX CPUs)
    lam = ["--reg", "wd=0.5@*"]  # strong, on every tensor: once or twice is far apart
    ddp = launch(tmp_path, [*common, *lam, "--batch-size", "16", "--name", "ddp"], nproc=2)
    for name, reg in (("one", lam), ("twice", ["--reg", "wd=1.0@*"]), ("never", [])):
        launch(tmp_path, [*common, *reg, "--batch-size", "32", "--name", name])
    w = {n: weights(tmp_path / n) for n in ("ddp", "one", "twice", "never")}
    assert distance(w["ddp"], w["one"]) < 1e-5
    assert distance(w["ddp"], w["twice"]) > 1e-3 and distance(w["ddp"], w["never"]) > 1e-3

    # rank 0 alone wrote the run, and says where it ran
    assert "x 2 processes (gloo)" in ddp.stdout and ddp.stdout.count("[summary]: 8 steps") == 1
    env = json.loads((tmp_path / "ddp" / "summary.json").read_text())["environment"]
    assert (env["world_size"], env["backend"]) == (2, "gloo")
    assert len((tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()) == 3  # 2 + 1

    # resume under torchrun: 8 more steps equal one process trained 16 steps straight
    launch(tmp_path, ["train", "--resume", str(tmp_path / "ddp"), "--steps", "16", "--threads",
                      "1"], nproc=2)  # fmt: skip
    launch(tmp_path, [*common, *lam, "--batch-size", "32", "--steps", "16", "--name", "long"])
    assert distance(weights(tmp_path / "ddp"), weights(tmp_path / "long")) < 1e-5


@pytest.mark.slow
def test_airbench_methods_under_two_gloo_processes_equal_one_process(tmp_path, real_data_dir):
    """Lookahead (acting on each rank's unwrapped model), Muon (on the all-reduced gradients) and
    the alternating flip (its bits from the shared seed) keep 2 x B equal to one process with 2B."""
    common = ["train", "--model", "plain-cnn", "--image-size", "32", "--data-dir",
              str(real_data_dir), "--train-limit", "1024", "--holdout", "128", "--steps", "8",
              "--lr", "0.05", "--augment", "altflip-translate", "--lookahead-every", "2",
              "--optimizer", "muon", "--muon-lr", "0.05", "--reg", "wd=0.1@linear.weight",
              "--device", "cpu", "--threads", "1", "--log-every", "4", "--val-every", "8",
              "--precision", "fp32", "--no-tensorboard", "--runs-dir", str(tmp_path)]  # fmt: skip
    launch(tmp_path, [*common, "--batch-size", "16", "--name", "ddp"], nproc=2)
    launch(tmp_path, [*common, "--batch-size", "32", "--name", "one"])
    w = {n: weights(tmp_path / n) for n in ("ddp", "one")}
    # the gradients agree to the order of float sums (~1e-7), and Muon's Newton-Schulz iteration
    # raises small singular directions up to a³ = 3.4445³ ≈ 41 times: measured 1.4e-4 (with
    # nesterov instead of muon 9e-6), against 0.6 between two seeds of the one-process run
    assert distance(w["ddp"], w["one"]) < 1e-3
    state = torch.load(max((tmp_path / "ddp" / "checkpoints").glob("step-*.pt")),
                       weights_only=False)  # fmt: skip
    assert "lookahead" in state and state["optimizer"]["param_groups"][0]["use_muon"]
