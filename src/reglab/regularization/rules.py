"""Regularization rules in their short form, ``METHOD=COEF[@SCOPE]`` (``--reg`` and config files).

    l2=1e-4                               L2 penalty on the default scope (conv and linear weights)
    wd=5e-4@conv.weight,linear.weight     coupled weight decay on the listed groups
    l1=1e-5@name:layer4.*                 L1 penalty on parameters whose name matches
    decay-per-1024=5e-4                   5e-4 of each weight removed per 1,024 examples

Methods and their conventions are the registry's (:func:`methods`); scopes in
:mod:`reglab.regularization.scope`.
A config file may also give a rule as a mapping ``{method: wd, coef: 5e-4, scope: conv.weight}``;
it is stored in the short form so that a sweep can use the rules as a grid axis.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from reglab.errors import ConfigError
from reglab.regularization.methods import REGULARIZERS, find_method
from reglab.regularization.scope import DEFAULT_SCOPE, Scope, format_scope, parse_scope

SYNTAX = "expected METHOD=COEF[@SCOPE], e.g. l2=1e-4 or wd=5e-4@conv.weight,linear.weight"


def methods() -> dict[str, str]:
    """Method name as typed -> the convention of its coefficient (from the registry)."""
    out = {name: cls.convention for name, cls in REGULARIZERS.items()}
    if "decay-per-step" in out:
        out["decay-per-N"] = ("w ← (1 − r_step)·w, r_step = 1 − (1 − r)^(batch/N): r per N "
                              "examples (e.g. decay-per-1024)")  # fmt: skip
    return out


class RuleError(ConfigError):
    """A malformed rule, or one that matches nothing; the message is one line."""


@dataclass(frozen=True)
class RegRule:
    """One regularizer and the parameters it applies to. ``method`` is the name as typed (e.g.
    decay-per-1024); ``written`` the rule as the user wrote it (shown in tables and errors)."""

    method: str
    coef: float
    scope: Scope = DEFAULT_SCOPE
    written: str | None = field(default=None, compare=False)

    @property
    def label(self) -> str:
        return self.written or self.text

    @property
    def text(self) -> str:
        """The short form; the scope is left out when it is the default."""
        head = f"{self.method}={self.coef:.12g}"
        return head if self.scope == DEFAULT_SCOPE else f"{head}@{format_scope(self.scope)}"

    def __str__(self) -> str:
        return self.text


def method_names() -> str:
    return ", ".join(m if m != "decay-per-N" else "decay-per-N (e.g. decay-per-1024)"
                     for m in methods())  # fmt: skip


def parse_rule(text: str) -> RegRule:
    """Parse ``METHOD=COEF[@SCOPE]``; raises RuleError (one line) naming the rule and the fix."""
    text = str(text).strip()
    head, at, scope_text = text.partition("@")
    method, eq, coef_text = head.partition("=")
    method = method.strip()
    if not eq or not method or not coef_text.strip():
        raise RuleError(f"bad rule {text!r}: {SYNTAX}")
    if find_method(method) is None:
        raise RuleError(
            f"bad rule {text!r}: unknown method {method!r}; choose one of: {method_names()}"
        )
    try:
        coef = float(coef_text)
    except ValueError:
        raise RuleError(f"bad rule {text!r}: coefficient {coef_text!r} is not a number") from None
    if not math.isfinite(coef) or coef < 0:
        raise RuleError(f"bad rule {text!r}: the coefficient must be a finite number >= 0")
    if method.startswith("decay-per-") and coef >= 1:
        raise RuleError(f"bad rule {text!r}: a decay rate is a fraction in [0, 1)")
    scope = DEFAULT_SCOPE
    if at:
        try:
            scope = parse_scope(scope_text)
        except ValueError as e:
            raise RuleError(f"bad rule {text!r}: {e}") from None
    return RegRule(method, coef, scope, written=text)


def rule_text(value: Any) -> str:
    """A rule from a config file, a string or a mapping {method, coef, scope}, in short form."""
    if isinstance(value, str):  # kept as written (a sweep's grid value stays recognisable)
        parse_rule(value)
        return value.strip()
    if isinstance(value, dict):
        unknown = set(value) - {"method", "coef", "scope"}
        if unknown or "method" not in value or "coef" not in value:
            raise RuleError(
                f"bad rule {value!r}: a mapping needs method and coef, optionally scope "
                "(a string or a list of selectors)"
            )
        scope = value.get("scope")
        if isinstance(scope, (list, tuple)):
            scope = ",".join(str(s) for s in scope)
        text = f"{value['method']}={value['coef']}" + (f"@{scope}" if scope else "")
        return parse_rule(text).text
    raise RuleError(f"bad rule {value!r}: {SYNTAX}")
