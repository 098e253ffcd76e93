"""The training loop against hand computations: the L2 penalty reaches the update, schedules follow
their formulas, the same seed gives the same metrics, and a short real run learns."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import synthetic_cifar

from reglab.config import PRESETS, TrainConfig, build_config
from reglab.data.pipeline import BatchPipeline
from reglab.models import create_model
from reglab.regularization import default_scope
from reglab.training import RunDir, RunDirError, lr_at, read_metrics, train


def tiny_config(**kw) -> TrainConfig:
    # fp32: the hand formulas' tolerances are fp32's (auto is bf16 on AVX512-BF16 / AMX CPUs)
    base = dict(
        model="tutorial-resnet", image_size=32, batch_size=8, steps=1, optimizer="sgd",
        momentum=0.0, lr=0.1, l2=0.0, log_every=1, val_every=1000, eval_batch_size=32,
        channels_last=False, device="cpu", audit=False, precision="fp32",
    )  # fmt: skip
    base.update(kw)
    base = {k: v for k, v in base.items() if k in TrainConfig.__dataclass_fields__}
    return TrainConfig(**base).validate()


@pytest.mark.parametrize("lam", [1e-3, 5e-2])
def test_one_sgd_step_with_l2_matches_hand_formula(lam):
    """w' = w − η(g + 2λw): g is the data-loss gradient, computed here independently."""
    cfg = tiny_config(l2=lam)
    data = synthetic_cifar()
    torch.manual_seed(cfg.seed)
    reference = create_model(cfg.model)  # the loop builds its model right after the same seed
    w0 = copy.deepcopy(reference.state_dict())
    pipeline = BatchPipeline(data.train_images, data.train_labels, cfg.batch_size, 32, seed=0)
    x, y = next(iter(pipeline))
    reference.train()
    F.cross_entropy(reference(x), y).backward()
    grads = {n: p.grad.clone() for n, p in reference.named_parameters()}
    decayed = {n for n, _ in default_scope(reference)}

    model = train(cfg, data=data, quiet=True).model
    for name, p in model.named_parameters():
        w, g = w0[name], grads[name]
        expected = w - cfg.lr * (g + 2 * lam * w) if name in decayed else w - cfg.lr * g
        torch.testing.assert_close(p.detach(), expected, rtol=1e-4, atol=1e-6)
    assert any(n.endswith("fc.weight") for n in decayed)


def _sq_norm(model) -> float:
    return sum(p.detach().pow(2).sum().item() for _, p in default_scope(model))


def test_l2_shrinks_the_weights():
    data = synthetic_cifar(n_train=128)
    runs = {
        lam: train(tiny_config(l2=lam, lr=0.02, steps=20, momentum=0.9), data=data, quiet=True)
        for lam in (0.0, 0.5)
    }
    assert _sq_norm(runs[0.5].model) < 0.8 * _sq_norm(runs[0.0].model)


def test_same_seed_same_metrics(tmp_path):
    data = synthetic_cifar(n_train=96)
    rows = []
    for i in range(2):
        run = RunDir(tmp_path / f"run{i}")
        train(tiny_config(steps=6, log_every=3, val_every=3, momentum=0.9, l2=1e-3), run_dir=run,
              data=data, quiet=True)  # fmt: skip
        rows.append([{k: v for k, v in r.items() if k not in ("elapsed", "s_per_batch")}
                     for r in read_metrics(run.path)])  # fmt: skip
    assert rows[0] == rows[1]
    assert [r["split"] for r in rows[0]] == ["train", "holdout"] * 2
    logged = set(read_metrics(tmp_path / "run0")[0])
    assert {"step", "epoch", "split", "loss", "acc", "lr", "penalty", "elapsed"} <= logged


