"""Tests for the model zoo: shapes, parameter counts, TF-SAME padding, dropout, registry errors.

Kept fast: small batches and images, except the one (64, 3, 96, 96) shape check, run without
gradients.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from reglab.models.resnet import resnet18
from reglab.models.tutorial_resnet import (
    Bottleneck,
    TFSamePad,
    TutorialResNet,
    tf_same_padding,
    tutorial_shapes,
)

EXPECTED_TUTORIAL_SHAPES = [
    ("input", (64, 96, 96, 3)),
    ("block1", (64, 48, 48, 32)),
    ("block2", (64, 24, 24, 128)),
    ("block3", (64, 12, 12, 256)),
    ("block4", (64, 6, 6, 512)),
    ("classification", (64, 10)),
]

EXPECTED_PRINTOUT = """\
shapes (NHWC, as the tutorial printed them):
input (64, 96, 96, 3)
block1 (64, 48, 48, 32)
block2 (64, 24, 24, 128)
block3 (64, 12, 12, 256)
block4 (64, 6, 6, 512)
classification (64, 10)
"""


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_tutorial_resnet_prints_shapes_once(capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    model = TutorialResNet(num_classes=10, verbose=True).eval()
    x = torch.randn(64, 3, 96, 96)
    with torch.no_grad():
        out = model(x)
        assert out.shape == (64, 10)
        assert capsys.readouterr().out == EXPECTED_PRINTOUT
        model(x[:2])  # second forward: no printout
    assert capsys.readouterr().out == ""
    # Same list without printing; a batch of 2 keeps it cheap (only the batch dim changes).
    expected = [(name, (2, *dims[1:])) for name, dims in EXPECTED_TUTORIAL_SHAPES]
    assert tutorial_shapes(model, x[:2]) == expected


def test_tutorial_shapes_small_input_and_mode_kept() -> None:
    model = TutorialResNet(num_classes=7).train()
    shapes = dict(tutorial_shapes(model, torch.randn(2, 3, 32, 32)))
    assert shapes["block1"] == (2, 16, 16, 32)
    assert shapes["block4"] == (2, 2, 2, 512)
    assert shapes["classification"] == (2, 7)
    assert model.training  # tutorial_shapes runs in eval, then restores the mode


def test_tutorial_resnet_structure() -> None:
    model = TutorialResNet()
    names = {name for name, _ in model.named_children()}
    assert {"block1", "pool", "block2", "block3", "block4", "fc"} <= names
    # Convs carry no bias (BN follows); the classifier has one.
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(c.bias is None for c in convs)
    assert model.fc.bias is not None
    # Projections exactly where the channel count changes: first unit of each stage.
    assert model.block2[0].shortcut is not None and model.block2[1].shortcut is None
    assert model.block3[0].shortcut is not None and model.block3[0].stride == 2
    assert model.block4[0].shortcut is not None and model.block4[1].shortcut is None


@pytest.mark.parametrize(
    ("in_size", "kernel", "stride", "expected"),
    [
        (96, 5, 2, (1, 2)),  # pad 3
        (48, 3, 2, (0, 1)),  # pad 1
        (24, 3, 1, (1, 1)),  # stride 1, odd kernel: symmetric
        (25, 3, 2, (1, 1)),  # odd input: pad 2
        (24, 1, 2, (0, 0)),  # 1x1 never pads
        (5, 1, 2, (0, 0)),
        (2, 5, 2, (1, 2)),  # out 1, pad (1-1)*2 + 5 - 2 = 3
    ],
)
def test_tf_same_padding(in_size: int, kernel: int, stride: int, expected: tuple[int, int]) -> None:
    assert tf_same_padding(in_size, kernel, stride) == expected


def test_tf_same_conv_and_pool_match_tensorflow_grid() -> None:
    # TF SAME with stride 2 on an even input = stride-1 SAME output sampled at [1::2]: the extra
    # padding goes bottom/right. A symmetric padding=k//2 would sample at [0::2] instead.
    torch.manual_seed(0)
    x = torch.randn(2, 3, 12, 10)
    w = torch.randn(4, 3, 5, 5)
    strided = F.conv2d(TFSamePad(5, 2)(x), w, stride=2)
    dense = F.conv2d(x, w, padding=2)
    assert strided.shape == (2, 4, 6, 5)
    torch.testing.assert_close(strided, dense[:, :, 1::2, 1::2])

    pool = TutorialResNet().pool
    pooled = pool(x)
    dense_pool = F.max_pool2d(x, 3, stride=1, padding=1)  # PyTorch pads max-pool with -inf
    assert pooled.shape == (2, 3, 6, 5)
    torch.testing.assert_close(pooled, dense_pool[:, :, 1::2, 1::2])
    # Padding must never win a max: an all-negative input stays negative.
    assert (pool(-1 - x.abs()) < 0).all()


def test_identity_shortcut_subsamples() -> None:
    unit = Bottleneck(16, 4, 16, stride=2).eval()
    assert unit.shortcut is None
    x = torch.randn(1, 16, 6, 6)
    with torch.no_grad():
        # Zero the last conv (its BN, in eval mode at running mean 0 / var 1 and β = 0, then
        # outputs 0) so the residual branch vanishes: output = relu(x[:, :, ::2, ::2]).
        unit.conv3.weight.zero_()
        out = unit(x)
    assert out.shape == (1, 16, 3, 3)
    torch.testing.assert_close(out, F.relu(x[:, :, ::2, ::2]))


def test_resnet18_forward_and_param_count() -> None:
    model = resnet18(num_classes=10)
    assert n_params(model) == 11_173_962
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
        assert model.eval()(torch.randn(1, 3, 8, 8)).shape == (1, 10)  # smallest side
    assert n_params(resnet18(num_classes=100)) == 11_173_962 + 90 * 513


@pytest.mark.parametrize("ctor", [TutorialResNet, resnet18])
def test_dropout_inserted_and_inactive_in_eval(ctor) -> None:
    assert not any(isinstance(m, nn.Dropout) for m in ctor(num_classes=10).modules())
    model = ctor(num_classes=10, dropout=0.5)
    drops = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert len(drops) == 1 and drops[0].p == 0.5
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x), rtol=0, atol=0)
    with pytest.raises(ValueError):
        ctor(num_classes=10, dropout=1.0)


@pytest.mark.parametrize("ctor", [TutorialResNet, resnet18])
def test_backward(ctor) -> None:
    torch.manual_seed(0)
    model = ctor(num_classes=10, dropout=0.1)
    x = torch.randn(2, 3, 32, 32)
    loss = F.cross_entropy(model(x), torch.tensor([1, 2]))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in model.parameters())
    assert model.fc.weight.grad.abs().sum() > 0


def test_create_model_registry() -> None:
    models = pytest.importorskip("reglab.models")  # needs every registered module importable
    with pytest.raises(ValueError, match="resnet18") as info:
        models.create_model("nope")
    for name in models.list_models():
        assert name in str(info.value)
    assert isinstance(models.create_model("tutorial-resnet", verbose=False), TutorialResNet)
    assert n_params(models.create_model("resnet18")) == 11_173_962


def test_tutorial_resnet_has_tf_slim_defaults() -> None:
    """slim.batch_norm(scale=False, epsilon=0.001, decay=0.999), Glorot-uniform weights."""
    from reglab.models.tutorial_resnet import SlimBatchNorm2d

    model = TutorialResNet()
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and all(isinstance(m, SlimBatchNorm2d) for m in norms)
    assert all(m.weight is None and m.bias is not None for m in norms)  # β, no γ
    assert all(m.eps == 1e-3 and m.momentum == 1e-3 for m in norms)
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            fan_in = m.weight[0].numel()
            fan_out = m.weight.shape[0] * m.weight[0, 0].numel()
            bound = math.sqrt(6.0 / (fan_in + fan_out))  # Glorot & Bengio's uniform limit
            assert m.weight.abs().max() <= bound
            assert m.weight.abs().max() > 0.9 * bound


def test_widths_setting_builds_the_airbench_network_it_names(tmp_path) -> None:
    """--widths C1,C2,C3 gives the conv groups those output channels; airbench at airbench94's
    widths is airbench94, parameter for parameter (same seed, same values); the widths survive
    config.yaml's round trip (a list there, a tuple in the config)."""
    import yaml

    from reglab.config import build_config
    from reglab.training.builder import make_model

    cfg = build_config(overrides={"model": "airbench", "widths": "16,48,96"})
    assert cfg.widths == (16, 48, 96)
    model = make_model(cfg, num_classes=10)
    convs = [m for m in model.layers.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16, 16, 48, 48, 96, 96]
    assert model.fc.in_features == 96
    # whitening 3->24 (2x2, bias); per group c_in->c 3x3 and c->c 3x3 (no bias), two BN (γ, β)
    expected = 24 * 3 * 4 + 24
    for c_in, c in [(24, 16), (16, 48), (48, 96)]:
        expected += 9 * c_in * c + 9 * c * c + 4 * c
    assert n_params(model) == expected + 96 * 10

    torch.manual_seed(0)
    wide = make_model(build_config(overrides={"model": "airbench", "widths": "64,256,256"}), 10)
    torch.manual_seed(0)
    ref = make_model(build_config(overrides={"model": "airbench94"}), 10)
    assert [n for n, _ in wide.named_parameters()] == [n for n, _ in ref.named_parameters()]
    assert all(torch.equal(a, b) for a, b in zip(wide.parameters(), ref.parameters()))
    assert build_config(overrides={"model": "airbench"}).widths is None  # the model's own

    saved = yaml.safe_load(yaml.safe_dump(cfg.to_dict()))
    assert saved["widths"] == [16, 48, 96]
    assert build_config(file_values={"model": "airbench", "widths": saved["widths"]}).widths == (
        16, 48, 96)  # fmt: skip


