"""Regularization against independent references: torch.optim's weight_decay, AdamW, SGDW and
soft-thresholding by hand; parameter selection; augmentation and dropout; diagnostics.

Trajectories are compared in float64 on a tiny conv net (conv -> BN -> conv with bias -> linear),
so that the only differences left are the regularizers'.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from reglab.cli import main
from reglab.config import ConfigError, TrainConfig, build_config, load_config_file
from reglab.data.cifar10 import MEAN, STD
from reglab.data.pipeline import BatchPipeline, augment_batch, batch_cutout
from reglab.models import create_model
from reglab.models.airbench import airbench_net
from reglab.models.resnet import resnet18
from reglab.models.tutorial_resnet import TutorialResNet
from reglab.regularization import (
    CoupledWeightDecay,
    DecayPerStep,
    DecoupledWeightDecay,
    L1Penalty,
    L2Penalty,
    ProximalL1,
    Regularization,
    RuleError,
    build_regularization,
    default_scope,
    make_regularizer,
    parse_rule,
    select_params,
    soft_threshold,
)
from reglab.regularization.diagnostics import bn_followed_weights, weight_diagnostics
from reglab.regularization.penalties import decay_rate_per_step
from reglab.regularization.scope import parse_scope
from reglab.training.loop import train_step


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one thread is several times faster than two on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1, bias=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        x = F.relu(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return self.fc(self.pool(x).flatten(1))


def tiny(seed: int = 0) -> TinyNet:
    torch.manual_seed(seed)
    return TinyNet().double()


def batches(n: int = 4, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(8, 3, 6, 6, generator=g, dtype=torch.float64),
            torch.randint(0, 3, (8,), generator=g),
        )
        for _ in range(n)
    ]


def run_plan(model, plan, optimizer, data, lr=0.1):
    model.train()
    for x, y in data:
        train_step(model, x, y, plan, optimizer, lr)
    return model


def run_reference(model, optimizer, data, lr=0.1):
    """Plain torch: data loss only, the optimizer's own decay."""
    model.train()
    for x, y in data:
        for g in optimizer.param_groups:
            g["lr"] = lr
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model


def split_groups(model, scope, **decay):
    names = {n for n, _ in scope}
    inside = [p for n, p in model.named_parameters() if n in names]
    outside = [p for n, p in model.named_parameters() if n not in names]
    return [{"params": inside, **decay}, {"params": outside}]


def assert_same_params(a: nn.Module, b: nn.Module, atol: float = 1e-12) -> None:
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert torch.allclose(p, q, rtol=0, atol=atol), f"{n}: max diff {(p - q).abs().max():.3g}"


