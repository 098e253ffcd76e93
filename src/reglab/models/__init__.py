"""Models: the registry (:mod:`reglab.models.registry`) and the built-in networks, which register
themselves: tutorial-resnet, resnet18, airbench, airbench94."""

from reglab.models import airbench, resnet, tutorial_resnet  # noqa: F401  (they register)
from reglab.models.registry import (
    MODELS,
    ModelEntry,
    check_image_size,
    create_model,
    list_models,
    register_model,
)

__all__ = ["MODELS", "ModelEntry", "check_image_size", "create_model", "list_models",
           "register_model"]  # fmt: skip
