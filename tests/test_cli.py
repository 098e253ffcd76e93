"""Bad input on the command line: exit status 2, one clear line on stderr, no traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from reglab.cli import main


def run_main(capsys, argv):
    code = None
    try:
        code = main(argv)
    except SystemExit as e:  # argparse errors exit directly
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--model", "resnet-9000"], "unknown model 'resnet-9000'"),
        (["--l2", "-1e-4"], "--l2 must be >= 0"),
        (["--batch-size", "0"], "--batch-size must be >= 1 (got 0)"),
        (["--data-dir", "/nonexistent/cifar"], "data dir /nonexistent/cifar does not exist"),
        (["--model", "tutorial-resnet", "--image-size", "16"], "needs --image-size >= 32"),
        (["--preset", "fastest"], "--preset: unknown preset 'fastest'; choose one of: tutorial"),
        (["--steps", "ten"], "--steps: 'ten' is not a number"),
        (["--optimizer", "lion"], "--optimizer: unknown optimizer 'lion'; choose one of: sgd"),
        (["--config", "/nonexistent.yaml"], "config file /nonexistent.yaml not found"),
        (["--lr-milestones", "a,b"], "--lr-milestones: 'a' is not a number"),
    ],
)
def test_bad_train_input_is_one_clear_line(capsys, tmp_path, argv, needle):
    code, _out, err = run_main(capsys, ["train", "--runs-dir", str(tmp_path), *argv])
    assert code == 2
    assert needle in err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    assert not any(tmp_path.iterdir())  # nothing was created


def test_missing_test_set_is_an_error_not_a_fallback(capsys, tmp_path, real_data_dir):
    code, _, err = run_main(capsys, ["train", "--data-dir", str(real_data_dir), "--runs-dir",
                                     str(tmp_path)])  # fmt: skip
    assert code == 2 and "--holdout 10000" in err and len(err.strip().splitlines()) == 1


def test_existing_run_directory_is_not_overwritten(capsys, tmp_path):
    run = tmp_path / "mine"
    run.mkdir()
    (run / "metrics.jsonl").write_text("precious\n")
    code, _, err = run_main(capsys, ["train", "--runs-dir", str(tmp_path), "--name", "mine"])
    assert code == 2 and "--overwrite" in err
    assert (run / "metrics.jsonl").read_text() == "precious\n"


def test_a_file_where_a_folder_goes_is_one_clear_line(capsys, tmp_path, real_data_dir):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("precious\n")
    for argv in (["train", "--runs-dir", str(a_file), "--data-dir", str(real_data_dir),
                  "--holdout", "100", "--train-limit", "256", "--steps", "1"],
                 ["export", str(tmp_path), "--compact-to", str(a_file)]):  # fmt: skip
        (tmp_path / "metrics.jsonl").write_text("")  # tmp_path passes as a run to export
        code, _, err = run_main(capsys, argv)
        assert code == 2, err
        assert "notes.txt" in err and "not a directory" in err, err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    code, _, err = run_main(capsys, ["export", str(a_file)])  # not a run: bad input, exit 2
    assert code == 2 and "has no metrics.jsonl: give run directories" in err, err
    assert a_file.read_text() == "precious\n"


@pytest.mark.parametrize("damage", ["- lr\n- 0.1\n", "lr: [0.1\n", "\udcff"])
def test_a_damaged_config_yaml_is_one_clear_line(capsys, tmp_path, damage):
    """A run whose config.yaml is no longer a YAML mapping (a list, broken YAML, binary bytes):
    resuming it and exporting it stop with one line naming the file, and change nothing."""
    run = tmp_path / "run"
    run.mkdir()
    config = run / "config.yaml"
    config.write_bytes(damage.encode("utf-8", "surrogateescape"))
    (run / "metrics.jsonl").write_text("")
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    for argv in (["train", "--resume", str(run)], ["export", str(run)]):
        code, _, err = run_main(capsys, argv)
        assert code == 2, err
        assert f"{config} " in err and "restore it or start a new run" in err, err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_console_script_reports_errors_without_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "reglab", "train", "--l2", "-1", "--runs-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip() == "reglab: error: --l2 must be >= 0 (got -1)"


def test_models_lists_the_registry(capsys):
    code, out, _ = run_main(capsys, ["models"])
    assert code == 0
    assert "tutorial-resnet" in out and "resnet18" in out and "airbench" in out


def test_a_run_stopped_before_training_leaves_no_directory(capsys, tmp_path, real_data_dir):
    argv = ["train", "--data-dir", str(real_data_dir), "--holdout", "10000", "--train-limit",
            "256", "--runs-dir", str(tmp_path), "--reg", "l2=1e-4@name:nothing.*"]  # fmt: skip
    code, _, err = run_main(capsys, argv)
    assert code == 2 and "matches no trainable parameter" in err
    assert not any(tmp_path.iterdir())


def test_a_reader_that_leaves_early_is_no_traceback():
    """reglab models | head: the pipe closes before reglab writes; it stops quietly with the
    status a shell gives a process killed by SIGPIPE (128 + 13), not a BrokenPipeError trace."""
    proc = subprocess.Popen([sys.executable, "-m", "reglab", "models"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)  # fmt: skip
    proc.stdout.close()  # before reglab has imported torch, let alone printed
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141
    assert err == ""


def test_the_first_commands_in_reglab_help_parse() -> None:
    """Each example under 'first commands' in `reglab --help` is a command line the parser takes
    (the text after two spaces is its comment), and the help prints them."""
    import shlex

    from reglab.cli import MAIN_EPILOG, build_parser

    lines = [line.strip() for line in MAIN_EPILOG.splitlines() if line.startswith("  reglab ")]
    assert len(lines) == 4
    for line in lines:
        argv = shlex.split(line.split("  ")[0])[1:]
        args = build_parser().parse_args(argv)
        assert args.command == argv[0]
    proc = subprocess.run([sys.executable, "-m", "reglab", "--help"], capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0 and "first commands:" in proc.stdout and lines[0] in proc.stdout