@pytest.mark.parametrize(("override", "value"), [("widths", "16,64,128"), ("activation", "relu"),
                                                 ("dropout", 0.1), ("block_dropout", 0.1)])
def test_a_given_network_refuses_its_constructors_settings(override, value) -> None:
    """widths and dropout go to a registered network's constructor; a network given to
    train(model=...) is built already, so setting them is a one-line error, not silently void."""
    from conftest import synthetic_cifar

    from reglab.config import build_config
    from reglab.errors import ConfigError
    from reglab.models import create_model
    from reglab.training import build

    cfg = build_config(preset="quick", overrides={override: value, "batch_size": 32})
    with pytest.raises(ConfigError, match=f"^{override} goes to the registered network's "
                       f"constructor; the AirbenchNet given to train"):  # fmt: skip
        build(cfg, data=synthetic_cifar(), model=create_model("airbench"))
    build(cfg.replace(**{override: None if override in ("widths", "activation") else 0.0}),
          data=synthetic_cifar(), model=create_model("airbench"))  # fmt: skip


def test_activation_setting_swaps_every_gelu_of_the_airbench_network() -> None:
    """--activation relu puts ReLU wherever airbench has GELU (after the whitening and after each
    of the six batch norms), with the same parameters from the same seed; a network with its own
    activation refuses it in one line."""
    from reglab.config import build_config
    from reglab.errors import ConfigError
    from reglab.training.builder import make_model

    def acts(model: nn.Module) -> list[str]:
        return [type(m).__name__ for m in model.modules() if isinstance(m, (nn.GELU, nn.ReLU))]

    torch.manual_seed(0)
    gelu = make_model(build_config(overrides={"model": "airbench"}), 10)
    torch.manual_seed(0)
    relu = make_model(build_config(overrides={"model": "airbench", "activation": "relu"}), 10)
    assert acts(gelu) == ["GELU"] * 7 and acts(relu) == ["ReLU"] * 7
    assert all(torch.equal(a, b) for a, b in zip(gelu.parameters(), relu.parameters()))
    x = torch.randn(2, 24, 8, 8)
    torch.testing.assert_close(relu.act(x), x.clamp(min=0))
    assert make_model(build_config(overrides={"model": "airbench94", "activation": "relu"}), 10)
    with pytest.raises(ConfigError, match="model 'tutorial-resnet' has its own: drop --activation"):
        build_config(overrides={"model": "tutorial-resnet", "activation": "relu"})
    with pytest.raises(ConfigError, match="--activation"):
        build_config(overrides={"model": "airbench", "activation": "tanh"})
