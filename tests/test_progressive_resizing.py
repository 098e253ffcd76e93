"""Progressive resizing (--low-res-epochs, --low-res-size): the first epochs' batches are the
same batches shrunk, the rest and every evaluation at full size, the settings are checked, and
the run's time estimate counts the cheaper steps."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import synthetic_cifar

from reglab.config import ConfigError, TrainConfig, build_config
from reglab.data.pipeline import BatchPipeline
from reglab.models import create_model
from reglab.training import train
from reglab.training.loop import training_time_left


def test_low_res_batches_are_the_same_batches_shrunk():
    """1.5 epochs of 4 batches: batches 0-5 at 16 px, each the antialiased bilinear shrink of the
    batch a pipeline without progressive resizing draws (the same images, flips and offsets),
    then the full size, the same batches bit for bit."""
    data = synthetic_cifar(n_train=64, n_val=8)
    kw = dict(augment="altflip-translate-jitter", seed=3, channels_last=True)
    full = BatchPipeline(data.train_images, data.train_labels, 16, 32, **kw)
    low = BatchPipeline(data.train_images, data.train_labels, 16, 32, low_res=(1.5, 16), **kw)
    assert low.low_res_batches == 6
    for i in range(2 * full.steps_per_epoch):
        (xf, yf), (xl, yl) = full.next_batch(), low.next_batch()
        assert torch.equal(yf, yl)
        if i < 6:
            assert xl.shape == (16, 3, 16, 16)
            ref = F.interpolate(xf, size=(16, 16), mode="bilinear", align_corners=False,
                                antialias=True)  # fmt: skip
            torch.testing.assert_close(xl, ref, rtol=0, atol=1e-6)
            # a shrink averages: each channel's mean over the batch is kept to within rounding
            torch.testing.assert_close(xl.mean((0, 2, 3)), xf.mean((0, 2, 3)), rtol=0, atol=0.05)
        else:
            assert torch.equal(xl, xf)
        assert xl.is_contiguous(memory_format=torch.channels_last)


def test_the_model_trains_on_low_res_then_full_size_and_evaluates_at_full_size():
    data = synthetic_cifar(n_train=128, n_val=32)
    cfg = build_config(preset="cpu90", overrides={
        "epochs": 2, "batch_size": 32, "low_res_epochs": 1.25, "low_res_size": 20,
        "log_every": 4, "val_every": 4, "checkpoint_every": 1000, "tensorboard": False,
        "eval_batch_size": 32, "tta": False, "whiten_bias_epochs": 0.5,
        "audit": False})  # fmt: skip
    model = create_model("airbench")
    sizes: list[tuple[bool, int]] = []
    model.register_forward_pre_hook(lambda m, args: sizes.append((m.training, args[0].shape[-1])))
    train(cfg, model=model, data=data, quiet=True)
    train_sizes = [s for training, s in sizes if training]
    assert train_sizes == [20] * 5 + [32] * 3  # 4 steps per epoch: 1.25 epochs are 5 steps
    assert {s for training, s in sizes if not training} == {32}  # whitening init, validations


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"low_res_size": 32}, "--low-res-size 32 must be smaller than --image-size 32"),
        ({"low_res_size": 12}, "needs --low-res-size >= 16"),
        ({"low_res_epochs": -1}, "low-res-epochs"),
    ],
)
def test_bad_low_res_settings_are_one_line_errors(overrides, needle):
    with pytest.raises(ConfigError, match=needle.replace("-", r"\-")) as e:
        TrainConfig(**{"model": "airbench", "image_size": 32, "low_res_epochs": 2,
                       **overrides}).validate()  # fmt: skip
    assert "\n" not in str(e.value)


def test_low_res_epochs_covering_the_whole_run_is_an_error():
    data = synthetic_cifar(n_train=128, n_val=32)
    cfg = build_config(preset="cpu90", overrides={"epochs": 3, "batch_size": 32})
    with pytest.raises(ConfigError, match=r"--low-res-epochs 4 covers the whole run of 12 steps "
                       r"\(3 epochs\).*lower --low-res-epochs"):  # fmt: skip
        train(cfg, data=data, quiet=True)


def test_low_res_size_is_not_checked_when_off():
    TrainConfig(model="airbench", image_size=32, low_res_size=64).validate()


def test_training_time_left_counts_low_res_steps_at_their_pace():
    # 100 steps left, 30 of them low-res at 0.5 s, the other 70 at (32/24)² x 0.5 s
    assert training_time_left(100, 30, 0.5, (32 / 24) ** 2) == pytest.approx(
        30 * 0.5 + 70 * 0.5 * 16 / 9)
    assert training_time_left(100, 0, 0.5, 1.0) == 50.0  # all at the measured pace
    assert training_time_left(10, 30, 0.5, 4.0) == 5.0  # all low-res
    assert training_time_left(10, -5, 0.5, 1.0) == 5.0  # past the switch
