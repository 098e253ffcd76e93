"""The audit: does each regularizer change the step by exactly what its formula says?

The tutorial's L2 penalty was collected but never added to the loss that was minimised, so λ did
nothing and nobody noticed. The audit makes that impossible to miss. For each regularizer R of
the plan it takes the training step the run uses (``train_step``), runs it on copies of the
model and optimizer (float64, no autocast, the same batch and dropout masks) once with the whole
plan and once with R removed, and compares the two where R acts (``R.stage``):

    l2            gradient before optimizer.step()     differs by 2λw
    l2-half       gradient                             differs by λw
    l1            gradient                             differs by λ·sign(w)
    wd            gradient                             differs by wd·w
    decoupled-wd  weights just after optimizer.step()  differ by −lr·wd·w'
    decay-per-*   weights just after optimizer.step()  differ by −r_step·w'
    prox-l1       weights after the step               differ by soft_threshold(w'', lr·λ) − w''

(w: the weights before the step; w': just before optimizer.step() and w'': after it, in the step
without R; w' is w unless another decay acts on the same tensor). Every tensor in R's
scope must show that difference (relative error ≤ ``rtol``) and every tensor outside it none
(up to ``noise`` relative to its size). The real model, optimizer, batch-norm statistics and
random generators are left as they were: a run with the audit gives the same metrics as one
without it. ``reglab audit`` runs it on a random batch, ``reglab train`` on its first batch.

The audit takes the step function as an argument (the training layer passes its ``train_step``),
so it depends on the step's contract, not on the loop. A penalty switched off on purpose
(``--no-penalty-in-loss``, the tutorial's bug reproduced) is checked to be really off.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from torch import nn

from reglab.errors import ReglabError

HINTS = {
    "gradient": "is its penalty added to the loss that is minimised (or its term to p.grad "
    "before optimizer.step())?",
    "update": "is it applied to the weights before optimizer.step()?",
    "final": "is it applied to the weights after optimizer.step()?",
}
WHERE = {"gradient": "gradient", "update": "updated weights", "final": "weights after the step"}


class AuditError(ReglabError):
    """A regularizer that does not do what its formula says; the message is one line."""


@dataclass
class AuditFinding:
    label: str
    stage: str
    tensors: int
    formula: str = "?"
    max_rel_error: float = 0.0
    missed: list[str] = field(default_factory=list)  # in scope, change not as the formula says
    leaked: list[str] = field(default_factory=list)  # outside scope, changed
    checkable: bool = True  # False when the formula predicts no change at all (e.g. lr = 0)
    switched_off: bool = False  # a penalty left out of the loss on purpose (--no-penalty-in-loss)

    @property
    def ok(self) -> bool:
        if self.switched_off:  # then it must change nothing at all
            return len(self.missed) == self.tensors and not self.leaked
        return not self.missed and not self.leaked


@dataclass
class AuditResult:
    findings: list[AuditFinding]
    lr: float
    images: int

    @property
    def ok(self) -> bool:
        return all(f.ok for f in self.findings)

    def report(self) -> str:
        head = (
            f"audit: each regularizer against the same step without it (lr {self.lr:g}, "
            f"{self.images} images, float64 copies)"
        )
        if not self.findings:
            return f"{head}: no regularizer configured"
        lines = [head]
        width = max(len(f.label) for f in self.findings)
        for f in self.findings:
            if f.switched_off:
                verdict = ("NOT APPLIED, as asked (--no-penalty-in-loss: the tutorial's bug, "
                           "reproduced on purpose; λ acts as 0)" if f.ok else "FAILED (applied "
                           "although --no-penalty-in-loss)")  # fmt: skip
            elif f.ok:
                verdict = "ok" if f.checkable else "ok (formula predicts no change: not checked)"
            else:
                verdict = f"FAILED ({len(f.missed)} missed, {len(f.leaked)} outside scope)"
            error = ("changed: none" if f.switched_off and f.ok
                     else f"max rel. error {f.max_rel_error:.1e}")  # fmt: skip
            lines.append(
                f"  {f.label:<{width}}  {WHERE[f.stage]:<22} {f.tensors:>4} tensors  {error}  "
                f"outside scope unchanged: {'yes' if not f.leaked else 'NO'}  {verdict}"
            )
        return "\n".join(lines)

    def error(self) -> str:
        """One line naming the first failing regularizer and its parameters."""
        f = next(f for f in self.findings if not f.ok)
        if f.switched_off and not f.leaked:
            return (f"audit: {f.label} still changes the {WHERE[f.stage]} although "
                    "--no-penalty-in-loss leaves penalties out of the loss. Run stopped.")
        if f.missed:
            return (
                f"audit: {f.label} does not change the {WHERE[f.stage]} of {len(f.missed)} of its "
                f"{f.tensors} tensors ({_names(f.missed)}) by {f.formula} as its formula says; "
                f"{HINTS[f.stage]} Run stopped."
            )
        return (
            f"audit: {f.label} changes the {WHERE[f.stage]} of {len(f.leaked)} tensors outside its "
            f"scope ({_names(f.leaked)}); it must act on its scope only. Run stopped."
        )


def _names(names: list[str], shown: int = 3) -> str:
    more = f", ... +{len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def _copies(model: nn.Module, optimizer: torch.optim.Optimizer, plan):
    """float64 copies of the model, and of the optimizer and plan bound to the copy's parameters
    (one deepcopy, so every reference they hold to the model's tensors is mapped to the copy)."""
    m, opt, plan = copy.deepcopy((model, optimizer, plan))
    m.double()  # converts parameter data in place, so opt and plan still refer to them
    for state in opt.state.values():
        for k, v in state.items():
            if torch.is_tensor(v) and v.is_floating_point() and k != "step":
                state[k] = v.double()
    for module in m.modules():  # e.g. tutorial-resnet's one-time shape printout
        if getattr(module, "verbose", False):
            module.verbose = False
    return m, opt, plan


def _rng_state(device: torch.device):
    cuda = device.type == "cuda" and torch.cuda.is_initialized()
    return torch.get_rng_state(), (torch.cuda.get_rng_state(device) if cuda else None)


def _set_rng_state(state, device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def audit_regularization(
    model: nn.Module,
    plan,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    lr: float,
    step_fn: Callable,
    label_smoothing: float = 0.0,
    max_images: int = 32,
    rtol: float = 1e-6,
    noise: float = 1e-10,
) -> AuditResult:
    """Audit every regularizer of ``plan`` on one step (see the module docstring).

    ``step_fn(model, x, y, plan, optimizer, lr, label_smoothing, autocast, probe)`` is the
    training step (:func:`reglab.training.step.train_step`): it must call ``probe(stage)`` at
    "gradient" (just before optimizer.step()), "update" (just after) and "final" (after the
    plan's after_step). ``max_images`` of the batch are used.
    """
    x, y = x[:max_images].double(), y[:max_images]
    names = [n for n, _ in model.named_parameters()]
    w0 = {n: p.detach().double().clone() for n, p in model.named_parameters()}
    rng = _rng_state(x.device)

    def trial(skip: int | None, stages: set[str]) -> dict[str, dict[str, torch.Tensor]]:
        """One step on fresh copies, with regularizer number ``skip`` of the plan removed."""
        m, opt, p = _copies(model, optimizer, plan)
        p.regularizers = [r for j, r in enumerate(p.regularizers) if j != skip]
        seen: dict[str, dict[str, torch.Tensor]] = {}

        def probe(stage: str) -> None:
            if stage not in stages:
                return
            if stage == "gradient":
                seen[stage] = {
                    n: q.grad.detach().clone() if q.grad is not None else torch.zeros_like(q)
                    for n, q in m.named_parameters()
                }
                if "pre-step" in stages:  # the weights the update-stage methods act on
                    seen["pre-step"] = {n: q.detach().clone() for n, q in m.named_parameters()}
            else:
                seen[stage] = {n: q.detach().clone() for n, q in m.named_parameters()}

        _set_rng_state(rng, x.device)  # the same dropout masks in every trial
        step_fn(m, x, y, p, opt, lr, label_smoothing, nullcontext, probe)
        missing = stages - set(seen) - {"pre-step"}
        if missing:
            raise AuditError(f"audit: the training step never reached {', '.join(missing)}")
        return seen

    regs = list(plan.regularizers)
    findings = []
    try:
        full = trial(None, {r.stage for r in regs}) if regs else {}
        for i, r in enumerate(regs):
            seen = trial(i, {r.stage, "gradient", "pre-step"})
            without, with_ = seen[r.stage], full[r.stage]
            acts_on = {"gradient": w0, "update": seen["pre-step"], "final": without}[r.stage]
            scope = {n for n, _ in r.params}
            f = AuditFinding(r.label, r.stage, len(scope), r.formula, checkable=False,
                             switched_off=r not in plan.applied)  # fmt: skip
            for n in names:
                diff = with_[n] - without[n]
                floor = noise * without[n].norm().item() + 1e-30
                if n in scope:
                    expected = r.expected_change(acts_on[n], lr, n)
                    err, size = (diff - expected).norm().item(), expected.norm().item()
                    if size > floor:
                        f.checkable = True
                        f.max_rel_error = max(f.max_rel_error, err / size)
                    if err > rtol * size + floor:
                        f.missed.append(n)
                elif diff.norm().item() > floor:
                    f.leaked.append(n)
            findings.append(f)
    finally:
        _set_rng_state(rng, x.device)
    return AuditResult(findings, lr, len(y))
