"""Command line: ``reglab train | audit | models | sweep | report | export``.

The train flags are built from the settings schema (:mod:`reglab.config`): one flag per setting,
with its unit, default and choices in ``--help``; values are parsed by the schema's
:func:`~reglab.config.coerce`, the same path as config files and sweep values. This is the only
module that uses argparse.

Every error a user can cause ends in one line on stderr, ``reglab: error: <problem>; <fix>``,
and exit status 2 (a run that stops itself, e.g. a failed audit or a diverged loss: status 1),
never a traceback.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import signal
import sys
from pathlib import Path
from typing import Any

from reglab.config import (
    GROUPS,
    RENAMED,
    SETTINGS,
    ConfigError,
    TrainConfig,
    build_config,
    coerce,
    load_config_file,
)
from reglab.errors import ReglabError


class Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # let "--l2 -1e-4" reach validation (argparse's default misses scientific notation)
        self._negative_number_matcher = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")

    def error(self, message: str):  # one line instead of usage + error
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# --------------------------------------------------------------------------------------------
# The schema's argparse builder.


def _help(s) -> str:
    default = s.default
    if isinstance(default, bool):
        shown = "on" if default else "off"
    elif isinstance(default, (list, tuple)):
        shown = ",".join(map(str, default)) or "none"
    else:
        shown = "none" if default is None else default
    unit = f"; {s.unit}" if s.unit else ""
    bounds = f"; {s.bounds_text()}" if s.bounds_text() else ""
    return f"{s.help} (default {shown}{unit}{bounds})".replace("%", "%%")


def add_setting_arguments(p: argparse.ArgumentParser) -> None:
    """One flag per setting, grouped as the schema groups them. Values stay text (coerced by the
    schema later); an absent flag is absent from the namespace, so presets and config files
    show through."""
    g = p.add_argument_group("config")
    g.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                   help="YAML file of settings; `preset: NAME` in it applies that preset "
                        "(order: defaults < preset < file < flags)")  # fmt: skip
    groups = {name: p.add_argument_group(name) for name in GROUPS}
    for s in SETTINGS.values():
        g = groups[s.group]
        kwargs: dict[str, Any] = {"dest": s.name, "default": argparse.SUPPRESS, "help": _help(s)}
        if s.base_type is bool:
            g.add_argument(s.cli, action=argparse.BooleanOptionalAction, **kwargs)
            continue
        choices = s.choice_list()
        kind = {int: "N", float: "X"}.get(s.base_type, s.flag.upper())
        metavar = s.metavar or ("{" + ",".join(choices) + "}" if choices else kind)
        if s.repeatable:
            g.add_argument(s.cli, action="append", metavar=metavar, **kwargs)
        else:
            g.add_argument(s.cli, metavar=metavar, **kwargs)
    for old in RENAMED:  # hidden: given, they get a one-line error naming the replacement
        p.add_argument("--" + old.replace("_", "-"), dest=old, default=argparse.SUPPRESS,
                       help=argparse.SUPPRESS)  # fmt: skip


def given_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given as flags (raw values), by setting name; ConfigError for a flag that
    was replaced."""
    for old in RENAMED:
        if hasattr(args, old):
            raise ConfigError(RENAMED[old])
    return {k: v for k, v in vars(args).items() if k in SETTINGS}


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    config = getattr(args, "config", None)
    file_values = load_config_file(config) if config else None
    return build_config(None, file_values, given_settings(args), file_name=str(config))


def check_data_dir(data_dir: str | None) -> None:
    """An explicit --data-dir must exist: a typo should not start a 160 MB download elsewhere."""
    if data_dir is not None and not Path(data_dir).expanduser().is_dir():
        raise ConfigError(
            f"data dir {data_dir} does not exist: fix --data-dir, or create the folder to let "
            "reglab download CIFAR-10 into it"
        )