# ------------------------------------------------------------ trajectories against torch.optim


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_l2_under_sgd_is_torch_weight_decay_2lambda(momentum):
    lam, data = 3e-3, batches()
    ours, ref = tiny(), tiny()
    plan = Regularization([L2Penalty(lam, default_scope(ours))])
    run_plan(ours, plan, torch.optim.SGD(ours.parameters(), lr=0.1, momentum=momentum), data)
    groups = split_groups(ref, default_scope(ref), weight_decay=2 * lam)
    run_reference(ref, torch.optim.SGD(groups, lr=0.1, momentum=momentum), data)
    assert_same_params(ours, ref)
    bare = tiny()  # and it did something: without it the weights end elsewhere
    run_reference(bare, torch.optim.SGD(bare.parameters(), lr=0.1, momentum=momentum), data)
    assert not torch.allclose(ours.conv1.weight, bare.conv1.weight, rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_coupled_wd_is_torch_weight_decay(kind):
    wd, data = 1e-2, batches()
    ours, ref = tiny(), tiny()
    plan = Regularization([CoupledWeightDecay(wd, default_scope(ours))])
    groups = split_groups(ref, default_scope(ref), weight_decay=wd)
    if kind == "sgd":
        opt, ref_opt = (torch.optim.SGD(ours.parameters(), lr=0.1, momentum=0.9),
                        torch.optim.SGD(groups, lr=0.1, momentum=0.9))  # fmt: skip
        lr = 0.1
    else:  # reglab's adamw runs with weight_decay 0, i.e. Adam
        opt, ref_opt = (torch.optim.AdamW(ours.parameters(), lr=1e-2, weight_decay=0.0),
                        torch.optim.Adam(groups, lr=1e-2))  # fmt: skip
        lr = 1e-2
    run_plan(ours, plan, opt, data, lr)
    run_reference(ref, ref_opt, data, lr)
    assert_same_params(ours, ref)


def test_decoupled_wd_with_adam_is_adamw():
    wd, lr, data = 5e-2, 1e-2, batches()
    ours, ref = tiny(), tiny()
    plan = Regularization([DecoupledWeightDecay(wd, default_scope(ours))])
    run_plan(ours, plan, torch.optim.AdamW(ours.parameters(), lr=lr, weight_decay=0.0), data, lr)
    groups = split_groups(ref, default_scope(ref), weight_decay=wd)
    groups[1]["weight_decay"] = 0.0
    run_reference(ref, torch.optim.AdamW(groups, lr=lr), data, lr)
    assert_same_params(ours, ref, atol=0)  # the same operations in the same order


def test_decoupled_wd_with_sgd_is_sgdw_by_hand():
    """SGDW (Loshchilov & Hutter): buf = μ·buf + g; w ← w − lr·wd·w − lr·buf."""
    wd, lr, mu, data = 5e-2, 0.1, 0.9, batches()
    ours, ref = tiny(), tiny()
    scope = {n for n, _ in default_scope(ref)}
    plan = Regularization([DecoupledWeightDecay(wd, default_scope(ours))])
    run_plan(ours, plan, torch.optim.SGD(ours.parameters(), lr=lr, momentum=mu), data, lr)
    bufs: dict[str, torch.Tensor] = {}
    ref.train()
    for x, y in data:
        ref.zero_grad()
        F.cross_entropy(ref(x), y).backward()
        with torch.no_grad():
            for n, p in ref.named_parameters():
                bufs[n] = p.grad.clone() if n not in bufs else mu * bufs[n] + p.grad
                decay = lr * wd * p if n in scope else 0.0
                p -= decay + lr * bufs[n]
    assert_same_params(ours, ref, atol=1e-12)


def test_prox_l1_gives_exact_zeros_and_is_soft_thresholding():
    lam, lr = 2.0, 0.1  # threshold lr·λ = 0.2: about half of fc's init weights (|w| < 0.41)
    ours, ref = tiny(), tiny()
    ((x, y),) = batches(1)
    plan = Regularization([ProximalL1(lam, [("fc.weight", ours.fc.weight)])])
    run_plan(ours, plan, torch.optim.SGD(ours.parameters(), lr=lr), [(x, y)], lr)
    ref.train()
    F.cross_entropy(ref(x), y).backward()
    with torch.no_grad():
        for n, p in ref.named_parameters():
            p -= lr * p.grad
            if n == "fc.weight":
                w = p.clone()
                p.copy_(
                    torch.where(w.abs() > lr * lam, w - lr * lam * w.sign(), torch.zeros_like(w))
                )
    assert_same_params(ours, ref, atol=1e-15)
    zeros = (ours.fc.weight == 0).sum().item()
    assert 0 < zeros < ours.fc.weight.numel()
    assert torch.equal(soft_threshold(torch.tensor([-2.0, -0.5, 0.0, 0.3, 1.0]), 0.5),
                       torch.tensor([-1.5, 0.0, 0.0, 0.0, 0.5]))  # fmt: skip


def test_l1_penalty_gradient_is_lambda_sign():
    lam = 1e-2
    m = tiny()
    m.conv1.weight.data[0, 0, 0, 0] = 0.0  # the subgradient there is 0
    ((x, y),) = batches(1)
    m.train()
    F.cross_entropy(m(x), y).backward()
    g0 = {n: p.grad.clone() for n, p in m.named_parameters()}
    m.zero_grad()
    reg = L1Penalty(lam, default_scope(m))
    (F.cross_entropy(m(x), y) + reg.penalty()).backward()
    scope = {n for n, _ in reg.params}
    for n, p in m.named_parameters():
        extra = lam * p.detach().sign() if n in scope else torch.zeros_like(p)
        assert torch.allclose(p.grad - g0[n], extra, rtol=0, atol=1e-12), n
    assert m.conv1.weight.grad[0, 0, 0, 0] == g0["conv1.weight"][0, 0, 0, 0]


def test_decay_per_step_ignores_lr_and_per_n_compounds():
    m = tiny()
    w = m.conv1.weight.detach().clone()
    for p in m.parameters():
        p.grad = torch.zeros_like(p)
    reg = DecayPerStep(0.1, [("conv1.weight", m.conv1.weight)])
    reg.before_step(lr=0.0)  # lr 0: still decays
    assert torch.allclose(m.conv1.weight, 0.9 * w)
    reg.before_step(lr=5.0)
    assert torch.allclose(m.conv1.weight, 0.81 * w)
    # per N examples: a batch of N removes r; two batches of N/2 remove r too
    assert decay_rate_per_step(0.01, 1024, 1024) == pytest.approx(0.01)
    half = decay_rate_per_step(0.01, 512, 1024)
    assert (1 - half) ** 2 == pytest.approx(0.99)
    cfg = TrainConfig(l2=0, batch_size=256, regularizers=["decay-per-1024=0.01"]).validate()
    (r,) = build_regularization(cfg, tiny()).regularizers
    assert r.rate == pytest.approx(1 - 0.99**0.25)


# ------------------------------------------------------------------------ parameter selection


def ndim_rule(model: nn.Module) -> list[str]:
    """nanoGPT's split: tensors with two or more dimensions decay; biases and norms do not."""
    return [n for n, p in model.named_parameters() if p.dim() >= 2 and p.requires_grad]


@pytest.mark.parametrize("make", [resnet18, TutorialResNet, airbench_net])
def test_default_scope_is_the_two_or_more_dimensions_rule(make):
    model = make()
    names = [n for n, _ in default_scope(model)]
    assert names == ndim_rule(model)
    if make is airbench_net:  # the frozen whitening conv is never in a scope
        assert "whiten.weight" not in names and not model.whiten.weight.requires_grad
        assert select_params(model, parse_scope("name:whiten.*")) == [
            ("whiten.bias", model.whiten.bias)
        ]


def test_selection_by_type_role_and_name():
    m = tiny()

    def names(text):
        return [n for n, _ in select_params(m, parse_scope(text))]

    assert names("conv.weight") == ["conv1.weight", "conv2.weight"]
    assert names("conv") == ["conv1.weight", "conv2.weight", "conv2.bias"]
    assert names("*.bias") == ["bn1.bias", "conv2.bias", "fc.bias"]
    assert names("norm") == ["bn1.weight", "bn1.bias"]
    assert names("linear.weight,norm.weight") == ["bn1.weight", "fc.weight"]  # model order
    assert names("name:conv2.*") == ["conv2.weight", "conv2.bias"]
    assert names("conv+name:conv2.*") == ["conv2.weight", "conv2.bias"]
    assert names("*.weight+name:*2*") == ["conv2.weight"]
    assert names("default") == ["conv1.weight", "conv2.weight", "fc.weight"]


def plan_of(model, *rules, l2=0.0):
    return build_regularization(TrainConfig(l2=l2, regularizers=list(rules)).validate(), model)


def test_per_rule_coefficients_and_last_rule_wins():
    m = tiny()
    plan = plan_of(m, "wd=1e-3@conv.weight", "wd=5e-3@linear.weight", "l1=1e-4@name:conv1.*")
    got = {(r.name, r.coef): [n for n, _ in r.params] for r in plan.regularizers}
    assert got == {("wd", 1e-3): ["conv1.weight", "conv2.weight"], ("wd", 5e-3): ["fc.weight"],
                   ("l1", 1e-4): ["conv1.weight"]}  # fmt: skip
    # --l2 first, then --reg: a later rule of the same method wins where they overlap
    plan = plan_of(m, "l2=2e-4@name:fc.*", "l2=0@name:conv1.*", l2=1e-4)
    got = {r.coef: [n for n, _ in r.params] for r in plan.regularizers}
    assert got == {1e-4: ["conv2.weight"], 2e-4: ["fc.weight", "fc.bias"]}
    # L2 and coupled decay on the same tensor add (different methods)
    plan = plan_of(m, "wd=1e-3", l2=1e-4)
    assert [r.name for r in plan.regularizers] == ["l2", "wd"]


def test_rule_matching_nothing_is_a_one_line_error():
    with pytest.raises(RuleError) as info:
        plan_of(tiny(), "wd=1e-3@name:layer4.*")
    msg = str(info.value)
    assert "\n" not in msg and "wd=1e-3@name:layer4.*" in msg and "conv.weight" in msg
    with pytest.raises(RuleError, match="matches no trainable"):  # frozen only: nothing
        plan_of(airbench_net(), "l2=1e-4@name:whiten.weight")


@pytest.mark.parametrize(
    ("rule", "needle"),
    [
        ("l2", "METHOD=COEF"),
        ("l3=1e-4", "unknown method 'l3'"),
        ("l2=abc", "not a number"),
        ("l2=-1e-4", ">= 0"),
        ("wd=1e-4@layer4.*", "name:layer4.*"),
        ("l2=1e-4@", "empty scope term"),
        ("decay-per-step=2", "fraction"),
    ],
)
def test_short_form_errors_are_one_line(rule, needle, capsys):
    with pytest.raises(RuleError, match="bad rule"):
        parse_rule(rule)
    assert main(["train", "--reg", rule]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err


def test_rules_from_config_file_and_flags(tmp_path: Path):
    path = tmp_path / "run.yaml"
    path.write_text(
        "l2: 0\nregularizers:\n  - wd=5e-4@conv.weight\n"
        "  - {method: prox-l1, coef: 1e-5, scope: [linear.weight, 'name:fc.*']}\n"
    )
    cfg = build_config(None, load_config_file(path))
    assert cfg.regularizers == ["wd=5e-4@conv.weight", "prox-l1=1e-05@linear.weight,name:fc.*"]
    cfg = build_config(None, load_config_file(path), {"regularizers": ["l1=1e-6"]})
    assert cfg.regularizers == ["l1=1e-6"]  # flags replace the file's list
    path.write_text("regularizers: [{method: wd}]\n")
    with pytest.raises(ConfigError, match="needs method and coef"):
        build_config(None, load_config_file(path))
    assert make_regularizer(parse_rule("decay-per-1024=5e-4"), [], 256).per_examples == 1024
    assert parse_rule("wd=5e-4@conv.weight,linear.weight").scope == (
        ("conv.weight",), ("linear.weight",),
    )  # fmt: skip


def test_table_names_groups_rules_and_frozen():
    model = airbench_net()
    cfg = TrainConfig(l2=5e-4, regularizers=["wd=1e-3@norm.weight"]).validate()
    table = build_regularization(cfg, model).table(model)
    assert "l2=0.0005" in table and "wd=1e-3@norm.weight" in table
    lines = {line.split()[0] + " " + line.split()[-1] for line in table.splitlines()[5:]}
    assert "conv.weight frozen" in lines and "norm.bias none" in lines


# ------------------------------------------------------------------- augmentation and dropout

AUGMENTS = ["none", "flip", "flip-crop", "flip-translate", "cutout", "tutorial"]


@pytest.mark.parametrize("augment", AUGMENTS)
def test_augmentations_keep_labels_and_range(augment):
    """Grey images whose brightness encodes the label: after any augmentation, most pixels of
    each image still lie in its label's band (jitter scales by at most 1.4 / 0.6)."""
    bands = [(0.0, 0.1), (0.15, 0.4), (0.55, 1.0)]
    levels = torch.tensor([0.05, 0.25, 0.85])
    labels = torch.arange(48) % 3
    images = (levels[labels] * 255).round().to(torch.uint8).view(-1, 1, 1, 1).expand(48, 3, 32, 32)
    size = 40
    pipe = BatchPipeline(images.contiguous(), labels, 16, size, augment=augment, seed=3)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    for _ in range(pipe.steps_per_epoch):
        x, y = pipe.next_batch()
        assert x.shape == (16, 3, size, size)
        pixels = x * std + mean  # back to [0, 1]
        assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
        for img, label in zip(pixels, y, strict=True):
            lo, hi = bands[label]
            inside = ((img >= lo - 1e-4) & (img <= hi + 1e-4)).float().mean()
            assert inside > 0.5, (augment, label.item(), inside.item())


def test_augmentations_are_seeded_and_random_images_stay_in_range():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8, generator=g)
    low = (0 - torch.tensor(MEAN)) / torch.tensor(STD)
    high = (1 - torch.tensor(MEAN)) / torch.tensor(STD)
    for augment in AUGMENTS:
        a = BatchPipeline(images, torch.zeros(32), 32, 32, augment=augment, seed=5)
        b = BatchPipeline(images, torch.zeros(32), 32, 32, augment=augment, seed=5)
        xa, xb = a.prepare(images, augment), b.prepare(images, augment)
        assert torch.equal(xa, xb), augment
        assert (xa >= low.view(1, 3, 1, 1) - 1e-5).all() and (
            xa <= high.view(1, 3, 1, 1) + 1e-5
        ).all()
    # tutorial at 96 px: resize to 120, crop 96
    x = augment_batch(torch.zeros(2, 3, 32, 32), "tutorial", torch.Generator(), image_size=96)
    assert x.shape == (2, 3, 96, 96)


def test_cutout_zeroes_one_clipped_square_per_image():
    x = torch.ones(64, 3, 32, 32)
    out = batch_cutout(x, 16, torch.Generator().manual_seed(0))
    zeros = (out == 0).all(1).flatten(1).sum(1)  # per image, pixels zeroed in every channel
    assert (zeros <= 256).all() and (zeros >= 64).all() and (zeros == 256).any()
    assert torch.equal((out == 0).any(1), (out == 0).all(1))  # whole pixels, all channels


@pytest.mark.parametrize("name", ["tutorial-resnet", "resnet18", "airbench"])
def test_dropout_and_block_dropout_only_in_training(name):
    torch.manual_seed(0)
    model = create_model(name, dropout=0.5, block_dropout=0.3)
    assert any(isinstance(m, nn.Dropout2d) for m in model.modules())
    assert [n for n, _ in model.named_parameters()] == [
        n for n, _ in create_model(name).named_parameters()
    ]  # the dropout layers add no parameters and move no names
    x = torch.randn(4, 3, 32, 32)
    if name == "airbench":
        model.init_from_data(x)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
        model.train()
        assert not torch.equal(model(x), model(x))


# ------------------------------------------------------------------------------ diagnostics


def test_bn_followed_weights():
    assert bn_followed_weights(tiny()) == ["conv1.weight"]
    for model in (resnet18(), TutorialResNet(), airbench_net()):
        convs = [n for n, _ in default_scope(model) if not n.startswith("fc")]
        assert bn_followed_weights(model) == convs


def test_weight_diagnostics():
    m = tiny()
    m.fc.weight.data[0] = 0.0
    plan = Regularization([ProximalL1(1e-3, [("fc.weight", m.fc.weight)]),
                           L2Penalty(1e-4, default_scope(m))])  # fmt: skip
    for p in m.parameters():
        p.grad = torch.ones_like(p)
    fields, detail = weight_diagnostics(m, plan, lr=0.1)
    conv_sq = (m.conv1.weight.norm() ** 2 + m.conv2.weight.norm() ** 2).item()
    assert fields["weight_norm/conv.weight"] == pytest.approx(math.sqrt(conv_sq))
    assert fields["grad_norm"] == pytest.approx(math.sqrt(sum(p.numel() for p in m.parameters())))
    assert fields["sparsity/prox-l1"] == pytest.approx(6 / 18)
    assert fields["eff_lr_bn"] == pytest.approx(0.1 / m.conv1.weight.norm().item() ** 2)
    assert detail["tensors"]["fc.weight"]["zeros"] == pytest.approx(6 / 18)
    assert "eff_lr" not in detail["tensors"]["conv2.weight"]


def test_regularizers_skip_params_without_gradient():
    m = tiny()
    w = m.conv1.weight.detach().clone()
    for r in (
        CoupledWeightDecay(1.0, default_scope(m)),
        DecoupledWeightDecay(1.0, default_scope(m)),
    ):
        r.before_step(0.1)
    assert torch.equal(m.conv1.weight, w)
    copy.deepcopy(m)  # still a plain module