def test_run_directory_contents_and_no_overwrite(tmp_path):
    data = synthetic_cifar()
    run = RunDir(tmp_path / "r")
    result = train(tiny_config(steps=2, l2=1e-3), run_dir=run, data=data, quiet=True)
    names = {p.name for p in run.path.iterdir()}
    assert {"config.yaml", "metrics.jsonl", "summary.json", "checkpoints"} <= names
    ckpt = torch.load(run.path / "checkpoints" / "step-0000002.pt", weights_only=True)
    assert ckpt["step"] == 2 and ckpt["config"]["l2"] == 1e-3 and "optimizer" in ckpt
    assert result.val_split == "holdout" and 0 <= result.final_val_acc <= 1
    summary = json.loads((run.path / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["final_val_acc"] == result.final_val_acc
    env = summary["environment"]
    assert env["torch"] == torch.__version__ and env["threads"] >= 1 and env["precision"] == "fp32"
    before = (run.path / "metrics.jsonl").read_text()
    with pytest.raises(RunDirError, match="--overwrite"):
        RunDir(tmp_path / "r")
    assert (run.path / "metrics.jsonl").read_text() == before  # nothing touched
    RunDir(tmp_path / "r", mode="overwrite")  # allowed when asked: the old results go first
    assert not any((run.path / n).exists() for n in ("summary.json", "metrics.jsonl",
                                                      "checkpoints", "config.yaml"))


def test_penalty_is_logged_and_equals_formula(tmp_path):
    data = synthetic_cifar()
    run = RunDir(tmp_path / "r")
    lam = 1e-3
    model = train(tiny_config(steps=1, l2=lam, lr=1e-12), run_dir=run, data=data, quiet=True).model
    train_row = read_metrics(run.path)[0]
    # lr ~0: the weights hardly moved, so the logged penalty is λ Σ‖w‖² of the final weights
    assert train_row["penalty"] == pytest.approx(lam * _sq_norm(model), rel=1e-5)


def test_lr_schedules_follow_their_formulas():
    assert lr_at(0, 100, 1.0, "constant") == 1.0
    assert [lr_at(s, 100, 1.0, "constant", warmup_steps=4) for s in range(5)] == [
        0.25, 0.5, 0.75, 1.0, 1.0]  # fmt: skip
    assert lr_at(49, 100, 1.0, "step") == 1.0
    assert lr_at(50, 100, 1.0, "step") == pytest.approx(0.1)
    assert lr_at(75, 100, 1.0, "step") == pytest.approx(0.01)
    assert lr_at(0, 100, 2.0, "cosine") == 2.0
    assert lr_at(50, 100, 2.0, "cosine") == pytest.approx(1.0)
    assert lr_at(30, 110, 1.0, "cosine", warmup_steps=10) == pytest.approx(
        0.5 * (1 + math.cos(math.pi * 20 / 100)))  # fmt: skip
    assert lr_at(60, 110, 1.0, "linear", warmup_steps=10) == pytest.approx(0.5)


def test_tutorial_preset_is_the_tutorials_run():
    cfg = build_config("tutorial")
    assert (cfg.model, cfg.image_size, cfg.batch_size, cfg.optimizer) == (
        "tutorial-resnet", 96, 64, "sgd")  # fmt: skip
    assert (cfg.lr, cfg.momentum, cfg.steps, cfg.epochs) == (0.01, 0.9, 20000, None)
    # L2 as the tutorial's code wrote it: tf-slim's l2_regularizer(1e-4), gradient λw
    assert (cfg.l2, cfg.regularizers, cfg.normalization) == (0.0, ["l2-half=1e-4"], "per-image")
    assert (cfg.log_every, cfg.val_every, cfg.augment, cfg.schedule) == (
        1000, 4000, "none", "constant")  # fmt: skip
    # flags override a preset one by one
    cfg = build_config("quick", overrides={"l2": 1e-3, "steps": 10})
    assert cfg.l2 == 1e-3 and cfg.steps == 10 and cfg.epochs is None
    assert cfg.model == PRESETS["quick"]["model"]


def test_tta_views_are_airbenchs():
    """Mirror and one-pixel translations (reflect padding) with airbench's weights 1/2, 1/4, 1/4,
    checked pixel by pixel."""
    from reglab.training.step import tta_views

    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float64).reshape(2, 3, 4, 5)
    assert [(w, torch.equal(v, x)) for w, v in tta_views(x, False, False)] == [(1.0, True)]
    (w0, v0), (w1, v1) = tta_views(x, True, False)
    assert (w0, w1) == (0.5, 0.5) and torch.equal(v0, x) and torch.equal(v1, x.flip(-1))
    views = tta_views(x, True, True)
    assert [w for w, _ in views] == [0.25, 0.25, 0.125, 0.125, 0.125, 0.125]
    up_left, down_right = views[2][1], views[4][1]
    assert torch.equal(views[3][1], up_left.flip(-1))
    assert torch.equal(views[5][1], down_right.flip(-1))
    assert torch.equal(up_left[..., 1:, 1:], x[..., :-1, :-1])  # pixel (i, j) shows (i-1, j-1)
    assert torch.equal(down_right[..., :-1, :-1], x[..., 1:, 1:])  # and (i+1, j+1)
    assert torch.equal(up_left[..., 0, 1:], x[..., 1, :-1])  # row -1 reflected: row 1
    assert torch.equal(down_right[..., -1, :-1], x[..., -2, 1:])  # row h reflected: row h-2
    assert [w for w, _ in tta_views(x, False, True)] == [0.5, 0.25, 0.25]


def test_evaluate_averages_the_logits_of_the_views():
    """For an affine model the weighted mean of the views' logits is the model of the weighted
    mean image: the loss and accuracy evaluate reports match that hand computation."""
    from reglab.training.step import evaluate

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 10)).double()
    x, y = torch.randn(50, 3, 8, 8, dtype=torch.float64), torch.randint(0, 10, (50,))
    pad = F.pad(x, (1, 1, 1, 1), mode="reflect")
    shifted = 0.5 * x + 0.25 * pad[..., :8, :8] + 0.25 * pad[..., 2:, 2:]
    cases = [(False, False, x), (True, False, (x + x.flip(-1)) / 2), (False, True, shifted),
             (True, True, (shifted + shifted.flip(-1)) / 2)]
    for tta, translate, image in cases:
        logits = model(image)
        batches = [(x[:20], y[:20]), (x[20:], y[20:])]
        loss, acc, n = evaluate(model, batches, tta, tta_translate=translate)
        assert n == 50
        assert math.isclose(loss, F.cross_entropy(logits.float(), y).item(), rel_tol=1e-6)
        assert acc == (logits.argmax(1) == y).double().mean().item()


