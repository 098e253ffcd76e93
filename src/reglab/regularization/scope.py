"""Which parameters a regularizer applies to: the tutorial's arg_scope, made explicit.

A scope is a union of selectors; a selector is one term or an intersection of terms joined by
``+``. A term is one of

    default          the default scope: trainable weights of conv and linear layers
    KIND[.ROLE]      by module type and parameter role, fnmatch patterns: KIND is conv, linear,
                     norm (batch/group/layer/instance norm), other (any other module) or *;
                     ROLE is the attribute name: weight, bias, ... (omitted: every role)
    name:PATTERN     fnmatch on the parameter's full name, e.g. name:layer4.*

e.g. ``conv.weight,linear.weight``, ``*.bias``, ``conv.weight+name:layer4.*``. The default scope
excludes biases and normalisation parameters (BN's γ and β), as in nanoGPT's and timm's
weight-decay split. Frozen tensors (requires_grad False) are never in a scope, whatever the terms.
"""

from __future__ import annotations

from collections.abc import Sequence
from fnmatch import fnmatchcase

from torch import nn

NamedParams = list[tuple[str, nn.Parameter]]
Scope = tuple[tuple[str, ...], ...]  # union of intersections of terms

KINDS = ("conv", "linear", "norm", "other")
DEFAULT_SCOPE: Scope = (("default",),)
NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def module_kind(module: nn.Module) -> str:
    """conv, linear, norm or other."""
    if isinstance(module, nn.modules.conv._ConvNd):
        return "conv"
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, NORM_TYPES):
        return "norm"
    return "other"


def param_group(model: nn.Module, name: str) -> str:
    """``KIND.ROLE`` of parameter ``name``, e.g. ``conv.weight``, ``norm.bias``."""
    module_name, _, role = name.rpartition(".")
    module = model.get_submodule(module_name) if module_name else model
    return f"{module_kind(module)}.{role}"


def check_term(term: str) -> str | None:
    """None if ``term`` is a valid scope term, else what is wrong with it (one line)."""
    if term == "default":
        return None
    if term.startswith("name:"):
        return None if term[5:] else "name: needs a pattern, e.g. name:layer4.*"
    kind = term.split(".", 1)[0]
    if not any(fnmatchcase(k, kind) for k in KINDS):
        return (
            f"unknown scope term {term!r} (a parameter name? write name:{term}); use default, "
            f"KIND[.ROLE] with KIND one of {', '.join(KINDS)} or *, or name:PATTERN"
        )
    return None


def _matches(term: str, name: str, group: str) -> bool:
    if term == "default":
        return group in ("conv.weight", "linear.weight")
    if term.startswith("name:"):
        return fnmatchcase(name, term[5:])
    pattern = term if "." in term else term + ".*"
    return fnmatchcase(group, pattern)


def select_params(model: nn.Module, scope: Scope | Sequence[Sequence[str]]) -> NamedParams:
    """Trainable parameters of ``model`` matching ``scope`` (a union of intersections of terms),
    in ``model.named_parameters()`` order. Pure: reads the model, changes nothing."""
    selected: NamedParams = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        group = param_group(model, name)
        if any(all(_matches(t, name, group) for t in terms) for terms in scope):
            selected.append((name, p))
    return selected


def default_scope(model: nn.Module) -> NamedParams:
    """Trainable ``weight`` tensors of conv and linear layers, in model order."""
    return select_params(model, DEFAULT_SCOPE)


def format_scope(scope: Scope) -> str:
    return ",".join("+".join(terms) for terms in scope)


def parse_scope(text: str) -> Scope:
    """``conv.weight,name:fc.*`` -> (("conv.weight",), ("name:fc.*",)); raises ValueError."""
    scope = tuple(tuple(t.strip() for t in alt.split("+")) for alt in text.split(","))
    for terms in scope:
        for term in terms:
            if not term:
                raise ValueError(f"empty scope term in {text!r}")
            problem = check_term(term)
            if problem:
                raise ValueError(problem)
    return scope
