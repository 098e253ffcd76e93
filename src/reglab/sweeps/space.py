"""What a sweep runs: grid axes or search ranges, parsed like ``reglab train``'s flags, and jobs.

An axis is a flag of ``reglab train`` (written without the dashes) and its values are what one
would type after that flag, parsed by the flag's own type, so an axis works for every setting
the command line has, today's and future ones:

    --grid l2=0,1e-5,1e-4               values separated by commas
    --grid "lr-milestones=0.5,0.75|0.3,0.6,0.9"
                                        '|' separates values when a value holds commas
                                        (end with '|' for a single such value)
    --grid "reg=l2=1e-4|wd=5e-4+l1=1e-5" a repeatable flag (--reg): '+' joins the flags of one
                                        value (a '+' before a digit, as in 1e+3, does not)
    --grid tta=true,false               an on/off flag: true | false
    --grid preset=quick,tutorial        any flag, even --preset or --config

The grid is the product of the axes; ``--seeds K`` adds the axis seed = S, S+1, ..., S+K-1 (S is
the config's seed) as the outermost axis, so that every setting has one seed before any has two.
A search (``--trials N``) draws settings with Optuna's TPE sampler from numeric ranges:

    --search l2=1e-6:1e-1               log-uniform (the default when LOW > 0)
    --search lr=0.05:0.5:log            explicit scale: log | linear
    --search label-smoothing=0:0.3      linear (LOW = 0 cannot be log)

Each job is one trial to run, named by a key that lists its values in canonical form
(``l2=0.0001 seed=0``: 1e-4 and 0.0001 are the same job); search jobs are numbered slots
(``search-0003``) whose values the sampler fills in when the trial starts.
"""

from __future__ import annotations

import argparse
import itertools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from reglab.config import ConfigError, TrainConfig

# Flags that say where and how a run is written, not what is trained: not axes of a sweep.
NOT_AXES = ("name", "runs-dir", "overwrite", "data-dir", "device", "threads", "verbose")
_PLUS = re.compile(r"\+(?=[^0-9])")  # joins repeated flags; '1e+3' keeps its '+'


@dataclass(frozen=True)
class Axis:
    """One grid axis: a train flag and its values (as the flag's type parses them)."""

    name: str  # flag without dashes, e.g. "l2", "lr-milestones"
    dest: str  # argparse destination, e.g. "lr_milestones"
    values: tuple[Any, ...]
    tokens: tuple[str, ...]  # the values as typed


@dataclass(frozen=True)
class Range:
    """One search dimension: a numeric train flag drawn in [low, high] (log or linear)."""

    name: str
    dest: str
    low: float
    high: float
    log: bool
    integer: bool

    def describe(self) -> str:
        return f"{self.name} in [{self.low:g}, {self.high:g}] ({'log' if self.log else 'linear'})"


@dataclass(frozen=True)
class Job:
    """One trial to run. ``params`` (axis name -> JSON value) are shown and stored in the study;
    ``overrides`` (argparse dest -> parsed value) replace the base flags to make its config."""

    key: str
    params: dict[str, Any] = field(default_factory=dict)
    overrides: dict[str, Any] = field(default_factory=dict)


def train_parser() -> argparse.ArgumentParser:
    """A parser holding exactly ``reglab train``'s flags (to look up an axis's flag)."""
    from reglab.cli import Parser, add_train_arguments

    parser = Parser(prog="reglab train")
    add_train_arguments(parser)
    return parser


def _action(parser: argparse.ArgumentParser, name: str, what: str) -> argparse.Action:
    name = name.strip().lstrip("-").replace("_", "-")
    if name in NOT_AXES:
        raise ConfigError(f"{what} {name}: --{name} says where a run goes, not what it trains; "
                          "it cannot be swept")  # fmt: skip
    # argparse keeps its flags in this mapping; it is the one lookup from flag to action
    action = parser._option_string_actions.get(f"--{name}")
    if action is None or name == "help":
        raise ConfigError(
            f"{what} {name}: no such flag of reglab train; axes are train flags without the "
            "dashes, e.g. l2, lr, label-smoothing (see reglab train --help)"
        )
    return action


