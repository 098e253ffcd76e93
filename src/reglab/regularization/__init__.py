"""Regularizers and the plan that applies them in the training step.

A regularizer acts at one or more points of a step, and the loop calls all of them:

    loss = data_loss + plan.penalty()     # penalty terms (l2, l1) reach the gradients here
    loss.backward()
    plan.before_step(lr)                  # gradient-side terms (coupled decay)
    optimizer.step()
    plan.after_step(lr)                   # parameter-side terms (decoupled decay, proximal L1)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from reglab.regularization.penalties import l1_penalty, l2_penalty
from reglab.regularization.scope import NamedParams, default_scope

__all__ = [
    "L2Penalty",
    "Regularization",
    "Regularizer",
    "build_regularization",
    "default_scope",
    "l1_penalty",
    "l2_penalty",
]


class Regularizer:
    """Base class: a named method with a coefficient and the parameters in its scope."""

    name = "none"
    convention = ""

    def __init__(self, coef: float, params: NamedParams):
        self.coef = float(coef)
        self.params = params

    @property
    def tensors(self) -> list[nn.Parameter]:
        return [p for _, p in self.params]

    def penalty(self) -> torch.Tensor | None:
        """Term added to the minimised loss, or None."""
        return None

    def before_step(self, lr: float) -> None:
        """Called after backward, before optimizer.step()."""

    def after_step(self, lr: float) -> None:
        """Called after optimizer.step()."""


class L2Penalty(Regularizer):
    name = "l2"
    convention = "loss += λ Σ‖w‖² (gradient 2λw)"

    def penalty(self) -> torch.Tensor:
        return self.coef * l2_penalty(self.tensors)


class Regularization:
    """All regularizers of a run, applied together."""

    def __init__(self, regularizers: Sequence[Regularizer]):
        self.regularizers = [r for r in regularizers if r.coef != 0]

    def penalty(self) -> torch.Tensor | None:
        terms = [t for r in self.regularizers if (t := r.penalty()) is not None]
        return torch.stack(terms).sum() if terms else None

    def before_step(self, lr: float) -> None:
        for r in self.regularizers:
            r.before_step(lr)

    def after_step(self, lr: float) -> None:
        for r in self.regularizers:
            r.after_step(lr)

    def table(self, model: nn.Module) -> str:
        """Parameter groups with their size and the regularizers (and coefficients) on them."""
        on: dict[int, list[str]] = {}
        for r in self.regularizers:
            for _, p in r.params:
                on.setdefault(id(p), []).append(f"{r.name}={r.coef:g}")
        groups: dict[str, list[int]] = {}
        for name, p in model.named_parameters():
            kind = _role(model, name)
            label = ", ".join(on.get(id(p), [])) or ("frozen" if not p.requires_grad else "none")
            g = groups.setdefault(f"{kind}|{label}", [0, 0])
            g[0] += 1
            g[1] += p.numel()
        rows = [("parameter group", "tensors", "parameters", "regularization")]
        for key, (count, numel) in groups.items():
            kind, label = key.split("|")
            rows.append((kind, str(count), f"{numel:,}", label))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)


def _role(model: nn.Module, param_name: str) -> str:
    module_name, _, role = param_name.rpartition(".")
    module = model.get_submodule(module_name) if module_name else model
    if isinstance(module, nn.modules.conv._ConvNd):
        kind = "conv"
    elif isinstance(module, nn.Linear):
        kind = "linear"
    elif isinstance(module, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)):
        kind = "norm"
    else:
        kind = type(module).__name__.lower()
    return f"{kind}.{role}"


def build_regularization(cfg, model: nn.Module) -> Regularization:
    """The regularizers a TrainConfig asks for, each on its scope."""
    return Regularization([L2Penalty(cfg.l2, default_scope(model))])
