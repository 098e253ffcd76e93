"""airbench's training methods in reglab's loop, each against its formula or airbench's own code:
lookahead with an EMA, the batch-norm bias learning-rate multiplier, frozen batch-norm scales and
the alternating flip."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import synthetic_cifar
from torch import nn

from reglab.config import TrainConfig, build_config
from reglab.data.pipeline import (
    JITTER_BRIGHTNESS,
    JITTER_CONTRAST,
    BatchPipeline,
    alternating_flip,
    augment_batch,
    batch_brightness_contrast,
    batch_crop,
)
from reglab.regularization import Regularization
from reglab.training import RunDir, train
from reglab.training.builder import build, freeze_norm_weights
from reglab.training.lookahead import Lookahead, lookahead_decay
from reglab.training.optim import build_optimizer, param_groups
from reglab.training.step import train_step


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))  # fmt: skip


class AirbenchLookaheadState:
    """airbench94's own LookaheadState (legacy/airbench94.py), the reference."""

    def __init__(self, net):
        self.net_ema = {k: v.clone() for k, v in net.state_dict().items()}

    def update(self, net, decay):
        for ema_param, net_param in zip(self.net_ema.values(), net.state_dict().values()):
            if net_param.dtype in (torch.half, torch.float):
                ema_param.lerp_(net_param, 1 - decay)
                net_param.copy_(ema_param)


def test_lookahead_decay_is_airbenchs_schedule():
    total = 390
    alpha = 0.95**5 * (torch.arange(total + 1) / total) ** 3  # airbench94's alpha_schedule
    for step in (5, 100, 195, 390):
        assert lookahead_decay(step, total, 5) == pytest.approx(alpha[step].item(), rel=1e-6)
    assert lookahead_decay(total, total, 5) == pytest.approx(0.95**5)
    assert lookahead_decay(total // 2, total, 5) == pytest.approx(0.95**5 / 8, rel=1e-2)


def test_lookahead_update_is_the_ema_formula():
    net = small_net()
    la = Lookahead(net, every=5, total_steps=20)
    slow = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
        net[1].running_mean.add_(2.0)
    fast = {k: v.clone() for k, v in net.state_dict().items()}
    la.update(net, decay=0.3)
    for k, v in net.state_dict().items():
        if v.is_floating_point():
            torch.testing.assert_close(v, 0.3 * slow[k] + 0.7 * fast[k])
        else:  # num_batches_tracked is not averaged
            assert torch.equal(v, fast[k])
    torch.testing.assert_close(la.slow[0], net.state_dict()["0.weight"])


def test_lookahead_in_training_matches_airbenchs_code():
    """The same SGD steps with reglab's Lookahead and with airbench94's LookaheadState and loop
    logic (update every 5 steps at alpha_schedule, then decay 1.0 after the last step)."""
    total, every = 12, 5
    x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 10, (16,))
    nets = [small_net(), small_net()]
    opts = [torch.optim.SGD(n.parameters(), lr=0.1, momentum=0.9, nesterov=True) for n in nets]
    ours, ref = Lookahead(nets[0], every, total), AirbenchLookaheadState(nets[1])
    alpha = 0.95**5 * (torch.arange(total + 1) / total) ** 3
    for step in range(1, total + 1):
        for net, opt in zip(nets, opts):
            opt.zero_grad()
            F.cross_entropy(net(x + step), y).backward()
            opt.step()
        ours.after_step(nets[0], step)
        if step % 5 == 0:
            ref.update(nets[1], decay=alpha[step].item())
        if step >= total:
            ref.update(nets[1], decay=1.0)
    for (k, a), b in zip(nets[0].state_dict().items(), nets[1].state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)


def test_norm_bias_lr_scale_matches_per_group_lr():
    """One Nesterov step: batch-norm biases move at 64·lr, the rest at lr, as torch.optim does
    with an explicit lr per group."""
    x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 10, (8,))
    ours, ref = small_net(), small_net()
    groups = param_groups(ours, 64.0)
    assert [len(g["params"]) for g in groups] == [1, 4]  # BN bias; conv, BN weight, fc w and b
    assert groups[0]["params"][0] is ours[1].bias
    opt = build_optimizer("nesterov", groups, lr=0.05, momentum=0.85)
    train_step(ours, x, y, Regularization([]), opt, lr=0.05)
    ref_opt = torch.optim.SGD([{"params": [ref[1].bias], "lr": 0.05 * 64},
                               {"params": [p for n, p in ref.named_parameters() if n != "1.bias"]}],
                              lr=0.05, momentum=0.85, nesterov=True)  # fmt: skip
    ref_opt.zero_grad()
    F.cross_entropy(ref(x), y).backward()
    ref_opt.step()
    for (k, a), b in zip(ours.state_dict().items(), ref.state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)
    assert param_groups(ours, 1.0)[0]["params"] == list(ours.parameters())  # one group at 1


