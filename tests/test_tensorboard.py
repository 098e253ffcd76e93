"""TensorBoard event files and the CSV export: what is written reads back, with tensorboard's own
event readers, as the metrics.jsonl rows; texts and hyperparameters land in the run's folder; a
resumed run leaves no stale points; a missing package is one line, not a crash."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from reglab.training.rundir import RunDir, read_metrics
from reglab.training.tensorboard_log import (
    CSV_FIRST_COLUMNS,
    TensorBoardLog,
    TensorBoardUnavailable,
    config_hparams,
    export_run,
    metrics_csv,
    row_scalars,
    summary_metrics,
)


@pytest.fixture
def tb_readers():
    """tensorboard's event readers, or a skip naming the fix."""
    pytest.importorskip(
        "tensorboard", reason="tensorboard is not installed: pip install -e '.[test]'"
    )
    from tensorboard.backend.event_processing import event_accumulator, event_file_loader

    return event_accumulator, event_file_loader


def accumulate(run_dir: Path, tb_readers):
    """An EventAccumulator over RUN_DIR/tensorboard keeping every point."""
    event_accumulator, _ = tb_readers
    acc = event_accumulator.EventAccumulator(
        str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0}
    )
    acc.Reload()
    return acc


def raw_scalars(run_dir: Path, tb_readers) -> list[tuple[str, int, float]]:
    """(tag, step, value) of every scalar in the event files as stored, no purging or sampling:
    what TensorBoard's Rust data server reads."""
    _, event_file_loader = tb_readers
    out = []
    for path in sorted((run_dir / "tensorboard").glob("*tfevents*")):
        for event in event_file_loader.LegacyEventFileLoader(str(path)).Load():
            for value in event.summary.value if event.HasField("summary") else []:
                if value.WhichOneof("value") == "simple_value":
                    out.append((value.tag, event.step, value.simple_value))
    return out


def f32(x: float) -> float:
    """``x`` as TensorBoard stores a scalar."""
    return float(np.float32(x))


def train_row(step: int, **extra) -> dict:
    row = {
        "step": step, "epoch": round(step / 50, 4), "split": "train", "loss": 2.3 / step,
        "acc": min(1.0, step / 400), "lr": 0.1 / step, "penalty": 0.01 + 1e-5 * step,
        "elapsed": 0.37 * step, "s_per_batch": 0.0123, "grad_norm": 1.5 + step / 1000,
        "weight_norm/conv.weight": 12.0 - step / 100, "weight_norm/bn.bias": 0.25,
        "eff_lr_bn": 3e-4 * step, "sparsity/l1": step / 1000,
    }  # fmt: skip
    row.update(extra)
    return row


def val_row(step: int, split: str = "holdout", **extra) -> dict:
    row = {
        "step": step, "epoch": round(step / 50, 4), "split": split, "loss": 2.0 / step,
        "acc": min(1.0, step / 500), "lr": 0.1 / step, "penalty": 0.02 + 1e-5 * step,
        "elapsed": 0.37 * step + 0.5,
    }  # fmt: skip
    row.update(extra)
    return row


def sample_rows() -> list[dict]:
    rows = []
    for step in (100, 200, 300, 400):
        rows.append(train_row(step))
        if step % 200 == 0:
            rows.append(val_row(step))
    # a validation at a step without a train row, a final test row, and keys that are no scalar
    rows.append(val_row(450, note="not a number", best=True, missing=None))
    rows.append(val_row(450, split="test", ece=0.031))
    return rows


def write_run(path: Path, rows: list[dict], **log_kw) -> TensorBoardLog:
    """Rows through RunDir (metrics.jsonl) and TensorBoardLog, as the loop does."""
    run = RunDir(path, mode="overwrite")
    tb = TensorBoardLog(run.path, **log_kw)
    for row in rows:
        run.log(row)
        tb.row(row)
    return tb


# --------------------------------------------------------------------------------------------
# scalars


