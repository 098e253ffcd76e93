"""Penalty terms as pure functions of the regularised tensors.

Conventions: ``l2_penalty`` is Σ‖w‖² (no 1/2: with coefficient λ its gradient is 2λw, the tutorial's
and Keras' convention); ``l1_penalty`` is Σ|w| (subgradient λ·sign(w), 0 at w = 0).
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
