"""Regularization rules in their short form, ``METHOD=COEF[@SCOPE]`` (``--reg`` and config files).

    l2=1e-4                               L2 penalty on the default scope (conv and linear weights)
    wd=5e-4@conv.weight,linear.weight     coupled weight decay on the listed groups
    l1=1e-5@name:layer4.*                 L1 penalty on parameters whose name matches
    decay-per-1024=5e-4                   5e-4 of each weight removed per 1,024 examples

Methods and their coefficients are in ``METHODS``; scopes in :mod:`reglab.regularization.scope`.
A config file may also give a rule as a mapping ``{method: wd, coef: 5e-4, scope: conv.weight}``;
it is stored in the short form so that a sweep can use the rules as a grid axis.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from reglab.config import ConfigError
from reglab.regularization.scope import DEFAULT_SCOPE, Scope, format_scope, parse_scope

# method -> convention of its coefficient (shown by --help, the table and the docs)
METHODS: dict[str, str] = {
    "l2": "loss += λ Σ‖w‖² (gradient 2λw)",
    "l2-half": "loss += λ Σ‖w‖²/2 (gradient λw; tf.nn.l2_loss, tf-slim's l2_regularizer)",
    "l1": "loss += λ Σ|w| (subgradient λ·sign(w))",
    "wd": "gradient += wd·w before the optimizer (torch.optim's weight_decay: × lr, via momentum"
    " or Adam's normalisation)",
    "decoupled-wd": "w ← (1 − lr·wd)·w before the optimizer's update (SGDW/AdamW; × lr only)",
    "decay-per-step": "w ← (1 − r)·w every step (independent of lr)",
    "decay-per-N": "w ← (1 − r_step)·w, r_step = 1 − (1 − r)^(batch/N): r per N examples",
    "prox-l1": "after the step w ← sign(w)·max(|w| − lr·λ, 0) (exact zeros)",
}
_PER_N = re.compile(r"decay-per-(\d+)$")
SYNTAX = "expected METHOD=COEF[@SCOPE], e.g. l2=1e-4 or wd=5e-4@conv.weight,linear.weight"


class RuleError(ConfigError):
    """A malformed rule, or one that matches nothing; the message is one line."""


@dataclass(frozen=True)
class RegRule:
    """One regularizer and the parameters it applies to. ``per_examples`` is N of decay-per-N;
    ``written`` the rule as the user wrote it (shown in tables and errors), if any."""

    method: str
    coef: float
    scope: Scope = DEFAULT_SCOPE
    per_examples: int | None = None
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
    return ", ".join(
        m if m != "decay-per-N" else "decay-per-N (e.g. decay-per-1024)" for m in METHODS
    )


def parse_rule(text: str) -> RegRule:
    """Parse ``METHOD=COEF[@SCOPE]``; raises RuleError (one line) naming the rule and the fix."""
    text = str(text).strip()
    head, at, scope_text = text.partition("@")
    method, eq, coef_text = head.partition("=")
    method = method.strip()
    if not eq or not method or not coef_text.strip():
        raise RuleError(f"bad rule {text!r}: {SYNTAX}")
    per_examples = None
    if (m := _PER_N.match(method)) is not None:
        per_examples = int(m.group(1))
        if per_examples < 1:
            raise RuleError(f"bad rule {text!r}: N of decay-per-N must be a positive integer")
    elif method not in METHODS or method == "decay-per-N":
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
    return RegRule(method, coef, scope, per_examples, written=text)


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
