"""The training loop, top to bottom: (resume) -> header -> audit -> steps -> logs -> validation
-> checkpoints -> result.

It is the tutorial's ``train_with_bn`` done properly: batch norm in train mode for the updates
and in eval mode for every evaluation, logs averaged over their interval, validation over the
whole validation set, the regularization really applied (and audited on the first step), and a
run that can be killed at any moment and resumed as the same run (bit for bit on CPU).

Everything before the first step is built by :func:`reglab.training.builder.build`; this module
only runs it. :func:`train` does both and returns a :class:`RunResult`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from reglab.config import TrainConfig
from reglab.data import CIFAR10
from reglab.errors import ReglabError
from reglab.regularization.audit import AuditError
from reglab.regularization.diagnostics import bn_followed_weights, weight_diagnostics
from reglab.training.builder import Setup, audit_first_step, build, environment
from reglab.training.checkpoint import capture_rng, load_latest, restore_rng, save_checkpoint
from reglab.training.distributed import DistInfo, all_finite, all_reduce_sum, broadcast
from reglab.training.optim import fade_groups
from reglab.training.rundir import RunDir
from reglab.training.step import evaluate, train_step
from reglab.training.tensorboard_log import (
    TensorBoardLog,
    config_hparams,
    metrics_csv,
    summary_metrics,
)

DEFAULT_CHECKPOINT_SECONDS = 300.0  # without --checkpoint-every: about every 5 minutes of work


class NonFiniteError(ReglabError):
    """The loss or a gradient became NaN or inf; the message names the likely cause."""


@dataclass
class RunResult:
    """What a finished run gives: summary.json's figures (accuracies are fractions) and, not
    serialised, the trained model and every metrics row."""

    model_name: str
    steps: int
    batch_size: int  # images per step (all processes together)
    epochs: float
    val_split: str
    val_images: int
    final_val_loss: float
    final_val_acc: float
    best_val_acc: float
    best_val_step: int
    final_train_loss: float
    final_train_acc: float
    train_seconds: float
    total_seconds: float
    images_per_second: float
    parameters: int
    regularization: list[str]
    weight_norms: dict[str, float]
    environment: dict[str, Any]
    resumed_at: list[int] = field(default_factory=list)  # steps at which the run was resumed
    skipped_steps: list[int] = field(default_factory=list)  # non-finite steps skipped
    model: nn.Module | None = field(default=None, repr=False, compare=False)
    history: list[dict[str, Any]] = field(default_factory=list, repr=False, compare=False)

    def summary(self) -> dict[str, Any]:
        """summary.json: the figures, flat (weight norms as ``weight_norm/<group>``)."""
        d = asdict(self)
        for key in ("model", "history", "weight_norms"):
            d.pop(key)
        d["model"] = d.pop("model_name")
        d["status"] = "complete"
        return {**d, **self.weight_norms}


@dataclass
class Progress:
    """The loop's own state, saved in every checkpoint: updates done, the running sums of the
    current log interval, the rows logged so far, and time spent."""

    step: int = 0
    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0
    interval_steps: int = 0
    interval_seconds: float = 0.0  # training seconds of the current log interval so far
    history: list[dict[str, Any]] = field(default_factory=list)
    elapsed: float = 0.0  # wall seconds of earlier processes of this run
    eval_seconds: float = 0.0
    resumed_at: list[int] = field(default_factory=list)
    skipped_steps: list[int] = field(default_factory=list)


class Printer:
    """Log lines to stdout, above a progress bar on stderr when that is a terminal."""

    def __init__(self, total: int, initial: int = 0, enabled: bool = True):
        self.bar = None
        self.enabled = enabled
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True,
                            leave=False)  # fmt: skip

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


def train(
    cfg: TrainConfig,
    *,
    model: nn.Module | None = None,
    run_dir: RunDir | None = None,
    data: CIFAR10 | None = None,
    on_validation: Callable[[int, dict[str, Any]], None] | None = None,
    quiet: bool = False,
    resume: bool = False,
    dist: DistInfo | None = None,
) -> RunResult:
    """Train ``cfg`` (with ``model`` instead of ``cfg.model`` if given) and return the result.

    ``run_dir``: where the run's files go (None: nothing is written). ``resume``: continue from
    the newest valid checkpoint in ``run_dir`` (from the start if it has none).
    ``on_validation(step, row)`` is called after each validation (a sweep prunes with it); it may
    raise to stop the run.
    """
    setup = build(cfg, data=data, model=model, dist=dist)
    return run(setup, run_dir, on_validation=on_validation, quiet=quiet, resume=resume)


def run(
    setup: Setup,
    run_dir: RunDir | None = None,
    *,
    on_validation: Callable[[int, dict[str, Any]], None] | None = None,
    quiet: bool = False,
    resume: bool = False,
) -> RunResult:
    cfg, dist, device, pipe = setup.cfg, setup.dist, setup.device, setup.pipeline
    main = dist.is_main
    say = Printer(setup.steps, enabled=not quiet and main)

    # resume: every piece of state the rest of the run depends on, from the newest valid one
    progress = Progress()
    if resume and run_dir is not None:
        progress = restore(setup, run_dir, say) or progress
    if progress.step:
        progress.resumed_at.append(progress.step)

    # header
    n_val = len(setup.data.val_images)
    options = "" if cfg.widths is None else f" at widths {','.join(map(str, cfg.widths))}"
    options += "" if cfg.activation is None else f" with {cfg.activation}"
    say(f"reglab: {setup.model_label}{options} "
        f"({setup.parameters:,} parameters) on {device}"
        + (f" x {dist.world_size} processes ({dist.backend})" if dist.enabled else "")
        + f", {setup.precision.name} ({setup.precision.reason}), "
        + (f"malloc {setup.malloc}, " if setup.device.type == "cpu" else "")
        + f"{len(setup.data.train_images):,} training images, validation: {setup.data.val_split} "
        f"({n_val:,} images), {setup.steps:,} steps of batch {pipe.batch_size}"
        + (f"; resumed at step {progress.step}" if progress.step else ""))  # fmt: skip
    table = setup.reg.table(setup.model)
    say(table)
    tb = None
    if run_dir is not None and main:
        run_dir.write_config(cfg.to_dict())  # a resumed run: its system settings may differ
        tb = TensorBoardLog(run_dir.path, enabled=cfg.tensorboard,
                            resume_step=progress.step or None, say=say)  # fmt: skip
        if not progress.step:
            run_dir.write_text("regularization.txt", table)
            tb.text("config", cfg.to_dict())
            tb.text("regularization", table)
    try:
        result = run_steps(setup, run_dir, progress, say, tb, on_validation)
        if tb is not None:  # the HParams tab compares runs by their settings
            tb.hparams(config_hparams(cfg.to_dict()), summary_metrics(result.summary()))
    finally:
        say.close()
        if tb is not None:
            tb.close()
    if run_dir is not None and main:
        run_dir.write_summary(result.summary())
        metrics_csv(run_dir.path)
        say(f"[summary]: run directory {run_dir.path}")
    say(f"[summary]: {result.steps:,} steps in {result.total_seconds:.1f} s "
        f"({result.images_per_second:.0f} images/s); {result.val_split} acc = "
        f"{result.final_val_acc:.4f} (best {result.best_val_acc:.4f} at step "
        f"{result.best_val_step})")  # fmt: skip
    return result


def run_steps(
    setup: Setup,
    run_dir: RunDir | None,
    progress: Progress,
    say: Printer,
    tb: TensorBoardLog | None,
    on_validation: Callable[[int, dict[str, Any]], None] | None,
) -> RunResult:
    """The steps, from ``progress.step`` to the end: logs, validations, checkpoints."""
    cfg, dist, device, pipe = setup.cfg, setup.dist, setup.device, setup.pipeline
    main = dist.is_main
    autocast, scaler = setup.precision.autocast(), setup.scaler

    bn_followed = bn_followed_weights(setup.model)  # for the effective-learning-rate diagnostic
    guard = "skip-step" if cfg.on_nonfinite == "skip-step" else "stop"
    # the finite flag is read (a sync; under torchrun an all-reduce) this often
    check_every = 1 if device.type == "cpu" and not dist.enabled else 50
    finite = torch.ones((), dtype=torch.bool, device=device)
    first_bad = torch.zeros((), dtype=torch.long, device=device)
    loss_sum = torch.tensor(progress.loss_sum, device=device)
    correct = torch.tensor(progress.correct, device=device)
    last_checkpoint = time.perf_counter()
    started = time.perf_counter() - progress.elapsed

    def training_seconds() -> float:  # the run's wall clock, audit and validations apart
        return time.perf_counter() - started - progress.eval_seconds

    interval_mark = training_seconds() - progress.interval_seconds
    calibrate_from, calibrate_mark = progress.step, training_seconds()  # this process's pace

    def log(row: dict[str, Any]) -> None:
        progress.history.append(row)
        if run_dir is not None:
            run_dir.log(row)
        if tb is not None:
            tb.row(row)

    def check_finite(step: int, x: torch.Tensor, out) -> None:
        if not all_finite(dist, finite):
            at = int(first_bad.item()) or step
            raise NonFiniteError(nonfinite_message(setup, at, x, out.data_loss, run_dir))

    setup.model.train()
    for step in range(progress.step, setup.steps):
        x, y = pipe.next_batch()
        lr = setup.lr(step)
        if step == 0 and cfg.audit:  # on copies: the run's trajectory is not changed
            t0 = time.perf_counter()
            verdict = None
            if main:
                audit = audit_first_step(setup, x, y)
                say(audit.report())
                if run_dir is not None:
                    run_dir.write_text("audit.txt", audit.report())
                verdict = None if audit.ok else audit.error()
            verdict = broadcast(dist, verdict)
            if verdict is not None:  # a regularizer that does not act as its formula says
                raise AuditError(verdict)
            progress.eval_seconds += time.perf_counter() - t0  # the audit is not training time

        fade_groups(setup.optimizer, step, freeze=not dist.enabled)  # --whiten-bias-epochs
        out = train_step(setup.forward, x, y, setup.reg, setup.optimizer, lr,
                         cfg.label_smoothing, autocast, guard=guard, scaler=scaler)  # fmt: skip
        done = step + 1
        if setup.lookahead is not None:
            setup.lookahead.after_step(setup.model, done)
        if not out.applied:  # skipped: its update, and its loss in the interval's mean
            progress.skipped_steps.append(done)
            say(f"[warn]: step {done}: loss or gradient not finite, update skipped "
                "(--on-nonfinite skip-step)")  # fmt: skip
        else:
            # on the device, no sync: the flag, and the first step where it fell
            first_bad = torch.where(finite & ~out.finite, done, first_bad)
            finite &= out.finite
            # running sums stay on the device: no synchronisation until a log point
            loss_sum += out.data_loss.detach().float() * len(y)
            correct += (out.logits.detach().argmax(1) == y).sum()
            progress.seen += len(y)
        progress.interval_steps += 1
        progress.step = done
        say.update()
        if done % check_every == 0:
            check_finite(done, x, out)

        if done - calibrate_from == 11:  # the expected time, from this process's last 11 steps
            per_step = (training_seconds() - calibrate_mark) / 11
            low_res = done <= pipe.low_res_batches  # the pace measured on low-res steps
            full_scale = (cfg.image_size / cfg.low_res_size) ** 2 if low_res else 1.0
            left = training_time_left(setup.steps - done, pipe.low_res_batches - done, per_step,
                                      full_scale)  # fmt: skip
            say(f"[time]: about {per_step:.3f} s / step here: {fmt_duration(left)} of training "
                "to go, validation apart"
                + (f", full-size steps guessed at (image / low-res size)² = {full_scale:.2f}x "
                   "this pace" if low_res and setup.steps > pipe.low_res_batches else ""))
        if done == pipe.low_res_batches < setup.steps:  # at full size: measure the pace anew
            calibrate_from, calibrate_mark = done, training_seconds()

        if done % cfg.log_every == 0 or done == setup.steps:
            check_finite(done, x, out)
            sums = torch.stack([loss_sum, correct.float(),
                                torch.tensor(float(progress.seen), device=device)])  # fmt: skip
            total_loss, total_correct, total_seen = all_reduce_sum(dist, sums).tolist()
            per_batch = (training_seconds() - interval_mark) / max(progress.interval_steps, 1)
            total_seen = max(total_seen, 1)  # every step of the interval skipped: 0, not 0/0
            train_loss, train_acc = total_loss / total_seen, total_correct / total_seen
            say(f"[train]: step {done} loss = {train_loss:.4f} acc = {train_acc:.4f} "
                f"({per_batch:.4f} s / batch)")  # fmt: skip
            with torch.no_grad():
                pen = setup.reg.penalty()
            row = {"step": done, "epoch": round(done / pipe.steps_per_epoch, 4),
                   "split": "train", "loss": train_loss, "acc": train_acc, "lr": lr,
                   "penalty": 0.0 if pen is None else pen.item(),
                   "elapsed": time.perf_counter() - started, "s_per_batch": per_batch}  # fmt: skip
            fields, detail = weight_diagnostics(setup.model, setup.reg, lr, bn_followed)
            row.update(fields)
            if run_dir is not None:
                run_dir.log_weights({"step": done, "lr": lr, **detail})
            log(row)
            loss_sum.zero_(), correct.zero_()
            progress.seen, progress.interval_steps = 0, 0
            interval_mark = training_seconds()

        if done % cfg.val_every == 0 or done == setup.steps:
            t0 = time.perf_counter()
            row = None
            if main:
                batches = pipe.eval_batches(setup.data.val_images, setup.data.val_labels,
                                            cfg.eval_batch_size)  # fmt: skip
                val_loss, val_acc, _ = evaluate(setup.model, batches, cfg.tta, autocast,
                                                 cfg.tta_translate, cfg.tta_fraction)
                with torch.no_grad():
                    pen = setup.reg.penalty()
                split = setup.data.val_split
                say(f"[{split}]: step {done} loss = {val_loss:.4f} acc = {val_acc:.4f}")
                row = {"step": done, "epoch": round(done / pipe.steps_per_epoch, 4),
                       "split": split, "loss": val_loss, "acc": val_acc, "lr": lr,
                       "penalty": 0.0 if pen is None else pen.item(),
                       "elapsed": time.perf_counter() - started}  # fmt: skip
            row = broadcast(dist, row)  # every rank keeps the same history
            log(row)
            progress.eval_seconds += time.perf_counter() - t0  # validation is not training time
            if on_validation is not None and row is not None:
                on_validation(done, row)

        if cfg.checkpoint_every:
            due = done % cfg.checkpoint_every == 0
        else:  # by time; under torchrun rank 0's clock decides, every 50 steps
            due = time.perf_counter() - last_checkpoint >= DEFAULT_CHECKPOINT_SECONDS
            if dist.enabled:
                due = done % 50 == 0 and broadcast(dist, due)
        if run_dir is not None and (due or done == setup.steps):
            check_finite(done, x, out)  # a checkpoint is never written from a non-finite state
            progress.loss_sum, progress.correct = loss_sum.item(), int(correct.item())
            progress.elapsed = time.perf_counter() - started
            progress.interval_seconds = training_seconds() - interval_mark
            if main:
                save_checkpoint(run_dir.checkpoint_dir, done, checkpoint_state(setup, progress))
            last_checkpoint = time.perf_counter()

    return make_result(setup, progress, time.perf_counter() - started)


def training_time_left(steps_left: int, low_res_left: int, per_step: float,
                       full_scale: float = 1.0) -> float:  # fmt: skip
    """Seconds of the ``steps_left`` steps at ``per_step`` each, the ``low_res_left`` first of
    them at the pace measured and the rest ``full_scale`` times slower (progressive resizing:
    a step's cost goes with the pixels)."""
    low = min(max(low_res_left, 0), steps_left)
    return (low + (steps_left - low) * full_scale) * per_step


def fmt_duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


# --------------------------------------------------------------------------------------------
# Checkpoints: save and restore everything the rest of the run depends on.


def checkpoint_state(setup: Setup, progress: Progress) -> dict[str, Any]:
    state = {
        "model": setup.model.state_dict(),
        "optimizer": setup.optimizer.state_dict(),
        "pipeline": setup.pipeline.state_dict(),
        "rng": capture_rng(),
        "regularization": setup.reg.state_dict(),
        "loop": asdict(progress),
        "config": setup.cfg.to_dict(),
    }
    if setup.scaler is not None:
        state["scaler"] = setup.scaler.state_dict()
    if setup.lookahead is not None:
        state["lookahead"] = setup.lookahead.state_dict()
    return state


def restore(setup: Setup, run_dir: RunDir, say: Callable[[str], None]) -> Progress | None:
    """Load the newest valid checkpoint into the setup; None (and a note) if there is none."""
    state, notes = load_latest(run_dir.checkpoint_dir)
    for note in notes:
        say(f"[resume]: {note}")
    if state is None:
        say(f"[resume]: no valid checkpoint in {run_dir.checkpoint_dir}: starting from step 0")
        return None
    setup.model.load_state_dict(state["model"])
    setup.optimizer.load_state_dict(state["optimizer"])
    setup.pipeline.load_state_dict(state["pipeline"])
    setup.reg.load_state_dict(state["regularization"])
    if setup.scaler is not None and "scaler" in state:
        setup.scaler.load_state_dict(state["scaler"])
    if setup.lookahead is not None:
        if "lookahead" not in state:
            raise ReglabError(f"the checkpoint of step {state['loop']['step']} in "
                              f"{run_dir.checkpoint_dir} has no lookahead state: resume with the "
                              "settings it was written with")  # fmt: skip
        setup.lookahead.load_state_dict(state["lookahead"])
    restore_rng(state["rng"])
    progress = Progress(**state["loop"])
    run_dir.restart_logs(progress.history, progress.step)
    say(f"[resume]: continuing from the checkpoint of step {progress.step}")
    return progress


def make_result(setup: Setup, progress: Progress, elapsed: float) -> RunResult:
    history = progress.history
    split = setup.data.val_split
    vals = [r for r in history if r["split"] == split]
    trains = [r for r in history if r["split"] == "train"]
    if not vals or not trains:
        raise ReglabError("the run ended without a validation or a train log line; lower "
                          "--val-every / --log-every")  # fmt: skip
    best = max(vals, key=lambda r: r["acc"])
    train_time = max(elapsed - progress.eval_seconds, 1e-9)
    steps = setup.steps
    return RunResult(
        model_name=setup.model_label, steps=steps, batch_size=setup.pipeline.batch_size,
        epochs=round(steps / setup.pipeline.steps_per_epoch, 4), val_split=split,
        val_images=len(setup.data.val_images), final_val_loss=vals[-1]["loss"],
        final_val_acc=vals[-1]["acc"], best_val_acc=best["acc"], best_val_step=best["step"],
        final_train_loss=trains[-1]["loss"], final_train_acc=trains[-1]["acc"],
        train_seconds=round(train_time, 2), total_seconds=round(elapsed, 2),
        images_per_second=round(steps * setup.pipeline.batch_size / train_time, 1),
        parameters=setup.parameters, regularization=[r.label for r in setup.reg.regularizers],
        weight_norms={k: v for k, v in trains[-1].items()
                      if k.startswith(("weight_norm/", "sparsity/"))},
        environment=environment(setup), resumed_at=progress.resumed_at,
        skipped_steps=progress.skipped_steps, model=setup.model, history=history,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# Non-finite values: which setting most likely caused them.


def nonfinite_message(setup: Setup, step: int, x: torch.Tensor, data_loss: torch.Tensor,
                      run_dir: RunDir | None) -> str:  # fmt: skip
    """One line: where the loss or a gradient stopped being finite, the likely cause, the fix."""
    cfg = setup.cfg
    where = f"the loss or a gradient is not finite at step {step}"
    kept = ""
    if run_dir is not None:
        from reglab.training.checkpoint import checkpoints

        found = checkpoints(run_dir.checkpoint_dir)
        kept = f"; the last good checkpoint (step {found[0][0]}) is kept" if found else ""
    if not bool(torch.isfinite(x).all()):
        return (f"{where}: the input batch itself holds NaN or inf values: check the data files "
                f"and --augment / --normalization{kept}")  # fmt: skip
    lr, mu = cfg.lr, cfg.momentum if cfg.optimizer != "adamw" else 0.0
    for r in setup.reg.applied:
        # per-step multiplier of the weights from this rule alone; momentum SGD on a quadratic
        # diverges once lr·c > 2(1 + μ)
        c = {"l2": 2 * r.coef, "l2-half": r.coef, "wd": r.coef}.get(r.name)
        if c is not None and cfg.optimizer != "adamw" and lr * c > 2 * (1 + mu):
            return (f"{where}: {r.label} with lr {lr:g} is unstable on its own (lr x its gradient "
                    f"factor = {lr * c:.3g} > 2(1 + momentum) = {2 * (1 + mu):.3g}): lower the "
                    f"coefficient of {r.label.split('=')[0]} (or --lr){kept}")  # fmt: skip
        if r.name == "decoupled-wd" and lr * r.coef >= 1:
            return (f"{where}: {r.label} with lr {lr:g} removes lr x wd = {lr * r.coef:.3g} of "
                    f"each weight per step (>= 1 flips its sign): lower it (or --lr){kept}")
    return (f"{where} (data loss {data_loss.item():.4g}): the learning rate {lr:g} is the likely "
            f"cause: lower --lr (or add --warmup-steps){kept}")  # fmt: skip
