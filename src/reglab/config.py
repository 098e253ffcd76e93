"""Every setting of a run, declared once: name, type, default, unit, help, choices, bounds, and
whether it is an *experiment* setting (it changes what is learned or measured) or a *system*
setting (where and how the run executes: device, threads, paths, logging).

The declaration is the dataclass :class:`TrainConfig`; each field's :func:`setting` metadata
carries the rest. Everything else is derived from it:

* the command line (``reglab.cli`` builds its flags from :data:`SETTINGS`),
* config files and presets (:func:`build_config`: defaults < preset < config file < flags),
* validation and coercion (:func:`coerce`: one path for flags, YAML values and sweep axes),
* sweep axes (experiment settings only), a resumed run's consistency check (system settings may
  change, experiment settings may not), the report's "what differs between runs", and the
  docs' table of settings (:func:`settings_markdown`, in docs/settings.md).

Units and conventions: ``lr`` is the learning rate per step (not scaled by batch size);
``batch_size`` is in images; ``steps`` counts optimizer updates and ``epochs``, when set, is
converted to steps (floor(train images / batch size) steps per epoch). ``l2`` is λ of
``loss + λ Σ‖w‖²`` (gradient 2λw); the other regularizers are rules ``METHOD=COEF[@SCOPE]``
(``--reg``), each with its convention in ``reglab.regularization`` and docs/regularization.md.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from reglab.errors import ConfigError

__all__ = [
    "PRESETS",
    "SETTINGS",
    "ConfigError",
    "Setting",
    "TrainConfig",
    "build_config",
    "coerce",
    "load_config_file",
    "settings_markdown",
    "with_defaults",
]

GROUPS = ("recipe", "model", "data", "optimisation", "regularization", "evaluation", "system",
          "output")
OPTIMIZERS = ("sgd", "nesterov", "adamw", "muon")
SCHEDULES = ("constant", "step", "cosine", "linear")
MALLOC_MODES = ("keep", "system")
AUGMENTATIONS = ("none", "flip", "flip-crop", "flip-translate", "altflip-translate",
                 "altflip-translate-jitter", "cutout", "tutorial")
NORMALIZATIONS = ("dataset", "per-image")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
NONFINITE = ("stop", "skip-step")


# The model settings that go to a network's constructor: these two only where its signature
# takes them (None: the network's own), dropout and block_dropout to every registered network.
MODEL_OPTIONS = ("widths", "activation")
CONSTRUCTOR_SETTINGS = ("dropout", "block_dropout", *MODEL_OPTIONS)


def _model_names() -> list[str]:
    from reglab.models import list_models

    return list_models()


def _activations() -> list[str]:
    from reglab.models.airbench import ACTIVATIONS

    return list(ACTIVATIONS)


@dataclass(frozen=True)
class Setting:
    """One setting, as declared by its field's metadata (see :func:`setting`)."""

    name: str  # the field name, e.g. "batch_size"
    type: Any  # the annotation: int, float, str, bool, "int | None", list[str], tuple[float, ...]
    default: Any
    help: str
    group: str
    unit: str = ""
    kind: str = "experiment"  # experiment | system
    choices: tuple[str, ...] | Callable[[], Sequence[str]] | None = None
    low: float | None = None  # bounds, inclusive unless low_open / high_open
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    flag: str = ""  # the command-line flag without dashes (default: the name with dashes)
    metavar: str | None = None
    example: str | None = None  # a valid value for error messages (default: the default)

    @property
    def cli(self) -> str:
        return "--" + self.flag

    @property
    def base_type(self) -> Any:
        """The type without ``| None``."""
        args = [a for a in typing.get_args(self.type) if a is not type(None)]
        return args[0] if typing.get_origin(self.type) in (typing.Union, _UnionType) else self.type

    @property
    def nullable(self) -> bool:
        return type(None) in typing.get_args(self.type)

    @property
    def repeatable(self) -> bool:
        return typing.get_origin(self.base_type) is list

    def choice_list(self) -> list[str] | None:
        if self.choices is None:
            return None
        return list(self.choices() if callable(self.choices) else self.choices)

    def bounds_text(self) -> str:
        """'>= 0', '> 0', 'in [0, 1)' or ''."""
        lo, hi = self.low, self.high
        if lo is not None and hi is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"in {left}{lo:g}, {hi:g}{right}"
        if lo is not None:
            return f"{'>' if self.low_open else '>='} {lo:g}"
        if hi is not None:
            return f"{'<' if self.high_open else '<='} {hi:g}"
        return ""


_UnionType = type(int | None)


