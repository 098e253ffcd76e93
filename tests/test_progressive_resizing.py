"""Progressive resizing (--low-res-fraction, --low-res-size): the first steps' batches are the
same batches shrunk, the rest and every evaluation at full size, the share is of the run as it
is (a shortened preset keeps its share), the settings are checked, records made with the old
--low-res-epochs read as their share, and the run's time estimate counts the cheaper steps."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import REPO_ROOT, synthetic_cifar

from reglab.cli import main
from reglab.config import ConfigError, TrainConfig, build_config, with_defaults
from reglab.data.pipeline import BatchPipeline
from reglab.models import create_model
from reglab.training import train
from reglab.training.builder import build
from reglab.training.loop import training_time_left


def test_low_res_batches_are_the_same_batches_shrunk():
    """6 low-res batches of 4 per epoch: batches 0-5 at 16 px, each the antialiased bilinear
    shrink of the batch a pipeline without progressive resizing draws (the same images, flips
    and offsets), then the full size, the same batches bit for bit."""
    data = synthetic_cifar(n_train=64, n_val=8)
    kw = dict(augment="altflip-translate-jitter", seed=3, channels_last=True)
    full = BatchPipeline(data.train_images, data.train_labels, 16, 32, **kw)
    low = BatchPipeline(data.train_images, data.train_labels, 16, 32, low_res=(6, 16), **kw)
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


@pytest.mark.parametrize("low_size", [48, 24])
def test_low_res_batches_above_32_px_are_resized_once_from_the_augmented_images(low_size):
    """At --image-size 64 the low-res batches come straight from the 32-px augmented images:
    at 48 px they equal the batches of a pipeline whose image size is 48 (enlarged once, not
    enlarged to 64 and shrunk again); at 24 px, the antialiased shrink of the 32-px batch."""
    data = synthetic_cifar(n_train=64, n_val=8)
    kw = dict(augment="flip-translate", seed=5)
    low = BatchPipeline(data.train_images, data.train_labels, 16, 64, low_res=(2, low_size), **kw)
    ref_size = low_size if low_size > 32 else 32
    ref = BatchPipeline(data.train_images, data.train_labels, 16, ref_size, **kw)
    for _ in range(2):
        (xl, yl), (xr, yr) = low.next_batch(), ref.next_batch()
        assert torch.equal(yl, yr) and xl.shape[-1] == low_size
        if low_size < 32:
            xr = F.interpolate(xr, size=(low_size, low_size), mode="bilinear",
                               align_corners=False, antialias=True)  # fmt: skip
        torch.testing.assert_close(xl, xr, rtol=0, atol=1e-6)
    assert low.next_batch()[0].shape[-1] == 64


def test_the_model_trains_on_low_res_then_full_size_and_evaluates_at_full_size():
    data = synthetic_cifar(n_train=128, n_val=32)
    cfg = build_config(preset="cpu90", overrides={
        "epochs": 2, "batch_size": 32, "low_res_fraction": 0.625, "low_res_size": 20,
        "log_every": 4, "val_every": 4, "checkpoint_every": 1000, "tensorboard": False,
        "eval_batch_size": 32, "tta": False, "whiten_bias_epochs": 0.5,
        "audit": False})  # fmt: skip
    model = create_model("airbench")
    sizes: list[tuple[bool, int]] = []
    model.register_forward_pre_hook(lambda m, args: sizes.append((m.training, args[0].shape[-1])))
    train(cfg, model=model, data=data, quiet=True)
    train_sizes = [s for training, s in sizes if training]
    assert train_sizes == [20] * 5 + [32] * 3  # 0.625 of 2 epochs of 4 steps are 5 steps
    assert {s for training, s in sizes if not training} == {32}  # whitening init, validations


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"low_res_size": 32}, "--low-res-size 32 must be smaller than --image-size 32"),
        ({"low_res_size": 12}, "needs --low-res-size >= 16"),
        ({"low_res_fraction": -1}, "low-res-fraction"),
        ({"low_res_fraction": 1}, "low-res-fraction"),
    ],
)
def test_bad_low_res_settings_are_one_line_errors(overrides, needle):
    with pytest.raises(ConfigError, match=needle.replace("-", r"\-")) as e:
        TrainConfig(**{"model": "airbench", "image_size": 32, "low_res_fraction": 0.5,
                       **overrides}).validate()  # fmt: skip
    assert "\n" not in str(e.value)


def test_a_low_res_share_that_rounds_to_the_whole_run_is_an_error():
    data = synthetic_cifar(n_train=128, n_val=32)
    cfg = build_config(preset="cpu90", overrides={"epochs": 3, "batch_size": 32,
                                                  "low_res_fraction": 0.99})  # fmt: skip
    with pytest.raises(ConfigError, match=r"--low-res-fraction 0.99 of 12 steps leaves none at "
                       r"--image-size 32: lower it"):  # fmt: skip
        train(cfg, data=data, quiet=True)


@pytest.mark.parametrize(("epochs", "low_res_steps"), [(8, 16), (3, 6), (0.75, 2)])
def test_a_shortened_preset_keeps_its_low_res_share(epochs, low_res_steps):
    """cpu90's half at low res is half of the run as given (4 steps per epoch here): 8 epochs
    are 32 steps, 16 of them at 24 px; 3 epochs 12 and 6; 0.75 epochs 3 and round(1.5) = 2."""
    data = synthetic_cifar(n_train=128, n_val=32)
    cfg = build_config(preset="cpu90", overrides={"epochs": epochs, "batch_size": 32})
    setup = build(cfg, data=data)
    assert setup.pipeline.low_res_batches == low_res_steps
    assert setup.steps == math.ceil(epochs * 4) and setup.pipeline.low_res_size == 24


def test_low_res_size_is_not_checked_when_off():
    TrainConfig(model="airbench", image_size=32, low_res_size=64).validate()


def test_the_replaced_low_res_epochs_is_a_one_line_error_naming_its_replacement(tmp_path,
                                                                               capsys):
    assert main(["train", "--preset", "cpu90", "--low-res-epochs", "4"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--low-res-fraction 0.5" in err, err
    config = tmp_path / "c.yaml"
    config.write_text("low_res_epochs: 4\n")
    with pytest.raises(ConfigError, match=r"c.yaml: --low-res-epochs was replaced by "
                       r"--low-res-fraction"):  # fmt: skip
        build_config(file_values=yaml.safe_load(config.read_text()),
                     file_name=str(config))  # fmt: skip


def test_records_made_with_low_res_epochs_read_as_the_same_low_res_steps():
    """Each committed record that stored --low-res-epochs N (of E epochs) reads as
    --low-res-fraction N / E, and that share of its steps is the N epochs' steps it ran at low
    resolution; a run at 0 reads as off."""
    assert with_defaults({"low_res_epochs": 4, "epochs": 8})["low_res_fraction"] == 0.5
    assert with_defaults({"low_res_epochs": 0.0, "epochs": None})["low_res_fraction"] == 0.0
    records = [p for p in (REPO_ROOT / "results").rglob("config.yaml")
               if "low_res_epochs" in p.read_text()]  # fmt: skip
    assert len(records) >= 10
    for path in records:
        stored = yaml.safe_load(path.read_text())
        read = with_defaults(stored)
        assert "low_res_epochs" not in read
        per_epoch = (stored["train_limit"] or 50_000 - stored["holdout"]) // stored["batch_size"]
        steps = math.ceil(stored["epochs"] * per_epoch)
        assert round(read["low_res_fraction"] * steps) == round(
            stored["low_res_epochs"] * per_epoch), path
        build_config(file_values={k: v for k, v in read.items() if k != "preset"},
                     file_name=str(path))  # the record's settings are all valid today


def test_training_time_left_counts_low_res_steps_at_their_pace():
    # 100 steps left, 30 of them low-res at 0.5 s, the other 70 at (32/24)² x 0.5 s
    assert training_time_left(100, 30, 0.5, (32 / 24) ** 2) == pytest.approx(
        30 * 0.5 + 70 * 0.5 * 16 / 9)
    assert training_time_left(100, 0, 0.5, 1.0) == 50.0  # all at the measured pace
    assert training_time_left(10, 30, 0.5, 4.0) == 5.0  # all low-res
    assert training_time_left(10, -5, 0.5, 1.0) == 5.0  # past the switch