def resume_config(run: Path, stored: dict[str, Any], flags: dict[str, Any]) -> TrainConfig:
    """The stored run's settings with the flags given to ``--resume``: system settings may
    change, ``--steps``/``--epochs`` may be raised, any other experiment setting that differs
    is an error naming it. A setting the stored file lacks was added to reglab after the run
    began: it takes its default (the behaviour the run had), not its preset's newer value."""
    added = {k: v for k, v in TrainConfig().to_dict().items() if k not in stored}
    added.pop("preset", None)
    base = build_config(None, {**stored, **added}, None, file_name=f"{run}/config.yaml")
    changes: dict[str, Any] = {}
    for name, raw in flags.items():
        s = SETTINGS[name]
        value = coerce(s, raw, s.cli)
        if value == getattr(base, name):
            continue
        if s.kind == "system" and name not in ("name", "runs_dir", "overwrite", "preset"):
            changes[name] = value
        elif name in ("steps", "epochs"):
            changes[name] = value
            if name == "steps":
                changes["epochs"] = None
        else:
            raise ConfigError(
                f"{s.cli} {raw} contradicts the run being resumed ({name}: {getattr(base, name)}"
                f" in {run}/config.yaml): a resumed run keeps its settings; start a new run "
                "(another --name) to change it"
            )
    return base.replace(**changes) if changes else base


# --------------------------------------------------------------------------------------------
# Commands.


def cmd_train(args: argparse.Namespace) -> int:
    from reglab.training import RunDir, train
    from reglab.training.distributed import from_environment, shutdown

    resume = getattr(args, "resume", None)
    if resume:
        if getattr(args, "config", None):
            raise ConfigError("--config and --resume: a resumed run's settings are its "
                              "config.yaml; give flags only to change system settings")
        path = Path(resume)
        run_dir_check = RunDir(path, mode="resume", writer=False)
        cfg = resume_config(path, run_dir_check.read_config(), given_settings(args))
        mode = "resume"
    else:
        cfg = config_from_args(args)
        path = Path(cfg.runs_dir) / (cfg.name or RunDir.default_name(cfg.preset or cfg.model))
        mode = "overwrite" if cfg.overwrite else "new"
    check_data_dir(cfg.data_dir)
    dist = from_environment(cfg.device)
    run_dir = RunDir(path, mode=mode, writer=dist.is_main)
    try:
        train(cfg, run_dir=run_dir, resume=bool(resume), dist=dist)
    except BaseException:
        run_dir.discard_if_unused()  # no empty run directories left by a bad setting
        raise
    finally:
        shutdown(dist)
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from reglab.regularization.audit import AuditError
    from reglab.training import audit_run

    cfg = config_from_args(args)
    data = None
    if args.real_batch:
        from reglab.data import load_cifar10

        check_data_dir(cfg.data_dir)
        data = load_cifar10(cfg.data_dir, holdout=cfg.holdout, train_limit=cfg.batch_size)
    table, result = audit_run(cfg, data)
    print(table)
    print(result.report())
    if not result.ok:
        raise AuditError(result.error())
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from reglab.models import MODELS, create_model

    for name, entry in sorted(MODELS.items()):
        n = sum(p.numel() for p in create_model(name).parameters())
        print(f"{name:16s} {n:>12,} parameters  image size >= {entry.min_image_size:<4} "
              f"{entry.description}")  # fmt: skip
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    try:
        import optuna  # noqa: F401  (an optional dependency)
    except ImportError:
        raise ConfigError("reglab sweep needs optuna: pip install 'reglab[sweep]'") from None
    from reglab.sweeps.runner import SweepRequest, run_sweep

    request = SweepRequest(
        sweep_dir=Path(args.dir), settings=given_settings(args),
        config_file=getattr(args, "config", None), grid=args.grid or [], seeds=args.seeds,
        trials=args.trials, search=args.search or [], prune=args.prune, storage=args.storage,
        study_name=args.study_name, workers=args.workers, devices=args.devices,
        heartbeat=args.heartbeat, final=args.final,
        command="reglab " + " ".join(shlex.quote(a) for a in args.argv),
    )  # fmt: skip
    return run_sweep(request)


def cmd_report(args: argparse.Namespace) -> int:
    try:
        import matplotlib  # noqa: F401  (an optional dependency)
    except ImportError:
        raise ConfigError("reglab report needs matplotlib: pip install 'reglab[sweep]'") from None
    from reglab.reports.page import write_report

    path = write_report(args.dirs, args.out, args.title)
    print(f"reglab: report {path} (figures in {path.parent / 'figures'})")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from reglab.training.rundir import compact_copy
    from reglab.training.tensorboard_log import TensorBoardUnavailable, export_run

    if args.compact_to:
        for run in args.runs:
            print(f"reglab: compact record of {run} in {compact_copy(run, args.compact_to)}")
        return 0
    for run in args.runs:
        try:
            path = export_run(run, events=not args.csv_only)
        except TensorBoardUnavailable:
            raise ConfigError("writing event files needs the tensorboard package: pip install "
                              "'reglab[tensorboard]', or pass --csv-only") from None  # fmt: skip
        print(f"reglab: wrote {path}" + ("" if args.csv_only else f" and {Path(run)}/tensorboard"))
    return 0