def setting(
    default: Any,
    help: str,
    *,
    group: str,
    unit: str = "",
    kind: str = "experiment",
    choices: tuple[str, ...] | Callable[[], Sequence[str]] | None = None,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    flag: str = "",
    metavar: str | None = None,
    example: str | None = None,
) -> Any:
    """A dataclass field carrying its setting's declaration."""
    assert group in GROUPS and kind in ("experiment", "system"), (group, kind)
    meta = dict(help=help, group=group, unit=unit, kind=kind, choices=choices, low=low, high=high,
                low_open=low_open, high_open=high_open, flag=flag, metavar=metavar,
                example=example)  # fmt: skip
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """A run's settings. The defaults are the tutorial's schedule (its network at 96 px, batch 64,
    momentum SGD 0.01 / 0.9, 20,000 steps) without regularization; ``--preset tutorial`` adds its
    L2 and input standardization."""

    preset: str | None = setting(None, "a recipe applied under the config file and the flags: "
                                 "tutorial (the tutorial's run), quick (cpu90's recipe for 3 "
                                 "epochs: 87% in about 2 minutes on a 2-core AVX2 CPU, 30 s on "
                                 "one with AMX in bf16), quick-sgd (Nesterov SGD with L2 on every "
                                 "weight, 4 epochs: 84% in about 4 minutes; the preset of the λ "
                                 "studies), "
                                 "cpu90 (cpu94's recipe on the small airbench network: 90% in "
                                 "about 5 minutes on a 2-core AVX2 CPU, about 1 with AMX), gpu "
                                 "(airbench94's recipe, seconds on a GPU), gpu94 (cpu94's recipe "
                                 "for a GPU: all at 32 px, full TTA), cpu94 (airbench94_muon's: "
                                 "Muon, 8 epochs, the first 3 at 24 px, with hiverge's jitter and "
                                 "selective TTA; 93.5% in about 25 minutes on a 2-core AVX2 CPU, "
                                 "about 4 with AMX)",
                                 group="recipe", kind="system",
                                 choices=lambda: tuple(PRESETS))  # fmt: skip
    # model
    model: str = setting("tutorial-resnet", "the network (reglab models lists them)",
                         group="model", choices=_model_names)  # fmt: skip
    image_size: int = setting(96, "side after bilinear resize of the 32x32 images", group="model",
                              unit="pixels", low=1, high=512)  # fmt: skip
    dropout: float = setting(0.0, "dropout before the classifier", group="model",
                             unit="probability", low=0, high=1, high_open=True)  # fmt: skip
    block_dropout: float = setting(0.0, "Dropout2d (whole channels) inside each residual block or "
                                   "conv group", group="model", unit="probability", low=0, high=1,
                                   high_open=True, metavar="P")  # fmt: skip
    widths: tuple[int, ...] | None = setting(None, "an airbench network's three conv-group "
                                             "widths (default: the model's own: airbench "
                                             "32,64,128, airbench94 64,256,256)", group="model",
                                             unit="channels", low=1,
                                             metavar="C1,C2,C3", example="32,64,128")  # fmt: skip
    activation: str | None = setting(None, "an airbench network's activation (default: the "
                                     "model's own, GELU as in airbench; relu is cheaper per step "
                                     "but cost cpu90 0.4-0.75 points)", group="model",
                                     choices=_activations)  # fmt: skip
    # data
    data_dir: str | None = setting(None, "CIFAR-10 folder (else $REGLAB_DATA, else "
                                   "~/.cache/reglab; the official archive is downloaded there "
                                   "if absent)", group="data", kind="system",
                                   metavar="DIR")  # fmt: skip
    holdout: int = setting(0, "validate on the last N training images instead of the official "
                           "test set (0: the test set); choose λ on a holdout", group="data",
                           unit="images", low=0)  # fmt: skip
    train_limit: int | None = setting(None, "train on the first N training images only (quick "
                                      "checks)", group="data", unit="images", low=1,
                                      metavar="N", example="5000")  # fmt: skip
    normalization: str = setting("dataset", "input scaling: dataset (CIFAR-10 channel mean/std) "
                                 "or per-image (tf.image.per_image_standardization after "
                                 "resizing, the tutorial's)", group="data",
                                 choices=NORMALIZATIONS)  # fmt: skip
    augment: str = setting("none", "augmentation: flip; flip-crop (pad 4, random crop); "
                           "flip-translate (reflect-pad 2, random crop); altflip-translate "
                           "(airbench's alternating flip: each image mirrored in every other "
                           "epoch, from a random first one; then translate); altflip-translate-"
                           "jitter (then brightness and contrast jitter, hiverge's "
                           "cifar10-speedrun); cutout (flip-crop "
                           "+ a 16-px square); tutorial (resize x1.25, crop, flip, colour "
                           "jitter)",
                           group="data", choices=AUGMENTATIONS)  # fmt: skip
    low_res_fraction: float = setting(0.0, "progressive resizing: train the first F of the "
                                      "run's steps (0.5: the first half) on images resized to "
                                      "--low-res-size pixels (a conv's cost goes with the "
                                      "pixels), the rest and every evaluation at --image-size "
                                      "(0: off)", group="data", unit="share of the steps",
                                      low=0, high=1, high_open=True, metavar="F")  # fmt: skip
    low_res_size: int = setting(24, "--low-res-fraction: the side of the early steps' images "
                                "(bilinear, antialiased when shrinking)", group="data",
                                unit="pixels", low=1, high=512)  # fmt: skip
    # optimisation
    batch_size: int = setting(64, "images per step (per process under torchrun: the global "
                              "batch is this times the world size)", group="optimisation",
                              unit="images", low=1)  # fmt: skip
    steps: int = setting(20_000, "optimizer updates", group="optimisation", unit="steps", low=1)
    epochs: float | None = setting(None, "passes over the training set; when set it gives the "
                                   "steps", group="optimisation", unit="epochs", low=0,
                                   low_open=True, example="8")  # fmt: skip
    optimizer: str = setting("sgd", "sgd (momentum), nesterov, adamw (its own decay off: "
                             "reglab applies decay), or muon (conv filters by Muon at "
                             "--muon-lr, renormalized every step; the rest Nesterov SGD)",
                             group="optimisation", choices=OPTIMIZERS)  # fmt: skip
    lr: float = setting(0.01, "peak learning rate", group="optimisation", unit="per step", low=0,
                        low_open=True)  # fmt: skip
    momentum: float = setting(0.9, "SGD momentum; Adam's beta1 for adamw", group="optimisation",
                              low=0, high=1, high_open=True)  # fmt: skip
    schedule: str = setting("constant", "learning-rate schedule: constant, step (x gamma at "
                            "each milestone), cosine or linear (to 0)", group="optimisation",
                            choices=SCHEDULES)  # fmt: skip
    warmup_steps: int = setting(0, "linear warm-up from lr/N to lr", group="optimisation",
                                unit="steps", low=0)  # fmt: skip
    lr_milestones: tuple[float, ...] = setting((0.5, 0.75), "step schedule: where lr is "
                                               "multiplied by gamma", group="optimisation",
                                               unit="fractions of training", low=0, high=1,
                                               metavar="F,F")  # fmt: skip
    lr_gamma: float = setting(0.1, "step schedule: the lr multiplier at each milestone",
                              group="optimisation", low=0, low_open=True)  # fmt: skip
    label_smoothing: float = setting(0.0, "ε of cross entropy's label smoothing",
                                     group="optimisation", low=0, high=1,
                                     high_open=True)  # fmt: skip
    norm_bias_lr_scale: float = setting(1.0, "learning-rate multiplier for normalization "
                                        "layers' biases (airbench: 64)", group="optimisation",
                                        low=0, low_open=True)  # fmt: skip
    train_norm_weights: bool = setting(True, "train normalization layers' scales; "
                                       "--no-train-norm-weights keeps them at 1 (airbench)",
                                       group="optimisation")  # fmt: skip
    lookahead_every: int = setting(0, "lookahead with an EMA (airbench94): every N steps the "
                                   "weights are averaged into a slow copy with weight "
                                   "0.95^N·(t/T)³ and reset to it; the run ends on the slow "
                                   "copy (0: off; airbench: 5)", group="optimisation",
                                   unit="steps", low=0)  # fmt: skip
    muon_lr: float = setting(0.24, "--optimizer muon: the conv filters' learning rate (each "
                             "step moves a filter by about lr × an orthogonal matrix; "
                             "airbench94_muon: 0.24), following --schedule like --lr",
                             group="optimisation", unit="per step", low=0,
                             low_open=True)  # fmt: skip
    muon_momentum: float = setting(0.6, "--optimizer muon: the filters' Nesterov momentum "
                                   "(airbench94_muon: 0.6; the other tensors use --momentum)",
                                   group="optimisation", low=0, high=1,
                                   high_open=True)  # fmt: skip
    whiten_bias_epochs: float = setting(0.0, "train the whitening layer's bias (airbench "
                                        "networks) at --norm-bias-lr-scale with its lr fading "
                                        "linearly to 0 over N epochs, frozen after "
                                        "(airbench94_muon: 3; 0: like any bias, all run)",
                                        group="optimisation", unit="epochs", low=0,
                                        metavar="N")  # fmt: skip
    # regularization
    l2: float = setting(0.0, "λ of loss + λ Σ‖w‖² over conv and linear weights, gradient 2λw "
                        "(the tutorial's text; its code's λ is --reg l2-half=λ); shorthand for "
                        "--reg l2=λ, applied first", group="regularization", low=0,
                        metavar="LAMBDA")  # fmt: skip
    regularizers: list[str] = setting(  # noqa: RUF009 (setting() makes a default_factory)
        [],
        "a regularizer rule METHOD=COEF[@SCOPE], repeatable (replaces a preset's or config "
        "file's list); methods and scopes: docs/regularization.md",
        group="regularization",
        flag="reg",
        metavar="METHOD=COEF[@SCOPE]",
    )
    penalty_in_loss: bool = setting(True, "add the penalties (l2, l2-half, l1) to the minimised "
                                    "loss; --no-penalty-in-loss reproduces the tutorial's bug "
                                    "(penalty computed and logged, never minimised: λ acts as "
                                    "0)", group="regularization")  # fmt: skip
    audit: bool = setting(True, "check on the first step that each regularizer changes the "
                          "update as its formula says, and stop the run if not",
                          group="regularization", kind="system")  # fmt: skip
    # evaluation and logging
    log_every: int = setting(1000, "steps between [train] lines (averaged over the interval)",
                             group="evaluation", unit="steps", kind="system", low=1)  # fmt: skip
    val_every: int = setting(4000, "steps between validations over the whole validation set "
                             "(and at the end)", group="evaluation", unit="steps",
                             kind="system", low=1)  # fmt: skip
    eval_batch_size: int = setting(1000, "validation batch", group="evaluation", unit="images",
                                   kind="system", low=1)  # fmt: skip
    tta: bool = setting(False, "evaluate on each image and its mirror image, averaging logits",
                        group="evaluation")  # fmt: skip
    tta_translate: bool = setting(False, "also evaluate on each image shifted one pixel up-left "
                                  "and down-right (reflect padding), weights 1/2, 1/4, 1/4 as "
                                  "in airbench; with --tta each view is mirrored too (6 "
                                  "forward passes)", group="evaluation")  # fmt: skip
    tta_fraction: float = setting(1.0, "run the test-time views (--tta, --tta-translate) only "
                                  "for this fraction of each validation batch, its least "
                                  "confident images by the plain forward pass; the others keep "
                                  "their plain logits (hiverge's cifar10-speedrun: 0.25)",
                                  group="evaluation", unit="fraction", low=0, high=1,
                                  low_open=True)  # fmt: skip
    checkpoint_every: int | None = setting(None, "steps between checkpoints (default: the "
                                           "preset's, else about every 5 minutes of work); "
                                           "always one at the end", group="evaluation",
                                           unit="steps", kind="system", low=1,
                                           metavar="N", example="500")  # fmt: skip
    tensorboard: bool = setting(True, "write TensorBoard event files in RUN/tensorboard "
                                "(needs the tensorboard package)", group="evaluation",
                                kind="system")  # fmt: skip
    # system
    seed: int = setting(0, "random seed: same seed, same run, bit for bit on CPU",
                        group="system", low=0)  # fmt: skip
    device: str = setting("auto", "auto, cpu, cuda or cuda:N", group="system", kind="system")
    threads: int | None = setting(None, "CPU threads for torch (default: torch's choice)",
                                  group="system", kind="system", low=1,
                                  example="2")  # fmt: skip
    malloc: str = setting("keep", "CPU memory: keep (glibc's malloc keeps freed memory, so each "
                          "step's large activations do not page-fault anew: faster steps, see "
                          "BENCHMARKS.md; resident memory stays at its peak) or system "
                          "(the C library's default)", group="system", kind="system",
                          choices=MALLOC_MODES)  # fmt: skip
    precision: str = setting("auto", "auto (bf16 autocast on CUDA and on CPUs with AVX512-BF16 or "
                             "AMX, fp32 elsewhere), fp32, bf16, or fp16 (CUDA only)",
                             group="system", choices=PRECISIONS)  # fmt: skip
    channels_last: bool = setting(True, "NHWC memory layout (faster convolutions)",
                                  group="system", kind="system")  # fmt: skip
    compile: bool = setting(False, "torch.compile the model", group="system", kind="system")
    on_nonfinite: str = setting("stop", "a NaN/inf loss or gradient: stop (naming the likely "
                                "cause) or skip-step (drop that update and go on)",
                                group="system", choices=NONFINITE)  # fmt: skip
    sync_bn: bool = setting(False, "under torchrun: synchronise batch-norm statistics across "
                            "processes (default: per process)", group="system")  # fmt: skip
    # output
    runs_dir: str = setting("runs", "parent folder of run directories", group="output",
                            kind="system", metavar="DIR")  # fmt: skip
    name: str | None = setting(None, "run directory name (default <preset or model>-<time>)",
                               group="output", kind="system")  # fmt: skip
    overwrite: bool = setting(False, "replace the results of an existing run directory (all "
                              "of them are removed first)", group="output",
                              kind="system")  # fmt: skip
    verbose: bool = setting(False, "print the network's layer shapes on the first batch",
                            group="output", kind="system")  # fmt: skip
    def validate(self) -> TrainConfig:
        """Every value coerced and checked (ConfigError, one line), then the cross-field rules."""
        for s in SETTINGS.values():
            setattr(self, s.name, coerce(s, getattr(self, s.name), s.cli))
        from reglab.models import check_image_size

        try:
            check_image_size(self.model, self.image_size)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if self.low_res_fraction:
            if self.low_res_size >= self.image_size:
                raise ConfigError(f"--low-res-size {self.low_res_size} must be smaller than "
                                  f"--image-size {self.image_size}: lower it, or drop "
                                  "--low-res-fraction")  # fmt: skip
            try:
                check_image_size(self.model, self.low_res_size)
            except ValueError as e:
                raise ConfigError(str(e).replace("--image-size", "--low-res-size")) from None
        from reglab.models import MODELS

        takes = inspect.signature(MODELS[self.model].constructor).parameters
        for name in MODEL_OPTIONS:  # only the airbench networks take these
            if getattr(self, name) is not None and name not in takes:
                raise ConfigError(f"--{name} sets an airbench network's {name}; model "
                                  f"{self.model!r} has its own: drop --{name} or use --model "
                                  "airbench")  # fmt: skip
        if self.widths is not None and len(self.widths) != 3:
            raise ConfigError(f"--widths takes three widths, one per conv group (e.g. 32,64,128); "
                              f"got {len(self.widths)}")  # fmt: skip
        if self.train_limit is not None and self.train_limit < self.batch_size:
            raise ConfigError(f"--train-limit {self.train_limit} is smaller than --batch-size "
                              f"{self.batch_size}: raise --train-limit or lower --batch-size")
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain values (lists for tuples), in declaration order: config.yaml's content."""
        return {k: list(v) if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(self).items()}  # fmt: skip

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes).validate()