def test_row_tags():
    tags = row_scalars(train_row(100))
    assert set(tags) == {
        "train/loss", "train/acc", "train/penalty", "train/elapsed", "train/s_per_batch",
        "lr", "epoch", "grad_norm", "weight_norm/conv.weight", "weight_norm/bn.bias",
        "eff_lr_bn", "sparsity/l1",
    }  # fmt: skip
    assert tags["train/loss"] == 0.023 and tags["weight_norm/bn.bias"] == 0.25
    val = row_scalars(val_row(200, note="x", best=True, missing=None, ece=0.1))
    assert set(val) == {
        "holdout/loss", "holdout/acc", "holdout/penalty", "holdout/elapsed", "lr", "epoch",
        "holdout/ece",
    }  # fmt: skip
    assert set(row_scalars(val_row(450, split="test"))) >= {"test/acc", "test/loss"}


def test_scalars_read_back_equal_metrics_jsonl(tmp_path, tb_readers):
    tb = write_run(tmp_path / "run", sample_rows())
    tb.close()
    rows = read_metrics(tmp_path / "run")  # what the run directory holds
    assert len(rows) == len(sample_rows())

    expected: dict[str, dict[int, float]] = {}  # tag -> step -> value
    for row in rows:
        for tag, value in row_scalars(row).items():
            if row["step"] in expected.get(tag, {}):  # lr, epoch: once per step
                continue
            expected.setdefault(tag, {})[row["step"]] = value
    acc = accumulate(tmp_path / "run", tb_readers)
    assert set(acc.Tags()["scalars"]) == set(expected)
    for tag, points in expected.items():
        events = acc.Scalars(tag)
        assert [e.step for e in events] == sorted(points), tag  # one point per step, in order
        for e in events:
            assert e.value == f32(points[e.step]), (tag, e.step)

    # every number of every row is in the events, under its tag (none lost, none added)
    for row in rows:
        for tag, value in row_scalars(row).items():
            assert any(e.step == row["step"] and e.value == f32(value) for e in acc.Scalars(tag))
    assert {
        "train/loss", "holdout/acc", "test/acc", "lr", "weight_norm/conv.weight", "eff_lr_bn",
        "sparsity/l1", "train/penalty", "holdout/penalty",
    } <= set(expected)  # fmt: skip
    assert [e.step for e in acc.Scalars("lr")] == [100, 200, 300, 400, 450]  # once per step
    assert not {"step", "split", "holdout/note", "holdout/best", "holdout/missing"} & set(expected)
    # the stored file has no duplicate (tag, step) either
    stored = [(tag, step) for tag, step, _ in raw_scalars(tmp_path / "run", tb_readers)]
    assert len(stored) == len(set(stored)) == sum(len(p) for p in expected.values())


def test_texts_are_code_blocks(tmp_path, tb_readers):
    config = {"model": "tutorial-resnet", "l2": 0.0005, "regularizers": ["l1=1e-5@conv"],
              "lr_milestones": (0.5, 0.75)}  # fmt: skip
    table = "rule        tensors\nl2=5e-4     conv.weight (3 tensors)\n"
    with TensorBoardLog(tmp_path) as tb:
        tb.text("config", config)
        tb.text("regularization", table)
        tb.text("odd", "a ``` fence inside")
    acc = accumulate(tmp_path, tb_readers)

    def text(tag):
        (event,) = acc.Tensors(f"{tag}/text_summary")
        return event.step, event.tensor_proto.string_val[0].decode()

    step, shown = text("config")
    assert step == 0
    assert shown == (
        "```\nmodel: tutorial-resnet\nl2: 0.0005\nregularizers:\n- l1=1e-5@conv\n"
        "lr_milestones:\n- 0.5\n- 0.75\n```"
    )
    assert text("regularization") == (0, f"```\n{table.rstrip()}\n```")
    assert text("odd")[1] == "````\na ``` fence inside\n````"


