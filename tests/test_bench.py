"""bench/bench.py's --presets: entries split at the commas that start a preset, so a flag's own
commas (--widths 16,64,128, --lr-milestones 0.5,0.75) stay with it; an unknown preset is one line
before anything is measured."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("reglab_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("text", "entries"),
    [
        ("quick", ["quick"]),
        ("quick,quick-sgd,cpu90", ["quick", "quick-sgd", "cpu90"]),
        ("quick, cpu90 --low-res-fraction 0", ["quick", "cpu90 --low-res-fraction 0"]),
        ("cpu90,cpu90 --widths 16,64,128", ["cpu90", "cpu90 --widths 16,64,128"]),
        ("cpu90 --widths 16,64,128,quick", ["cpu90 --widths 16,64,128", "quick"]),
        ("quick-sgd --lr-milestones 0.5,0.75,quick",
         ["quick-sgd --lr-milestones 0.5,0.75", "quick"]),
    ],
)
def test_presets_split_at_the_commas_that_start_a_preset(bench, text, entries):
    assert bench.split_presets(text) == entries


@pytest.mark.parametrize(("text", "unknown"), [("cpu90,cpu91", "cpu91"), ("fast", "fast"),
                                               ("quick,--seed 1", "--seed")])  # fmt: skip
def test_an_unknown_preset_is_named(bench, text, unknown):
    with pytest.raises(SystemExit, match=f"unknown preset '{unknown}'"):
        bench.split_presets(text)


def test_the_command_stops_before_measuring(tmp_path):
    proc = subprocess.run([sys.executable, str(BENCH), "--presets", "quick,cpu91"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "bench.py: --presets: unknown preset 'cpu91' in 'quick,cpu91'; give PRESET [FLAGS], "
        "comma-separated, PRESET one of: tutorial, quick, quick-sgd, cpu90, gpu, gpu94, cpu94"
    ]
    assert proc.stdout == ""


def test_abba_ratio_cancels_a_linear_drift(bench):
    """B takes 0.9x A's time; the machine slows by k per run over the order A, B, B, A."""
    for k in (0.0, 0.05, 0.2):
        a1, b1, b2, a2 = (base * (1 + k * i) for i, base in enumerate((100, 90, 90, 100)))
        assert bench.abba_ratio(a1, b1, b2, a2) == pytest.approx(0.9, rel=1e-12)
        assert b1 / a1 == pytest.approx(0.9 * (1 + k))  # one pair alone carries the drift


def test_abba_runs_a_b_b_a_and_says_whether_each_pair_learned_the_same(bench, monkeypatch):
    calls = []
    accs = {"quick": [0.87, 0.87], "quick --epochs 2": [0.80, 0.80]}
    seconds = iter([100.0, 90.0, 99.0, 110.0])

    def fake_run(name, data_dir, device, keep, seed, rep=1):
        calls.append((name, rep))
        return f"| {name} {rep} |", {"train_seconds": next(seconds),
                                     "final_val_acc": accs[name][rep - 1]}  # fmt: skip

    monkeypatch.setattr(bench, "preset_run", fake_run)
    table = bench.preset_runs(["quick", "quick --epochs 2"], None, "cpu", abba=True)
    assert calls == [("quick", 1), ("quick --epochs 2", 1), ("quick --epochs 2", 2),
                     ("quick", 2)]  # fmt: skip
    last = table.splitlines()[-1]
    assert f"{(90 + 99) / (100 + 110):.3f}x" in last and "the same final accuracy" in last
    assert "first pair 0.900x, second pair 0.900x" in last
    accs["quick"][1] = 0.86
    seconds = iter([100.0, 90.0, 99.0, 110.0])
    assert "DIFFERENT final accuracies" in bench.preset_runs(
        ["quick", "quick --epochs 2"], None, "cpu", abba=True)  # fmt: skip