def test_selective_tta_replaces_only_the_least_confident_logits():
    """--tta-fraction f (hiverge's selective TTA): of each batch, the ceil(f·N) images whose plain
    softmax confidence is lowest get the full TTA logits, the others their plain logits; f = 1
    is plain TTA. Checked against a hand computation with a float64 model."""
    from reglab.training.step import evaluate, selective_tta_logits, tta_views

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 10)).double()
    x, y = torch.randn(40, 3, 8, 8, dtype=torch.float64), torch.randint(0, 10, (40,))
    plain = model(x)
    full = sum(w * model(v) for w, v in tta_views(x, True, True))
    confidence = plain.softmax(1).max(1).values
    for fraction, k in ((0.25, 10), (0.1, 4), (0.26, 11), (1.0, 40)):
        out = selective_tta_logits(model, x, True, True, fraction)
        chosen = confidence.argsort()[:k]
        expected = plain.clone()
        expected[chosen] = full[chosen]
        torch.testing.assert_close(out, expected.float())  # logits in float32, as evaluate
    # evaluate applies it per batch
    batches = [(x[:20], y[:20]), (x[20:], y[20:])]
    _, acc, n = evaluate(model, batches, True, tta_translate=True, tta_fraction=0.25)
    parts = [selective_tta_logits(model, xb, True, True, 0.25) for xb, _ in batches]
    assert n == 40 and acc == (torch.cat(parts).argmax(1) == y).double().mean().item()
    assert evaluate(model, batches, True, tta_translate=True, tta_fraction=1.0)[1] == (
        (full.argmax(1) == y).double().mean().item())


def differing_settings(a, b) -> set[str]:
    return {k for k, v in a.to_dict().items() if b.to_dict()[k] != v}