def test_hparams_in_the_same_folder(tmp_path, tb_readers):
    from tensorboard.plugins.hparams import metadata

    config = {"model": "airbench", "l2": 5e-4, "regularizers": ["l1=1e-5@conv", "dropout=0.1"],
              "lr_milestones": [0.5, 0.75], "epochs": None, "tta": True, "runs_dir": "runs",
              "name": "x"}  # fmt: skip
    summary = {"final_val_acc": 0.81, "best_val_acc": 0.83, "best_val_step": 400, "model": "m"}
    tb = write_run(tmp_path / "run", sample_rows())
    tb.hparams(config_hparams(config), summary_metrics(summary))
    tb.close()

    folder = tmp_path / "run" / "tensorboard"
    assert [p for p in folder.iterdir() if p.is_dir()] == []  # no timestamped sub-run
    acc = accumulate(tmp_path / "run", tb_readers)
    content = acc.PluginTagToContent(metadata.PLUGIN_NAME)
    assert set(content) == {metadata.SESSION_START_INFO_TAG}  # no experiment: runs combine
    hp = metadata.parse_session_start_info_plugin_data(
        content[metadata.SESSION_START_INFO_TAG]
    ).hparams
    assert hp["l2"].number_value == 5e-4
    assert hp["reg/l1@conv"].number_value == 1e-5 and hp["reg/dropout"].number_value == 0.1
    assert hp["model"].string_value == "airbench" and hp["tta"].bool_value is True
    assert json.loads(hp["lr_milestones"].string_value) == [0.5, 0.75]
    assert json.loads(hp["regularizers"].string_value) == ["l1=1e-5@conv", "dropout=0.1"]
    assert not {"epochs", "runs_dir", "name"} & set(hp)
    metrics = {tag: acc.Scalars(tag) for tag in acc.Tags()["scalars"] if tag.startswith("hparam/")}
    assert set(metrics) == {"hparam/final_val_acc", "hparam/best_val_acc"}
    (final,) = metrics["hparam/final_val_acc"]
    assert final.step == 450 and final.value == f32(0.81)  # at the last row's step


def test_export_reads_an_old_config_as_this_version_does(tmp_path, tb_readers):
    """A record stored before --low-res-epochs N became --low-res-fraction: its exported
    hyperparameters carry the new name with N / epochs (as resume and the reports read it) and
    the settings it predates at their defaults; the config text stays the file as stored."""
    from tensorboard.plugins.hparams import metadata

    from reglab.config import SETTINGS

    run = tmp_path / "old"
    run.mkdir()
    stored = "model: airbench\nepochs: 8\nlow_res_epochs: 4\nlow_res_size: 24\n"
    (run / "config.yaml").write_text(stored)
    (run / "metrics.jsonl").write_text(json.dumps(train_row(100)) + "\n")
    export_run(run)
    acc = accumulate(run, tb_readers)
    hp = metadata.parse_session_start_info_plugin_data(
        acc.PluginTagToContent(metadata.PLUGIN_NAME)[metadata.SESSION_START_INFO_TAG]
    ).hparams
    assert hp["low_res_fraction"].number_value == 4 / 8 and "low_res_epochs" not in hp
    assert hp["lr"].number_value == SETTINGS["lr"].default  # a setting it lacks: its default
    (event,) = acc.Tensors("config/text_summary")
    assert stored.strip() in event.tensor_proto.string_val[0].decode()


