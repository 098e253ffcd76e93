"""Regularizers and the plan that applies them in the training step.

A regularizer acts at one or more points of a step, and the loop calls all of them:

    loss = data_loss + plan.loss_term()   # penalties without a closed-form gradient (none built in)
    loss.backward()
    plan.before_step(lr)                  # gradient-side (l2, l2-half, l1, wd: fused foreach adds
    optimizer.step()                      #   to p.grad), then parameter-side (decoupled-wd,
    plan.after_step(lr)                   #   decay-per-*); after the step, proximal L1

``plan.penalty()`` is the value of every penalty term, for the logs (computed at log points, not
every step).

The plan is decided in one place, :func:`build_regularization`, from the rules of the config
(``--l2`` first, then every ``--reg`` in order), printed as a table before training and checked
by the audit (:mod:`reglab.regularization.audit`) on the first step.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from reglab.regularization.methods import (
    REGULARIZERS,
    STAGES,
    CoupledWeightDecay,
    DecayPerStep,
    DecoupledWeightDecay,
    HalfL2Penalty,
    L1Penalty,
    L2Penalty,
    ProximalL1,
    Regularizer,
    find_method,
    register_regularizer,
)
from reglab.regularization.penalties import l1_penalty, l2_penalty, soft_threshold
from reglab.regularization.rules import RegRule, RuleError, methods, parse_rule
from reglab.regularization.scope import (
    DEFAULT_SCOPE,
    NamedParams,
    default_scope,
    param_group,
    select_params,
)

__all__ = [
    "REGULARIZERS",
    "CoupledWeightDecay",
    "DecayPerStep",
    "DecoupledWeightDecay",
    "HalfL2Penalty",
    "L1Penalty",
    "L2Penalty",
    "ProximalL1",
    "RegRule",
    "Regularization",
    "Regularizer",
    "RuleError",
    "build_regularization",
    "config_rules",
    "default_scope",
    "l1_penalty",
    "l2_penalty",
    "make_regularizer",
    "methods",
    "param_group",
    "parse_rule",
    "register_regularizer",
    "resolve_rules",
    "select_params",
    "soft_threshold",
]


class Regularization:
    """All regularizers of a run, applied together.

    Regularizers with coefficient 0 are dropped. They run in stage order (gradient-side before
    parameter-side), so that coupled decay reads the weights before decoupled decay shrinks them.
    ``penalty_in_loss=False`` reproduces the tutorial's bug on purpose: penalty terms
    (``is_penalty``) are computed and logged but never reach the gradients (λ acts as 0).
    """

    def __init__(self, regularizers: Sequence[Regularizer], penalty_in_loss: bool = True):
        kept = [r for r in regularizers if r.coef != 0 and r.params]
        self.regularizers = sorted(kept, key=lambda r: STAGES.index(r.stage))
        self.penalty_in_loss = penalty_in_loss

    @property
    def applied(self) -> list[Regularizer]:
        """The regularizers that act on the step (all, unless penalties are left out)."""
        return [r for r in self.regularizers if self.penalty_in_loss or not r.is_penalty]

    def penalty(self) -> torch.Tensor | None:
        """Σ of every penalty term's value (for the logs; applied or not)."""
        terms = [t for r in self.regularizers if (t := r.penalty()) is not None]
        return torch.stack(terms).sum() if terms else None

    def loss_term(self) -> torch.Tensor | None:
        """What to add to the minimised loss (penalties without a closed-form gradient)."""
        terms = [t for r in self.applied if (t := r.loss_term()) is not None]
        return torch.stack(terms).sum() if terms else None

    def before_step(self, lr: float) -> None:
        for r in self.applied:
            r.before_step(lr)

    def after_step(self, lr: float) -> None:
        for r in self.applied:
            r.after_step(lr)

    def state_dict(self) -> dict[str, dict]:
        return {r.label: r.state_dict() for r in self.regularizers}

    def load_state_dict(self, state: dict[str, dict]) -> None:
        for r in self.regularizers:
            r.load_state_dict(state.get(r.label, {}))

    def table(self, model: nn.Module) -> str:
        """The rules (convention, tensors, parameters) and the parameter groups with their size and
        the regularizers (and coefficients) on them; frozen tensors are shown as such."""
        if self.regularizers:
            rows = [("rule", "tensors", "parameters", "convention")]
            for r in self.regularizers:
                n = sum(p.numel() for p in r.tensors)
                off = "" if r in self.applied else " [NOT APPLIED: --no-penalty-in-loss]"
                rows.append((r.label, str(len(r.params)), f"{n:,}", r.convention + off))
            lines = ["regularization:", *_format_rows(rows)]
        else:
            lines = ["regularization: none (no rule with a non-zero coefficient)"]
        on: dict[int, list[str]] = {}
        for r in self.regularizers:
            for _, p in r.params:
                on.setdefault(id(p), []).append(r.label)
        groups: dict[tuple[str, str], list[int]] = {}
        for name, p in model.named_parameters():
            label = ", ".join(on.get(id(p), [])) or ("frozen" if not p.requires_grad else "none")
            g = groups.setdefault((param_group(model, name), label), [0, 0])
            g[0] += 1
            g[1] += p.numel()
        rows = [("parameter group", "tensors", "parameters", "regularization")]
        rows += [(k, str(c), f"{n:,}", label) for (k, label), (c, n) in groups.items()]
        return "\n".join(lines + _format_rows(rows))


