"""The audit: it passes every correct regularizer, rejects the tutorial's bug (a penalty computed
but left out of the minimised loss) and other misapplied ones with one line naming them, and
leaves the run's trajectory unchanged."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from conftest import synthetic_cifar
from test_regularization import TinyNet, batches, one_thread  # noqa: F401 (fixture)

from reglab.cli import main
from reglab.config import TrainConfig
from reglab.regularization import (
    CoupledWeightDecay,
    DecoupledWeightDecay,
    L2Penalty,
    Regularization,
    build_regularization,
    default_scope,
)
from reglab.regularization.audit import AuditError, audit_regularization
from reglab.training import RunDir, read_metrics, train
from reglab.training import builder as build_module
from reglab.training.step import train_step

ALL_METHODS = [
    "l2=1e-3", "l1=1e-4@conv", "wd=5e-3@linear.weight,norm.weight", "decoupled-wd=1e-2",
    "decay-per-step=1e-3@norm.bias+name:bn1.*", "decay-per-1024=1e-2@name:conv2.*",
    "prox-l1=1e-2@linear.weight",
]  # fmt: skip


def setup(rules, optimizer="sgd"):
    torch.manual_seed(0)
    model = TinyNet()  # float32, as in a run
    model.bn1.bias.data.uniform_(-0.1, 0.1)  # non-zero, so that decay on it is checkable
    plan = build_regularization(TrainConfig(l2=0, regularizers=rules).validate(), model)
    if optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    ((x, y),) = batches(1)
    return model, plan, opt, x.float(), y


def check_regularization(model, plan, opt, x, y, lr, step_fn=train_step) -> str:
    """The audit's report; AuditError (one line) if a regularizer fails."""
    result = audit_regularization(model, plan, opt, x, y, lr, step_fn)
    if not result.ok:
        raise AuditError(result.error())
    return result.report()


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_every_method_passes_together(optimizer):
    model, plan, opt, x, y = setup([*ALL_METHODS, "l2-half=1e-3@name:fc.*"], optimizer)
    result = audit_regularization(model, plan, opt, x, y, 0.1, train_step)
    assert result.ok, result.report()
    assert len(result.findings) == len(ALL_METHODS) + 1
    assert all(f.checkable and f.max_rel_error < 1e-9 for f in result.findings), result.report()
    assert "ok" in check_regularization(model, plan, opt, x, y, lr=0.1)


def test_audit_changes_nothing_of_the_run():
    model, plan, opt, x, y = setup([*ALL_METHODS, "l2=1e-3@name:fc.*"])
    model.train()
    for _ in range(2):  # optimizer state and BN statistics that the audit must not touch
        train_step(model, x, y, plan, opt, 0.1)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    opt_state = json.dumps(
        {str(k): {n: t.tolist() for n, t in s.items()} for k, s in opt.state.items()}
    )
    rng = torch.get_rng_state()
    check_regularization(model, plan, opt, x, y, lr=0.1)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is not None for p in model.parameters())  # untouched too
    assert opt_state == json.dumps(
        {str(k): {n: t.tolist() for n, t in s.items()} for k, s in opt.state.items()}
    )
    assert torch.equal(rng, torch.get_rng_state())


# --------------------------------------------------------------- the tutorial's bug, and others


class CollectedNotAdded(L2Penalty):
    """The tutorial: the L2 term is computed (collected by arg_scope) but never reaches the
    gradients."""

    def before_step(self, lr):
        collected = self.penalty()  # noqa: F841 (computed, then dropped: the bug)


class PlanDroppingPenalty(Regularization):
    """A plan that computes the penalty for the logs and applies only the other methods."""

    def before_step(self, lr):
        self.penalty()
        for r in self.applied:
            if not r.is_penalty:
                r.before_step(lr)


def step_minimising_data_loss_only(forward, x, y, reg, optimizer, lr, label_smoothing=0.0,
                                   autocast=None, probe=None):  # fmt: skip
    """The tutorial's training step: the penalty is computed, the data loss alone is minimised
    (the plan never acts on the gradients)."""
    for g in optimizer.param_groups:
        g["lr"] = lr
    data_loss = F.cross_entropy(forward(x), y)
    penalty = reg.penalty()
    _total = data_loss if penalty is None else data_loss + penalty  # computed, not minimised
    optimizer.zero_grad()
    data_loss.backward()
    probe("gradient")
    optimizer.step()
    probe("update")
    reg.after_step(lr)
    probe("final")


