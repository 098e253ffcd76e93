"""Training: optimizers and schedules, the loop, run directories."""

from reglab.training.loop import evaluate, train
from reglab.training.optim import build_optimizer, lr_at
from reglab.training.rundir import RunDir, read_metrics

__all__ = ["RunDir", "build_optimizer", "evaluate", "lr_at", "read_metrics", "train"]