def _to_bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("true", "yes", "on", "1"):
        return True
    if low in ("false", "no", "off", "0"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def parse_value(action: argparse.Action, token: str, axis: str) -> Any:
    """``token`` parsed as the flag of ``action`` would parse it (a '+'-joined list for a
    repeatable flag); ConfigError (one line) if the flag would refuse it."""

    def one(text: str) -> Any:
        text = text.strip()
        value = action.type(text) if callable(action.type) else text
        if action.choices is not None and value not in action.choices:
            choices = ", ".join(map(str, action.choices))
            raise ValueError(f"invalid choice {text!r} (choose from {choices})")
        return value

    try:
        if isinstance(action, argparse.BooleanOptionalAction):
            return _to_bool(token)
        if isinstance(action, argparse._AppendAction):
            return [one(part) for part in _PLUS.split(token) if part.strip()]
        return one(token)
    except (ValueError, TypeError, argparse.ArgumentTypeError) as e:
        raise ConfigError(f"--grid {axis}: bad value {token!r} ({e})") from None


def canon(value: Any) -> str:
    """Canonical text of a parsed value, for keys and labels: floats by their shortest repr
    (1e-4 -> 0.0001), lists of repeated flags joined by '+', tuples by ','."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, float):
        return f"{value:.12g}"
    if isinstance(value, list):
        return "+".join(canon(v) for v in value)
    if isinstance(value, tuple):
        return ",".join(canon(v) for v in value)
    return str(value)


def json_value(value: Any) -> Any:
    """A parsed value as JSON: scalars as they are, anything else as its canonical text."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return canon(value)


def split_values(text: str) -> list[str]:
    """'a,b,c' -> [a, b, c]; with a '|' anywhere, 'a,b|c' -> ['a,b', 'c'] (empty parts dropped)."""
    parts = text.split("|") if "|" in text else text.split(",")
    return [p.strip() for p in parts if p.strip()]


def parse_grid(
    specs: Sequence[str], seeds: int = 1, base_seed: int = 0,
    parser: argparse.ArgumentParser | None = None,
) -> list[Axis]:  # fmt: skip
    """The axes of ``--grid AXIS=VALUES`` (repeatable) and ``--seeds K``, seed outermost."""
    parser = parser or train_parser()
    axes: list[Axis] = []
    for spec in specs:
        name, eq, text = spec.partition("=")
        name = name.strip().lstrip("-").replace("_", "-")
        if not eq or not name:
            raise ConfigError(f"--grid {spec!r}: expected AXIS=V1,V2,..., e.g. --grid l2=0,1e-4")
        action = _action(parser, name, "--grid")
        tokens = split_values(text)
        if not tokens:
            raise ConfigError(f"--grid {spec!r}: no values; e.g. --grid {name}=V1,V2")
        values = [parse_value(action, t, name) for t in tokens]
        seen: dict[str, str] = {}
        for token, value in zip(tokens, values):
            if canon(value) in seen:
                raise ConfigError(
                    f"--grid {name}: {token!r} and {seen[canon(value)]!r} are the same value"
                )
            seen[canon(value)] = token
        if any(a.dest == action.dest for a in axes):
            raise ConfigError(f"--grid {name} is given twice; put all its values in one --grid")
        axes.append(Axis(name, action.dest, tuple(values), tuple(tokens)))
    if seeds < 1:
        raise ConfigError(f"--seeds must be >= 1 (got {seeds})")
    if any(a.dest == "seed" for a in axes):
        if seeds > 1:
            raise ConfigError("--grid seed=... and --seeds both give the seeds; use one of them")
        axes.sort(key=lambda a: a.dest != "seed")  # the seed axis outermost
    else:
        values = tuple(range(base_seed, base_seed + seeds))
        axes.insert(0, Axis("seed", "seed", values, tuple(map(str, values))))
    return axes


def grid_jobs(axes: Sequence[Axis]) -> list[Job]:
    """One job per point of the product of ``axes`` (the first axis outermost). The seed axis
    comes last in keys and params so that a setting reads the same for every seed."""
    jobs = []
    order = sorted(range(len(axes)), key=lambda i: axes[i].dest == "seed")
    for point in itertools.product(*(a.values for a in axes)):
        items = [(axes[i], point[i]) for i in order]
        key = " ".join(f"{a.name}={canon(v)}" for a, v in items)
        params = {a.name: json_value(v) for a, v in items}
        overrides = {a.dest: v for a, v in items}
        jobs.append(Job(key, params, overrides))
    return jobs


def parse_search(
    specs: Sequence[str], parser: argparse.ArgumentParser | None = None
) -> list[Range]:
    """The ranges of ``--search FLAG=LOW:HIGH[:log|:linear]`` (default: l2 in [1e-6, 1e-1], log)."""
    parser = parser or train_parser()
    specs = list(specs) or ["l2=1e-6:1e-1:log"]
    ranges: list[Range] = []
    for spec in specs:
        name, eq, text = spec.partition("=")
        name = name.strip().lstrip("-").replace("_", "-")
        parts = text.split(":")
        if not eq or len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] not in
                                                   ("log", "linear")):  # fmt: skip
            raise ConfigError(
                f"--search {spec!r}: expected FLAG=LOW:HIGH[:log|:linear], e.g. l2=1e-6:1e-1"
            )
        action = _action(parser, name, "--search")
        if action.type not in (int, float):
            raise ConfigError(f"--search {name}: only numeric flags can be searched; use --grid")
        try:
            low, high = float(parts[0]), float(parts[1])
        except ValueError:
            raise ConfigError(f"--search {spec!r}: LOW and HIGH must be numbers") from None
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise ConfigError(f"--search {spec!r}: needs finite LOW < HIGH")
        log = parts[2] == "log" if len(parts) == 3 else low > 0
        if log and low <= 0:
            raise ConfigError(f"--search {spec!r}: a log range needs LOW > 0 (λ = 0 is a grid "
                              "value: --grid l2=0,...)")  # fmt: skip
        if any(r.dest == action.dest for r in ranges):
            raise ConfigError(f"--search {name} is given twice")
        ranges.append(Range(name, action.dest, low, high, log, action.type is int))
    return ranges


def search_jobs(trials: int) -> list[Job]:
    """``trials`` numbered slots, each filled with the sampler's values when it starts."""
    if trials < 1:
        raise ConfigError(f"--trials must be >= 1 (got {trials})")
    return [Job(f"search-{i:04d}") for i in range(trials)]


def trial_config(base_args: argparse.Namespace, overrides: dict[str, Any]) -> TrainConfig:
    """The config of one trial: the sweep's train flags with the trial's values in place of
    the flags they name (a grid value replaces, never appends to, a repeatable flag)."""
    from reglab.cli import config_from_args

    args = argparse.Namespace(**vars(base_args))
    for dest, value in overrides.items():
        setattr(args, dest, list(value) if isinstance(value, list) else value)
    return config_from_args(args)


def setting_label(params: dict[str, Any]) -> str:
    """'l2=0.0001 lr=0.1' for a trial's values without its seed ('base' when nothing varies)."""
    items = [f"{k}={canon(v)}" for k, v in params.items() if k != "seed"]
    return " ".join(items) or "base"
