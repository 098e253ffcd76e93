"""Building a run from its config: device, seeds, data, model, precision, regularization and
optimizer, in one :class:`Setup` that the loop runs. Nothing here trains.
"""

from __future__ import annotations

import inspect
import math
import os
import random
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from reglab.config import CONSTRUCTOR_SETTINGS, MODEL_OPTIONS, SETTINGS, TrainConfig
from reglab.data import CIFAR10, load_cifar10
from reglab.data.pipeline import BatchPipeline, full_batches
from reglab.errors import ConfigError
from reglab.models import MODELS, create_model
from reglab.regularization import Regularization, build_regularization
from reglab.regularization.audit import AuditResult, audit_regularization
from reglab.regularization.diagnostics import bn_followed_weights
from reglab.regularization.scope import NORM_TYPES
from reglab.training.allocator import malloc_mode
from reglab.training.distributed import DistInfo, device_for
from reglab.training.lookahead import Lookahead
from reglab.training.muon import muon_params
from reglab.training.optim import build_optimizer, lr_at, param_groups
from reglab.training.precision import Precision, cpu_flags, cpu_model, resolve_precision
from reglab.training.step import train_step


@dataclass
class Setup:
    """A run ready to go: what the loop needs, decided before the first step."""

    cfg: TrainConfig
    device: torch.device
    dist: DistInfo
    data: CIFAR10
    pipeline: BatchPipeline
    model: nn.Module  # the network whose parameters are trained (unwrapped)
    forward: nn.Module  # what the step calls: the model, or its DDP / compiled wrapper
    reg: Regularization
    optimizer: torch.optim.Optimizer
    precision: Precision
    steps: int  # optimizer updates in the whole run
    model_label: str  # cfg.model, or the class name of a network given to build()
    scaler: torch.amp.GradScaler | None = None  # fp16's loss scaler
    lookahead: Lookahead | None = None  # --lookahead-every's slow copy of the weights
    malloc: str = "system"  # what --malloc made of the C allocator, in words

    def lr(self, step: int) -> float:
        c = self.cfg
        return lr_at(step, self.steps, c.lr, c.schedule, c.warmup_steps, c.lr_milestones,
                     c.lr_gamma)  # fmt: skip

    @property
    def parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def total_steps(cfg: TrainConfig, steps_per_epoch: int) -> int:
    """``steps``, or ``epochs`` x steps per epoch (floor(train images / batch)) rounded up."""
    if cfg.epochs is None:
        return cfg.steps
    return max(1, math.ceil(cfg.epochs * steps_per_epoch))


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def make_model(cfg: TrainConfig, num_classes: int) -> nn.Module:
    """The registered network ``cfg.model`` (``verbose`` passed where the network takes it)."""
    kwargs: dict[str, Any] = {"num_classes": num_classes, "dropout": cfg.dropout,
                              "block_dropout": cfg.block_dropout}  # fmt: skip
    constructor = MODELS[cfg.model].constructor
    for name in MODEL_OPTIONS:  # validate() checked that the constructor takes them
        if getattr(cfg, name) is not None:
            kwargs[name] = getattr(cfg, name)
    if cfg.verbose and "verbose" in inspect.signature(constructor).parameters:
        kwargs["verbose"] = True
    return create_model(cfg.model, **kwargs)


def refuse_constructor_settings(cfg: TrainConfig, label: str) -> None:
    """ConfigError when ``cfg`` sets what only a registered network's constructor takes
    (:func:`make_model`): a network given to ``train(model=...)`` is built already, and would
    ignore it without a word."""
    for name in CONSTRUCTOR_SETTINGS:
        default = SETTINGS[name].default
        if getattr(cfg, name) != default:
            raise ConfigError(f"{name} goes to the registered network's constructor; the {label} "
                              f"given to train(model=...) is built already: build it with its "
                              f"own {name}, and leave {name} at {default}")  # fmt: skip


