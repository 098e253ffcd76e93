"""Model registry: one name a user can type, one constructor.

Every constructor takes ``num_classes``, ``dropout`` (probability of the dropout layer placed
before the classifier; 0 disables it) and ``block_dropout`` (probability of a Dropout2d inside
every residual block or conv group; 0: none) and returns an ``nn.Module`` taking NCHW float
batches.
``MIN_IMAGE_SIZE`` records the smallest input side each network accepts.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from reglab.models.airbench import airbench94_net, airbench_net
from reglab.models.resnet import resnet18
from reglab.models.tutorial_resnet import TutorialResNet

MODELS: dict[str, Callable[..., nn.Module]] = {
    "tutorial-resnet": TutorialResNet,
    "resnet18": resnet18,
    "airbench": airbench_net,
    "airbench94": airbench94_net,
}

# Smallest image side (pixels) each network accepts: below it a stride or pool runs out of pixels.
MIN_IMAGE_SIZE: dict[str, int] = {
    "tutorial-resnet": 32,
    "resnet18": 8,
    "airbench": 16,
    "airbench94": 16,
}


def list_models() -> list[str]:
    return sorted(MODELS)


def check_image_size(name: str, image_size: int) -> None:
    """Raise ValueError (one line, with the fix) if ``name`` cannot take ``image_size`` pixels."""
    low = MIN_IMAGE_SIZE[name]
    if image_size < low:
        raise ValueError(
            f"model {name!r} needs --image-size >= {low} (got {image_size}); "
            f"use --image-size {max(low, 32)} or another model"
        )


def create_model(name: str, num_classes: int = 10, dropout: float = 0.0, **kwargs) -> nn.Module:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(list_models())}")
    return MODELS[name](num_classes=num_classes, dropout=dropout, **kwargs)
