"""The regularizers: one class per method, each acting at one point of the training step.

    loss = data_loss + plan.penalty()    l2, l1: the penalty's gradient reaches p.grad in backward
    loss.backward()
    plan.before_step(lr)                 wd: p.grad += wd·p, then decoupled-wd, decay-per-*: p *= c
    optimizer.step()
    plan.after_step(lr)                  prox-l1: soft-threshold p

``stage`` names where the audit compares a step with and without the regularizer: "gradient"
(p.grad just before optimizer.step()), "update" (p just after it) or "final" (p after
after_step); ``expected_change(w, lr)`` is what the formula says the difference there must be,
``w`` being the weights the method acts on: before the step for "gradient", just before
optimizer.step() for "update" (so that two decays on one tensor compose), after it for "final".
Parameters without a gradient in a step are skipped by the gradient- and parameter-side methods,
as torch.optim skips them.
"""

from __future__ import annotations

import torch

from reglab.regularization.penalties import (
    decay_rate_per_step,
    l1_penalty,
    l2_penalty,
    soft_threshold,
)
from reglab.regularization.rules import METHODS
from reglab.regularization.scope import NamedParams

STAGES = ("gradient", "update", "final")  # in the order they happen within a step


class Regularizer:
    """Base class: a method with a coefficient and the (named) parameters in its scope."""

    name = "none"
    stage = "gradient"

    def __init__(self, coef: float, params: NamedParams, label: str | None = None):
        self.coef = float(coef)
        self.params = list(params)
        self.label = label or f"{self.name}={self.coef:g}"

    @property
    def convention(self) -> str:
        return METHODS.get(self.name, "")

    @property
    def tensors(self) -> list[torch.nn.Parameter]:
        return [p for _, p in self.params]

    def penalty(self) -> torch.Tensor | None:
        """Term added to the minimised loss, or None."""
        return None

    def before_step(self, lr: float) -> None:
        """Called after backward, before optimizer.step()."""

    def after_step(self, lr: float) -> None:
        """Called after optimizer.step()."""

    formula = "?"  # the change at ``stage``, in the audit's error messages

    def expected_change(self, w: torch.Tensor, lr: float) -> torch.Tensor:
        """What this regularizer changes at ``stage`` in a parameter whose weights were ``w``
        where it acts (see the module docstring); the audit checks it."""
        raise NotImplementedError(f"{type(self).__name__} states no formula the audit can check")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.label}, {len(self.params)} tensors)"


class L2Penalty(Regularizer):
    """λ Σ‖w‖² added to the loss; its gradient is 2λw (no 1/2, the tutorial's and Keras')."""

    name = "l2"

    def penalty(self) -> torch.Tensor:
        return self.coef * l2_penalty(self.tensors)

    formula = "+2λw"

    def expected_change(self, w, lr):
        return 2 * self.coef * w


class HalfL2Penalty(Regularizer):
    """λ Σ‖w‖² / 2 added to the loss; its gradient is λw. TensorFlow's ``tf.nn.l2_loss`` (so
    tf-slim's ``l2_regularizer(λ)``, the tutorial's code) and, under SGD, torch.optim's
    ``weight_decay=λ``."""

    name = "l2-half"

    def penalty(self) -> torch.Tensor:
        return 0.5 * self.coef * l2_penalty(self.tensors)

    formula = "+λw"

    def expected_change(self, w, lr):
        return self.coef * w


class L1Penalty(Regularizer):
    """λ Σ|w| added to the loss; subgradient λ·sign(w) (0 at w = 0): weights shrink, rarely to 0."""

    name = "l1"

    def penalty(self) -> torch.Tensor:
        return self.coef * l1_penalty(self.tensors)

    formula = "+λ·sign(w)"

    def expected_change(self, w, lr):
        return self.coef * w.sign()


class CoupledWeightDecay(Regularizer):
    """torch.optim's ``weight_decay``: p.grad += wd·p before the optimizer, so the decay is scaled
    by lr and goes through momentum and Adam's normalisation. Under plain or momentum SGD it equals
    the L2 penalty with λ = wd/2; under Adam it does not."""

    name = "wd"

    @torch.no_grad()
    def before_step(self, lr: float) -> None:
        for p in self.tensors:
            if p.grad is not None:
                p.grad.add_(p, alpha=self.coef)

    formula = "+wd·w"

    def expected_change(self, w, lr):
        return self.coef * w


class DecoupledWeightDecay(Regularizer):
    """SGDW/AdamW: p ← (1 − lr·wd)·p outside the gradient, applied before the optimizer's update
    exactly as torch.optim.AdamW does; scaled by lr (it follows the schedule), not by momentum or
    Adam's normalisation."""

    name = "decoupled-wd"
    stage = "update"

    @torch.no_grad()
    def before_step(self, lr: float) -> None:
        for p in self.tensors:
            if p.grad is not None:
                p.mul_(1 - lr * self.coef)

    formula = "−lr·wd·w"

    def expected_change(self, w, lr):
        return -lr * self.coef * w


class DecayPerStep(Regularizer):
    """p ← (1 − r_step)·p before each update, whatever the learning rate (airbench's way: the decay
    does not move when lr or its schedule changes). ``per_examples`` None: r_step = coef;
    else coef is the fraction removed per ``per_examples`` examples and
    r_step = 1 − (1 − coef)^(batch_size / per_examples)."""

    name = "decay-per-step"
    stage = "update"

    def __init__(
        self,
        coef: float,
        params: NamedParams,
        label: str | None = None,
        batch_size: int = 1,
        per_examples: int | None = None,
    ):
        super().__init__(coef, params, label)
        self.per_examples = per_examples
        if per_examples is not None:
            self.name = f"decay-per-{per_examples}"
        self.rate = decay_rate_per_step(self.coef, batch_size, per_examples)

    @property
    def convention(self) -> str:
        key = "decay-per-step" if self.per_examples is None else "decay-per-N"
        return METHODS[key] + (f"; r_step = {self.rate:.4g}" if self.per_examples else "")

    @torch.no_grad()
    def before_step(self, lr: float) -> None:
        for p in self.tensors:
            if p.grad is not None:
                p.mul_(1 - self.rate)

    formula = "−r_step·w"

    def expected_change(self, w, lr):
        return -self.rate * w


class ProximalL1(Regularizer):
    """Proximal L1 (ISTA): after the optimizer's step, p ← sign(p)·max(|p| − lr·λ, 0). Unlike the
    L1 subgradient it sets small weights to exactly 0 (see the sparsity diagnostics)."""

    name = "prox-l1"
    stage = "final"

    @torch.no_grad()
    def after_step(self, lr: float) -> None:
        for p in self.tensors:
            if p.grad is not None:
                p.copy_(soft_threshold(p, lr * self.coef))

    formula = "soft_threshold(w, lr·λ) − w"

    def expected_change(self, w, lr):
        return soft_threshold(w, lr * self.coef) - w


# method name (as typed in --reg) -> class; decay-per-N is DecayPerStep with per_examples = N
REGULARIZERS: dict[str, type[Regularizer]] = {
    "l2": L2Penalty,
    "l2-half": HalfL2Penalty,
    "l1": L1Penalty,
    "wd": CoupledWeightDecay,
    "decoupled-wd": DecoupledWeightDecay,
    "decay-per-step": DecayPerStep,
    "prox-l1": ProximalL1,
}