def _setting_of(f: dataclasses.Field, hints: dict[str, Any]) -> Setting:
    m = dict(f.metadata)
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    return Setting(name=f.name, type=hints[f.name], default=default,
                   **{**m, "flag": m["flag"] or f.name.replace("_", "-")})  # fmt: skip


SETTINGS: dict[str, Setting] = {
    f.name: _setting_of(f, typing.get_type_hints(TrainConfig))
    for f in dataclasses.fields(TrainConfig)
}
_BY_FLAG = {s.flag: s for s in SETTINGS.values()}


# Settings that were replaced: what to give instead (a one-line error names it).
RENAMED: dict[str, str] = {
    "low_res_epochs": "--low-res-epochs was replaced by --low-res-fraction, the share of the "
                      "run's steps at --low-res-size (the first 4 of 8 epochs: "
                      "--low-res-fraction 0.5)",
}  # fmt: skip


def lookup(name: str, where: str = "") -> Setting:
    """The setting called ``name`` (field name, or flag with or without dashes); ConfigError
    (starting with ``where``) naming the nearest names, or the replacement, otherwise."""
    key = name.strip().lstrip("-")
    s = SETTINGS.get(key.replace("-", "_")) or _BY_FLAG.get(key.replace("_", "-"))
    head = f"{where}: " if where else ""
    if s is None and key.replace("-", "_") in RENAMED:
        raise ConfigError(head + RENAMED[key.replace("-", "_")])
    if s is None:
        import difflib

        near = difflib.get_close_matches(key.replace("_", "-"), list(_BY_FLAG), n=3)
        hint = f" (did you mean {', '.join(near)}?)" if near else ""
        raise ConfigError(f"{head}unknown setting {name!r}{hint}; the settings are listed by "
                          "reglab train --help and docs/settings.md")  # fmt: skip
    return s