def one_line_error(model, plan, opt, x, y, step_fn=None) -> str:
    with pytest.raises(AuditError) as info:
        check_regularization(model, plan, opt, x, y, lr=0.1, step_fn=step_fn or train_step)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def test_tutorial_bug_penalty_not_returned_is_rejected():
    model, _, opt, x, y = setup([])
    plan = Regularization([CollectedNotAdded(1e-4, default_scope(model))])
    msg = one_line_error(model, plan, opt, x, y)
    assert "l2=0.0001 does not change the gradient of 3 of its 3 tensors" in msg
    assert "conv1.weight, conv2.weight, fc.weight" in msg and "added to the loss" in msg


def test_tutorial_bug_plan_dropping_penalty_is_rejected():
    model, _, opt, x, y = setup([])
    plan = PlanDroppingPenalty([L2Penalty(1e-4, default_scope(model))])
    assert "l2=0.0001 does not change the gradient" in one_line_error(model, plan, opt, x, y)


def test_tutorial_bug_step_leaving_penalty_out_of_the_loss_is_rejected():
    model, plan, opt, x, y = setup(["l2=1e-4"])
    msg = one_line_error(model, plan, opt, x, y, step_fn=step_minimising_data_loss_only)
    assert "l2=1e-4 does not change the gradient of 3 of its 3 tensors" in msg
    # the same plan with the real step passes
    check_regularization(model, plan, opt, x, y, lr=0.1)


def test_partial_wrong_and_leaking_regularizers_are_rejected():
    model, _, opt, x, y = setup([])
    scope = default_scope(model)

    class HalfDecay(CoupledWeightDecay):  # wd/2: the wrong formula (λΣ‖w‖² read as ½)
        def before_step(self, lr):
            for p in self.tensors:
                p.grad.add_(p.detach(), alpha=self.coef / 2)

    class SkipsLast(CoupledWeightDecay):  # forgets a tensor
        def before_step(self, lr):
            for p in self.tensors[:-1]:
                p.grad.add_(p.detach(), alpha=self.coef)

    class Leaks(CoupledWeightDecay):  # also decays the classifier's bias
        def __init__(self, coef, params, bias):
            super().__init__(coef, params)
            self.bias = bias

        def before_step(self, lr):
            super().before_step(lr)
            self.bias.grad.add_(self.bias.detach(), alpha=self.coef)

    class AfterTheStep(DecoupledWeightDecay):  # decoupled decay applied after the update
        def before_step(self, lr):
            pass

        def after_step(self, lr):
            super().before_step(lr)

    msg = one_line_error(model, Regularization([HalfDecay(1e-2, scope)]), opt, x, y)
    assert "3 of its 3 tensors" in msg
    msg = one_line_error(model, Regularization([SkipsLast(1e-2, scope)]), opt, x, y)
    assert "1 of its 3 tensors (fc.weight)" in msg
    msg = one_line_error(model, Regularization([Leaks(1e-2, scope, model.fc.bias)]), opt, x, y)
    assert "outside its scope (fc.bias)" in msg
    msg = one_line_error(model, Regularization([AfterTheStep(1e-2, scope)]), opt, x, y)
    assert "decoupled-wd=0.01 does not change the updated weights" in msg


# ------------------------------------------------------------------------------- in the loop


def synthetic():
    return synthetic_cifar(n_train=48, n_val=16)


def run_config(**kw) -> TrainConfig:
    base = dict(
        model="airbench", image_size=32, batch_size=8, steps=4, optimizer="nesterov", lr=0.05,
        l2=5e-4, dropout=0.3, block_dropout=0.2, augment="cutout", log_every=2, val_every=4,
        eval_batch_size=16, device="cpu", channels_last=False, threads=1,
        regularizers=["prox-l1=1e-3@linear.weight", "decoupled-wd=1e-2@norm.weight"],
    )  # fmt: skip
    base.update(kw)
    return TrainConfig(**base).validate()


