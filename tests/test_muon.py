"""Muon (airbench94_muon's optimizer) and the whitening bias's fade, against their formulas,
airbench's own code and torch.optim."""

from __future__ import annotations

import pytest
import torch
from conftest import synthetic_cifar
from torch import nn

from reglab.config import build_config
from reglab.errors import ConfigError
from reglab.regularization import Regularization
from reglab.training.builder import build
from reglab.training.muon import NS_COEFFICIENTS, Muon, muon_params, newton_schulz5
from reglab.training.optim import fade_groups, param_groups
from reglab.training.step import train_step


def airbench_zeropower(G, steps=3, eps=1e-7):
    """airbench94_muon.py's zeropower_via_newtonschulz5 (without @torch.compile): the reference."""
    assert len(G.shape) == 2
    a, b, c = (3.4445, -4.7750, 2.0315)
    X = G.bfloat16()
    X /= X.norm() + eps
    if G.size(0) > G.size(1):
        X = X.T
    for _ in range(steps):
        A = X @ X.T
        B = b * A + c * A @ A
        X = a * X + B @ X
    if G.size(0) > G.size(1):
        X = X.T
    return X


class AirbenchMuon(torch.optim.Optimizer):
    """airbench94_muon.py's Muon class, the reference."""

    def __init__(self, params, lr=1e-3, momentum=0, nesterov=False):
        super().__init__(params, dict(lr=lr, momentum=momentum, nesterov=nesterov))

    def step(self):
        for group in self.param_groups:
            lr, momentum = group["lr"], group["momentum"]
            for p in group["params"]:
                g = p.grad
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(g)
                buf = state["momentum_buffer"]
                buf.mul_(momentum).add_(g)
                g = g.add(buf, alpha=momentum) if group["nesterov"] else buf
                p.data.mul_(len(p.data) ** 0.5 / p.data.norm())
                update = airbench_zeropower(g.reshape(len(g), -1)).view(g.shape)
                p.data.add_(update, alpha=-lr)


@pytest.mark.parametrize("shape", [(16, 72), (72, 16)])
def test_newton_schulz_is_airbenchs_in_bf16(shape):
    g = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    assert torch.equal(newton_schulz5(g), airbench_zeropower(g))


