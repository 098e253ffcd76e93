"""The regularizers: one class per method, registered under the name a user types in ``--reg``.

Each acts at one point of the training step (the loop calls every one; see
:class:`reglab.regularization.Regularization`):

    loss = data_loss [+ differentiable penalties]   penalties without a closed-form gradient
    loss.backward()
    plan.before_step(lr)     l2, l2-half, l1, wd: p.grad += their gradient (fused, foreach);
                             then decoupled-wd, decay-per-*: p *= c
    optimizer.step()
    plan.after_step(lr)      prox-l1: soft-threshold p

A penalty whose gradient is known in closed form (l2: 2λw, l2-half: λw, l1: λ·sign(w)) is added
to the gradients directly, with one fused foreach operation, instead of building λΣ‖w‖² in the
autograd graph every step; its value is computed only when it is logged. The result is the same
gradient as backward through the penalty (the audit checks it on the first step of every run).

``stage`` names where the audit compares a step with and without the regularizer: "gradient"
(p.grad just before optimizer.step()), "update" (p just after it) or "final" (p after
after_step); ``expected_change(w, lr, name)`` is what the formula says the difference there
must be, ``w`` being the weights of parameter ``name`` where the method acts: before the step
for "gradient", just before optimizer.step() for "update" (so that two decays on one tensor
compose), after it for "final".
Parameters without a gradient in a step are skipped, as torch.optim skips them.

A new method is a subclass with ``name``, ``stage``, ``convention`` and ``formula``, decorated
with :func:`register_regularizer` (docs/api.md shows one).
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

import torch

from reglab.regularization.penalties import (
    decay_rate_per_step,
    l1_penalty,
    l2_penalty,
    soft_threshold,
)
from reglab.regularization.scope import NamedParams

STAGES = ("gradient", "update", "final")  # in the order they happen within a step


class Regularizer:
    """Base class: a method with a coefficient and the (named) parameters in its scope.

    Class attributes (the registry's metadata): ``name`` (as typed in ``--reg``), ``stage``,
    ``convention`` (the coefficient's meaning, printed in the regularization table),
    ``formula`` (the change at ``stage``, in the audit's messages), ``is_penalty`` (a term of the
    objective: switched off by ``--no-penalty-in-loss``, the tutorial's bug), and
    ``name_pattern`` (a regex for parametrised names such as decay-per-1024).
    """

    name: ClassVar[str] = ""
    stage: ClassVar[str] = "gradient"
    convention: ClassVar[str] = ""
    formula: ClassVar[str] = "?"
    is_penalty: ClassVar[bool] = False
    name_pattern: ClassVar[str | None] = None

    def __init__(self, coef: float, params: NamedParams, label: str | None = None):
        self.coef = float(coef)
        self.params = list(params)
        self.label = label or f"{self.name}={self.coef:g}"

    @classmethod
    def from_rule(cls, method: str, coef: float, params: NamedParams, label: str,
                  batch_size: int) -> Regularizer:  # fmt: skip
        """The regularizer of a rule ``method=coef`` (``method`` is the name as typed)."""
        return cls(coef, params, label)

    @property
    def tensors(self) -> list[torch.nn.Parameter]:
        return [p for _, p in self.params]

    def _grads(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(weights, gradients) of the tensors in scope that have a gradient this step."""
        pairs = [(p, p.grad) for p in self.tensors if p.grad is not None]
        return [p for p, _ in pairs], [g for _, g in pairs]

    def penalty(self) -> torch.Tensor | None:
        """The term this method adds to the objective (logged), or None."""
        return None

    def loss_term(self) -> torch.Tensor | None:
        """A term to add to the minimised loss for autograd to differentiate (None: the method
        applies its gradient itself in ``before_step``)."""
        return None

    def before_step(self, lr: float) -> None:
        """Called after backward, before optimizer.step()."""

    def after_step(self, lr: float) -> None:
        """Called after optimizer.step()."""

    def expected_change(self, w: torch.Tensor, lr: float, name: str) -> torch.Tensor:
        """What this regularizer changes at ``stage`` in parameter ``name`` whose weights were
        ``w`` where it acts (see the module docstring); the audit checks it."""
        raise NotImplementedError(f"{type(self).__name__} states no formula the audit can check")

    def state_dict(self) -> dict[str, Any]:
        """State a resumed run needs (none for the built-in methods: they are functions of the
        weights, the learning rate and their coefficient)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.label}, {len(self.params)} tensors)"


REGULARIZERS: dict[str, type[Regularizer]] = {}


def register_regularizer(cls: type[Regularizer]) -> type[Regularizer]:
    """Class decorator: make ``cls`` available as ``--reg NAME=COEF`` (one registry, each entry
    carrying its metadata as class attributes)."""
    if not cls.name or not cls.convention:
        raise ValueError(f"{cls.__name__} needs a name and a convention to be registered")
    if cls.stage not in STAGES:
        raise ValueError(f"{cls.__name__}.stage must be one of {STAGES}, got {cls.stage!r}")
    if cls.name in REGULARIZERS and REGULARIZERS[cls.name] is not cls:
        raise ValueError(f"a regularizer named {cls.name!r} is already registered")
    REGULARIZERS[cls.name] = cls
    return cls


def find_method(method: str) -> type[Regularizer] | None:
    """The class of a method name as typed (``decay-per-1024`` finds decay-per-N), or None."""
    if method in REGULARIZERS and REGULARIZERS[method].name_pattern is None:
        return REGULARIZERS[method]
    for cls in REGULARIZERS.values():
        if cls.name_pattern and re.fullmatch(cls.name_pattern, method):
            return cls
    return REGULARIZERS.get(method)


def _add_scaled(tensors: list[torch.Tensor], others: list[torch.Tensor], alpha: float) -> None:
    """tensors[i] += alpha · others[i], fused where torch has it."""
    if tensors:
        torch._foreach_add_(tensors, others, alpha=alpha)


class LinearGradient(Regularizer):
    """A method whose whole effect is p.grad += scale·p before the optimizer (L2 penalties and
    coupled decay): one fused foreach add, and the audit's expected change scale·w."""

    @property
    def scale(self) -> float:
        raise NotImplementedError

    @torch.no_grad()
    def before_step(self, lr: float) -> None:
        weights, grads = self._grads()
        _add_scaled(grads, weights, self.scale)

    def expected_change(self, w, lr, name):
        return self.scale * w


@register_regularizer
class L2Penalty(LinearGradient):
    """λ Σ‖w‖² added to the objective; its gradient 2λw (no 1/2: the tutorial's text, Keras)."""

    name = "l2"
    convention = "loss += λ Σ‖w‖² (gradient 2λw)"
    formula = "+2λw"
    is_penalty = True

    @property
    def scale(self) -> float:
        return 2 * self.coef

    def penalty(self) -> torch.Tensor:
        return self.coef * l2_penalty(self.tensors)


@register_regularizer
class HalfL2Penalty(LinearGradient):
    """λ Σ‖w‖²/2 added to the objective; its gradient λw. TensorFlow's ``tf.nn.l2_loss`` (so
    tf-slim's ``l2_regularizer(λ)``, the tutorial's code) and, under SGD, torch.optim's
    ``weight_decay=λ``."""

    name = "l2-half"
    convention = "loss += λ Σ‖w‖²/2 (gradient λw; tf.nn.l2_loss, tf-slim's l2_regularizer)"
    formula = "+λw"
    is_penalty = True

    @property
    def scale(self) -> float:
        return self.coef

    def penalty(self) -> torch.Tensor:
        return 0.5 * self.coef * l2_penalty(self.tensors)


@register_regularizer
class L1Penalty(Regularizer):
    """λ Σ|w| added to the objective; subgradient λ·sign(w) (0 at w = 0): weights shrink, rarely
    to exactly 0 (prox-l1 gives exact zeros)."""

    name = "l1"
    convention = "loss += λ Σ|w| (subgradient λ·sign(w))"
    formula = "+λ·sign(w)"
    is_penalty = True

    def penalty(self) -> torch.Tensor:
        return self.coef * l1_penalty(self.tensors)

    @torch.no_grad()
    def before_step(self, lr: float) -> None:
        weights, grads = self._grads()
        if weights:
            _add_scaled(grads, torch._foreach_sign(weights), self.coef)

    def expected_change(self, w, lr, name):
        return self.coef * w.sign()


@register_regularizer
class CoupledWeightDecay(LinearGradient):
    """torch.optim's ``weight_decay``: p.grad += wd·p before the optimizer, so the decay is scaled
    by lr and goes through momentum and Adam's normalisation. Under plain or momentum SGD it equals
    the L2 penalty with λ = wd/2 (l2-half with λ = wd); under Adam it does not."""

    name = "wd"
    convention = ("gradient += wd·w before the optimizer (torch.optim's weight_decay: × lr, via "
                  "momentum or Adam's normalisation)")  # fmt: skip
    formula = "+wd·w"

    @property
    def scale(self) -> float:
        return self.coef


@register_regularizer
class DecoupledWeightDecay(Regularizer):
    """SGDW/AdamW: p ← (1 − lr·wd)·p outside the gradient, applied before the optimizer's update
    exactly as torch.optim.AdamW does; scaled by lr (it follows the schedule), not by momentum or
    Adam's normalisation."""

    name = "decoupled-wd"
    stage = "update"
    convention = "w ← (1 − lr·wd)·w before the optimizer's update (SGDW/AdamW; × lr only)"
    formula = "−lr·wd·w"

    @torch.no_grad()
    def before_step(self, lr: float) -> None:
        weights, _ = self._grads()
        if weights:
            torch._foreach_mul_(weights, 1 - lr * self.coef)

    def expected_change(self, w, lr, name):
        return -lr * self.coef * w


@register_regularizer
class DecayPerStep(Regularizer):
    """p ← (1 − r_step)·p before each update, whatever the learning rate (airbench's way: the decay
    does not move when lr or its schedule changes). ``decay-per-step=r``: r_step = r;
    ``decay-per-N=r`` (N examples): r_step = 1 − (1 − r)^(batch_size / N)."""

    name = "decay-per-step"
    stage = "update"
    convention = "w ← (1 − r)·w every step (independent of lr)"
    formula = "−r_step·w"
    name_pattern = r"decay-per-(step|[1-9][0-9]*)"

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
        self.rate = decay_rate_per_step(self.coef, batch_size, per_examples)
        if per_examples is not None:
            self.convention = (f"w ← (1 − r_step)·w, r_step = 1 − (1 − r)^(batch/{per_examples})"
                               f": r per {per_examples} examples; r_step = {self.rate:.4g}")

    @classmethod
    def from_rule(cls, method, coef, params, label, batch_size):
        n = method.rsplit("-", 1)[1]
        return cls(coef, params, label, batch_size, None if n == "step" else int(n))

    @torch.no_grad()
    def before_step(self, lr: float) -> None:
        weights, _ = self._grads()
        if weights:
            torch._foreach_mul_(weights, 1 - self.rate)

    def expected_change(self, w, lr, name):
        return -self.rate * w


@register_regularizer
class ProximalL1(Regularizer):
    """Proximal L1 (ISTA): after the optimizer's step, p ← sign(p)·max(|p| − lr·λ, 0). Unlike the
    L1 subgradient it sets small weights to exactly 0 (see the sparsity diagnostics)."""

    name = "prox-l1"
    stage = "final"
    convention = "after the step w ← sign(w)·max(|w| − lr·λ, 0) (exact zeros)"
    formula = "soft_threshold(w, lr·λ) − w"

    def penalty(self) -> torch.Tensor:
        return self.coef * l1_penalty(self.tensors)

    @torch.no_grad()
    def after_step(self, lr: float) -> None:
        for p in self.tensors:
            if p.grad is not None:
                p.copy_(soft_threshold(p, lr * self.coef))

    def expected_change(self, w, lr, name):
        return soft_threshold(w, lr * self.coef) - w