def test_cpu90_is_cpu94s_recipe_on_the_small_airbench_network():
    """cpu90 trains cpu94's recipe (Muon, jitter, selective TTA; its 8 epochs) on the
    small airbench network (widths 32/64/128) at batch 1000 with Muon at lr 0.18 (cpu94: 0.24
    at batch 2000), the first half at 24 px (cpu94: the first 3 of 8 epochs), with a checkpoint
    every epoch."""
    cpu94, cpu90 = build_config("cpu94"), build_config("cpu90")
    assert differing_settings(cpu94, cpu90) == {"preset", "model", "batch_size", "muon_lr",
                                                "low_res_fraction", "checkpoint_every"}  # fmt: skip
    assert (cpu94.model, cpu90.model) == ("airbench94", "airbench")
    assert (cpu90.batch_size, cpu90.epochs) == (1000, 8)
    assert (cpu94.muon_lr, cpu90.muon_lr) == (0.24, 0.18)
    assert (cpu90.low_res_fraction, cpu90.low_res_size) == (0.5, 24)
    assert cpu90.checkpoint_every == (50_000 - cpu90.holdout) // cpu90.batch_size


def test_quick_is_cpu90_for_3_epochs_and_quick_sgd_the_nesterov_l2_recipe():
    """quick is cpu90's recipe, shortened to 3 epochs (its low-res share a share of them) at
    cpu94's Muon lr 0.24; quick-sgd keeps the recipe quick had before (and the λ studies of docs/
    ran): the same network, Nesterov SGD with L2 on every conv and linear weight, 4 epochs of
    256."""
    quick, cpu90, sgd = build_config("quick"), build_config("cpu90"), build_config("quick-sgd")
    assert differing_settings(cpu90, quick) == {"preset", "epochs", "muon_lr"}
    assert (quick.epochs, quick.muon_lr) == (3, build_config("cpu94").muon_lr)
    assert sgd.low_res_fraction == 0
    assert sgd.model == quick.model
    assert (sgd.optimizer, sgd.lr, sgd.momentum, sgd.l2, sgd.regularizers) == (
        "nesterov", 0.2, 0.85, 5e-4, [])  # fmt: skip
    assert (sgd.batch_size, sgd.epochs, sgd.label_smoothing, sgd.augment) == (
        256, 4, 0.2, "flip-translate")  # fmt: skip


def test_gpu_preset_is_airbench94s_recipe():
    """airbench94's hyperparameters (legacy/airbench94.py's hyp) where reglab's units are its
    units: batch, momentum, label smoothing, bias_scaler, lookahead every 5 steps, frozen
    batch-norm scales, alternating flip with translate 2, tta_level 2, widths 64/256/256."""
    gpu = build_config("gpu")
    assert (gpu.batch_size, gpu.optimizer, gpu.momentum, gpu.label_smoothing) == (
        1024, "nesterov", 0.85, 0.2)
    assert (gpu.norm_bias_lr_scale, gpu.lookahead_every, gpu.train_norm_weights) == (64, 5, False)
    assert (gpu.augment, gpu.tta, gpu.tta_translate) == ("altflip-translate", True, True)
    assert create_model(gpu.model).fc.in_features == 256
    # airbench's lr 11.5 per 1024 examples of summed loss, divided by 1 + 1/(1 - momentum):
    # 1.5 per step of mean loss; reglab's 1.6 was tuned on its own warm-up and decay
    assert gpu.lr == pytest.approx(11.5 / (1 + 1 / (1 - 0.85)), rel=0.1)


