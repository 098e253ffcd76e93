"""``reglab sweep``'s flags and entry point (light: optuna is imported only when a sweep runs)."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Sweep train settings: a grid (--grid AXIS=V1,V2 ..., --seeds K) or an Optuna TPE search
(--trials N, --search FLAG=LOW:HIGH). Every trial is an ordinary run directory under
SWEEP/trials, selection is on the holdout only, and the study (SQLite in SWEEP, or --storage
URL shared by workers on several machines) makes the same command resume: finished trials are
never repeated, killed or crashed ones are run again. --final retrains the chosen setting with
holdout 0 and evaluates it once on the test set."""

EPILOG = """\
axes: any train flag without its dashes; values as typed after the flag, separated by ',' or,
when a value holds commas, by '|'; a repeatable flag's values join its flags with '+':
  --grid l2=0,1e-5,1e-4,1e-3 --seeds 3
  --grid "reg=l2=1e-4|wd=5e-4|decoupled-wd=5e-4@conv.weight,linear.weight"
  --grid "lr-milestones=0.5,0.75|0.3,0.6,0.9" --grid lr=0.1,0.2
  --trials 30 --search l2=1e-6:1e-1 --search lr=0.05:0.5"""


def add_sweep_arguments(p: argparse.ArgumentParser) -> None:
    """The sweep's own flags (the train flags come from ``add_train_arguments``)."""
    g = p.add_argument_group("sweep")
    g.add_argument("--dir", required=True, metavar="SWEEP",
                   help="sweep directory (trials, study.db, sweep.yaml); the same --dir resumes")
    g.add_argument("--grid", action="append", metavar="AXIS=V1,V2",
                   help="grid axis: a train flag and its values, e.g. l2=0,1e-4,1e-3; repeat for "
                        "a product of axes")
    g.add_argument("--seeds", type=int, default=1, metavar="K",
                   help="seeds per grid point: the config's seed and the K-1 after it (1)")
    g.add_argument("--trials", type=int, metavar="N", help="a search of N trials (Optuna TPE)")
    g.add_argument("--search", action="append", metavar="FLAG=LOW:HIGH[:log]",
                   help="a search range (default l2=1e-6:1e-1:log); repeat for more flags")
    g.add_argument("--prune", action=argparse.BooleanOptionalAction, default=True,
                   help="stop hopeless search trials early (median rule on holdout acc) (on)")
    g.add_argument("--storage", metavar="URL",
                   help="SQLAlchemy URL of the study, e.g. postgresql://user@host/db, to share "
                        "it between machines (default sqlite:///SWEEP/study.db)")
    g.add_argument("--study-name", help="study name in the storage (default: SWEEP's name)")
    g.add_argument("--workers", type=int, default=1,
                   help="trials in parallel on this machine, each with cores/N torch threads (1)")
    g.add_argument("--heartbeat", type=int, metavar="S",
                   help="seconds between a running trial's heartbeats; a trial silent for 4 of "
                        "them is taken as dead and run again (30)")
    g.add_argument("--final", action="store_true",
                   help="then retrain the chosen setting with holdout 0 and evaluate it once on "
                        "the test set")


def cmd_sweep(args: argparse.Namespace) -> int:
    from reglab.config import ConfigError

    try:
        import optuna  # noqa: F401  (an optional dependency)
    except ImportError:
        raise ConfigError("reglab sweep needs optuna: pip install 'reglab[sweep]'") from None
    from reglab.sweeps.runner import plan_from_args, run_sweep

    return run_sweep(plan_from_args(args), final=args.final)
