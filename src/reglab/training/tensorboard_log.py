"""TensorBoard event files and a CSV copy of a run's metrics, written next to metrics.jsonl.

    RUN_DIR/tensorboard/  event files: a scalar per number of each metrics row, the config and the
                          regularization table as text, the run's hyperparameters (HParams tab)
    RUN_DIR/metrics.csv   metrics.jsonl as one table, for spreadsheets

``tensorboard --logdir runs/`` (or ``--logdir SWEEP/trials``) then compares runs, and its HParams
tab compares them by λ. TensorBoard is an optional extra (``pip install 'reglab[tensorboard]'``);
without it a run goes on without event files, after one line saying so (``required=True`` makes
that an error instead). The CSV needs nothing beyond the standard library.

How the training loop uses it (``say`` is its Printer, ``run_dir`` its RunDir)::

    tb = TensorBoardLog(run_dir.path, enabled=cfg.tensorboard, say=say)   # start of a new run
    tb = TensorBoardLog(run_dir.path, resume_step=k, say=say)  # resumed from a step-k checkpoint
    tb.text("config", cfg.to_dict())                   # shown as YAML, in monospace
    tb.text("regularization", table)
    tb.row(row)                                        # after each run_dir.log(row)
    tb.hparams(config_hparams(cfg.to_dict()), summary_metrics(summary))   # at the end
    tb.close()
    metrics_csv(run_dir.path)                          # RUN_DIR/metrics.csv

Tags of a metrics row (``row_scalars``): loss, acc, penalty, elapsed and s_per_batch are per split
(``train/loss``, ``holdout/acc``, ``test/penalty``; the train row's penalty is the interval's mean,
the validation row's the value at that step, so they need two tags); lr and epoch are the step's
(``lr``, ``epoch``; written once per step); any other number of a train row keeps its key
(``grad_norm``, ``weight_norm/<group>``, ``eff_lr_bn``, ``sparsity/<method>``) and of another
split's row is put under the split (``holdout/<key>``). The x axis is the row's ``step``; strings,
booleans and None are not scalars. Values are stored as float32, as TensorBoard's scalars are.

Resume: a run restarted from a checkpoint taken after step k passes ``resume_step=k``. The points
up to step k in the folder's event files are copied into the new process's event file and those
files deleted, so the points the interrupted process wrote after step k are gone: the same rows
metrics.jsonl should keep, and no duplicate or contradicting points. (TensorBoard's own remedy,
SummaryWriter's ``purge_step``, is not enough: only the legacy EventAccumulator honours it;
TensorBoard 2.21's server ignores it, with or without its Rust data server.) A new run (no
``resume_step``) deletes event files already in RUN_DIR/tensorboard, as RunDir starts
metrics.jsonl afresh.
"""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import json
import numbers
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from reglab.errors import ConfigError
from reglab.training.rundir import read_config

__all__ = [
    "CSV_FIRST_COLUMNS",
    "TensorBoardLog",
    "TensorBoardUnavailable",
    "config_hparams",
    "export_run",
    "metrics_csv",
    "row_scalars",
    "summary_metrics",
]

EVENTS_DIR = "tensorboard"  # under the run directory
SPLIT_KEYS = ("loss", "acc", "penalty", "elapsed", "s_per_batch")  # measured per split
STEP_KEYS = ("lr", "epoch")  # properties of the step, the same in every row of that step
FIX = "pip install 'reglab[tensorboard]', or pass --no-tensorboard"
CSV_FIRST_COLUMNS = ("step", "epoch", "split", "loss", "acc", "lr", "penalty", "elapsed")
# config fields that are where or how a run was stored, not hyperparameters to compare
NOT_HPARAMS = frozenset({"data_dir", "runs_dir", "name", "overwrite", "verbose"})
SUMMARY_METRICS = (
    "final_val_acc", "best_val_acc", "final_val_loss", "final_train_acc", "final_train_loss",
)  # fmt: skip


