"""Muon for the conv filters, Nesterov SGD for the rest: airbench94_muon's optimizer (Keller
Jordan, cifar10-airbench), as one torch optimizer.

Muon (MomentUm Orthogonalized by Newton-schulz) replaces a filter's update by the nearest
"orthogonal" matrix to its momentum: with W the filter as a matrix (out channels x in·k·k) and
M its Nesterov momentum, each step

    W ← W · √out / ‖W‖_F              (the weight renormalized: its norm is fixed)
    W ← W − lr · NS5(M)                 NS5(M) ≈ U·S'·Vᵀ, S' in about [0.5, 1.5], M = U·S·Vᵀ

so every direction of the update moves at about the same rate, whatever the gradient's scale.
Because the norm of W is reset every step, a penalty or decay on these filters cannot shrink
them: reglab refuses such a rule (see ``muon_params`` and the builder).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # the quintic's a, b, c (airbench94_muon)


def newton_schulz5(
    g: torch.Tensor, steps: int = 3, eps: float = 1e-7, dtype: torch.dtype = torch.bfloat16
) -> torch.Tensor:
    """The approximate orthogonalization of a matrix ``g`` (m x n) by ``steps`` iterations of
    X ← a·X + (b·A + c·A²)·X with A = X·Xᵀ, from X = g / (‖g‖_F + eps) (so every singular value
    is at most 1), on the short side (Xᵀ when m > n), computed in ``dtype`` (airbench: bf16).
    The coefficients push small singular values up fast: the result is about U·S'·Vᵀ with S'
    between 0.5 and 1.5, not exactly U·Vᵀ."""
    assert g.ndim == 2, g.shape
    a, b, c = NS_COEFFICIENTS
    x = g.to(dtype)
    x = x / (x.norm() + eps)
    tall = g.size(0) > g.size(1)
    if tall:
        x = x.T
    for _ in range(steps):
        A = x @ x.T
        B = b * A + c * A @ A
        x = a * x + B @ x
    return x.T if tall else x


def muon_params(model: nn.Module) -> list[nn.Parameter]:
    """The tensors Muon updates: trainable conv filters (4-D weights), as airbench94_muon."""
    return [m.weight for m in model.modules()
            if isinstance(m, nn.Conv2d) and m.weight.requires_grad]  # fmt: skip


class Muon(torch.optim.Optimizer):
    """Muon on the groups with ``use_muon`` (their own ``momentum``), SGD with Nesterov momentum
    (torch.optim.SGD's rule: buf ← m·buf + g, step g + m·buf) on the others. Every group's
    ``lr`` is set by the training step (lr(step) · the group's ``lr_scale``). ``ns_dtype``: the
    Newton-Schulz iteration's precision; None: bf16 (airbench's) on CUDA, float32 elsewhere
    (faster on CPUs without bf16 matmul)."""

    def __init__(self, params: Iterable[Any], lr: float, momentum: float,
                 ns_dtype: torch.dtype | None = None):  # fmt: skip
        # in the defaults (not an attribute): an optimizer's pickled state is its groups and state
        super().__init__(params, dict(lr=lr, momentum=momentum, use_muon=False,
                                      ns_dtype=ns_dtype))  # fmt: skip

    @torch.no_grad()
    def step(self, closure=None):
        assert closure is None, "Muon takes no closure"
        for group in self.param_groups:
            lr, m = group["lr"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad)
                buf = state["momentum_buffer"]
                buf.mul_(m).add_(p.grad)
                g = p.grad.add(buf, alpha=m)  # Nesterov
                if group["use_muon"]:
                    p.mul_(len(p) ** 0.5 / p.norm())  # ‖W‖_F = √out
                    dtype = group["ns_dtype"] or (torch.bfloat16 if p.is_cuda else torch.float32)
                    update = newton_schulz5(g.reshape(len(g), -1), dtype=dtype)
                    p.add_(update.view(g.shape).to(p.dtype), alpha=-lr)
                else:
                    p.add_(g, alpha=-lr)