def build(
    cfg: TrainConfig,
    data: CIFAR10 | None = None,
    model: nn.Module | None = None,
    dist: DistInfo | None = None,
) -> Setup:
    """Everything a run of ``cfg`` needs. ``model``: train this network instead of the registered
    ``cfg.model`` (any nn.Module taking NCHW float batches and returning logits)."""
    dist = dist or DistInfo()
    device = device_for(dist, cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    precision = resolve_precision(cfg.precision, device)
    malloc = malloc_mode(cfg.malloc, device.type)

    if data is None:
        data = load_cifar10(cfg.data_dir, holdout=cfg.holdout, train_limit=cfg.train_limit)
    if cfg.batch_size % dist.world_size:
        raise ConfigError(f"--batch-size {cfg.batch_size} (per process) times --nproc-per-node "
                          "is the global batch; it must split evenly")  # fmt: skip
    batch = cfg.batch_size * dist.world_size
    if len(data.train_images) < batch:
        raise ConfigError(f"{len(data.train_images)} training images make no batch of "
                          f"{batch}: lower --batch-size")  # fmt: skip
    steps = total_steps(cfg, full_batches(len(data.train_images), batch))
    low_res_steps = round(cfg.low_res_fraction * steps)  # progressive resizing's first steps
    if low_res_steps >= steps:
        raise ConfigError(f"--low-res-fraction {cfg.low_res_fraction:g} of {steps} steps leaves "
                          f"none at --image-size {cfg.image_size}: lower it")  # fmt: skip
    pipeline = BatchPipeline(
        data.train_images, data.train_labels, batch, cfg.image_size,
        augment=cfg.augment, device=device, seed=cfg.seed, channels_last=cfg.channels_last,
        normalization=cfg.normalization, shard=(dist.rank, dist.world_size),
        low_res=(low_res_steps, cfg.low_res_size),
    )  # fmt: skip

    label = cfg.model if model is None else type(model).__name__
    if model is None:
        model = make_model(cfg, len(data.classes))
    else:
        refuse_constructor_settings(cfg, label)
    model = model.to(device, memory_format=torch.channels_last if cfg.channels_last else None)
    if hasattr(model, "init_from_data"):  # e.g. airbench's whitening layer, from 5,000 images
        model.init_from_data(pipeline.prepare(pipeline.images[:5000]))
    if not cfg.train_norm_weights:  # normalization scales fixed at 1 (airbench)
        freeze_norm_weights(model)
    if dist.enabled and cfg.sync_bn:
        if device.type != "cuda":
            raise ConfigError("--sync-bn needs CUDA: torch's SyncBatchNorm runs on GPUs only "
                              "(on CPU batch norm stays per process)")  # fmt: skip
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    forward: nn.Module = model
    if dist.enabled:
        ids = [device.index] if device.type == "cuda" else None
        forward = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if cfg.compile:
        forward = torch.compile(forward)

    reg = build_regularization(cfg, model)  # decided in one place, printed before training
    optimizer = build_optimizer(cfg.optimizer, optimizer_groups(cfg, model, steps, reg,
                                                                pipeline.steps_per_epoch),
                                cfg.lr, cfg.momentum)  # fmt: skip
    lookahead = Lookahead(model, cfg.lookahead_every, steps) if cfg.lookahead_every else None
    return Setup(cfg, device, dist, data, pipeline, model, forward, reg, optimizer, precision,
                 steps, label, precision.scaler(), lookahead, malloc)  # fmt: skip


def optimizer_groups(cfg: TrainConfig, model: nn.Module, steps: int, reg: Regularization,
                     steps_per_epoch: int) -> list[dict[str, Any]]:  # fmt: skip
    """The optimizer's parameter groups (:func:`reglab.training.optim.param_groups`) for
    ``cfg``; ConfigError when a setting cannot apply to ``model`` or a rule would be void."""
    whiten_steps = 0
    if cfg.whiten_bias_epochs:
        whiten = getattr(model, "whiten", None)
        if not isinstance(whiten, nn.Conv2d) or whiten.bias is None:
            raise ConfigError(f"--whiten-bias-epochs needs a network with a whitening layer "
                              f"(airbench, airbench94), not {cfg.model}: leave it at 0")
        whiten_steps = min(steps, math.ceil(cfg.whiten_bias_epochs * steps_per_epoch))
    muon_scale = None
    if cfg.optimizer == "muon":
        filters = {id(p) for p in muon_params(model)}
        if not filters:
            raise ConfigError(f"--optimizer muon updates conv filters, and {cfg.model} has no "
                              "trainable one: choose nesterov or sgd")  # fmt: skip
        for r in reg.regularizers:
            if any(id(p) in filters for _, p in r.params):
                raise ConfigError(
                    f"rule {r.label} covers conv filters, which --optimizer muon renormalizes "
                    "every step (‖W‖ = √out-channels), so it cannot shrink them: scope it off "
                    "them (e.g. @linear.weight,norm.bias) or choose another --optimizer")
        muon_scale = cfg.muon_lr / cfg.lr
    return param_groups(model, cfg.norm_bias_lr_scale, muon_scale, cfg.muon_momentum,
                        whiten_steps)  # fmt: skip


def freeze_norm_weights(model: nn.Module) -> None:
    """Normalization layers' scales stay as initialised (1): airbench trains only the shifts."""
    for m in model.modules():
        if isinstance(m, NORM_TYPES) and getattr(m, "weight", None) is not None:
            m.weight.requires_grad_(False)


def audit_first_step(setup: Setup, x: torch.Tensor, y: torch.Tensor) -> AuditResult:
    """The audit of the plan on this batch, at the first step's learning rate (on copies)."""
    setup.model.train()
    return audit_regularization(setup.model, setup.reg, setup.optimizer, x, y, setup.lr(0),
                                train_step, setup.cfg.label_smoothing)  # fmt: skip


def audit_run(
    cfg: TrainConfig, data: CIFAR10 | None = None, images: int = 32
) -> tuple[str, AuditResult]:
    """``reglab audit``: build the run ``cfg`` describes and audit one step on the first
    ``images`` training images of ``data``, or on random images when ``data`` is None (no data
    set needed). Returns (the regularization table, the result)."""
    n = max(2, min(images, cfg.batch_size))
    if data is None:
        g = torch.Generator().manual_seed(cfg.seed)
        images_ = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
        labels = torch.randint(0, 10, (n,), generator=g)
        data = CIFAR10(images_, labels, images_[:1], labels[:1], "none", Path("."))
    setup = build(cfg.replace(batch_size=n, train_limit=None), data=data)
    x, y = setup.pipeline.next_batch()
    return setup.reg.table(setup.model), audit_first_step(setup, x, y)


CPU_FEATURES = {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "fma"}


def environment(setup: Setup) -> dict[str, Any]:
    """What is needed to reproduce the run: versions, commit, device, CPU features, threads."""
    device = setup.device
    env: dict[str, Any] = {
        "reglab": reglab_version(),
        "git_commit": git_commit(),
        "torch": torch.__version__,
        "device": str(device),
        "device_name": (
            torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
        ),
        "threads": torch.get_num_threads(),
        "precision": setup.precision.name,
        "precision_reason": setup.precision.reason,
        "malloc": setup.malloc,
        "cpu_features": sorted(cpu_flags() & CPU_FEATURES),
        "world_size": setup.dist.world_size,
        "backend": setup.dist.backend,
    }
    return env


def reglab_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("reglab")
    except PackageNotFoundError:  # run from a source tree that was not installed
        return "unknown"


def git_commit() -> str | None:
    """The commit of reglab's source when it runs from a git checkout, else None."""
    root = Path(__file__).resolve().parents[3]
    if not (root / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5, env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"})
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    status = ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"]
    dirty = subprocess.run(status, capture_output=True, text=True, timeout=5).stdout.strip()
    return out.stdout.strip() + ("-dirty" if dirty else "")


def bn_weights(setup: Setup) -> list[str]:
    return bn_followed_weights(setup.model)