def test_run_with_audit_has_identical_metrics_and_records_diagnostics(tmp_path):
    data = synthetic()
    rows = {}
    for audit in (True, False):
        run = RunDir(tmp_path / f"audit-{audit}")
        train(run_config(audit=audit), run_dir=run, data=data, quiet=True)
        rows[audit] = [{k: v for k, v in r.items() if k not in ("elapsed", "s_per_batch")}
                       for r in read_metrics(run.path)]  # fmt: skip
    assert rows[True] == rows[False]
    path = tmp_path / "audit-True"
    assert "prox-l1=1e-3@linear.weight" in (path / "audit.txt").read_text()
    assert "frozen" in (path / "regularization.txt").read_text()
    assert not (tmp_path / "audit-False" / "audit.txt").exists()
    train_row = rows[True][0]
    for key in ("grad_norm", "weight_norm/conv.weight", "weight_norm/norm.weight", "eff_lr_bn",
                "sparsity/prox-l1", "penalty", "loss"):  # fmt: skip
        assert key in train_row, key
    assert train_row["sparsity/prox-l1"] > 0  # lr·λ = 5e-5 against a tiny initial fc
    weights = [json.loads(line) for line in (path / "weights.jsonl").read_text().splitlines()]
    assert [w["step"] for w in weights] == [2, 4]
    assert weights[0]["tensors"]["layers.0.0.weight"]["eff_lr"] > 0


def test_a_run_whose_regularizer_misses_stops(tmp_path, monkeypatch, capsys):
    def buggy(cfg, model):
        return Regularization([CollectedNotAdded(cfg.l2, default_scope(model), "l2=0.0005")])

    monkeypatch.setattr(build_module, "build_regularization", buggy)
    run = RunDir(tmp_path / "stopped")
    with pytest.raises(AuditError, match=r"l2=0\.0005 does not change the gradient of 7 of its 7"):
        train(run_config(regularizers=[]), run_dir=run, data=synthetic(), quiet=True)
    assert "FAILED (7 missed, 0 outside scope)" in (run.path / "audit.txt").read_text()
    assert not run.metrics_path.exists()  # stopped before the first update
    train(run_config(regularizers=[], audit=False), data=synthetic(), quiet=True)  # unchecked


def test_audit_command_without_data(capsys, tmp_path):
    argv = ["audit", "--model", "airbench", "--image-size", "32", "--threads", "1",
            "--data-dir", str(tmp_path / "nothing-here"), "--l2", "1e-4",
            "--reg", "wd=5e-4@conv.weight", "--reg", "decoupled-wd=1e-3@norm"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "parameter group" in out and "wd=5e-4@conv.weight" in out
    assert out.count(" ok") == 3  # --l2 1e-4 and the two rules
    assert main(["audit", "--reg", "wd=5e-4@name:nothing.*", "--model", "airbench"]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith("reglab: error: rule 'wd=5e-4@name:nothing.*' matches no")
        and "\n" not in err
    )


def test_the_tutorials_bug_reproduced_on_purpose_runs_as_lambda_zero(tmp_path):
    """--no-penalty-in-loss: the penalty is computed and logged, the audit says it is off (and
    checks that it is), and the run is the λ = 0 run step for step."""
    data = synthetic()
    cfg = run_config(regularizers=["l2-half=1e-2"], l2=0, tta=False)
    off = train(cfg.replace(penalty_in_loss=False), run_dir=RunDir(tmp_path / "off"), data=data,
                quiet=True)  # fmt: skip
    zero = train(cfg.replace(regularizers=[]), data=data, quiet=True)
    on = train(cfg, data=data, quiet=True)
    report = (tmp_path / "off" / "audit.txt").read_text()
    assert "NOT APPLIED, as asked (--no-penalty-in-loss" in report
    assert "[NOT APPLIED: --no-penalty-in-loss]" in (tmp_path / "off" / "regularization.txt"
                                                      ).read_text()  # fmt: skip
    for (name, a), b in zip(off.model.state_dict().items(), zero.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert any(not torch.equal(a, c) for a, c in zip(off.model.state_dict().values(),
                                                      on.model.state_dict().values()))
    assert all(r["penalty"] > 0 for r in read_metrics(tmp_path / "off"))  # logged all the same