def test_resume_drops_points_after_the_checkpoint(tmp_path, tb_readers):
    """Crash after step 400 with a checkpoint at 200; the resumed process redoes 300 and 400
    (other values) and goes on. Every reader then sees steps <= 200 from the first process and
    later steps from the second, once each."""
    first = [train_row(s) for s in (100, 200, 300, 400)] + [val_row(200), val_row(400)]
    tb = write_run(tmp_path / "run", first)
    tb.text("config", "first")
    tb.flush()  # a killed process: no close
    again = [train_row(s, loss=9.0 + s) for s in (300, 400, 500)] + [val_row(400, acc=0.99)]
    resumed = TensorBoardLog(tmp_path / "run", resume_step=200)
    resumed.text("config", "second")
    for row in again:
        resumed.row(row)
    resumed.close()

    assert len(list((tmp_path / "run" / "tensorboard").glob("*tfevents*"))) == 1
    acc = accumulate(tmp_path / "run", tb_readers)
    loss = [(e.step, e.value) for e in acc.Scalars("train/loss")]
    assert loss == [(100, f32(0.023)), (200, f32(0.0115)), (300, f32(309.0)), (400, f32(409.0)),
                    (500, f32(509.0))]  # fmt: skip
    assert [(e.step, e.value) for e in acc.Scalars("holdout/acc")] == [
        (200, f32(0.4)),
        (400, f32(0.99)),
    ]
    texts = [(e.step, e.tensor_proto.string_val[0]) for e in acc.Tensors("config/text_summary")]
    assert texts == [(0, b"```\nfirst\n```"), (201, b"```\nsecond\n```")]
    # the same as stored, without any reader's purging: one point per (tag, step)
    stored = raw_scalars(tmp_path / "run", tb_readers)
    assert len({(t, s) for t, s, _ in stored}) == len(stored)
    assert ("train/loss", 300, f32(309.0)) in stored
    assert ("holdout/acc", 400, f32(0.4)) not in stored

    # resuming once more from the same checkpoint gives the same picture
    with TensorBoardLog(tmp_path / "run", resume_step=200) as tb:
        for row in again:
            tb.row(row)
    acc = accumulate(tmp_path / "run", tb_readers)
    assert [(e.step, e.value) for e in acc.Scalars("train/loss")] == loss
    assert [e.step for e in acc.Tensors("config/text_summary")] == [0]  # "second" was after 200


def test_a_new_run_replaces_old_event_files(tmp_path, tb_readers):
    write_run(tmp_path / "run", [train_row(100), train_row(200)]).close()
    write_run(tmp_path / "run", [train_row(100, loss=5.0)]).close()  # --overwrite
    acc = accumulate(tmp_path / "run", tb_readers)
    assert [(e.step, e.value) for e in acc.Scalars("train/loss")] == [(100, 5.0)]


# --------------------------------------------------------------------------------------------
# off, missing, broken


def test_disabled_writes_nothing(tmp_path):
    tb = TensorBoardLog(tmp_path, enabled=False)
    tb.text("config", {"a": 1})
    tb.row(train_row(100))
    tb.hparams({"l2": 1.0}, {"acc": 1.0})
    tb.close()
    assert not tb.enabled and not (tmp_path / "tensorboard").exists()