# --------------------------------------------------------------------------------------------
# Coercion: one path for flags (strings), YAML values and sweep values.

_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def _example(s: Setting) -> str:
    """A valid value of ``s`` as one would type it: its declared example, else its default."""
    if s.example is not None:
        return s.example
    if isinstance(s.default, tuple):
        return ",".join(f"{v:g}" for v in s.default)
    return repr(s.default)


def _number(s: Setting, value: Any, where: str) -> float:
    if isinstance(value, bool):
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if isinstance(value, (int, float)):
        x = float(value)
    else:
        text = str(value).strip().replace("_", "")
        try:  # YAML 1.1 reads 1e-4 as a string; every common spelling is a number here
            x = float(text)
        except ValueError:
            raise ConfigError(f"{where}: {value!r} is not a number (e.g. {_example(s)})") from None
    if not math.isfinite(x):
        raise ConfigError(f"{where}: {value!r} is not a finite number; give a finite value")
    return x


def _check_bounds(s: Setting, x: float, where: str) -> None:
    below = s.low is not None and (x <= s.low if s.low_open else x < s.low)
    above = s.high is not None and (x >= s.high if s.high_open else x > s.high)
    if below or above:
        raise ConfigError(f"{where} must be {s.bounds_text()} (got {x:g})")


def _scalar(s: Setting, kind: Any, value: Any, where: str) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE or text in _FALSE:
            return text in _TRUE
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if kind is int:
        x = _number(s, value, where)
        if x != int(x):
            raise ConfigError(f"{where}: expected a whole number, got {value!r}")
        _check_bounds(s, x, where)
        return int(x)
    if kind is float:
        x = _number(s, value, where)
        _check_bounds(s, x, where)
        return x
    if kind is str:
        if isinstance(value, (dict, list, tuple)) or value is None:
            raise ConfigError(f"{where}: expected a word, got {value!r}")
        text = str(value).strip()
        choices = s.choice_list()
        if choices is not None and text not in choices:
            raise ConfigError(f"{where}: unknown {s.name.replace('_', ' ')} {text!r}; choose one "
                              f"of: {', '.join(choices)}")  # fmt: skip
        return text
    raise TypeError(f"setting {s.name}: unsupported type {kind!r}")


