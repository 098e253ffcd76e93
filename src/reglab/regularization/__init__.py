"""Regularizers and the plan that applies them in the training step.

A regularizer acts at one or more points of a step, and the loop calls all of them:

    loss = data_loss + plan.penalty()     # penalty terms (l2, l1) reach the gradients here
    loss.backward()
    plan.before_step(lr)                  # gradient-side (wd), then parameter-side (decoupled-wd,
    optimizer.step()                      #   decay-per-*) terms
    plan.after_step(lr)                   # proximal L1

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
    L1Penalty,
    L2Penalty,
    ProximalL1,
    Regularizer,
)
from reglab.regularization.penalties import l1_penalty, l2_penalty, soft_threshold
from reglab.regularization.rules import METHODS, RegRule, RuleError, parse_rule
from reglab.regularization.scope import (
    DEFAULT_SCOPE,
    NamedParams,
    default_scope,
    param_group,
    select_params,
)

__all__ = [
    "METHODS",
    "CoupledWeightDecay",
    "DecayPerStep",
    "DecoupledWeightDecay",
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
    "param_group",
    "parse_rule",
    "resolve_rules",
    "select_params",
    "soft_threshold",
]


class Regularization:
    """All regularizers of a run, applied together.

    Regularizers with coefficient 0 are dropped. They run in stage order (gradient-side before
    parameter-side), so that coupled decay reads the weights before decoupled decay shrinks them.
    """

    def __init__(self, regularizers: Sequence[Regularizer]):
        kept = [r for r in regularizers if r.coef != 0 and r.params]
        self.regularizers = sorted(kept, key=lambda r: STAGES.index(r.stage))

    def penalty(self) -> torch.Tensor | None:
        terms = [t for r in self.regularizers if (t := r.penalty()) is not None]
        return torch.stack(terms).sum() if terms else None

    def before_step(self, lr: float) -> None:
        for r in self.regularizers:
            r.before_step(lr)

    def after_step(self, lr: float) -> None:
        for r in self.regularizers:
            r.after_step(lr)

    def table(self, model: nn.Module) -> str:
        """The rules (convention, tensors, parameters) and the parameter groups with their size and
        the regularizers (and coefficients) on them; frozen tensors are shown as such."""
        if self.regularizers:
            rows = [("rule", "tensors", "parameters", "convention")]
            for r in self.regularizers:
                n = sum(p.numel() for p in r.tensors)
                rows.append((r.label, str(len(r.params)), f"{n:,}", r.convention))
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
    """The regularizer of one rule: the method's class with the rule's coefficient and params."""
    if rule.per_examples is not None or rule.method == "decay-per-step":
        return DecayPerStep(rule.coef, params, rule.label, batch_size, rule.per_examples)
    return REGULARIZERS[rule.method](rule.coef, params, rule.label)


def build_regularization(cfg, model: nn.Module) -> Regularization:
    """The regularizers a TrainConfig asks for, each on its scope (see :func:`resolve_rules`)."""
    resolved = resolve_rules(config_rules(cfg), model)
    return Regularization([make_regularizer(r, ps, cfg.batch_size) for r, ps in resolved])
