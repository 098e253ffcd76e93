"""What a sweep runs: grid axes or search ranges over experiment settings, and its jobs.

An axis is an *experiment* setting of :mod:`reglab.config` (its flag without the dashes, or its
field name) and its values are what one would type after that flag, parsed by the schema's own
:func:`~reglab.config.coerce`, so an axis works for every experiment setting, today's and future
ones. System settings (where and how a run executes: device, threads, paths, logging, preset) are
not axes.

    --grid l2=0,1e-5,1e-4               values separated by commas
    --grid "lr-milestones=0.5,0.75|0.3,0.6,0.9"
                                        '|' separates values when a value holds commas
                                        (end with '|' for a single such value)
    --grid "reg=l2=1e-4|wd=5e-4+l1=1e-5" a repeatable setting (--reg): '+' joins the rules of one
                                        value (a '+' before a digit, as in 1e+3, does not)
    --grid tta=true,false               an on/off setting: true | false

The grid is the product of the axes; ``--seeds K`` adds the axis seed = S, S+1, ..., S+K-1 (S is
the config's seed) as the outermost axis, so that every setting has one seed before any has two.
A search (``--trials N``) draws settings with Optuna's TPE sampler from numeric ranges:

    --search l2=1e-6:1e-1               log-uniform (the default when LOW > 0)
    --search lr=0.05:0.5:log            explicit scale: log | linear
    --search label-smoothing=0:0.3      linear (LOW = 0 cannot be log)

Each job is one result to obtain, named by a key that lists its values in canonical form
(``l2=0.0001 seed=0``: 1e-4 and 0.0001 are the same job); search jobs are numbered slots
(``search-0003``) whose values the sampler fills in when the job first starts.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from reglab.config import (
    SETTINGS,
    ConfigError,
    Setting,
    TrainConfig,
    build_config,
    coerce,
    lookup,
)
from reglab.config import canonical as canon

_PLUS = re.compile(r"\+(?=[^0-9])")  # joins the rules of a repeatable setting; '1e+3' keeps it


@dataclass(frozen=True)
class Axis:
    """One grid axis: an experiment setting and its values (as the schema coerces them)."""

    name: str  # the flag without dashes, e.g. "l2", "lr-milestones", "reg"
    setting: str  # the setting's field name, e.g. "lr_milestones", "regularizers"
    values: tuple[Any, ...]
    tokens: tuple[str, ...]  # the values as typed


@dataclass(frozen=True)
class Range:
    """One search dimension: a numeric experiment setting drawn in [low, high]."""

    name: str  # flag without dashes: the Optuna parameter name
    setting: str
    low: float
    high: float
    log: bool
    integer: bool

    def describe(self) -> str:
        return f"{self.name} in [{self.low:g}, {self.high:g}] ({'log' if self.log else 'linear'})"


@dataclass(frozen=True)
class Job:
    """One result to obtain. ``params`` (flag -> JSON scalar) name it in keys, trial params and
    trial.json; ``values`` (setting name -> JSON value) replace the base settings in its config.
    A search job has neither until the sampler fills them in."""

    key: str
    params: dict[str, Any] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)


def experiment_setting(name: str, what: str) -> Setting:
    """The experiment setting ``name`` (flag or field name); ConfigError naming it otherwise."""
    s = lookup(name, what)
    if s.kind != "experiment":
        raise ConfigError(
            f"{what} {s.flag}: --{s.flag} is a system setting (where and how a run executes), "
            "not something a sweep compares; it cannot be swept (give it once, for every trial)"
        )
    return s


def parse_value(s: Setting, token: str, what: str) -> Any:
    """``token`` as setting ``s`` holds it (a '+'-joined list of rules for a repeatable one);
    ConfigError (one line) if the schema refuses it."""
    value: Any = token.strip()
    if s.repeatable:
        value = [part.strip() for part in _PLUS.split(value) if part.strip()]
    return coerce(s, value, f"{what} {s.flag}: value {token.strip()!r}")


def json_value(value: Any) -> Any:
    """A value as a JSON scalar (an Optuna parameter): scalars as they are, else canonical text."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return canon(value)


def is_number(value: Any) -> bool:
    """An int or float (not a bool): a grid value Optuna can hold as a parameter."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def plain(value: Any) -> Any:
    """A setting's value as JSON (tuples as lists), which :func:`coerce` reads back exactly."""
    if isinstance(value, tuple):
        return [plain(v) for v in value]
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def split_values(text: str) -> list[str]:
    """'a,b,c' -> [a, b, c]; with a '|' anywhere, 'a,b|c' -> ['a,b', 'c'] (empty parts dropped)."""
    parts = text.split("|") if "|" in text else text.split(",")
    return [p.strip() for p in parts if p.strip()]