def test_abba_needs_two_entries(tmp_path):
    proc = subprocess.run([sys.executable, str(BENCH), "--abba", "--presets", "quick"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 1 and proc.stderr.startswith("bench.py: --abba compares two")


@pytest.mark.parametrize("preset", ["quick", "cpu94"])
def test_throughput_steps_are_at_the_tables_image_size(bench, preset):
    """quick and cpu94 train their first steps at 24 px (progressive resizing); the throughput
    table's row says 32 px, so every batch it times must be 32 px (a mix of sizes once read
    --malloc system as 0.71x keep for the quick row)."""
    s = bench.setup_for("airbench", 32, 8, preset, "fp32", True, "cpu")
    batches = 2 * s.pipeline.steps_per_epoch + 3  # past the preset's low-res steps
    sizes = {tuple(s.pipeline.next_batch()[0].shape[-2:]) for _ in range(batches)}
    assert sizes == {(32, 32)}


def test_gpu_compare_states_each_preset_against_airbench94():
    """bench/gpu_compare.py's closing lines: the issue's two criteria for each reglab row with as
    many runs as airbench94's, median training time over airbench94's and median accuracy less
    airbench94's (hand-computed medians; a one-run row is not compared)."""
    spec = importlib.util.spec_from_file_location("reglab_gpu_compare",
                                                  BENCH.parent / "gpu_compare.py")  # fmt: skip
    gpu_compare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_compare)
    ab = [{"train_seconds": s, "acc": a} for s, a in ((2.0, 0.936), (2.4, 0.934), (2.2, 0.938))]
    table = {
        "reglab gpu preset": [{"train_seconds": s, "acc": a}
                              for s, a in ((1.9, 0.930), (2.0, 0.940), (1.7, 0.935))],
        "reglab quick preset": [{"train_seconds": 0.5, "acc": 0.87}],
        "airbench94": ab,
    }  # fmt: skip
    assert gpu_compare.against_airbench(table, ab) == {
        "reglab gpu preset": f"time ratio {1.9 / 2.2:.2f}, accuracy -0.10 points"}


def test_write_replaces_the_named_blocks_and_nothing_else(bench, monkeypatch, tmp_path):
    """--write with --throughput-block and --presets-block: each table lands in its own block
    (another machine's blocks under other keys stay as they were), the command line above it."""
    doc = tmp_path / "B.md"
    old = "<!-- generated: {0} -->\nold {0}\n<!-- end: {0} -->\n"
    doc.write_text("".join(old.format(k) for k in ("bench-throughput", "tp-amx", "pre-amx")))
    monkeypatch.setattr(bench, "throughput_tables", lambda *a: "THROUGHPUT")
    monkeypatch.setattr(bench, "preset_runs", lambda *a: "PRESETS")
    argv = ["bench.py", "--presets", "quick", "--throughput-block", "tp-amx",
            "--presets-block", "pre-amx", "--write", str(doc)]
    monkeypatch.setattr(sys, "argv", argv)
    assert bench.main() == 0
    text = doc.read_text()
    assert "old bench-throughput" in text
    assert "old tp-amx" not in text and "old pre-amx" not in text
    blocks = text.split("<!-- generated: ")[1:]
    assert blocks[1].startswith("tp-amx -->\nCommand: `python bench/bench.py --presets quick")
    assert "THROUGHPUT" in blocks[1] and "PRESETS" in blocks[2] and "PRESETS" not in blocks[1]


@pytest.mark.parametrize("stride", [1, 2])
def test_tutorial_steps_1x1_conv_as_a_matmul_is_the_convolution(stride):
    """bench/tutorial_step.py's variant computes each 1x1 convolution as a matmul of the
    channels-last activations: the same numbers as F.conv2d (float64), laid out channels-last."""
    import torch
    import torch.nn.functional as F

    spec = importlib.util.spec_from_file_location("reglab_tutorial_step",
                                                  BENCH.parent / "tutorial_step.py")  # fmt: skip
    tutorial_step = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tutorial_step)
    conv = torch.nn.Conv2d(6, 10, 1, stride=stride, bias=False).double()
    x = torch.randn(3, 6, 9, 9, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    out = tutorial_step.conv1x1_as_matmul(conv, x)
    torch.testing.assert_close(out, F.conv2d(x, conv.weight, stride=stride), rtol=1e-12, atol=0)
    assert out.is_contiguous(memory_format=torch.channels_last)


def test_precise_bn_sets_the_plain_mean_of_the_batches_statistics():
    """bench/precise_bn.py: after it, each batch norm's running mean and variance are the means
    over the batches of each batch's mean and unbiased variance (PyTorch's cumulative average,
    momentum None), whatever they were before; the model's mode is kept."""
    import torch

    spec = importlib.util.spec_from_file_location("reglab_precise_bn",
                                                  BENCH.parent / "precise_bn.py")  # fmt: skip
    precise_bn = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(precise_bn)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.BatchNorm2d(3, momentum=0.001)).eval()
    model[0].running_mean.fill_(5.0)
    batches = [2 * torch.randn(4, 3, 5, 5) + i for i in range(3)]
    precise_bn.precise_bn(model, batches)
    mean = torch.stack([x.mean((0, 2, 3)) for x in batches]).mean(0)
    var = torch.stack([x.transpose(0, 1).flatten(1).var(1) for x in batches]).mean(0)
    torch.testing.assert_close(model[0].running_mean, mean)
    torch.testing.assert_close(model[0].running_var, var)
    assert not model.training
