"""Optimizers and learning-rate schedules.

Schedules are pure functions of the step: ``lr_at(step, ...)`` gives the learning rate used for
update number ``step`` (0-based), so a run can be resumed or audited at any step.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from reglab.regularization.scope import NORM_TYPES
from reglab.training.muon import Muon, muon_params


def param_groups(
    model: nn.Module,
    norm_bias_lr_scale: float = 1.0,
    muon_lr_scale: float | None = None,
    muon_momentum: float = 0.6,
    whiten_bias_steps: int = 0,
) -> list[dict[str, Any]]:
    """The trainable parameters as optimizer groups, each with its ``lr_scale`` (the step sets
    each group's lr to lr(step) · lr_scale):

    - normalization layers' biases at ``norm_bias_lr_scale`` (airbench's bias_scaler, 64: batch
      norm shifts learn 64 times faster than the weights);
    - with ``whiten_bias_steps``, the whitening layer's bias (``model.whiten``) at the same scale,
      fading linearly to 0 over that many steps and frozen after (airbench94_muon, over 3
      epochs): its ``fade_steps``, applied by :func:`fade_groups`;
    - with ``muon_lr_scale``, the conv filters for Muon (``use_muon``, their own momentum);
    - everything else at 1.

    One group when all of it is off, so that earlier runs' optimizer state keeps its layout."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    if norm_bias_lr_scale == 1.0 and muon_lr_scale is None and not whiten_bias_steps:
        return [{"params": trainable, "lr_scale": 1.0}]
    key: dict[int, str] = {}
    for m in model.modules():
        if isinstance(m, NORM_TYPES) and m.bias is not None and norm_bias_lr_scale != 1.0:
            key[id(m.bias)] = "norm_bias"
    if muon_lr_scale is not None:
        key.update((id(p), "muon") for p in muon_params(model))
    if whiten_bias_steps:
        key[id(model.whiten.bias)] = "whiten_bias"
    spec = {
        "norm_bias": {"lr_scale": norm_bias_lr_scale},
        "whiten_bias": {"lr_scale": norm_bias_lr_scale, "fade_steps": whiten_bias_steps},
        "muon": {"lr_scale": muon_lr_scale, "use_muon": True, "momentum": muon_momentum},
        "rest": {"lr_scale": 1.0},
    }
    groups = [{"params": [p for p in trainable if key.get(id(p), "rest") == k], **extra}
              for k, extra in spec.items()]  # fmt: skip
    return [g for g in groups if g["params"]]


def fade_groups(optimizer: torch.optim.Optimizer, step: int, freeze: bool = True) -> None:
    """Before update ``step`` (0-based): groups with ``fade_steps`` F get the lr factor
    max(0, 1 − step/F) (0 from step F on: frozen), which the step multiplies in.

    With ``freeze``, from step F on their parameters also stop taking gradients
    (``requires_grad`` off): they would not move anyway, and backward no longer computes what
    only they need. For the whitening bias that is the first conv's input gradient, the
    largest of the network's (a step of 1000 images without it on the 2-core AVX2 EPYC: 0.89x
    the time for airbench, 0.92x for airbench94; bench/frozen_bias.py). The updates are the
    same (tests/test_muon.py). A function of ``step`` alone, so a resumed run
    freezes where the uninterrupted one did. DDP expects the same parameters to take gradients
    every step: a distributed run passes ``freeze=False``."""
    for group in optimizer.param_groups:
        if group.get("fade_steps"):
            group["fade"] = max(0.0, 1.0 - step / group["fade_steps"])
            if freeze and group["fade"] == 0.0:
                for p in group["params"]:
                    p.requires_grad_(False)
                    p.grad = None


def build_optimizer(
    name: str, params: Iterable[torch.nn.Parameter] | Iterable[dict[str, Any]], lr: float,
    momentum: float,
) -> torch.optim.Optimizer:
    """sgd: momentum SGD (the tutorial's); nesterov: SGD with Nesterov momentum; adamw: Adam with
    β1 = ``momentum``, β2 = 0.999 and its own weight decay off (reglab applies decay itself);
    muon: Muon on the groups marked ``use_muon``, Nesterov SGD on the rest
    (:class:`reglab.training.muon.Muon`). ``params``: tensors, or groups from
    :func:`param_groups`."""
    params = list(params)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum)
    if name == "nesterov":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=True)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=(momentum, 0.999), weight_decay=0.0)
    if name == "muon":
        return Muon(params, lr=lr, momentum=momentum)
    raise ValueError(f"unknown optimizer {name!r}")


def lr_at(
    step: int,
    total_steps: int,
    base_lr: float,
    schedule: str = "constant",
    warmup_steps: int = 0,
    milestones: Sequence[float] = (0.5, 0.75),
    gamma: float = 0.1,
) -> float:
    """Learning rate for update ``step`` in [0, total_steps).

    Warm-up: linear from base_lr/warmup_steps to base_lr over the first ``warmup_steps`` updates.
    Then ``constant``; ``step``: × gamma at each milestone (fractions of total_steps); ``cosine``:
    half-cosine from base_lr to 0; ``linear``: straight line from base_lr to 0 at the last step.
    """
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return base_lr
    if schedule == "step":
        passed = sum(step >= int(m * total_steps) for m in milestones)
        return base_lr * gamma**passed
    span = max(total_steps - warmup_steps, 1)
    t = (step - warmup_steps) / span  # 0 at the end of warm-up, -> 1 at the end
    if schedule == "cosine":
        return base_lr * 0.5 * (1 + math.cos(math.pi * t))
    if schedule == "linear":
        return base_lr * (1 - t)
    raise ValueError(f"unknown schedule {schedule!r}")