def coerce(s: Setting | str, value: Any, where: str | None = None) -> Any:
    """``value`` (a flag's text, a YAML value, a sweep value or a Python value) as setting ``s``
    holds it; ConfigError (one line starting with ``where``) if it is not a valid value."""
    s = lookup(s) if isinstance(s, str) else s
    where = where or s.cli
    if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null")
                         and s.nullable):  # fmt: skip
        if s.nullable:
            return None
        raise ConfigError(f"{where} needs a value (it cannot be empty)")
    kind = s.base_type
    origin = typing.get_origin(kind)
    if origin is tuple:  # lr_milestones "0.5,0.75", widths "32,64,128", or a list of numbers
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            items = [items]
        item_type = typing.get_args(kind)[0]
        return tuple(_scalar(s, item_type, v, where) for v in items if str(v).strip())
    if origin is list:  # regularizers: one rule or a list of rules (strings or mappings)
        from reglab.regularization.rules import RuleError, rule_text

        items = value if isinstance(value, (list, tuple)) else [value]
        try:
            return [rule_text(v) for v in items]
        except RuleError as e:
            raise ConfigError(f"{where}: {e}") from None
    return _scalar(s, kind, value, where)


# --------------------------------------------------------------------------------------------
# Presets and the merge order defaults < preset < config file < flags.

