"""Command line: ``reglab train | audit | models | sweep | report`` (argparse; torchvision's flags).

Every error a user can cause ends in one line on stderr, ``reglab: error: <problem>; <fix>``, and
exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from reglab.config import (
    AUGMENTATIONS,
    OPTIMIZERS,
    PRESETS,
    SCHEDULES,
    ConfigError,
    build_config,
    load_config_file,
)


class Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # let "--l2 -1e-4" reach validation (argparse's default misses scientific notation)
        self._negative_number_matcher = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")

    def error(self, message: str):  # one line instead of usage + error
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(","))
    except ValueError:
        msg = f"expected comma-separated numbers, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """Training flags. Every default is None so that presets and config files show through."""
    from reglab.models import list_models
    from reglab.regularization.rules import METHODS

    g = p.add_argument_group("setup")
    g.add_argument("--preset", choices=sorted(PRESETS),
                   help="tutorial: the tutorial's run (the defaults); quick: a 2-core CPU "
                        "recipe, over 80%% holdout accuracy in minutes; gpu: airbench94-width "
                        "net, 10 epochs of batch 1024, about 93%% in seconds on one GPU")
    g.add_argument("--config", metavar="FILE", help="YAML file of settings (flags override it)")
    g = p.add_argument_group("model")
    g.add_argument("--model", help=f"one of: {', '.join(list_models())} (default tutorial-resnet)")
    g.add_argument("--image-size", type=int, help="side in pixels after bilinear resize (96)")
    g.add_argument("--dropout", type=float, help="dropout probability before the classifier (0)")
    g.add_argument("--block-dropout", type=float, metavar="P",
                   help="Dropout2d probability inside each residual block / conv group (0)")
    g.add_argument("--verbose", action=argparse.BooleanOptionalAction,
                   help="print the network's shapes on the first batch")
    g = p.add_argument_group("data")
    g.add_argument("--data-dir", help="CIFAR-10 folder (else $REGLAB_DATA, else ~/.cache/reglab; "
                                      "downloaded there if absent)")
    g.add_argument("--holdout", type=int,
                   help="validate on the last N training images instead of the test set (0)")
    g.add_argument("--train-limit", type=int, help="train on the first N images only")
    g.add_argument("--augment", choices=AUGMENTATIONS, help="augmentation preset (none)")
    g.add_argument("--normalization", choices=("dataset", "per-image"),
                   help="dataset channel mean/std, or per-image standardization as the tutorial")
    g = p.add_argument_group("optimisation")
    g.add_argument("--batch-size", type=int, help="images per step (64)")
    g.add_argument("--steps", type=int, help="optimizer updates (20000)")
    g.add_argument("--epochs", type=float, help="passes over the training set (overrides --steps)")
    g.add_argument("--optimizer", choices=OPTIMIZERS, help="sgd (momentum), nesterov, adamw (sgd)")
    g.add_argument("--lr", type=float, help="peak learning rate per step (0.01)")
    g.add_argument("--momentum", type=float, help="SGD momentum, Adam's beta1 (0.9)")
    g.add_argument("--schedule", choices=SCHEDULES, help="learning-rate schedule (constant)")
    g.add_argument("--warmup-steps", type=int, help="linear warm-up steps (0)")
    g.add_argument("--lr-milestones", type=_floats, metavar="F,F",
                   help="step schedule: fractions of training where lr is multiplied by gamma")
    g.add_argument("--lr-gamma", type=float, help="step schedule multiplier (0.1)")
    g.add_argument("--label-smoothing", type=float, help="label smoothing epsilon (0)")
    g = p.add_argument_group("regularization")
    g.add_argument("--l2", type=float, metavar="LAMBDA",
                   help="λ of loss + λ Σ‖w‖² over conv and linear weights; gradient gains 2λw "
                        "(tutorial: 1e-4); shorthand for --reg l2=LAMBDA, applied first")
    g.add_argument("--reg", dest="regularizers", action="append", type=_rule,
                   metavar="METHOD=COEF[@SCOPE]",
                   help="add a regularizer after --l2 (repeatable; replaces a config file's "
                        "list; --l2 0 to use only these; see docs/regularization.md). "
                        "Methods: " + "; ".join(f"{m}: {c}" for m, c in METHODS.items())
                        + ". SCOPE: comma-separated selectors, default (conv and linear "
                        "weights), KIND[.ROLE] with KIND conv|linear|norm|other|* and ROLE "
                        "weight|bias|*, name:PATTERN (fnmatch), joined by + to intersect; "
                        "frozen tensors never. A later rule of the same method wins where they "
                        "overlap. E.g. --reg wd=5e-4@conv.weight,linear.weight --reg "
                        "l1=1e-5@name:layer4.* --reg decay-per-1024=5e-4")
    g.add_argument("--audit", action=argparse.BooleanOptionalAction,
                   help="check on the first step that each regularizer changes the update as "
                        "its formula says, and stop the run if not (on)")
    g = p.add_argument_group("logging and evaluation")
    g.add_argument("--log-every", type=int, help="steps between [train] lines (1000)")
    g.add_argument("--val-every", type=int, help="steps between [val] lines (4000)")
    g.add_argument("--eval-batch-size", type=int, help="validation batch size (1000)")
    g.add_argument("--tta", action=argparse.BooleanOptionalAction,
                   help="evaluate with flip test-time augmentation")
    g = p.add_argument_group("system and output")
    g.add_argument("--seed", type=int, help="random seed; same seed, same metrics on CPU (0)")
    g.add_argument("--device", help="auto, cpu, cuda or cuda:N (auto)")
    g.add_argument("--threads", type=int, help="CPU threads for torch")
    g.add_argument("--channels-last", action=argparse.BooleanOptionalAction,
                   help="NHWC memory layout (on)")
    g.add_argument("--compile", action=argparse.BooleanOptionalAction, help="torch.compile")
    g.add_argument("--runs-dir", help="parent folder of run directories (runs)")
    g.add_argument("--name", help="run directory name (default <preset or model>-<time>)")
    g.add_argument("--overwrite", action=argparse.BooleanOptionalAction,
                   help="allow replacing the results in an existing run directory")


def _rule(text: str) -> str:
    from reglab.regularization.rules import RuleError, parse_rule

    try:
        parse_rule(text)
    except RuleError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def config_from_args(args: argparse.Namespace):
    from reglab.config import FIELDS

    overrides = {k: v for k, v in vars(args).items() if k in FIELDS and k != "preset"}
    file_values = load_config_file(args.config) if args.config else None
    return build_config(args.preset, file_values, overrides)


def check_data_dir(data_dir: str | None) -> None:
    """An explicit --data-dir must exist: a typo should not start a 160 MB download elsewhere."""
    if data_dir is not None and not Path(data_dir).expanduser().is_dir():
        raise ConfigError(
            f"data dir {data_dir} does not exist: fix --data-dir, or create the folder to let "
            "reglab download CIFAR-10 into it"
        )


def cmd_train(args: argparse.Namespace) -> int:
    from reglab.training import RunDir, train

    cfg = config_from_args(args)
    check_data_dir(cfg.data_dir)
    name = cfg.name or RunDir.default_name(cfg.preset or cfg.model)
    run_dir = RunDir(Path(cfg.runs_dir) / name, overwrite=cfg.overwrite)
    try:
        train(cfg, run_dir)
    except BaseException:
        run_dir.discard_if_unused()  # no empty run directories left by a bad setting
        raise
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from reglab.regularization.audit import AuditError, audit_config

    cfg = config_from_args(args)
    data = None
    if args.real_batch:
        from reglab.data import load_cifar10

        check_data_dir(cfg.data_dir)
        data = load_cifar10(cfg.data_dir, holdout=cfg.holdout, train_limit=cfg.batch_size)
    table, result = audit_config(cfg, data)
    print(table)
    print(result.report())
    if not result.ok:
        raise AuditError(result.error())
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from reglab.models import MIN_IMAGE_SIZE, create_model, list_models

    for name in list_models():
        n = sum(p.numel() for p in create_model(name).parameters())
        print(f"{name:16s} {n:>12,} parameters  (image size >= {MIN_IMAGE_SIZE[name]})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="reglab", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    p = sub.add_parser("train", help="train a model", description="Train a CIFAR-10 classifier.")
    add_train_arguments(p)
    p.set_defaults(func=cmd_train)
    p = sub.add_parser(
        "audit", help="check that each regularizer acts as its formula says",
        description="Build the run the train flags describe, print its regularization table and "
        "check on one step (random images unless --real-batch) that each regularizer changes "
        "the update of its parameters by exactly its formula and nothing else.",
    )  # fmt: skip
    add_train_arguments(p)
    p.add_argument("--real-batch", action="store_true",
                   help="audit on the first CIFAR-10 training images instead of random ones")
    p.set_defaults(func=cmd_audit)
    p = sub.add_parser("models", help="list the models")
    p.set_defaults(func=cmd_models)
    from reglab.reports.command import DESCRIPTION as REPORT_DESCRIPTION
    from reglab.reports.command import add_report_arguments, cmd_report
    from reglab.sweeps.command import DESCRIPTION as SWEEP_DESCRIPTION
    from reglab.sweeps.command import EPILOG as SWEEP_EPILOG
    from reglab.sweeps.command import add_sweep_arguments, cmd_sweep

    p = sub.add_parser("sweep", help="grid or Optuna search over train settings (resumable)",
                       description=SWEEP_DESCRIPTION, epilog=SWEEP_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    add_train_arguments(p)
    add_sweep_arguments(p)
    p.set_defaults(func=cmd_sweep)
    p = sub.add_parser("report", help="HTML report and figures for runs and sweeps",
                       description=REPORT_DESCRIPTION)  # fmt: skip
    add_report_arguments(p)
    p.set_defaults(func=cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from reglab.data import DataError
    from reglab.training.rundir import RunDirError

    try:
        return args.func(args)
    except (ConfigError, DataError, RunDirError, FloatingPointError) as e:
        print(f"reglab: error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:  # e.g. no CUDA device; bugs still show their traceback otherwise
        if "\n" in str(e) or not str(e):
            raise
        print(f"reglab: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("reglab: interrupted", file=sys.stderr)
        return 130
