"""The model registry: one name a user can type, one constructor, and its metadata.

    @register_model("my-net", min_image_size=16)
    def my_net(num_classes=10, dropout=0.0, block_dropout=0.0, **kwargs) -> nn.Module: ...

Every constructor takes ``num_classes``, ``dropout`` (probability of the dropout before the
classifier; 0 disables it) and ``block_dropout`` (probability of a Dropout2d inside every
residual block or conv group; 0: none) and returns an ``nn.Module`` taking NCHW float batches.
``min_image_size`` is the smallest input side the network accepts (below it a stride or pool
runs out of pixels).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class ModelEntry:
    name: str
    constructor: Callable[..., nn.Module]
    min_image_size: int = 1
    description: str = ""


MODELS: dict[str, ModelEntry] = {}


def register_model(
    name: str, *, min_image_size: int = 1, description: str = ""
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: make a constructor available as ``--model NAME`` (and ``create_model``)."""

    def decorate(constructor: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in MODELS and MODELS[name].constructor is not constructor:
            raise ValueError(f"a model named {name!r} is already registered")
        doc = (constructor.__doc__ or "").strip().splitlines()
        MODELS[name] = ModelEntry(name, constructor, min_image_size,
                                  description or (doc[0] if doc else ""))  # fmt: skip
        return constructor

    return decorate


def list_models() -> list[str]:
    return sorted(MODELS)


def check_image_size(name: str, image_size: int) -> None:
    """Raise ValueError (one line, with the fix) if ``name`` cannot take ``image_size`` pixels."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(list_models())}")
    low = MODELS[name].min_image_size
    if image_size < low:
        raise ValueError(
            f"model {name!r} needs --image-size >= {low} (got {image_size}); "
            f"use --image-size {max(low, 32)} or another model"
        )


def create_model(name: str, num_classes: int = 10, dropout: float = 0.0, **kwargs) -> nn.Module:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(list_models())}")
    return MODELS[name].constructor(num_classes=num_classes, dropout=dropout, **kwargs)