# quick's recipe until it became cpu90's (airbench-style net, whitened input, label smoothing,
# flip + translate, Nesterov SGD with warm-up then linear decay, L2 on every conv and linear
# weight): 84% holdout accuracy in about 4 minutes on a 2-core CPU. The preset of the λ studies
# (docs/sweep-l2-quick.md): plain SGD lets L2 act on every weight, where Muon renormalises the
# conv filters' updates.
_QUICK_SGD: dict[str, Any] = {
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
    "checkpoint_every": 156,
    "tta": True,
}

# A GPU recipe: airbench94's (widths, batch size, Nesterov lr and momentum, label smoothing,
# batch-norm shifts at 64x lr with scales frozen, lookahead every 5 steps, alternating flip,
# flip + translate TTA), 10 epochs.
_GPU: dict[str, Any] = {
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
    "augment": "altflip-translate",
    "norm_bias_lr_scale": 64.0,
    "train_norm_weights": False,
    "lookahead_every": 5,
    "l2": 5e-4,
    "log_every": 39,
    "val_every": 1_000_000,  # at the end only
    "checkpoint_every": 1_000_000,  # at the end only: the run takes seconds
    "eval_batch_size": 2000,
    "tta": True,
    "tta_translate": True,  # airbench94's tta_level 2
}

# The fastest CPU recipe to 93.5% found so far: airbench94_muon's (Keller Jordan). Muon on the
# conv filters (so no decay on them: decay on the head and the biases, as airbench94_muon's wd of
# 2e-6 x 2000 per step), batch 2000, linear decay from the first step, the whitening bias fading
# over 3 epochs, no lookahead; airbench94's net, shifts at 64x lr, frozen scales, alternating
# flip; with two of hiverge's cifar10-speedrun additions: its brightness / contrast jitter, and
# flip + translate TTA for the least confident quarter of each batch only (on the 7.5-epoch run
# of results/cpu94: 93.44% against 93.45% with all six views, in 32 s instead of 78 s). 8
# epochs (airbench94_muon's own; seed 0: 7.5 reached 93.44%, 8 93.75%, 8.5 93.68%), the first 3
# at 24 px (progressive resizing; seeds 0 to 4: 93.80 / 93.56 / 93.75 / 93.63 / 93.72% in 24-26
# minutes; the first 4 at 24 px 93.58 / 93.54 / 93.61%, 0.94x the time in seed 2's same-run A/B;
# all at 32 px 93.75 / 93.89% in 27-33 minutes). A checkpoint every epoch (20 steps of 2000
# images), validation at the end (measured on a 2-core AVX2 EPYC: BENCHMARKS.md).
_CPU94: dict[str, Any] = {
    **_GPU,
    "optimizer": "muon",
    "muon_lr": 0.24,
    "muon_momentum": 0.6,
    "batch_size": 2000,
    "epochs": 8,
    "augment": "altflip-translate-jitter",
    "tta_fraction": 0.25,
    "warmup_steps": 0,
    "lookahead_every": 0,
    "whiten_bias_epochs": 3,
    "low_res_fraction": 0.375,
    "low_res_size": 24,
    "l2": 0.0,
    "regularizers": ["wd=2.5e-3@linear.weight", "wd=4e-5@norm.bias,conv.bias"],
    "log_every": 10,
    "checkpoint_every": 20,
    "eval_batch_size": 1000,  # the default: 6 TTA views of 2,000 images are GPU-sized batches
}