MAIN_DESCRIPTION = """\
Train CIFAR-10 classifiers with regularization that is really applied (audited on the first
step), stated in its convention, and chosen on a held-out split."""

MAIN_EPILOG = """\
first commands:
  reglab train --preset quick --data-dir DATA      87% on the holdout in minutes on a CPU
  reglab train --preset tutorial --holdout 10000   the tutorial's ResNet run, L2 applied
  reglab sweep --preset quick-sgd --grid l2=0,1e-4,1e-3 --seeds 3 --dir sweeps/l2
  reglab report sweeps/l2                          report.html: curves, accuracy against λ
DATA: a CIFAR-10 folder (or $REGLAB_DATA); 'reglab train --help' lists every setting."""

SWEEP_DESCRIPTION = """\
Sweep train settings: a grid (--grid AXIS=V1,V2 ..., --seeds K) or an Optuna TPE search
(--trials N, --search SETTING=LOW:HIGH). Every trial is an ordinary run directory under
SWEEP/trials, selection is on the holdout only, and the study (SQLite in SWEEP, or a --storage
URL shared by workers on several machines) makes the same command resume: finished trials are
never repeated, a killed trial continues from its checkpoint. --final retrains the chosen
setting with holdout 0 and evaluates it once on the test set."""

SWEEP_EPILOG = """\
axes: any experiment setting (a train flag without its dashes); values as typed after the flag,
separated by ',' or, when a value holds commas, by '|'; a repeatable flag's values join its
rules with '+':
  --grid l2=0,1e-5,1e-4,1e-3 --seeds 3
  --grid "reg=l2=1e-4|wd=5e-4|decoupled-wd=5e-4@conv.weight,linear.weight"
  --grid "lr-milestones=0.5,0.75|0.3,0.6,0.9" --grid lr=0.1,0.2
  --trials 30 --search l2=1e-6:1e-1 --search lr=0.05:0.5"""

REPORT_DESCRIPTION = """\
Write report.html (self-contained: figures embedded) and figures/*.png for one run, several
runs, or sweeps: curves coloured by λ, accuracy and the train - validation gap against λ
(mean ± std over seeds), weight norms, a table by validation accuracy, and the recommended
setting with how sure it is. Folder kinds are detected: a run has metrics.jsonl, a sweep
trials/; any other folder is searched one level down."""