def test_missing_package_is_one_line_not_a_crash(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if not installed
    lines: list[str] = []
    tb = TensorBoardLog(tmp_path, say=lines.append)
    assert not tb.enabled and len(lines) == 1
    assert "pip install 'reglab[tensorboard]'" in lines[0] and "--no-tensorboard" in lines[0]
    tb.row(train_row(100))  # the run goes on
    tb.close()
    assert not (tmp_path / "tensorboard").exists()
    with pytest.raises(TensorBoardUnavailable, match=r"reglab\[tensorboard\]"):
        TensorBoardLog(tmp_path, required=True)
    assert TensorBoardLog(tmp_path, enabled=False, required=True).enabled is False  # not needed


def test_missing_package_default_notice_goes_to_stderr(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    TensorBoardLog(tmp_path)
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "TensorBoard logging is off" in err


def test_broken_torch_tensorboard_is_one_line(tmp_path, monkeypatch, tb_readers):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    lines: list[str] = []
    assert not TensorBoardLog(tmp_path, say=lines.append).enabled
    assert len(lines) == 1 and "does not import" in lines[0] and "\n" not in lines[0]


# --------------------------------------------------------------------------------------------
# CSV


def test_metrics_csv_equals_jsonl(tmp_path):
    rows = sample_rows()
    rows[-1]["detail"] = {"a": [1, 2]}
    run = RunDir(tmp_path / "run")
    for row in rows:
        run.log(row)
    path = metrics_csv(run.path)
    assert path == run.path / "metrics.csv"
    with path.open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        cells = list(reader)
    keys = {k for row in rows for k in row}
    assert header == [*CSV_FIRST_COLUMNS, *sorted(keys - set(CSV_FIRST_COLUMNS))]
    assert header[len(CSV_FIRST_COLUMNS):] == [
        "best", "detail", "ece", "eff_lr_bn", "grad_norm", "missing", "note", "s_per_batch",
        "sparsity/l1", "weight_norm/bn.bias", "weight_norm/conv.weight",
    ]  # fmt: skip
    assert len(cells) == len(rows)
    for row, line in zip(rows, cells):
        assert len(line) == len(header)
        for key, cell in zip(header, line):
            value = row.get(key)
            if value is None:
                assert cell == "", key
            elif isinstance(value, (bool, str)):
                assert cell == str(value)
            elif isinstance(value, (int, float)):
                assert float(cell) == value, key  # exact: numbers are written in full
                if isinstance(value, int):
                    assert cell == str(value)
            else:
                assert json.loads(cell) == value


def test_metrics_csv_of_an_old_run_dir(tmp_path):
    """An old run: fewer columns, given as the file, written elsewhere; fixed columns stay."""
    (tmp_path / "metrics.jsonl").write_text(
        json.dumps({"step": 10, "split": "train", "loss": 1.5, "acc": 0.25}) + "\n\n"
    )
    out = metrics_csv(tmp_path / "metrics.jsonl", out=tmp_path / "x.csv")
    lines = out.read_text().splitlines()
    assert lines == ["step,epoch,split,loss,acc,lr,penalty,elapsed", "10,,train,1.5,0.25,,,"]
    assert not (tmp_path / "x.csv.tmp").exists()


# --------------------------------------------------------------------------------------------
# a real run directory


def test_export_of_a_real_run_dir(tmp_path, tb_readers):
    """A run directory the training loop wrote: export_run writes its events and CSV, and the
    events equal its metrics.jsonl."""
    from conftest import synthetic_cifar

    from reglab.config import TrainConfig
    from reglab.training import train

    settings = dict(
        model="tutorial-resnet", image_size=32, batch_size=8, steps=2, optimizer="sgd", lr=0.05,
        l2=1e-3, regularizers=["l1=1e-5"], log_every=1, val_every=2, eval_batch_size=16,
        channels_last=False, device="cpu", audit=False,
    )  # fmt: skip
    fields = TrainConfig.__dataclass_fields__
    cfg = TrainConfig(**{k: v for k, v in settings.items() if k in fields}).validate()
    run = RunDir(tmp_path / "run")
    train(cfg, run_dir=run, data=synthetic_cifar(n_train=16, n_val=16), quiet=True)

    assert (run.path / "metrics.csv").is_file()  # the loop wrote events and the CSV itself
    written = (run.path / "metrics.csv").read_text()
    assert export_run(run.path) == run.path / "metrics.csv"  # an old run's export: the same
    assert (run.path / "metrics.csv").read_text() == written
    rows = read_metrics(run.path)
    acc = accumulate(run.path, tb_readers)
    for row in rows:
        for tag, value in row_scalars(row).items():
            points = {e.step: e.value for e in acc.Scalars(tag)}
            assert points[row["step"]] == f32(value), tag
    assert any(t.startswith("weight_norm/") for t in acc.Tags()["scalars"])
    assert {"config/text_summary", "regularization/text_summary"} <= set(acc.Tags()["tensors"])
    with (run.path / "metrics.csv").open(newline="") as f:
        assert [float(r["loss"]) for r in csv.DictReader(f)] == [r["loss"] for r in rows]
