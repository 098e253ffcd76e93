"""One training step, and evaluation: the two things the loop (and the audit) call.

The step's contract, which the audit relies on: the loss minimised is the data loss plus the
plan's loss term; after backward, ``probe("gradient")`` sees the gradients the optimizer will
use (every gradient-side regularizer applied), ``probe("update")`` the weights just after
``optimizer.step()``, ``probe("final")`` the weights after the plan's after_step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class StepOutput:
    logits: torch.Tensor
    data_loss: torch.Tensor  # mean cross entropy of the batch (label smoothing included)
    finite: torch.Tensor | None  # bool tensor on the device: loss and gradients finite (guarded)
    applied: bool = True  # False when a non-finite step was skipped


def grads_finite(params: list[torch.Tensor], loss: torch.Tensor) -> torch.Tensor:
    """One bool on the device, True iff the loss and every gradient are finite (no sync)."""
    grads = [p.grad for p in params if p.grad is not None]
    norm = torch.nn.utils.get_total_norm(grads, foreach=True) if grads else loss.new_zeros(())
    return torch.isfinite(loss) & torch.isfinite(norm)


def train_step(
    forward: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    reg,
    optimizer: torch.optim.Optimizer,
    lr: float,
    label_smoothing: float = 0.0,
    autocast: Callable[[], Any] = nullcontext,
    probe: Callable[[str], None] | None = None,
    guard: str | None = None,
    scaler: torch.amp.GradScaler | None = None,
) -> StepOutput:
    """One update at learning rate ``lr`` (times each parameter group's ``lr_scale`` and
    ``fade``).

    ``reg`` is the regularization plan (:class:`reglab.regularization.Regularization`).
    ``guard`` None: no check; "stop": compute the finite flag (on the device, no sync) for the
    loop to check; "skip-step": also skip the update when it is False (one sync per step).
    ``scaler``: fp16's gradient scaler (gradients are unscaled before the regularizers act).
    """
    for group in optimizer.param_groups:  # lr_scale, fade: see optim.param_groups
        group["lr"] = lr * group.get("lr_scale", 1.0) * group.get("fade", 1.0)
    with autocast():
        logits = forward(x)
        # the loss in at least float32 (bf16 logits under autocast; float64 kept for the audit)
        wide = logits if logits.dtype == torch.float64 else logits.float()
        data_loss = F.cross_entropy(wide, y, label_smoothing=label_smoothing)
    term = reg.loss_term()
    loss = data_loss if term is None else data_loss + term
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    else:
        loss.backward()
    finite = None
    if guard is not None:
        params = [p for g in optimizer.param_groups for p in g["params"]]
        finite = grads_finite(params, loss)
        if guard == "skip-step" and not bool(finite):
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.update()
            return StepOutput(logits, data_loss, finite, applied=False)
    reg.before_step(lr)
    if probe is not None:
        probe("gradient")
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    if probe is not None:
        probe("update")
    reg.after_step(lr)
    if probe is not None:
        probe("final")
    return StepOutput(logits, data_loss, finite)


def tta_views(x: torch.Tensor, flip: bool, translate: bool) -> list[tuple[float, torch.Tensor]]:
    """The test-time views of a batch (N, C, H, W) and their weights (summing to 1), airbench's
    scheme: the image (and with ``flip`` its mirror image) at weight 1/2 when ``translate``, else
    1; with ``translate`` also the image shifted one pixel up-left and one down-right (reflect
    padding), each at weight 1/4, mirrored too with ``flip``."""
    def with_mirror(v: torch.Tensor, weight: float) -> list[tuple[float, torch.Tensor]]:
        return [(weight / 2, v), (weight / 2, v.flip(-1))] if flip else [(weight, v)]

    if not translate:
        return with_mirror(x, 1.0)
    h, w = x.shape[-2:]
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    up_left, down_right = padded[..., :h, :w], padded[..., 2:, 2:]
    return with_mirror(x, 0.5) + with_mirror(up_left, 0.25) + with_mirror(down_right, 0.25)


def selective_tta_logits(model: nn.Module, x: torch.Tensor, flip: bool, translate: bool,
                         fraction: float) -> torch.Tensor:  # fmt: skip
    """The plain logits of ``x``, with the TTA logits (:func:`tta_views`) in place of the plain
    ones for the ceil(``fraction`` x N) images of lowest softmax confidence (max probability).
    The first view is the image itself: its logits are the plain ones, not computed again."""
    logits = model(x).float()
    k = math.ceil(fraction * len(x))
    uncertain = logits.softmax(1).amax(1).topk(k, largest=False).indices
    (w0, _), *others = tta_views(x[uncertain], flip, translate)
    logits[uncertain] = w0 * logits[uncertain] + sum(w * model(v).float() for w, v in others)
    return logits


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches,
    tta: bool = False,
    autocast: Callable[[], Any] = nullcontext,
    tta_translate: bool = False,
    tta_fraction: float = 1.0,
) -> tuple[float, float, int]:
    """(mean cross entropy, accuracy, images) over ``batches`` of (x, y), batch norm in eval
    mode (the model's mode is restored). ``tta`` averages the logits of each image and its mirror
    image, ``tta_translate`` also of its one-pixel translations (:func:`tta_views`).
    ``tta_fraction`` < 1 (hiverge's selective TTA) runs those views only for the ceil(fraction x
    batch) images of each batch whose plain softmax confidence is lowest; the others keep their
    plain logits. One device synchronisation, at the end."""
    was_training = model.training
    model.eval()
    loss_sum = correct = None
    n = 0
    for x, y in batches:
        with autocast():
            if (tta or tta_translate) and tta_fraction < 1:
                logits = selective_tta_logits(model, x, tta, tta_translate, tta_fraction)
            else:
                logits = sum(weight * model(v).float() for weight, v in tta_views(x, tta,
                                                                                  tta_translate))
        loss = F.cross_entropy(logits, y, reduction="sum")
        hits = (logits.argmax(1) == y).sum()
        loss_sum = loss if loss_sum is None else loss_sum + loss
        correct = hits if correct is None else correct + hits
        n += len(y)
    model.train(was_training)
    if n == 0:
        return float("nan"), float("nan"), 0
    return loss_sum.item() / n, correct.item() / n, n