def parse_grid(specs: Sequence[str], seeds: int = 1, base_seed: int = 0) -> list[Axis]:
    """The axes of ``--grid AXIS=VALUES`` (repeatable) and ``--seeds K``, seed outermost."""
    axes: list[Axis] = []
    for spec in specs:
        name, eq, text = spec.partition("=")
        if not eq or not name.strip():
            raise ConfigError(f"--grid {spec!r}: expected AXIS=V1,V2,..., e.g. --grid l2=0,1e-4")
        s = experiment_setting(name, "--grid")
        tokens = split_values(text)
        if not tokens:
            raise ConfigError(f"--grid {spec!r}: no values; e.g. --grid {s.flag}=V1,V2")
        values = [parse_value(s, t, "--grid") for t in tokens]
        seen: dict[str, str] = {}
        for token, value in zip(tokens, values):
            if canon(value) in seen:
                raise ConfigError(
                    f"--grid {s.flag}: {token!r} and {seen[canon(value)]!r} are the same value"
                )
            seen[canon(value)] = token
        if any(a.setting == s.name for a in axes):
            raise ConfigError(f"--grid {s.flag} is given twice; put all its values in one --grid")
        axes.append(Axis(s.flag, s.name, tuple(values), tuple(tokens)))
    if seeds < 1:
        raise ConfigError(f"--seeds must be >= 1 (got {seeds})")
    if any(a.setting == "seed" for a in axes):
        if seeds > 1:
            raise ConfigError("--grid seed=... and --seeds both give the seeds; use one of them")
        axes.sort(key=lambda a: a.setting != "seed")  # the seed axis outermost
    else:
        values = tuple(range(base_seed, base_seed + seeds))
        axes.insert(0, Axis("seed", "seed", values, tuple(map(str, values))))
    return axes


def grid_jobs(axes: Sequence[Axis]) -> list[Job]:
    """One job per point of the product of ``axes`` (the first axis outermost). The seed comes
    last in keys and params so that a setting reads the same for every seed."""
    jobs = []
    order = sorted(range(len(axes)), key=lambda i: axes[i].setting == "seed")
    for point in itertools.product(*(a.values for a in axes)):
        items = [(axes[i], point[i]) for i in order]
        key = " ".join(f"{a.name}={canon(v)}" for a, v in items)
        params = {a.name: json_value(v) for a, v in items}
        values = {a.setting: plain(v) for a, v in items}
        jobs.append(Job(key, params, values))
    return jobs


def parse_search(specs: Sequence[str]) -> list[Range]:
    """The ranges of ``--search SETTING=LOW:HIGH[:log|:linear]`` (default l2 in [1e-6, 1e-1],
    log). LOW and HIGH must be values the setting accepts."""
    specs = list(specs) or ["l2=1e-6:1e-1:log"]
    ranges: list[Range] = []
    for spec in specs:
        name, eq, text = spec.partition("=")
        parts = text.split(":")
        if not eq or len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] not in
                                                   ("log", "linear")):  # fmt: skip
            raise ConfigError(
                f"--search {spec!r}: expected SETTING=LOW:HIGH[:log|:linear], e.g. l2=1e-6:1e-1"
            )
        s = experiment_setting(name, "--search")
        if s.base_type not in (int, float):
            raise ConfigError(f"--search {s.flag}: only numeric settings can be searched; "
                              "use --grid")  # fmt: skip
        if s.name in ("holdout", "seed"):
            raise ConfigError(f"--search {s.flag}: trials must be compared on one holdout and "
                              "drawn settings, not seeds; use --grid for it")  # fmt: skip
        low, high = (coerce(s, p, f"--search {s.flag}: LOW and HIGH") for p in parts[:2])
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise ConfigError(f"--search {spec!r}: needs finite LOW < HIGH")
        log = parts[2] == "log" if len(parts) == 3 else low > 0
        if log and low <= 0:
            raise ConfigError(f"--search {spec!r}: a log range needs LOW > 0 (λ = 0 is a grid "
                              "value: --grid l2=0,...)")  # fmt: skip
        if any(r.setting == s.name for r in ranges):
            raise ConfigError(f"--search {s.flag} is given twice")
        ranges.append(Range(s.flag, s.name, float(low), float(high), log, s.base_type is int))
    return ranges


def search_jobs(trials: int) -> list[Job]:
    """``trials`` numbered slots, each filled with the sampler's values when it starts."""
    if trials < 1:
        raise ConfigError(f"--trials must be >= 1 (got {trials})")
    return [Job(f"search-{i:04d}") for i in range(trials)]


def experiment_values(cfg: TrainConfig) -> dict[str, Any]:
    """The experiment settings of ``cfg`` as JSON (what two parts of one sweep must share)."""
    d = cfg.to_dict()
    return {name: plain(d[name]) for name, s in SETTINGS.items() if s.kind == "experiment"}


def trial_config(
    settings: dict[str, Any],
    file_values: dict[str, Any] | None,
    values: dict[str, Any],
    file_name: str = "config file",
) -> TrainConfig:
    """The config of one trial: the sweep's settings (flags over config file over preset) with
    the trial's values in place of the settings they name (a grid value replaces, never appends
    to, a repeatable setting; a value of None unsets)."""
    given = {k: v for k, v in values.items() if v is not None}
    cfg = build_config(None, file_values, {**settings, **given}, file_name=file_name)
    unset = {k: None for k, v in values.items() if v is None}
    return cfg.replace(**unset) if unset else cfg


def job_dir_name(key: str, limit: int = 80) -> str:
    """The run directory of a job under SWEEP/trials: its key with spaces as '_' (and a short
    hash of the key when it had to be shortened or changed beyond that, so that two jobs never
    share a directory)."""
    keep = "".join(c if c.isalnum() or c in "._=,+-" else "_" for c in key.replace(" ", "_"))
    exact = "_" not in key and all(c.isalnum() or c in "._=,+- " for c in key)
    if exact and len(keep) <= limit:
        return keep
    digest = hashlib.sha1(key.encode()).hexdigest()[:8]
    return f"{keep[: limit - 9]}-{digest}"