def test_cpu94_is_airbench94_muons_recipe():
    """airbench94_muon.py's hyperparameters in reglab's units. Muon's step does not depend on
    the gradient's scale, so its lr 0.24 and momentum 0.6 carry over. The SGD groups: airbench
    sums the loss over 2000 images (x 2000 on every gradient) and divides the head's output by
    256 where reglab's head multiplies by 1/9, so its head lr 0.67 is 0.67 · 2000 · (9/256)² ≈
    1.66 per step of mean loss here (reglab's 1.6), and its bias lr 0.053 is 106 (reglab's
    1.6 x 64 = 102). Its decay, wd/lr per group with wd = 2e-6 · 2000, shrinks every such
    tensor by 4e-3 per step; torch's weight_decay c at lr η shrinks by η·c: c = 4e-3/1.6 = 2.5e-3
    on the head, 4e-3/102 ≈ 4e-5 on the biases. Checkpoints fall on whole epochs. reglab's own
    additions: hiverge's jitter and selective TTA, and the first 3 of the 8 epochs at 24 px
    (BENCHMARKS.md)."""
    c = build_config("cpu94")
    assert (c.model, c.optimizer, c.batch_size, c.epochs) == ("airbench94", "muon", 2000, 8)
    assert (c.muon_lr, c.muon_momentum, c.momentum, c.label_smoothing) == (0.24, 0.6, 0.85, 0.2)
    assert (c.schedule, c.warmup_steps, c.lookahead_every) == ("linear", 0, 0)
    assert (c.whiten_bias_epochs, c.train_norm_weights, c.augment) == (
        3, False, "altflip-translate-jitter")  # + hiverge's jitter
    assert (c.tta, c.tta_translate, c.tta_fraction) == (True, True, 0.25)  # hiverge's selective
    assert (c.low_res_fraction * c.epochs, c.low_res_size) == (3, 24)  # progressive resizing
    assert c.lr == pytest.approx(0.67 * 2000 * (9 / 256) ** 2, rel=0.05)
    assert c.lr * c.norm_bias_lr_scale == pytest.approx(0.053 * 2000, rel=0.05)
    assert c.l2 == 0 and c.regularizers == ["wd=2.5e-3@linear.weight",
                                            "wd=4e-5@norm.bias,conv.bias"]  # fmt: skip
    assert 2.5e-3 * c.lr == pytest.approx(2e-6 * 2000)
    assert 4e-5 * c.lr * c.norm_bias_lr_scale == pytest.approx(2e-6 * 2000, rel=0.05)
    steps_per_epoch = (50_000 - c.holdout) // c.batch_size
    assert c.checkpoint_every == steps_per_epoch


def test_gpu94_is_cpu94_without_its_cpu_economies():
    """gpu94 trains cpu94's recipe (airbench94_muon's, with hiverge's jitter) without what cpu94
    does to save CPU time: every epoch at 32 px, and flip + translate TTA on every image; batches
    of 2000 for evaluation too, a log point once an epoch, a checkpoint at the end only."""
    cpu94, gpu94 = build_config("cpu94"), build_config("gpu94")
    assert differing_settings(cpu94, gpu94) == {"preset", "low_res_fraction", "tta_fraction",
                                                "eval_batch_size", "log_every",
                                                "checkpoint_every"}  # fmt: skip
    assert (gpu94.low_res_fraction, gpu94.tta, gpu94.tta_translate, gpu94.tta_fraction) == (
        0, True, True, 1.0)  # fmt: skip
    steps_per_epoch = (50_000 - gpu94.holdout) // gpu94.batch_size
    assert gpu94.eval_batch_size == gpu94.batch_size and gpu94.log_every == steps_per_epoch
    assert gpu94.checkpoint_every > steps_per_epoch * gpu94.epochs


@pytest.mark.slow
def test_short_real_run_beats_chance(real_data_dir):
    """A few thousand real images, a few epochs of cpu90's recipe at a smaller batch (the first
    half at 24 px, as cpu90's), evaluated as cpu90 evaluates (selective flip + translate TTA):
    far above the 10% of guessing."""
    cfg = build_config(
        "cpu90",
        overrides={"data_dir": str(real_data_dir), "holdout": 2000, "train_limit": 4000,
                   "epochs": 4, "batch_size": 200, "log_every": 10_000},
    )  # fmt: skip
    result = train(cfg, quiet=True)
    assert result.val_split == "holdout" and result.val_images == 2000
    assert result.final_val_acc > 0.60, result  # 0.7185 on the AVX2 EPYC of BENCHMARKS.md


