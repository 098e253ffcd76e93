"""Which parameters a regularizer applies to: the tutorial's arg_scope, made explicit.

The default scope is the weights of convolution and fully-connected layers that are trained;
biases and normalisation parameters (BN's γ and β) are excluded, as in nanoGPT's and timm's
weight-decay split. Frozen tensors (requires_grad False) are never in a scope.
"""

from __future__ import annotations

from torch import nn

NamedParams = list[tuple[str, nn.Parameter]]

CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
LINEAR_TYPES = (nn.Linear,)


def default_scope(model: nn.Module) -> NamedParams:
    """Trainable ``weight`` tensors of conv and linear layers, in model order."""
    selected: NamedParams = []
    for module_name, module in model.named_modules():
        if isinstance(module, CONV_TYPES + LINEAR_TYPES):
            w = getattr(module, "weight", None)
            if isinstance(w, nn.Parameter) and w.requires_grad:
                selected.append((f"{module_name}.weight" if module_name else "weight", w))
    return selected