def test_frozen_norm_weights_stay_one_and_leave_the_optimizer():
    net = small_net()
    freeze_norm_weights(net)
    assert not net[1].weight.requires_grad and net[1].bias.requires_grad
    opt = build_optimizer("sgd", param_groups(net), lr=0.1, momentum=0.9)
    assert all(p is not net[1].weight for g in opt.param_groups for p in g["params"])
    F.cross_entropy(net(torch.randn(4, 3, 8, 8)), torch.randint(0, 10, (4,))).backward()
    opt.step()
    assert torch.equal(net[1].weight, torch.ones(4))


def test_alternating_flip_mirrors_each_image_once_in_two_epochs():
    first = torch.rand(1000, generator=torch.Generator().manual_seed(0)) < 0.5
    for epoch in (0, 2, 4):
        a, b = alternating_flip(first, epoch), alternating_flip(first, epoch + 1)
        assert torch.equal(a, first) and torch.equal(a ^ b, torch.ones(1000, dtype=torch.bool))


def test_altflip_translate_is_the_mask_then_airbench_translate():
    x = torch.randn(6, 3, 32, 32)
    mask = torch.tensor([True, False, True, True, False, False])
    out = augment_batch(x, "altflip-translate", torch.Generator().manual_seed(3), flip=mask)
    ref = batch_crop(torch.where(mask.view(-1, 1, 1, 1), x.flip(-1), x), 2,
                     torch.Generator().manual_seed(3), mode="reflect")  # fmt: skip
    assert torch.equal(out, ref)


def test_brightness_contrast_jitter_is_hiverges_formula():
    """x ← (x + b)·c per image, b ~ U(−0.1399, 0.1399) then c ~ U(1 − 0.1308, 1 + 0.1308) drawn
    from the pipeline's generator in that order (hiverge's batch_color_jitter)."""
    x = torch.randn(2000, 3, 4, 4, dtype=torch.float64)
    out = batch_brightness_contrast(x, torch.Generator().manual_seed(5), 0.1399, 0.1308)
    g = torch.Generator().manual_seed(5)
    u_b, u_c = torch.rand(2000, generator=g), torch.rand(2000, generator=g)
    b = (0.1399 * (2 * u_b - 1)).view(-1, 1, 1, 1)
    c = (1 + 0.1308 * (2 * u_c - 1)).view(-1, 1, 1, 1)
    torch.testing.assert_close(out, (x + b) * c)
    # each image's output is an affine map of its input: a least-squares fit recovers c and b
    xs, ys = x.flatten(1), out.flatten(1)
    xc, yc = xs - xs.mean(1, keepdim=True), ys - ys.mean(1, keepdim=True)
    slope = (xc * yc).sum(1) / (xc * xc).sum(1)
    shift = (ys.mean(1) - slope * xs.mean(1)) / slope
    assert slope.min() >= 1 - 0.1308 and slope.max() <= 1 + 0.1308
    assert shift.abs().max() <= 0.1399 + 1e-9
    assert slope.min() < 0.88 and slope.max() > 1.12 and shift.abs().max() > 0.13  # full ranges


def test_altflip_translate_jitter_is_altflip_translate_then_the_jitter():
    x = torch.randn(6, 3, 32, 32)
    mask = torch.tensor([True, False, True, True, False, False])
    out = augment_batch(x, "altflip-translate-jitter", torch.Generator().manual_seed(3), flip=mask)
    g = torch.Generator().manual_seed(3)
    ref = augment_batch(x, "altflip-translate", g, flip=mask)
    ref = batch_brightness_contrast(ref, g, JITTER_BRIGHTNESS, JITTER_CONTRAST)
    assert torch.equal(out, ref)
    assert (JITTER_BRIGHTNESS, JITTER_CONTRAST) == (0.1399, 0.1308)


