"""A config that never crashes: every bad value, key, type or file (in a YAML config file or on
the command line) ends in one line naming the key and the fix, exit status 2, no traceback and
no run directory; numbers in any common YAML spelling are numbers; `preset:` in a file applies
that preset, and the order is flags > file > preset > defaults."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from reglab.cli import main
from reglab.config import PRESETS, build_config, load_config_file

BAD_FILES = [
    ("lr: abc", "lr: 'abc' is not a number"),
    ("lr: .nan", "lr: nan is not a finite number"),
    ("lr: .inf", "not a finite number"),
    ("lr: 0", "lr must be > 0"),
    ("l2: -1e-4", "l2 must be >= 0 (got -0.0001)"),
    ("l2: 1e400", "not a finite number"),
    ("batch_size: 0", "batch_size must be >= 1"),
    ("batch_size: 12.5", "batch_size: expected a whole number"),
    ("steps: ten", "steps: 'ten' is not a number"),
    ("epochs: 0", "epochs must be > 0"),
    ("dropout: 1.0", "dropout must be in [0, 1)"),
    ("momentum: 1.5", "momentum must be in [0, 1)"),
    ("label_smoothing: 1", "label_smoothing must be in [0, 1)"),
    ("lr_milestones: [0.5, 2]", "lr_milestones must be in [0, 1]"),
    ("warmup_steps: 1.5", "warmup_steps: expected a whole number"),
    ("holdout: -5", "holdout must be >= 0"),
    ("seed: -1", "seed must be >= 0"),
    ("threads: 0", "threads must be >= 1"),
    ("model: resnet9000", "model: unknown model 'resnet9000'; choose one of:"),
    ("optimizer: lion", "optimizer: unknown optimizer 'lion'; choose one of: sgd"),
    ("precision: fp8", "precision: unknown precision 'fp8'"),
    ("on_nonfinite: ignore", "on_nonfinite: unknown on nonfinite 'ignore'"),
    ("normalization: zca", "normalization: unknown normalization 'zca'"),
    ("augment: [flip]", "augment: expected a word"),
    ("tta: maybe", "tta: expected true or false"),
    ("regularizers: [l2=abc]", "regularizers: bad rule 'l2=abc': coefficient 'abc' is not a"),
    ("regularizers: [{method: wd}]", "a mapping needs method and coef"),
    ("reg: l3=1e-4", "unknown method 'l3'"),
    ("reg: wd=1e-4@layer4.*", "write name:layer4.*"),
    ("foo: 1", "unknown setting 'foo'"),
    ("batchsize: 32", "unknown setting 'batchsize' (did you mean batch-size"),
    ("preset: fastest", "unknown preset 'fastest'; choose one of: tutorial"),
    ("- lr: 0.1", "must hold a mapping of setting: value"),
    ("lr: [0.1", "is not valid YAML"),
    ("image_size: 8", "model 'tutorial-resnet' needs --image-size >= 32"),
    ("train_limit: 10", "--train-limit 10 is smaller than --batch-size 64"),
    ("data_dir: /nonexistent/cifar", "data dir /nonexistent/cifar does not exist"),
    ("model: airbench\nwidths: [16, 64]", "--widths takes three widths, one per conv group"),
    ("model: airbench\nwidths: [16, 64.5, 128]", "widths: expected a whole number"),
    ("model: airbench\nwidths: [0, 64, 128]", "widths must be >= 1 (got 0)"),
    ("widths: [16, 64, 128]", "--widths sets an airbench network's widths; model "
                              "'tutorial-resnet' has its own: drop --widths"),
]

BAD_FLAGS = [
    (["--lr", "nan"], "--lr: 'nan' is not a finite number"),
    (["--l2", "inf"], "--l2: 'inf' is not a finite number"),
    (["--lr", "-0.1"], "--lr must be > 0"),
    (["--eval-batch-size", "0"], "--eval-batch-size must be >= 1"),
    (["--checkpoint-every", "0"], "--checkpoint-every must be >= 1"),
    (["--reg", "l2=nan"], "the coefficient must be a finite number >= 0"),
    (["--epochs", "-1"], "--epochs must be > 0"),
    (["--lr-milestones", "0.5,x"], "--lr-milestones: 'x' is not a number"),
    (["--lr-milestones", "a"], "--lr-milestones: 'a' is not a number (e.g. 0.5,0.75)"),
    (["--train-limit", "abc"], "--train-limit: 'abc' is not a number (e.g. 5000)"),
    (["--model", "airbench", "--widths", "a,64,128"],
     "--widths: 'a' is not a number (e.g. 32,64,128)"),
    (["--model", "resnet18", "--widths", "16,64,128"],
     "model 'resnet18' has its own: drop --widths or use --model airbench"),
    (["--config", "/nonexistent.yaml"], "config file /nonexistent.yaml not found"),
    (["--resume", "/nonexistent/run"], "holds no run to resume"),
    (["--precision", "fp16", "--device", "cpu"], "--precision fp16 needs a CUDA GPU"),
]


def run(capsys, argv: list[str]) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own errors (an unknown flag)
        code = e.code
    return code, capsys.readouterr().err


def one_line_error(capsys, tmp_path: Path, argv: list[str], needle: str) -> None:
    runs = tmp_path / "runs"
    code, err = run(capsys, ["train", "--runs-dir", str(runs), *argv])
    assert code == 2, (code, err)
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("reglab: error: ") and "Traceback" not in err
    assert needle in err, err
    assert not runs.exists() or not any(runs.iterdir())  # no run directory left behind


@pytest.mark.parametrize(("text", "needle"), BAD_FILES)
def test_bad_config_files_are_one_clear_line(capsys, tmp_path, text, needle):
    path = tmp_path / "run.yaml"
    path.write_text(text + "\n")
    one_line_error(capsys, tmp_path, ["--config", str(path)], needle)
    if needle.startswith(("model '", "--train-limit", "data dir", "--widths")):
        return  # rules between settings, and the data folder: named by their flags
    err = run(capsys, ["train", "--config", str(path), "--runs-dir", str(tmp_path / "r")])[1]
    assert str(path) in err  # which file holds the bad value


@pytest.mark.parametrize(("argv", "needle"), BAD_FLAGS)
def test_bad_flags_are_one_clear_line(capsys, tmp_path, argv, needle):
    one_line_error(capsys, tmp_path, argv, needle)


def test_a_binary_config_file(capsys, tmp_path):
    path = tmp_path / "run.yaml"
    path.write_bytes(b"\xff\xfe\x00lr")
    one_line_error(capsys, tmp_path, ["--config", str(path)], "is not a text file")


def test_no_traceback_from_the_console_script(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("l2: 1e-4\nlr: fast\n")
    proc = subprocess.run([sys.executable, "-m", "reglab", "train", "--config", str(path)],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr == f"reglab: error: {path}: lr: 'fast' is not a number (e.g. 0.01)\n"
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("spelling", ["1e-4", "1.0e-4", ".0001", "1E-4", "0.0001", "1.e-4",
                                      "'1e-4'", "1_0e-5"])  # fmt: skip
def test_numbers_in_any_common_yaml_spelling(tmp_path, spelling):
    path = tmp_path / "run.yaml"
    path.write_text(f"l2: {spelling}\nsteps: 2e4\nbatch_size: '64'\nlr: 1e-2\n")
    cfg = build_config(None, load_config_file(path))
    assert cfg.l2 == pytest.approx(1e-4, rel=1e-12) and isinstance(cfg.l2, float)
    assert cfg.steps == 20_000 and isinstance(cfg.steps, int)
    assert cfg.batch_size == 64 and cfg.lr == 0.01


def test_preset_in_a_file_applies_and_flags_win(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("preset: quick\nlr: 0.3\nepochs: 2\n")
    file_values = load_config_file(path)
    cfg = build_config(None, file_values)
    assert (cfg.preset, cfg.model, cfg.lr, cfg.epochs) == ("quick", "airbench", 0.3, 2.0)
    assert cfg.label_smoothing == PRESETS["quick"]["label_smoothing"]  # from the preset
    cfg = build_config(None, file_values, {"lr": "0.5", "steps": "10"})
    assert (cfg.lr, cfg.steps, cfg.epochs) == (0.5, 10, None)  # flags > file; --steps wins
    cfg = build_config(None, file_values, {"preset": "gpu"})
    assert (cfg.preset, cfg.model, cfg.lr) == ("gpu", "airbench94", 0.3)  # --preset > file's
    assert build_config(None, {"lr": 0.02}).lr == 0.02  # defaults < file


def test_the_config_a_run_saves_reloads_to_the_same_config(tmp_path):
    import yaml

    cfg = build_config("quick", None, {"reg": ["wd=5e-4@conv.weight"], "lr_milestones": "0.3,0.6"})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    assert build_config(None, load_config_file(path)) == cfg