class TensorBoardUnavailable(ImportError):
    """torch.utils.tensorboard cannot be used (the tensorboard package is missing or broken)."""


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def row_scalars(row: Mapping[str, Any]) -> dict[str, float]:
    """TensorBoard tag -> value for one metrics.jsonl row (the module docstring gives the rule);
    the row's step is the x axis, not a scalar."""
    split = row.get("split") or "train"
    out: dict[str, float] = {}
    for key, value in row.items():
        if key in ("step", "split") or not _is_number(value):
            continue
        if key in SPLIT_KEYS:
            tag = f"{split}/{key}"
        elif key in STEP_KEYS or split == "train":
            tag = key
        else:
            tag = f"{split}/{key}"
        out[tag] = float(value)
    return out


def _summary_writer_class() -> type:
    """torch's SummaryWriter, imported on first use; TensorBoardUnavailable with one line if the
    tensorboard package is missing or does not import."""
    if importlib.util.find_spec("tensorboard") is None:
        raise TensorBoardUnavailable(
            f"TensorBoard logging is off: the tensorboard package is not installed ({FIX})"
        )
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception as e:  # e.g. a protobuf the installed tensorboard does not work with
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TensorBoardUnavailable(
            f"TensorBoard logging is off: torch.utils.tensorboard does not import ({first}); {FIX}"
        ) from e
    return SummaryWriter


def _events_through(files: list[Path], last_step: int) -> list[Any]:
    """The summary values of event ``files`` (read in name order, which is the order they were
    written in) at steps <= ``last_step``, one event per value; a (tag, step) written twice keeps
    the later value, where the later write stands."""
    from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader
    from tensorboard.compat.proto import event_pb2

    kept: dict[tuple[str, int], Any] = {}
    for path in files:
        for event in LegacyEventFileLoader(str(path)).Load():
            if not event.HasField("summary") or event.step > last_step:
                continue
            for value in event.summary.value:
                single = event_pb2.Event(wall_time=event.wall_time, step=event.step)
                single.summary.value.add().CopyFrom(value)
                kept.pop((value.tag, event.step), None)  # re-inserted last: its write order
                kept[(value.tag, event.step)] = single
    return list(kept.values())


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _code_block(text: str) -> str:
    """``text`` as a fenced Markdown code block (TensorBoard's text tab renders it monospace),
    with a fence longer than any run of backticks inside."""
    longest, run = 0, 0
    for ch in text:
        run = run + 1 if ch == "`" else 0
        longest = max(longest, run)
    fence = "`" * max(3, longest + 1)
    return f"{fence}\n{text.rstrip()}\n{fence}"


def _hparam_value(value: Any) -> bool | int | float | str | None:
    """A value the HParams tab can hold: numbers, booleans and strings as they are (numpy scalars
    as Python ones), lists and mappings as JSON text, None left out (it returns None)."""
    if value is None:
        return None
    if hasattr(value, "item") and not isinstance(value, (list, tuple, dict)):
        with contextlib.suppress(TypeError, ValueError):
            value = value.item()  # numpy or 0-d torch scalar
    if isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, sort_keys=isinstance(value, dict))
    return str(value)


