"""Lookahead with an EMA of the weights, as airbench94 uses it (Keller Jordan, cifar10-airbench).

Every ``every`` steps the slow copy moves toward the network,
``slow ← decay·slow + (1 − decay)·net``, and the network is reset to the slow copy. The decay
grows with training, ``decay(t) = 0.95^every · (t / T)³`` for update t of T: near 0 early (plain
SGD), about 0.77 at the end (a strong average over the last steps). After the last step the
network is set to the slow copy. Floating-point buffers (batch-norm running statistics) are
averaged with the weights.
"""

from __future__ import annotations

import torch
from torch import nn


def lookahead_decay(step: int, total_steps: int, every: int) -> float:
    """The slow copy's weight at update ``step`` (1-based) of ``total_steps``:
    0.95^every · (step / total_steps)³ (airbench94: every 5 steps, 0.95⁵ at the end)."""
    return 0.95**every * (step / total_steps) ** 3


class Lookahead:
    """The slow copy of ``model``'s floating-point state; call :meth:`after_step` after each
    optimizer update."""

    def __init__(self, model: nn.Module, every: int, total_steps: int):
        if every < 1:
            raise ValueError(f"lookahead every {every} steps: need at least 1")
        self.every, self.total_steps = every, total_steps
        self.slow = [t.detach().clone() for t in self._tensors(model)]

    @staticmethod
    def _tensors(model: nn.Module) -> list[torch.Tensor]:
        return [t for t in model.state_dict().values() if t.is_floating_point()]

    @torch.no_grad()
    def update(self, model: nn.Module, decay: float) -> None:
        """slow ← decay·slow + (1 − decay)·net, then net ← slow."""
        net = self._tensors(model)
        torch._foreach_lerp_(self.slow, net, 1.0 - decay)
        torch._foreach_copy_(net, self.slow)

    def after_step(self, model: nn.Module, step: int) -> None:
        """After update number ``step`` (1-based): an update every ``every`` steps, and the
        network set to the slow copy after the last step."""
        if step % self.every == 0:
            self.update(model, lookahead_decay(step, self.total_steps, self.every))
        if step == self.total_steps:
            self.update(model, 1.0)

    def state_dict(self) -> dict[str, list[torch.Tensor]]:
        return {"slow": [t.cpu() for t in self.slow]}

    def load_state_dict(self, state: dict[str, list[torch.Tensor]]) -> None:
        if len(state["slow"]) != len(self.slow):
            raise ValueError("the checkpoint's lookahead state does not match this network")
        for mine, saved in zip(self.slow, state["slow"], strict=True):
            mine.copy_(saved)