def _format_rows(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def config_rules(cfg) -> list[RegRule]:
    """The rules of a TrainConfig in order: ``l2`` (the tutorial's --l2, on the default scope)
    first, then each entry of ``regularizers``."""
    rules = [RegRule("l2", cfg.l2, DEFAULT_SCOPE)] if cfg.l2 else []
    return rules + [parse_rule(t) for t in cfg.regularizers]


def resolve_rules(rules: Sequence[RegRule], model: nn.Module) -> list[tuple[RegRule, NamedParams]]:
    """Each rule with the parameters it finally applies to.

    A rule that matches no trainable parameter is an error (RuleError, one line). Where two rules
    of the same method select the same parameter, the later rule wins there (so ``--reg
    l2=0@name:fc.*`` after ``--l2 1e-4`` removes the classifier from L2); different methods add.
    """
    selected = []
    for rule in rules:
        params = select_params(model, rule.scope)
        if not params:
            trainable = [n for n, p in model.named_parameters() if p.requires_grad]
            groups = sorted({param_group(model, n) for n in trainable})
            tops = list(dict.fromkeys(n.split(".")[0] for n in trainable))
            raise RuleError(
                f"rule {rule.label!r} matches no trainable parameter of this model; its groups "
                f"are {', '.join(groups)} and its names start with {', '.join(tops)}"
            )
        selected.append(params)
    owner: dict[tuple[str, str], int] = {}  # (method, parameter name) -> index of the last rule
    for i, (rule, params) in enumerate(zip(rules, selected)):
        for name, _ in params:
            owner[(rule.method, name)] = i
    return [
        (rule, [(n, p) for n, p in params if owner[(rule.method, n)] == i])
        for i, (rule, params) in enumerate(zip(rules, selected))
    ]


def make_regularizer(rule: RegRule, params: NamedParams, batch_size: int) -> Regularizer:
    """The regularizer of one rule: the registered class of its method, with the rule's
    coefficient and parameters."""
    cls = find_method(rule.method)
    if cls is None:
        raise RuleError(f"unknown method {rule.method!r}; choose one of: {', '.join(methods())}")
    return cls.from_rule(rule.method, rule.coef, params, rule.label, batch_size)


def build_regularization(cfg, model: nn.Module) -> Regularization:
    """The regularizers a config asks for (``l2``, ``regularizers``, ``batch_size``,
    ``penalty_in_loss``), each on its scope (see :func:`resolve_rules`)."""
    resolved = resolve_rules(config_rules(cfg), model)
    return Regularization([make_regularizer(r, ps, cfg.batch_size) for r, ps in resolved],
                          penalty_in_loss=getattr(cfg, "penalty_in_loss", True))  # fmt: skip