def add_sweep_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sweep")
    g.add_argument("--dir", required=True, metavar="SWEEP",
                   help="sweep directory (trials, study.db, sweep.yaml); the same --dir resumes")
    g.add_argument("--grid", action="append", metavar="AXIS=V1,V2",
                   help="grid axis: a setting and its values, e.g. l2=0,1e-4,1e-3; repeat for "
                        "a product of axes")  # fmt: skip
    g.add_argument("--seeds", type=int, default=1, metavar="K",
                   help="seeds per grid point: the config's seed and the K-1 after it (1)")
    g.add_argument("--trials", type=int, metavar="N", help="a search of N trials (Optuna TPE)")
    g.add_argument("--search", action="append", metavar="SETTING=LOW:HIGH[:log]",
                   help="a search range (default l2=1e-6:1e-1:log); repeat for more settings")
    g.add_argument("--prune", action=argparse.BooleanOptionalAction, default=True,
                   help="stop hopeless search trials early (median rule on holdout acc) (on)")
    g.add_argument("--storage", metavar="URL",
                   help="SQLAlchemy URL of the study, e.g. postgresql://user@host/db, to share "
                        "it between machines (default sqlite:///SWEEP/study.db)")  # fmt: skip
    g.add_argument("--study-name", help="study name in the storage (default: SWEEP's name)")
    g.add_argument("--workers", type=int, default=1,
                   help="trials in parallel on this machine (processes) (1)")
    g.add_argument("--devices", metavar="D1,D2",
                   help="devices the workers take in turn, e.g. cuda:0,cuda:1 (default: every "
                        "visible GPU, else the CPU with its cores split among the workers)")
    g.add_argument("--heartbeat", type=int, metavar="S",
                   help="seconds between a running trial's heartbeats; a trial silent for 4 of "
                        "them is failed by Optuna and run again from its checkpoint (30)")
    g.add_argument("--final", action="store_true",
                   help="then retrain the chosen setting with holdout 0 and evaluate it once on "
                        "the test set")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="reglab", description=MAIN_DESCRIPTION, epilog=MAIN_EPILOG,
                    formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    p = sub.add_parser("train", help="train a model",
                       description="Train a CIFAR-10 classifier (torchrun: data-parallel).")
    add_setting_arguments(p)
    p.add_argument("--resume", metavar="RUN_DIR", default=argparse.SUPPRESS,
                   help="continue a stopped run from its newest valid checkpoint, with its "
                        "stored settings (--steps/--epochs may be raised; system settings such "
                        "as --threads or --device may change)")  # fmt: skip
    p.set_defaults(func=cmd_train)
    p = sub.add_parser(
        "audit", help="check that each regularizer acts as its formula says",
        description="Build the run the train flags describe, print its regularization table and "
        "check on one step (random images unless --real-batch) that each regularizer changes "
        "the update of its parameters by exactly its formula and nothing else.",
    )  # fmt: skip
    add_setting_arguments(p)
    p.add_argument("--real-batch", action="store_true",
                   help="audit on the first CIFAR-10 training images instead of random ones")
    p.set_defaults(func=cmd_audit)
    p = sub.add_parser("models", help="list the models")
    p.set_defaults(func=cmd_models)
    p = sub.add_parser("sweep", help="grid or Optuna search over settings (resumable)",
                       description=SWEEP_DESCRIPTION, epilog=SWEEP_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    add_setting_arguments(p)
    add_sweep_arguments(p)
    p.set_defaults(func=cmd_sweep)
    p = sub.add_parser("report", help="HTML report and figures for runs and sweeps",
                       description=REPORT_DESCRIPTION)  # fmt: skip
    p.add_argument("dirs", nargs="+", metavar="DIR", help="run, sweep, or folder of them")
    p.add_argument("--out", metavar="DIR",
                   help="where report.html and figures/ go (default: the one DIR given)")
    p.add_argument("--title", help="the page's title")
    p.set_defaults(func=cmd_report)
    p = sub.add_parser("export", help="metrics.csv (and TensorBoard events) of run directories",
                       description="Write metrics.csv, a table of metrics.jsonl for spreadsheets, "
                       "and TensorBoard event files for run directories of any age (a run "
                       "writes both itself when it ends).")  # fmt: skip
    p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--csv-only", action="store_true", help="write metrics.csv only")
    p.add_argument("--compact-to", metavar="DIR",
                   help="instead, copy each run's (or sweep's) compact record (config, metrics, "
                        "summary, tables; no checkpoints or events) to DIR/<name>, e.g. to "
                        "commit it")
    p.set_defaults(func=cmd_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.argv = argv  # the command as given (a sweep records it)
    from reglab.data import DataError
    from reglab.training.rundir import RunDirError

    try:
        return args.func(args)
    except (ConfigError, DataError, RunDirError) as e:
        print(f"reglab: error: {e}", file=sys.stderr)
        return 2
    except (NotADirectoryError, IsADirectoryError, FileExistsError, PermissionError) as e:
        # a path given that cannot be used as asked (a file where a folder goes, no permission)
        where = f"{e.filename}: " if e.filename else ""
        print(f"reglab: error: {where}{(e.strerror or str(e)).lower()}; give a path reglab can "
              "write as a folder", file=sys.stderr)  # fmt: skip
        return 2
    except ReglabError as e:  # the run stopped itself: audit failed, loss diverged, disk full
        print(f"reglab: error: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # the reader left (reglab models | head): stop quietly, as yes does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit's flush
        return 128 + signal.SIGPIPE
    except ValueError as e:  # e.g. no CUDA device; bugs still show their traceback otherwise
        if "\n" in str(e) or not str(e):
            raise
        print(f"reglab: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("reglab: interrupted", file=sys.stderr)
        return 130
