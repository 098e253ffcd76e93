"""``reglab report``'s flags and entry point (matplotlib is imported only when it runs)."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Write report.html (self-contained: figures embedded) and figures/*.png for one run, several
runs, or sweeps: curves coloured by λ, accuracy and the train - validation gap against λ
(mean ± std over seeds), weight norms, a table by validation accuracy, and the recommended
setting with how sure it is. Folder kinds are detected: a run has metrics.jsonl, a sweep
trials/; any other folder is searched one level down."""


def add_report_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dirs", nargs="+", metavar="DIR", help="run, sweep, or folder of them")
    p.add_argument("--out", metavar="DIR",
                   help="where report.html and figures/ go (default: the one DIR given)")
    p.add_argument("--title", help="the page's title")


def cmd_report(args: argparse.Namespace) -> int:
    from reglab.config import ConfigError

    try:
        import matplotlib  # noqa: F401  (an optional dependency)
    except ImportError:
        raise ConfigError("reglab report needs matplotlib: pip install 'reglab[sweep]'") from None
    from reglab.reports.page import write_report

    path = write_report(args.dirs, args.out, args.title)
    print(f"reglab: report {path} (figures in {path.parent / 'figures'})")
    return 0