# A GPU recipe for airbench94's accuracy: cpu94's (airbench94_muon's with hiverge's jitter),
# without its two CPU economies: every epoch at 32 px (no progressive resizing) and flip +
# translate TTA on every image (not only the least confident quarter), in batches of 2000
# (GPU-sized), a checkpoint at the end only. On the 2-core CPU, fp32, seeds 0 / 1 reached 93.75 /
# 93.89% (results/gpu94-on-cpu), where airbench94 reached a median 93.63% on the same holdout on
# an H200 (BENCHMARKS.md). Not measured on a GPU yet (bench/gpu_session.sh runs it).
_GPU94: dict[str, Any] = {
    **_CPU94,
    "low_res_fraction": 0.0,
    "tta_fraction": 1.0,
    "eval_batch_size": 2000,
    "log_every": 20,  # once an epoch: a log point waits for the GPU
    "checkpoint_every": 1_000_000,  # at the end only: the run takes seconds
}

# The fastest CPU recipe to 90% found so far: cpu94's on the small airbench network (widths
# 32/64/128), batch 1000, 8 epochs, the first 4 at 24 px (progressive resizing; a larger share than
# cpu94's 3 of 8, for the 5-minute target), Muon at lr 0.18 (cpu94's 0.24 is for batch 2000: half
# the batch, about 1/√2 the lr). Measured on a 2-core AVX2 EPYC (BENCHMARKS.md, results/cpu90 and
# results/cpu90-tuning): Muon lr 0.18 over seeds 0 to 6, mean 90.33% and lowest 90.21%, against
# 90.24% and 89.99% at 0.24 (the gain in the mean within noise); 0.12 and 0.3 were lower, label
# smoothing 0.1 and dropping the jitter no better (at 0.18 too: -0.11 over seeds 0 to 3), nor
# narrower widths for their time (--widths 16,64,128: 10 epochs in 0.77x the time, 0.86 points
# lower; results/cpu90-widths). At lr 0.24, seeds 0 / 1: all 8 epochs at 32 px
# 90.59 / 90.32%, the first 4 at 24 px 90.28 / 90.30% (0.70x the time in one bench run); the first 3
# at 24 px, seeds 0 to 3, 90.34 / 90.32 / 90.07 / 90.42% (1.07x the time, no margin); 7 epochs at 32
# px 90.19 / 89.97%; seed 0, the first 5 of 8 at 24 px 89.81%, 5 of 9 at 20 px 89.56%; at 6 epochs
# batches of 500 / 1000 / 2000 reached 89.70 / 89.90 / 89.38%. A checkpoint every epoch (40 steps),
# validation at the end.
_CPU90: dict[str, Any] = {
    **_CPU94,
    "model": "airbench",
    "batch_size": 1000,
    "epochs": 8,
    "low_res_fraction": 0.5,
    "muon_lr": 0.18,
    "checkpoint_every": 40,
}

# The quick CPU recipe: cpu90's for 3 epochs (120 steps of 1000), the first 1.5 at 24 px, at
# cpu94's Muon lr 0.24 (the short run wants it: cpu90's 0.18 gave 86.68 / 86.68% for seeds 0 / 1,
# against 87.39 / 87.05%): 87% in about 2 minutes on a 2-core AVX2 CPU (BENCHMARKS.md; seed 0:
# 87.48% all at 32 px, 87.39% with 1.5 epochs at 24 px in 0.72x the time, 87.35% with 1, 86.65%
# with 2; quick-sgd's 4 epochs: 84%).
_QUICK: dict[str, Any] = {**_CPU90, "epochs": 3, "muon_lr": _CPU94["muon_lr"]}

PRESETS: dict[str, dict[str, Any]] = {
    # The tutorial's run: its ResNet at 96 px, batch 64, momentum SGD 0.01 / 0.9, 20,000 steps,
    # train lines every 1,000 and validation every 4,000 steps (the defaults), with its input
    # (per-image standardization) and its L2 as its code defined it: tf-slim's
    # l2_regularizer(1e-4) = 1e-4 · Σ‖w‖²/2, gradient λw.
    "tutorial": {
        "normalization": "per-image",
        "regularizers": ["l2-half=1e-4"],
        "checkpoint_every": 500,
    },
    "quick": _QUICK,
    "quick-sgd": _QUICK_SGD,
    "cpu90": _CPU90,
    "gpu": _GPU,
    "gpu94": _GPU94,
    "cpu94": _CPU94,
}


def load_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping of a YAML config file (values are coerced later, with the file named)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found; check the path given to --config")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        first = str(e).splitlines()[0]
        raise ConfigError(f"config file {path} is not valid YAML ({first})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not a text file; give a YAML file") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of setting: value, e.g. "
                          "'lr: 0.01'")  # fmt: skip
    return data


