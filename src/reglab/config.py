"""Training configuration: one dataclass, presets, and the merge order defaults < preset < config
file < command-line flags.

Units and conventions (also in ``reglab train --help``):
- ``lr`` is the learning rate per step (not scaled by batch size); ``batch_size`` in images.
- ``l2`` is λ in ``loss + λ Σ‖w‖²`` (the tutorial's and Keras' convention: gradient 2λw).
- ``regularizers`` are rules ``METHOD=COEF[@SCOPE]`` (``--reg``), applied after ``l2``; methods,
  conventions and scopes in ``reglab.regularization`` and docs/regularization.md.
- ``steps`` counts optimizer updates; ``epochs``, when set, is converted to steps
  (floor(train images / batch size) steps per epoch, the last partial batch dropped).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

OPTIMIZERS = ("sgd", "nesterov", "adamw")
SCHEDULES = ("constant", "step", "cosine", "linear")
AUGMENTATIONS = ("none", "flip", "flip-crop", "flip-translate", "cutout", "tutorial")


class ConfigError(ValueError):
    """A bad setting; the message is one line naming the flag and the fix."""


@dataclass
class TrainConfig:
    # model
    model: str = "tutorial-resnet"
    image_size: int = 96  # pixels; CIFAR-10's 32x32 images are resized (bilinear) to this side
    dropout: float = 0.0  # probability, before the classifier
    block_dropout: float = 0.0  # probability of Dropout2d (whole channels) inside each block
    # data
    data_dir: str | None = None  # else $REGLAB_DATA, else ~/.cache/reglab
    holdout: int = 0  # validate on the last N training images (0: the official test set)
    train_limit: int | None = None  # use only the first N training images (quick checks)
    normalization: str = "dataset"  # dataset (CIFAR-10 channel mean/std) | per-image
    # (tf.image.per_image_standardization after resizing: the tutorial's)
    augment: str = "none"  # none | flip | flip-crop (pad 4 + random 32 crop) | flip-translate
    # | cutout (flip-crop + a 16-px square at 32 px set to the mean) | tutorial (see pipeline.py)
    # optimisation
    batch_size: int = 64  # images per step
    steps: int = 20_000  # optimizer updates
    epochs: float | None = None  # if set, overrides steps
    optimizer: str = "sgd"  # sgd (momentum) | nesterov | adamw
    lr: float = 0.01  # peak learning rate per step
    momentum: float = 0.9  # SGD momentum; Adam's beta1 for adamw
    schedule: str = "constant"  # constant | step | cosine | linear (decay to 0)
    warmup_steps: int = 0  # linear warm-up from 0 to lr over this many steps
    lr_milestones: tuple[float, ...] = (0.5, 0.75)  # step schedule: fractions of training
    lr_gamma: float = 0.1  # step schedule: lr multiplier at each milestone
    label_smoothing: float = 0.0  # ε of cross entropy's label smoothing
    # regularization
    l2: float = 0.0  # λ of the penalty λ Σ‖w‖² over the default scope (conv and linear weights)
    regularizers: list[str] = field(default_factory=list)  # rules METHOD=COEF[@SCOPE], after l2
    audit: bool = True  # check on the first step that each regularizer acts as its formula says
    # logging and evaluation
    log_every: int = 1000  # steps between [train] lines (averaged over the interval)
    val_every: int = 4000  # steps between [val] lines over the whole validation set
    eval_batch_size: int = 1000
    tta: bool = False  # evaluate on the image and its mirror image, averaging the logits
    # system
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int | None = None  # CPU threads for torch (default: torch's choice)
    channels_last: bool = True  # NHWC memory layout (faster convolutions on CPU and GPU)
    compile: bool = False  # torch.compile the model (CUDA)
    # output
    runs_dir: str = "runs"
    name: str | None = None  # run directory name (default: <preset or model>-<timestamp>)
    overwrite: bool = False  # allow writing into an existing, non-empty run directory
    preset: str | None = None
    verbose: bool = False  # print the model's layer shapes on the first forward pass

    def validate(self) -> TrainConfig:
        from reglab.models import MODELS, check_image_size

        def bad(msg: str) -> None:
            raise ConfigError(msg)

        if self.model not in MODELS:
            choices = ", ".join(sorted(MODELS))
            bad(f"unknown model {self.model!r} (--model); choose one of: {choices}")
        try:
            check_image_size(self.model, self.image_size)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        for name in ("batch_size", "eval_batch_size", "log_every", "val_every"):
            if getattr(self, name) < 1:
                flag = "--" + name.replace("_", "-")
                bad(f"{flag} must be a positive integer (got {getattr(self, name)})")
        if self.steps < 1 and self.epochs is None:
            bad(f"--steps must be a positive integer (got {self.steps})")
        if self.epochs is not None and self.epochs <= 0:
            bad(f"--epochs must be positive (got {self.epochs})")
        if self.image_size > 512:
            bad(f"--image-size {self.image_size} is too large; use at most 512")
        for name in ("l2", "lr", "label_smoothing", "dropout", "block_dropout", "momentum",
                     "warmup_steps", "holdout"):
            if getattr(self, name) < 0:
                bad(f"--{name.replace('_', '-')} must be >= 0 (got {getattr(self, name)})")
        if not 0 <= self.dropout < 1:
            bad(f"--dropout is a probability in [0, 1) (got {self.dropout})")
        if not 0 <= self.block_dropout < 1:
            bad(f"--block-dropout is a probability in [0, 1) (got {self.block_dropout})")
        from reglab.regularization.rules import rule_text

        if isinstance(self.regularizers, (str, dict)):  # one rule given alone in a config file
            self.regularizers = [self.regularizers]
        self.regularizers = [rule_text(r) for r in self.regularizers]  # RuleError is a ConfigError
        if not 0 <= self.label_smoothing < 1:
            bad(f"--label-smoothing must be in [0, 1) (got {self.label_smoothing})")
        if self.optimizer not in OPTIMIZERS:
            bad(f"unknown optimizer {self.optimizer!r}; choose one of: {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            bad(f"unknown schedule {self.schedule!r}; choose one of: {', '.join(SCHEDULES)}")
        if self.normalization not in ("dataset", "per-image"):
            bad(f"unknown normalization {self.normalization!r}; choose dataset or per-image")
        if self.augment not in AUGMENTATIONS:
            bad(f"unknown augmentation {self.augment!r}; choose one of: {', '.join(AUGMENTATIONS)}")
        if self.train_limit is not None and self.train_limit < self.batch_size:
            bad(f"--train-limit {self.train_limit} is smaller than --batch-size {self.batch_size}")
        return self

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["lr_milestones"] = list(self.lr_milestones)
        return d


PRESETS: dict[str, dict[str, Any]] = {
    # The tutorial's run: its ResNet at 96 px, batch 64, momentum SGD 0.01 / 0.9, L2 1e-4 over conv
    # and linear weights, 20,000 steps, train log every 1,000 and validation every 4,000 steps.
    # Input: per-image standardization, as the tutorial's cifar10_input did.
    # L2 as its code defined it: tf-slim's l2_regularizer(1e-4) = 1e-4 · Σ‖w‖²/2, gradient λw.
    "tutorial": {"normalization": "per-image", "regularizers": ["l2-half=1e-4"]},
    # A 2-core CPU recipe (airbench-style net, whitened input, label smoothing, flip + translate,
    # Nesterov SGD with warm-up then linear decay) reaching 80% holdout accuracy in minutes.
    "quick": {
        "model": "airbench",
        "image_size": 32,
        "holdout": 10_000,
        "batch_size": 256,
        "epochs": 4,
        "optimizer": "nesterov",
        "lr": 0.2,
        "momentum": 0.85,
        "schedule": "linear",
        "warmup_steps": 100,
        "label_smoothing": 0.2,
        "augment": "flip-translate",
        "l2": 5e-4,
        "log_every": 50,
        "val_every": 312,  # every 2 epochs of 156 steps, and at the end
        "tta": True,
    },
    # A GPU recipe: the same method at airbench94's widths and batch size, 10 epochs.
    "gpu": {
        "model": "airbench94",
        "image_size": 32,
        "holdout": 10_000,
        "batch_size": 1024,
        "epochs": 10,
        "optimizer": "nesterov",
        "lr": 1.6,
        "momentum": 0.85,
        "schedule": "linear",
        "warmup_steps": 80,
        "label_smoothing": 0.2,
        "augment": "flip-translate",
        "l2": 5e-4,
        "log_every": 39,
        "val_every": 1_000_000,  # at the end only
        "eval_batch_size": 2000,
        "tta": True,
    },
}

FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def load_config_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found; check the path given to --config")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        first = str(e).splitlines()[0]
        raise ConfigError(f"config file {path} is not valid YAML ({first})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of setting: value")
    return data


def build_config(
    preset: str | None = None,
    file_values: dict[str, Any] | None = None,
    overrides: dict[str, Any] | None = None,
) -> TrainConfig:
    """Merge defaults < preset < config file < flags (None values in ``overrides`` are unset)."""
    values: dict[str, Any] = {}
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
        values.update(PRESETS[preset])
        values["preset"] = preset
    flags = {k: v for k, v in (overrides or {}).items() if v is not None}
    for source in (file_values or {}, flags):
        for key, value in source.items():
            key = key.replace("-", "_")
            if key not in FIELDS:
                raise ConfigError(f"unknown setting {key!r}; see reglab train --help for the names")
            values[key] = value
    overrides = overrides or {}
    if overrides.get("steps") is not None and overrides.get("epochs") is None:
        values["epochs"] = None  # an explicit --steps wins over a preset's epochs
    if "lr_milestones" in values:
        values["lr_milestones"] = tuple(float(x) for x in values["lr_milestones"])
    return TrainConfig(**values).validate()
