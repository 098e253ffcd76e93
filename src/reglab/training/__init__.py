"""Training: building a run (build), one step (step), the loop (loop), checkpoints, run
directories, optimizers and schedules, precision, and torchrun's data parallelism."""

from reglab.training.builder import Setup, audit_run, build
from reglab.training.loop import NonFiniteError, RunResult, run, train
from reglab.training.optim import build_optimizer, lr_at
from reglab.training.rundir import RunDir, RunDirError, read_metrics
from reglab.training.step import evaluate, train_step

__all__ = ["NonFiniteError", "RunDir", "RunDirError", "RunResult", "Setup", "audit_run", "build",
           "build_optimizer", "evaluate", "lr_at", "read_metrics", "run", "train",
           "train_step"]  # fmt: skip