@pytest.mark.slow
def test_bf16_autocast_trains_as_well_as_fp32(real_data_dir):
    """The quick preset, shortened (its first half at 24 px), in bf16 autocast and in fp32 over
    several seeds: the mean holdout accuracies agree within their noise (on a CPU without
    AVX512-BF16 bf16 is emulated and slow, about 1 s per step of 64 images here, so the runs
    are short and evaluated without TTA; the benchmark measures the full preset)."""
    accs: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for precision in accs:
        for seed in (0, 1):
            cfg = build_config("quick", overrides={
                "data_dir": str(real_data_dir), "holdout": 1000, "train_limit": 1024,
                "steps": 16, "batch_size": 64, "warmup_steps": 4, "val_every": 16,
                "log_every": 16, "seed": seed, "precision": precision, "tensorboard": False,
                "audit": False, "eval_batch_size": 500, "tta": False})  # fmt: skip
            result = train(cfg, quiet=True)
            assert result.environment["precision"] == precision
            accs[precision].append(result.final_val_acc)
    mean = {k: sum(v) / len(v) for k, v in accs.items()}
    # sampling error of a mean of 2 accuracies on 1,000 images, for the difference of two means
    se = math.sqrt(2 * mean["fp32"] * (1 - mean["fp32"]) / (2 * 1000))
    assert abs(mean["bf16"] - mean["fp32"]) < max(3 * se, 0.02), accs
    # it learned something: chance is 0.10 with a sampling error of 0.007 at 2 x 1,000 images
    # (16 steps reach about 0.2; that varies with the CPU's kernels, so the bound is loose)
    assert mean["fp32"] > 0.14, accs


def test_compact_record_of_a_run_and_of_a_sweep(tmp_path, capsys):
    """reglab export --compact-to: the files a report needs, never checkpoints or events."""
    from reglab.cli import main

    data = synthetic_cifar()
    sweep = tmp_path / "sweep"
    for key in ("l2=0_seed=0", "l2=0.001_seed=0"):
        run = RunDir(sweep / "trials" / key)
        train(tiny_config(steps=2), run_dir=run, data=data, quiet=True)
        (run.path / "trial.json").write_text("{}\n")
    (sweep / "sweep.yaml").write_text("mode: grid\n")
    assert main(["export", str(sweep), str(sweep / "trials" / "l2=0_seed=0"), "--compact-to",
                 str(tmp_path / "results")]) == 0  # fmt: skip
    copied = tmp_path / "results" / "sweep"
    assert (copied / "sweep.yaml").is_file()
    for key in ("l2=0_seed=0", "l2=0.001_seed=0"):
        names = {p.name for p in (copied / "trials" / key).iterdir()}
        assert names == {"config.yaml", "metrics.jsonl", "summary.json", "regularization.txt",
                         "trial.json"}  # fmt: skip
    assert (tmp_path / "results" / "l2=0_seed=0" / "summary.json").is_file()
    # the same run again refreshes its record; another run of the same name is refused
    assert main(["export", str(sweep / "trials" / "l2=0_seed=0"), "--compact-to",
                 str(tmp_path / "results")]) == 0  # fmt: skip
    other = RunDir(tmp_path / "elsewhere" / "l2=0_seed=0")
    train(tiny_config(steps=2, l2=1e-3), run_dir=other, data=data, quiet=True)
    capsys.readouterr()
    assert main(["export", str(other.path), "--compact-to", str(tmp_path / "results")]) == 2
    err = capsys.readouterr().err
    assert "holds the record of another run (l2 differs)" in err, err
    assert "l2: 0.0" in (tmp_path / "results" / "l2=0_seed=0" / "config.yaml").read_text()


def test_a_record_from_before_a_setting_existed_reads_as_its_default(tmp_path):
    """A run resumed by a newer reglab rewrites config.yaml with the settings added since (at
    their defaults): its older record is still the same run, and a changed value is not."""
    import yaml

    from reglab.training.rundir import differing_settings

    cfg = tiny_config(steps=2).to_dict()
    old = {k: v for k, v in cfg.items() if k != "tta_translate"}  # written before it existed
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(old))
    (tmp_path / "new.yaml").write_text(yaml.safe_dump(cfg))
    (tmp_path / "changed.yaml").write_text(yaml.safe_dump({**cfg, "tta_translate": True}))
    assert differing_settings(tmp_path / "old.yaml", tmp_path / "new.yaml") == []
    assert differing_settings(tmp_path / "old.yaml", tmp_path / "changed.yaml") == ["tta_translate"]
