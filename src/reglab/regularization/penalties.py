"""The math of each method as pure functions of tensors (the regularizers only call these).

Conventions: ``l2_penalty`` is Σ‖w‖² (no 1/2: with coefficient λ its gradient is 2λw, the tutorial's
and Keras' convention); ``l1_penalty`` is Σ|w| (subgradient λ·sign(w), 0 at w = 0);
``soft_threshold`` is the proximal operator of t·Σ|w|; ``decay_rate_per_step`` turns a decay per N
examples into the fraction removed per step.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


def l2_penalty(weights: Iterable[torch.Tensor]) -> torch.Tensor:
    """Σ over tensors of the squared Frobenius norm ‖w‖²."""
    terms = [w.pow(2).sum() for w in weights]
    return torch.stack(terms).sum() if terms else torch.zeros(())


def l1_penalty(weights: Iterable[torch.Tensor]) -> torch.Tensor:
    """Σ over tensors of the entry-wise absolute sum Σ|w|."""
    terms = [w.abs().sum() for w in weights]
    return torch.stack(terms).sum() if terms else torch.zeros(())


def soft_threshold(w: torch.Tensor, threshold: float) -> torch.Tensor:
    """sign(w)·max(|w| − threshold, 0): the proximal step of ``threshold``·Σ|w| (exact zeros)."""
    return w.sign() * (w.abs() - threshold).clamp_min(0)


def decay_rate_per_step(rate: float, batch_size: int, per_examples: int | None = None) -> float:
    """Fraction of each weight removed per step.

    ``per_examples`` None: ``rate`` is already per step. Otherwise ``rate`` is the fraction removed
    per ``per_examples`` training examples, compounded: 1 − (1 − rate)^(batch_size / per_examples),
    so that the decay over an epoch does not change with the batch size (nor, unlike decoupled
    decay, with the learning rate).
    """
    if per_examples is None:
        return rate
    return 1.0 - (1.0 - rate) ** (batch_size / per_examples)
