"""What regularization does to the weights, measured at log points (never in the hot step).

For metrics.jsonl (one value per parameter group, frozen tensors left out):

    grad_norm              ‖g‖ over all trainable tensors, the gradient the optimizer last used
    weight_norm/<group>    sqrt(Σ‖w‖²) over the tensors of a group (conv.weight, norm.bias, ...)
    eff_lr_bn              median over weights followed by batch norm of η/‖w‖²: BN makes the
                           output invariant to the scale of w, so a step of size η moves the
                           direction of w by about η/‖w‖² (for SGD); decay mainly sets this
    sparsity/<method>      fraction of exact zeros in the scope of l1 / prox-l1

and, per tensor, the same in weights.jsonl (``detail``).
"""

from __future__ import annotations

import statistics
from typing import Any

import torch
from torch import nn

from reglab.regularization.scope import module_kind, param_group

# parameter-free layers that keep a weight's output scale-equivariant on its way into a BN
_PASS_THROUGH = (
    nn.modules.pooling._MaxPoolNd,
    nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveMaxPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.modules.dropout._DropoutNd,
    nn.Identity,
    nn.ReLU,
)


def bn_followed_weights(model: nn.Module) -> list[str]:
    """Names of trainable conv / linear weights whose output feeds a batch norm.

    Found from module registration order: the next leaf module after the layer is a BatchNorm,
    with only pooling, dropout, identity or ReLU in between (all positively homogeneous, so the
    BN output does not change when w is scaled). Functional ops in ``forward`` are not seen; the
    models here register their layers in the order they call them.
    """
    leaves = [(n, m) for n, m in model.named_modules() if next(m.children(), None) is None]
    found = []
    for i, (name, m) in enumerate(leaves):
        w = getattr(m, "weight", None)
        if module_kind(m) not in ("conv", "linear") or not isinstance(w, nn.Parameter):
            continue
        if not w.requires_grad:
            continue
        for _, nxt in leaves[i + 1 :]:
            if isinstance(nxt, nn.modules.batchnorm._BatchNorm):
                found.append(f"{name}.weight" if name else "weight")
            if not isinstance(nxt, _PASS_THROUGH):
                break
    return found


@torch.no_grad()
def weight_diagnostics(
    model: nn.Module, plan, lr: float, bn_followed: list[str] | None = None
) -> tuple[dict[str, float], dict[str, Any]]:
    """(fields for the metrics row, per-tensor detail for weights.jsonl); one device sync."""
    named = list(model.named_parameters())
    zero = torch.zeros((), dtype=torch.float64, device=named[0][1].device)
    stats = torch.stack([
        torch.stack([
            p.detach().double().norm(),
            p.grad.detach().double().norm() if p.grad is not None else zero,
            (p.detach() == 0).sum().double(),
        ])
        for _, p in named
    ]).tolist()  # fmt: skip
    bn = set(bn_followed if bn_followed is not None else bn_followed_weights(model))
    detail: dict[str, Any] = {}
    sq: dict[str, float] = {}
    grad_sq = 0.0
    eff = []
    for (name, p), (norm, gnorm, zeros) in zip(named, stats):
        group = param_group(model, name)
        row = {"group": group, "numel": p.numel(), "norm": norm, "grad_norm": gnorm,
               "zeros": zeros / p.numel(), "trainable": p.requires_grad}  # fmt: skip
        if name in bn and norm > 0:
            row["eff_lr"] = lr / norm**2
            eff.append(row["eff_lr"])
        detail[name] = row
        if p.requires_grad:
            sq[group] = sq.get(group, 0.0) + norm**2
            grad_sq += gnorm**2
    fields: dict[str, float] = {"grad_norm": grad_sq**0.5}
    fields.update({f"weight_norm/{g}": v**0.5 for g, v in sq.items()})
    if eff:
        fields["eff_lr_bn"] = statistics.median(eff)
    zeros_by_method: dict[str, list[float]] = {}
    for r in getattr(plan, "regularizers", []):
        if r.name in ("l1", "prox-l1"):
            z = zeros_by_method.setdefault(r.name, [0.0, 0.0])
            for n, p in r.params:
                z[0] += detail[n]["zeros"] * p.numel()
                z[1] += p.numel()
    for method, (z, n) in zeros_by_method.items():
        fields[f"sparsity/{method}"] = z / n
    return fields, {"tensors": detail}