def test_newton_schulz_acts_on_singular_values_as_the_quintic():
    """NS5(G) = U · f(S / ‖G‖_F) · Vᵀ with f three times x ↦ a·x + b·x³ + c·x⁵ (G = U·S·Vᵀ)."""
    g = torch.randn(12, 30, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    u, s, vh = torch.linalg.svd(g, full_matrices=False)
    a, b, c = NS_COEFFICIENTS
    x = s / (torch.linalg.norm(g) + 1e-7)
    for _ in range(3):
        x = a * x + b * x**3 + c * x**5
    expected = u @ torch.diag(x) @ vh
    torch.testing.assert_close(newton_schulz5(g, dtype=torch.float64), expected)
    assert x.min() > 0.2 and x.max() < 1.3  # every direction moves at a comparable rate


def test_muon_steps_are_airbenchs():
    """Five Nesterov Muon steps on a conv filter: reglab's Muon with bf16 Newton-Schulz equals
    airbench94_muon's class bit for bit (weight renormalized, then the orthogonalized step)."""
    torch.manual_seed(0)
    convs = [nn.Conv2d(8, 16, 3, bias=False) for _ in range(2)]
    convs[1].load_state_dict(convs[0].state_dict())
    ours = Muon([{"params": [convs[0].weight], "use_muon": True, "momentum": 0.6}], lr=0.24,
                momentum=0.85, ns_dtype=torch.bfloat16)  # fmt: skip
    ref = AirbenchMuon([convs[1].weight], lr=0.24, momentum=0.6, nesterov=True)
    x = torch.randn(4, 8, 6, 6)
    for _ in range(5):
        for conv, opt in zip(convs, (ours, ref)):
            opt.zero_grad()
            conv(x).pow(2).mean().backward()
            opt.step()
        assert torch.equal(convs[0].weight, convs[1].weight)


def test_muon_renormalizes_the_filter_before_its_step():
    """W ← W·√out/‖W‖_F, then W − lr·NS5(M): with a zero gradient the step is 0 and only the
    renormalization is left."""
    w = nn.Parameter(torch.randn(6, 3, 3, 3) * 5)
    opt = Muon([{"params": [w], "use_muon": True, "momentum": 0.6}], lr=0.24, momentum=0.9)
    w.grad = torch.zeros_like(w)
    before = w.detach().clone()
    opt.step()
    torch.testing.assert_close(w.detach(), before * 6**0.5 / before.norm())
    assert w.norm().item() == pytest.approx(6**0.5, rel=1e-6)


def test_muons_other_groups_are_torchs_nesterov_sgd():
    torch.manual_seed(0)
    nets = [nn.Linear(5, 3) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    ours = Muon(nets[0].parameters(), lr=0.1, momentum=0.85)
    ref = torch.optim.SGD(nets[1].parameters(), lr=0.1, momentum=0.85, nesterov=True)
    x = torch.randn(8, 5)
    for _ in range(4):
        for net, opt in zip(nets, (ours, ref)):
            opt.zero_grad()
            net(x).pow(2).sum().backward()
            opt.step()
        for p, q in zip(*(n.parameters() for n in nets)):
            torch.testing.assert_close(p, q, rtol=0, atol=1e-7)


def muon_config(**overrides):
    values = {"model": "airbench", "optimizer": "muon", "l2": 0.0, "batch_size": 32,
              "device": "cpu", "precision": "fp32", "whiten_bias_epochs": 0.5,
              "regularizers": ["wd=1e-3@linear.weight"], **overrides}  # fmt: skip
    return build_config(preset="gpu", overrides=values)


def test_muon_groups_hold_the_filters_and_the_whitening_bias_fades():
    """Muon gets exactly the trainable conv filters at muon_lr; the whitening bias trains at
    lr·64·(1 − step/F) for F = 0.5 epoch (4 steps of 32 of 256 images) and is frozen after; the
    head and the norm biases are Nesterov SGD at lr and 64·lr."""
    data = synthetic_cifar(n_train=256, n_val=8)
    setup = build(muon_config(), data=data)
    groups = {tuple(id(p) for p in g["params"]): g for g in setup.optimizer.param_groups}
    model = setup.model
    filters = tuple(id(p) for p in muon_params(model))
    assert len(filters) == 6 and id(model.whiten.weight) not in filters  # frozen: not Muon's
    assert groups[filters]["use_muon"] and groups[filters]["momentum"] == 0.6
    assert groups[filters]["lr_scale"] == pytest.approx(0.24 / setup.cfg.lr)
    whiten = groups[(id(model.whiten.bias),)]
    assert whiten["lr_scale"] == 64.0 and whiten["fade_steps"] == 4
    assert groups[(id(model.fc.weight),)]["lr_scale"] == 1.0
    reg = Regularization([])
    lrs = []
    for step in range(6):
        fade_groups(setup.optimizer, step)
        before = model.whiten.bias.detach().clone()
        x, y = setup.pipeline.next_batch()
        train_step(setup.forward, x, y, reg, setup.optimizer, setup.lr(step))
        lrs.append(whiten["lr"])
        moved = not torch.equal(before, model.whiten.bias)
        assert moved == (step < 4), step
        assert model.whiten.bias.requires_grad == (step < 4), step  # frozen: no gradient
        assert (model.whiten.bias.grad is None) == (step >= 4), step
    expected = [setup.lr(s) * 64 * max(0.0, 1 - s / 4) for s in range(6)]
    assert lrs == pytest.approx(expected)


def test_freezing_the_faded_bias_changes_no_update():
    """From step F on, fade_groups' freeze turns the faded group's gradients off, to save the
    backward work only they need; every parameter ends where the same steps without the freeze
    (the faded group computing gradients that lr 0 ignores) leave it."""
    data = synthetic_cifar(n_train=256, n_val=8)
    ends = []
    for freeze in (True, False):
        torch.manual_seed(0)
        setup = build(muon_config(), data=data)
        for step in range(7):
            fade_groups(setup.optimizer, step, freeze=freeze)
            x, y = setup.pipeline.next_batch()
            train_step(setup.forward, x, y, setup.reg, setup.optimizer, setup.lr(step))
        assert setup.model.whiten.bias.requires_grad == (not freeze)
        ends.append(dict(setup.model.named_parameters()))
    for name, p in ends[0].items():
        torch.testing.assert_close(p, ends[1][name], rtol=1e-6, atol=1e-7, msg=name)


def test_param_groups_are_one_group_when_everything_is_off():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    assert len(param_groups(net)) == 1


def test_a_decay_on_muons_filters_is_refused():
    data = synthetic_cifar(n_train=64, n_val=8)
    with pytest.raises(ConfigError, match=r"rule l2=0.0005 covers conv filters.*muon") as e:
        build(muon_config(l2=5e-4, regularizers=[]), data=data)
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="decoupled-wd"):
        build(muon_config(regularizers=["decoupled-wd=0.1@conv.weight"]), data=data)
    with pytest.raises(ConfigError, match="whitening layer"):
        build(muon_config(model="resnet18", image_size=32), data=data)
