"""The training loop, top to bottom: data -> model -> regularization -> steps -> logs -> checkpoint.

It is the tutorial's train_with_bn done properly: batch norm in train mode for the updates and in
eval mode for every evaluation, logs averaged over their interval, validation over the whole
validation set, and the regularization penalty added to the loss that is minimised.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from reglab.config import TrainConfig
from reglab.data import CIFAR10, load_cifar10
from reglab.data.pipeline import BatchPipeline
from reglab.models import create_model
from reglab.regularization import Regularization, build_regularization
from reglab.regularization.audit import AuditError, audit_regularization
from reglab.regularization.diagnostics import bn_followed_weights, weight_diagnostics
from reglab.training.optim import build_optimizer, lr_at
from reglab.training.rundir import RunDir


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA GPU is available here; use --device cpu")
    return torch.device(name)


def total_steps(cfg: TrainConfig, n_train: int) -> int:
    if cfg.epochs is None:
        return cfg.steps
    return max(1, math.ceil(cfg.epochs * (n_train // cfg.batch_size)))


@torch.no_grad()
def evaluate(
    model: nn.Module,
    pipeline: BatchPipeline,
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    tta: bool = False,
    autocast: Callable[[], Any] = nullcontext,
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over the whole set, batch norm in eval mode."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=pipeline.device)
    correct = torch.zeros((), device=pipeline.device, dtype=torch.long)
    for x, y in pipeline.eval_batches(images, labels, batch_size):
        with autocast():
            logits = model(x)
            if tta:  # average the logits of the image and its mirror image
                logits = 0.5 * (logits + model(x.flip(-1)))
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
    model.train(was_training)
    n = len(labels)
    return loss_sum.item() / n, correct.item() / n


def train_step(
    forward: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    reg: Regularization,
    optimizer: torch.optim.Optimizer,
    lr: float,
    label_smoothing: float = 0.0,
    autocast: Callable[[], Any] = nullcontext,
    probe: Callable[[str], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """One update at learning rate ``lr``; returns (logits, data loss, penalty or None).

    The penalty is added to the loss that is minimised (the tutorial's bug was to leave it out).
    ``probe(stage)`` is the audit's hook, called at "gradient" (just before optimizer.step()),
    "update" (just after it) and "final" (after the regularizers' after_step).
    """
    for group in optimizer.param_groups:
        group["lr"] = lr
    with autocast():
        logits = forward(x)
        # the loss in at least float32 (bf16 logits under autocast; float64 kept for the audit)
        wide = logits if logits.dtype == torch.float64 else logits.float()
        data_loss = F.cross_entropy(wide, y, label_smoothing=label_smoothing)
    penalty = reg.penalty()
    loss = data_loss if penalty is None else data_loss + penalty
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    reg.before_step(lr)
    if probe is not None:
        probe("gradient")
    optimizer.step()
    if probe is not None:
        probe("update")
    reg.after_step(lr)
    if probe is not None:
        probe("final")
    return logits, data_loss, penalty


class Printer:
    """Log lines to stdout, above a progress bar on stderr when that is a terminal."""

    def __init__(self, total: int, enabled: bool = True):
        self.bar = None
        self.enabled = enabled
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="step", dynamic_ncols=True, leave=False)

    def __call__(self, line: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(line)
        else:
            print(line, flush=True)

    def update(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def build_model(
    cfg: TrainConfig, num_classes: int, pipeline: BatchPipeline, device: torch.device
) -> nn.Module:
    """The network of ``cfg`` on ``device``, initialised (from the pipeline's data if it asks)."""
    extra = {"verbose": True} if cfg.verbose and cfg.model == "tutorial-resnet" else {}
    model = create_model(
        cfg.model, num_classes=num_classes, dropout=cfg.dropout,
        block_dropout=cfg.block_dropout, **extra,
    )  # fmt: skip
    model = model.to(device, memory_format=torch.channels_last if cfg.channels_last else None)
    if hasattr(model, "init_from_data"):  # e.g. airbench's whitening layer, from 5,000 images
        model.init_from_data(pipeline.prepare(pipeline.images[:5000]))
    return model


def train(
    cfg: TrainConfig,
    run_dir: RunDir | None = None,
    data: CIFAR10 | None = None,
    on_validation: Callable[[int, dict[str, Any]], None] | None = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """Train ``cfg`` and return the summary. ``on_validation(step, row)`` is called after each
    validation (a sweep uses it to prune); it may raise to stop the run."""
    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)

    # data: uint8 on the device, batches made by the pipeline
    if data is None:
        data = load_cifar10(cfg.data_dir, holdout=cfg.holdout, train_limit=cfg.train_limit)
    pipeline = BatchPipeline(
        data.train_images, data.train_labels, cfg.batch_size, cfg.image_size,
        augment=cfg.augment, device=device, seed=cfg.seed, channels_last=cfg.channels_last,
        normalization=cfg.normalization,
    )  # fmt: skip
    steps = total_steps(cfg, len(data.train_images))

    # model
    model = build_model(cfg, len(data.classes), pipeline, device)
    forward = torch.compile(model) if cfg.compile else model
    autocast = (
        (lambda: torch.autocast("cuda", dtype=torch.bfloat16))
        if device.type == "cuda"
        else nullcontext
    )

    # regularization: decided in one place, printed before training
    reg: Regularization = build_regularization(cfg, model)
    optimizer = build_optimizer(
        cfg.optimizer, [p for p in model.parameters() if p.requires_grad], cfg.lr, cfg.momentum
    )

    say = Printer(steps, enabled=not quiet)
    n_params = sum(p.numel() for p in model.parameters())
    say(
        f"reglab: {cfg.model} ({n_params:,} parameters) on {device}, {len(data.train_images):,} "
        f"training images, validation: {data.val_split} ({len(data.val_images):,} images), "
        f"{steps:,} steps of batch {cfg.batch_size}"
    )
    table = reg.table(model)
    say(table)
    bn_followed = bn_followed_weights(model)  # for the effective-learning-rate diagnostic
    if run_dir is not None:
        run_dir.write_config(cfg.to_dict())
        run_dir.write_text("regularization.txt", table)

    def log(row: dict[str, Any]) -> None:
        if run_dir is not None:
            run_dir.log(row)

    steps_per_epoch = pipeline.steps_per_epoch
    started = time.perf_counter()
    eval_time = 0.0
    interval_start, interval_steps = time.perf_counter(), 0
    loss_sum = torch.zeros((), device=device)
    penalty_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    history: list[dict[str, Any]] = []
    batches = iter(pipeline)
    model.train()
    for step in range(steps):
        x, y = next(batches)
        lr = lr_at(
            step, steps, cfg.lr, cfg.schedule, cfg.warmup_steps, cfg.lr_milestones, cfg.lr_gamma
        )
        if step == 0 and cfg.audit:  # on copies: the run's trajectory is not changed
            t0 = time.perf_counter()
            audit = audit_regularization(model, reg, optimizer, x, y, lr, cfg.label_smoothing)
            say(audit.report())
            if run_dir is not None:
                run_dir.write_text("audit.txt", audit.report())
            if not audit.ok:  # a regularizer that does not act as its formula says stops the run
                raise AuditError(audit.error())
            eval_time += time.perf_counter() - t0  # the audit is not training time
            interval_start += time.perf_counter() - t0
        logits, data_loss, penalty = train_step(
            forward, x, y, reg, optimizer, lr, cfg.label_smoothing, autocast
        )

        # running sums stay on the device: no synchronisation until a log point
        loss_sum += data_loss.detach() * len(y)
        if penalty is not None:
            penalty_sum += penalty.detach() * len(y)
        correct += (logits.detach().argmax(1) == y).sum()
        seen += len(y)
        interval_steps += 1
        say.update()
        done = step + 1

        if done % cfg.log_every == 0 or done == steps:
            train_loss, train_acc = loss_sum.item() / seen, correct.item() / seen
            if not math.isfinite(train_loss):
                raise FloatingPointError(
                    f"training loss is {train_loss} at step {done}: lower --lr (now {cfg.lr:g})"
                )
            per_batch = (time.perf_counter() - interval_start) / interval_steps
            say(
                f"[train]: step {done} loss = {train_loss:.4f} acc = {train_acc:.4f} "
                f"({per_batch:.4f} s / batch)"
            )
            row = {
                "step": done, "epoch": round(done / steps_per_epoch, 4), "split": "train",
                "loss": train_loss, "acc": train_acc, "lr": lr,
                "penalty": penalty_sum.item() / seen,
                "elapsed": time.perf_counter() - started, "s_per_batch": per_batch,
            }  # fmt: skip
            fields, detail = weight_diagnostics(model, reg, lr, bn_followed)
            row.update(fields)
            if run_dir is not None:
                run_dir.log_weights({"step": done, "lr": lr, **detail})
            log(row)
            history.append(row)
            loss_sum.zero_(), penalty_sum.zero_(), correct.zero_()
            seen, interval_steps, interval_start = 0, 0, time.perf_counter()

        if done % cfg.val_every == 0 or done == steps:
            t0 = time.perf_counter()
            val_loss, val_acc = evaluate(
                model, pipeline, data.val_images, data.val_labels, cfg.eval_batch_size, cfg.tta,
                autocast,
            )  # fmt: skip
            eval_time += time.perf_counter() - t0
            with torch.no_grad():
                pen = reg.penalty()
            say(f"[{data.val_split}]: step {done} loss = {val_loss:.4f} acc = {val_acc:.4f}")
            row = {
                "step": done, "epoch": round(done / steps_per_epoch, 4), "split": data.val_split,
                "loss": val_loss, "acc": val_acc, "lr": lr,
                "penalty": 0.0 if pen is None else pen.item(),
                "elapsed": time.perf_counter() - started,
            }  # fmt: skip
            log(row)
            history.append(row)
            interval_start += time.perf_counter() - t0  # evaluation is not training time
            if on_validation is not None:
                on_validation(done, row)

    say.close()
    elapsed = time.perf_counter() - started
    vals = [r for r in history if r["split"] == data.val_split]
    best = max(vals, key=lambda r: r["acc"])
    train_time = elapsed - eval_time
    summary = {
        "model": cfg.model,
        "steps": steps,
        "epochs": round(steps / steps_per_epoch, 4),
        "val_split": data.val_split,
        "val_images": len(data.val_images),
        "final_val_loss": vals[-1]["loss"],
        "final_val_acc": vals[-1]["acc"],
        "best_val_acc": best["acc"],
        "best_val_step": best["step"],
        "final_train_loss": next(r for r in reversed(history) if r["split"] == "train")["loss"],
        "final_train_acc": next(r for r in reversed(history) if r["split"] == "train")["acc"],
        "train_seconds": round(train_time, 2),
        "total_seconds": round(elapsed, 2),
        "images_per_second": round(steps * cfg.batch_size / max(train_time, 1e-9), 1),
        "parameters": n_params,
        "device": str(device),
        "regularization": [r.label for r in reg.regularizers],
    }
    last_train = next(r for r in reversed(history) if r["split"] == "train")
    summary.update(
        {k: v for k, v in last_train.items() if k.startswith(("weight_norm/", "sparsity/"))}
    )
    say(
        f"[summary]: {steps:,} steps in {elapsed:.1f} s ({summary['images_per_second']:.0f} "
        f"images/s); {data.val_split} acc = {summary['final_val_acc']:.4f} "
        f"(best {summary['best_val_acc']:.4f} at step {summary['best_val_step']})"
    )
    if run_dir is not None:
        run_dir.write_summary(summary)
        run_dir.save_checkpoint({
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "step": steps, "config": cfg.to_dict(),
        })  # fmt: skip
        say(f"[summary]: run directory {run_dir.path}")
    summary["model_object"] = model  # for callers in-process (tests, sweeps); not serialised
    return summary