def _source_values(values: dict[str, Any], where: str) -> dict[str, Any]:
    """A source's keys as setting names (``batch-size`` and ``batch_size`` alike; ``reg`` for
    regularizers), values coerced; ConfigError naming ``where`` and the key."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        s = lookup(str(key), where)
        out[s.name] = coerce(s, value, f"{where}: {s.name}" if where != "flags" else s.cli)
    return out


def build_config(
    preset: str | None = None,
    file_values: dict[str, Any] | None = None,
    overrides: dict[str, Any] | None = None,
    file_name: str = "config file",
) -> TrainConfig:
    """Merge defaults < preset < config file < flags and validate.

    The preset is ``preset`` (a flag) or else the file's ``preset:`` key. Within the merge, a
    source that gives ``steps`` but not ``epochs`` unsets an ``epochs`` from below (an explicit
    step count wins over a preset's epochs). ``overrides`` with value None are unset flags.
    """
    file_values = dict(file_values or {})
    flags = {k: v for k, v in (overrides or {}).items() if v is not None}
    file_vals = _source_values(file_values, file_name)
    flag_vals = _source_values(flags, "flags")
    name = flag_vals.pop("preset", None) or preset or file_vals.pop("preset", None)
    file_vals.pop("preset", None)
    values: dict[str, Any] = {}
    if name is not None:
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
        values.update(_source_values(PRESETS[name], f"preset {name}"))
        values["preset"] = name
    for source in (file_vals, flag_vals):
        if "steps" in source and "epochs" not in source:
            values["epochs"] = None
        values.update(source)
    return TrainConfig(**values).validate()


def canonical(value: Any) -> str:
    """A setting value as canonical text, for sweep keys and labels: floats by their shortest
    round-trip form (1e-4 -> 0.0001), lists of rules joined by '+', tuples by ','."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, float):
        return f"{value:.12g}"
    if isinstance(value, list):
        return "+".join(canonical(v) for v in value)
    if isinstance(value, tuple):
        return ",".join(canonical(v) for v in value)
    return str(value)


def setting_label(values: dict[str, Any]) -> str:
    """'l2=0.0001 lr=0.1' for settings' values, the seed left out ('base' when none differ)."""
    items = [f"{k}={canonical(v)}" for k, v in values.items() if k != "seed"]
    return " ".join(items) or "base"


def experiment_settings() -> list[str]:
    """Names of the settings that change what a run learns or measures."""
    return [s.name for s in SETTINGS.values() if s.kind == "experiment"]


def with_defaults(config: dict[str, Any]) -> dict[str, Any]:
    """A stored config.yaml mapping as this version reads it: a record written before a setting
    existed ran with that setting's default, so each setting it lacks is filled in with its
    default (keys that are not settings are kept as they are). A renamed setting is read as
    its replacement: ``low_res_epochs`` N of ``epochs`` E as ``low_res_fraction`` N / E."""
    config = dict(config)
    if "low_res_epochs" in config and "low_res_fraction" not in config:
        n, epochs = config["low_res_epochs"], config.get("epochs")
        if not n or epochs:  # 0 is off; N of E epochs are N / E of the steps
            config["low_res_fraction"] = n / epochs if n else 0.0
            del config["low_res_epochs"]
    return {**{name: s.default for name, s in SETTINGS.items()}, **config}


# --------------------------------------------------------------------------------------------
# The docs' table.


def _default_text(s: Setting) -> str:
    d = s.default
    if isinstance(d, bool):
        return "on" if d else "off"
    if isinstance(d, (list, tuple)):
        return ",".join(map(str, d)) or "(none)"
    return "(none)" if d is None else str(d)


def settings_markdown() -> str:
    """docs/settings.md: every setting by group, as ``reglab train --help`` shows them."""
    lines = [
        "# Settings",
        "",
        "Generated from `reglab.config` (`python -m reglab.config > docs/settings.md`); a test",
        "keeps it current. Each setting is a flag of `reglab train` (`--name`; on/off settings",
        "also `--no-name`), a key of a YAML config file (`name: value`, dashes or underscores)",
        "and, for experiment settings, a possible sweep axis. *System* settings say where and",
        "how a run executes; they may differ between the workers of one sweep and may change",
        "when a run is resumed.",
        "",
        "Presets: " + ", ".join(f"`{k}`" for k in PRESETS) + " (defaults < preset < config file "
        "< flags).",
    ]
    for group in GROUPS:
        lines += ["", f"## {group}", "", "| flag | default | unit / values | kind | meaning |",
                  "|---|---|---|---|---|"]  # fmt: skip
        for s in SETTINGS.values():
            if s.group != group:
                continue
            values = s.unit
            if s.choice_list() is not None:
                values = " \\| ".join(s.choice_list())
            elif s.bounds_text():
                values = f"{s.unit}; {s.bounds_text()}" if s.unit else s.bounds_text()
            flag = f"`{s.cli}`" + (" (repeatable)" if s.repeatable else "")
            text = s.help.replace("|", "\\|")
            lines.append(f"| {flag} | {_default_text(s)} | {values} | {s.kind} | {text} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(settings_markdown(), end="")
