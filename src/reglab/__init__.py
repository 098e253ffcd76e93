"""reglab: CIFAR-10 classifiers with regularization really applied, measured and chosen well.

The Python API (docs/api.md)::

    import reglab

    cfg = reglab.build_config("quick-sgd", overrides={"l2": 1e-3})
    result = reglab.train(cfg, model=my_net)          # any nn.Module: reglab's regularization,
    print(result.final_val_acc)                       # audit, logs and checkpoints

    @reglab.register_model("my-net", min_image_size=16)
    def my_net(num_classes=10, dropout=0.0, block_dropout=0.0): ...

    @reglab.register_regularizer
    class MyPenalty(reglab.Regularizer): ...

Names are imported lazily, so ``import reglab`` is cheap and the package has no import cycles.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.2.0"

_API = {
    "train": "reglab.training.loop",
    "RunResult": "reglab.training.loop",
    "RunDir": "reglab.training.rundir",
    "TrainConfig": "reglab.config",
    "build_config": "reglab.config",
    "load_config_file": "reglab.config",
    "PRESETS": "reglab.config",
    "register_model": "reglab.models",
    "create_model": "reglab.models",
    "register_regularizer": "reglab.regularization",
    "Regularizer": "reglab.regularization",
    "load_cifar10": "reglab.data",
}
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'reglab' has no attribute {name!r}")