def test_pipeline_alternates_flips_epoch_by_epoch(monkeypatch):
    data = synthetic_cifar(n_train=64, n_val=8)
    pipe = BatchPipeline(data.train_images, data.train_labels, 16, 32, augment="altflip-translate")
    seen: list[tuple[int, torch.Tensor, torch.Tensor]] = []
    prepare = pipe.prepare

    def spy(images, augment="none", flip=None, size=None):
        seen.append((pipe.epoch, images.clone(), flip.clone()))
        return prepare(images, augment, flip, size)

    monkeypatch.setattr(pipe, "prepare", spy)
    for _ in range(2 * pipe.steps_per_epoch):
        pipe.next_batch()
    flips = {0: {}, 1: {}}  # epoch -> image bytes -> mirrored
    for epoch, images, flip in seen:
        for img, f in zip(images, flip):
            flips[epoch][img.numpy().tobytes()] = bool(f)
    assert flips[0].keys() == flips[1].keys() and len(flips[0]) == 64
    assert all(flips[0][k] != flips[1][k] for k in flips[0])  # each mirrored in exactly one
    assert 16 < sum(flips[0].values()) < 48  # about half in each epoch


def test_airbench_options_train_and_checkpoint(tmp_path):
    """A short run with every option on: norm scales stay 1, the run ends on the slow copy, and
    the checkpoint keeps the slow copy."""
    data = synthetic_cifar(n_train=256, n_val=64)
    cfg = build_config(preset="quick-sgd", overrides={
        "steps": 10, "epochs": None, "batch_size": 32, "warmup_steps": 2, "lookahead_every": 5,
        "norm_bias_lr_scale": 64.0, "train_norm_weights": False,
        "augment": "altflip-translate", "log_every": 5, "val_every": 10, "checkpoint_every": 4,
        "tensorboard": False, "eval_batch_size": 64})  # fmt: skip
    setup = build(cfg, data=data)
    assert setup.lookahead is not None
    assert [g["lr_scale"] for g in setup.optimizer.param_groups] == [64.0, 1.0]
    norm_weights = [f"{n}.weight" for n, m in setup.model.named_modules()
                    if isinstance(m, nn.BatchNorm2d)]  # fmt: skip
    assert len(norm_weights) == 6
    train(cfg, run_dir=RunDir(tmp_path / "r"), data=data, quiet=True)
    state = torch.load(max((tmp_path / "r" / "checkpoints").glob("step-*.pt")),
                       weights_only=False)  # fmt: skip
    for k in norm_weights:
        assert torch.equal(state["model"][k], torch.ones_like(state["model"][k])), k
    slow = state["lookahead"]["slow"]
    floats = [v for v in state["model"].values() if v.is_floating_point()]
    for a, b in zip(slow, floats, strict=True):  # after the last step: the network is the slow copy
        assert torch.equal(a, b)


def test_lookahead_setting_is_checked():
    with pytest.raises(Exception, match="lookahead"):
        TrainConfig(lookahead_every=-1).validate()
    with pytest.raises(Exception, match="norm-bias-lr-scale"):
        TrainConfig(norm_bias_lr_scale=0).validate()


def test_rules_on_scaled_norm_biases_keep_their_conventions():
    """With batch-norm biases at 64x lr, a rule that names them is audited by its own formula:
    l2's gradient 2λw, decoupled-wd's shrink by lr·wd (the step's lr, unscaled)."""
    from reglab.training.builder import audit_first_step

    data = synthetic_cifar(n_train=64, n_val=8)
    cfg = build_config(preset="gpu", overrides={
        "model": "airbench", "batch_size": 32, "device": "cpu", "precision": "fp32",
        "regularizers": ["decoupled-wd=0.1@norm.bias", "l2=1e-2@norm.bias"]})  # fmt: skip
    setup = build(cfg, data=data)
    with torch.no_grad():
        for m in setup.model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.bias.uniform_(-1, 1)  # at init they are 0: nothing to check
    result = audit_first_step(setup, *setup.pipeline.next_batch())
    on_biases = [f for f in result.findings if "norm.bias" in f.label]
    assert len(on_biases) == 2 and all(f.checkable for f in on_biases), result.report()
    assert result.ok, result.report()


def test_a_run_from_before_these_settings_resumes_as_it_ran(tmp_path):
    """An older gpu-preset run's config.yaml lacks the new settings; resuming it must not pick
    up the preset's newer values (lookahead, 64x, frozen scales), only the defaults."""
    from reglab.cli import resume_config

    new = ("norm_bias_lr_scale", "train_norm_weights", "lookahead_every")
    old = build_config("gpu", overrides={"augment": "flip-translate", "lookahead_every": 0,
                                         "norm_bias_lr_scale": 1.0, "train_norm_weights": True})
    stored = {k: v for k, v in old.to_dict().items() if k not in new}
    cfg = resume_config(tmp_path, stored, {})
    assert cfg.preset == "gpu" and cfg.to_dict() == old.to_dict()