class TensorBoardLog:
    """TensorBoard event files of one run, in ``<run_dir>/tensorboard``.

    ``enabled=False`` (``--no-tensorboard``) makes every method a no-op and imports nothing. If the
    tensorboard package is missing (or torch.utils.tensorboard fails to import), the log disables
    itself after telling ``say`` one line naming the fix; with ``required=True`` it raises
    TensorBoardUnavailable with that line instead. ``.enabled`` says whether events are written.

    ``resume_step=k``: the run resumes from a checkpoint taken after step k (see the module
    docstring): the folder's points up to step k are kept, later ones dropped. Without it, event
    files already in the folder are deleted (a new run).
    """

    def __init__(
        self,
        run_dir: str | Path,
        enabled: bool = True,
        resume_step: int | None = None,
        required: bool = False,
        say: Callable[[str], None] | None = None,
    ):
        self.dir = Path(run_dir) / EVENTS_DIR
        self.enabled = enabled
        self.resume_step = resume_step
        self.last_step: int | None = None  # highest step written by row() in this process
        self._written: set[tuple[str, int]] = set()  # (lr or epoch, step) already written
        self._writer: Any = None
        if not enabled:
            return
        if resume_step is not None and resume_step < 0:
            raise ValueError(f"resume_step must be >= 0, not {resume_step}")
        try:
            writer_class = _summary_writer_class()
        except TensorBoardUnavailable as e:
            if required:
                raise
            (say or _stderr)(str(e))
            self.enabled = False
            return
        old_files = sorted(self.dir.glob("*tfevents*")) if self.dir.is_dir() else []
        self._writer = writer_class(log_dir=str(self.dir), flush_secs=30)
        if resume_step is not None:  # the old points up to resume_step, in the new file
            for event in _events_through(old_files, resume_step):
                self._writer.file_writer.add_event(event, event.step, event.wall_time)
            self._writer.flush()
        for old in old_files:
            old.unlink()

    @property
    def start_step(self) -> int:
        """The first step this process can write at: 0, or resume_step + 1."""
        return 0 if self.resume_step is None else self.resume_step + 1

    def text(self, tag: str, text: str | Mapping[str, Any], step: int | None = None) -> None:
        """Text under ``tag`` in TensorBoard's text tab, as a monospace code block; a mapping
        (e.g. ``cfg.to_dict()``) is written as YAML. ``step`` defaults to ``start_step``, so a
        resumed run's texts come after the first run's instead of replacing them."""
        if not self.enabled:
            return
        if isinstance(text, Mapping):
            import yaml

            plain = json.loads(json.dumps(text, default=str))  # tuples as lists, objects as text
            text = yaml.safe_dump(plain, sort_keys=False, allow_unicode=True)
        self._writer.add_text(
            tag, _code_block(str(text)), self.start_step if step is None else step
        )
        self._writer.flush()

    def row(self, row: Mapping[str, Any]) -> None:
        """The numbers of one metrics.jsonl row as scalars at ``row["step"]``, tagged by
        ``row_scalars``; lr and epoch once per step. Flushed, so the event files are as complete
        as metrics.jsonl if the run stops."""
        if not self.enabled:
            return
        step = int(row["step"])
        for tag, value in row_scalars(row).items():
            if tag in STEP_KEYS:
                if (tag, step) in self._written:
                    continue
                self._written.add((tag, step))
            self._writer.add_scalar(tag, value, step)
        self.last_step = step if self.last_step is None else max(self.last_step, step)
        self._writer.flush()

    def hparams(
        self,
        params: Mapping[str, Any],
        metrics: Mapping[str, float] | None = None,
        step: int | None = None,
    ) -> None:
        """The run's hyperparameters for TensorBoard's HParams tab, in this run's folder (not in
        a timestamped subfolder, as SummaryWriter.add_hparams would), and final ``metrics`` as
        scalars ``hparam/<name>``. Call it once, at the end of a run (also for a run that was
        stopped early, with what it has). Values: numbers, booleans, strings; lists and mappings
        become JSON text; None is left out. Every scalar of the run (e.g. ``holdout/acc``, its
        last value) is also a metric column of the tab: no experiment summary is written, so
        TensorBoard builds the columns from all runs' hyperparameters and scalars, and runs of a
        sweep with different settings line up. ``step`` defaults to the last row's step."""
        if not self.enabled:
            return
        from tensorboard.plugins.hparams import summary_v2

        values = {str(k): _hparam_value(v) for k, v in params.items()}
        values = {k: v for k, v in values.items() if v is not None}
        if step is None:
            step = self.start_step if self.last_step is None else self.last_step
        self._writer.file_writer.add_summary(summary_v2.hparams_pb(values), step)
        for name, value in (metrics or {}).items():
            tag = name if name.startswith("hparam/") else f"hparam/{name}"
            self._writer.add_scalar(tag, float(value), step)
        self._writer.flush()

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        """Write what is pending and close the event file (again: nothing)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self.enabled = False

    def __enter__(self) -> TensorBoardLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def config_hparams(config: Mapping[str, Any]) -> dict[str, Any]:
    """Hyperparameters to compare runs by, from a run's config (``cfg.to_dict()`` or config.yaml):
    every setting but where the run was stored (nested mappings flattened as ``a.b``), and each
    regularizer rule ``METHOD=COEF[@SCOPE]`` also as a number ``reg/METHOD[@SCOPE]`` = COEF, so
    the HParams tab can plot λ of rules given with --reg as well as ``l2``."""
    out: dict[str, Any] = {}
    for key, value in _flatten(config).items():
        if key in NOT_HPARAMS:
            continue
        out[key] = value
        if key == "regularizers" and isinstance(value, (list, tuple)):
            for rule in value:
                if not isinstance(rule, str):
                    continue
                head, at, scope = rule.partition("@")
                method, _, coef = head.partition("=")
                name = f"reg/{method.strip()}" + (f"@{scope.strip()}" if at else "")
                # a rule not in short form stays in "regularizers" only, as text
                with contextlib.suppress(ValueError):
                    out[name] = float(coef)
    return out


def summary_metrics(summary: Mapping[str, Any]) -> dict[str, float]:
    """The final figures of summary.json worth a column in the HParams tab (validation and train
    accuracy and loss, best validation accuracy), those present."""
    return {k: float(summary[k]) for k in SUMMARY_METRICS if _is_number(summary.get(k))}


def _metrics_path(run_dir: str | Path) -> Path:
    path = Path(run_dir)
    return path / "metrics.jsonl" if path.is_dir() else path


def _read_rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return value  # numbers as repr (round-trips exactly), strings as they are


def metrics_csv(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write ``metrics.jsonl`` of ``run_dir`` (or that file) as CSV, by default to
    RUN_DIR/metrics.csv, and return its path. One line per row; the columns are step, epoch,
    split, loss, acc, lr, penalty, elapsed, then every other key of any row in sorted order; a
    key a row lacks is an empty cell. Works on run directories of any age."""
    source = _metrics_path(run_dir)
    rows = _read_rows(source)
    extra = sorted({key for row in rows for key in row} - set(CSV_FIRST_COLUMNS))
    target = Path(out) if out is not None else source.with_name("metrics.csv")
    tmp = target.with_name(target.name + ".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*CSV_FIRST_COLUMNS, *extra], restval="")
        writer.writeheader()
        for row in rows:
            writer.writerow({key: _cell(value) for key, value in row.items()})
    tmp.replace(target)
    return target


def export_run(run_dir: str | Path, events: bool = True) -> Path:
    """For a finished run directory (of any age): write metrics.csv and, with ``events``, the
    TensorBoard event files from config.yaml, regularization.txt, metrics.jsonl and summary.json,
    replacing any there. The config text is the file as stored; its hyperparameters are read as
    this version reads a record (``read_config``: a renamed setting under its new name, one the
    record predates at its default), so old and new runs compare in the HParams tab. Returns the
    CSV's path. Raises TensorBoardUnavailable without the tensorboard package (if ``events``)."""
    run_dir = Path(run_dir)
    if not (run_dir / "metrics.jsonl").is_file():
        raise ConfigError(f"{run_dir} has no metrics.jsonl: give run directories (a sweep's "
                          "are under SWEEP/trials)")  # fmt: skip
    if events:
        config_file, table_file = run_dir / "config.yaml", run_dir / "regularization.txt"
        summary_file = run_dir / "summary.json"
        config = read_config(config_file) if config_file.is_file() else None
        with TensorBoardLog(run_dir, required=True) as tb:
            if config_file.is_file():
                tb.text("config", config_file.read_text())
            if table_file.is_file():
                tb.text("regularization", table_file.read_text())
            for row in _read_rows(run_dir / "metrics.jsonl"):
                tb.row(row)
            if config is not None:  # hyperparameters as this version reads them
                summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
                tb.hparams(config_hparams(config), summary_metrics(summary))
    return metrics_csv(run_dir)
