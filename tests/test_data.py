"""Tests of reglab.data.cifar10: decoding, splits, verification, errors, download, real data."""

from __future__ import annotations

import hashlib
import io
import math
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, write_fake_cifar

from reglab.data import cifar10
from reglab.data.cifar10 import (
    CLASSES,
    MEAN,
    DataError,
    default_data_dir,
    load_cifar10,
    resolve_data_dir,
)


def _error(**kwargs) -> str:
    """The message of the DataError ``load_cifar10(**kwargs)`` raises; checks it is one line."""
    with pytest.raises(DataError) as info:
        load_cifar10(**kwargs)
    message = str(info.value)
    assert "\n" not in message and "\r" not in message, message
    return message


def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args, **kwargs):
        raise urllib.error.URLError("no network here")

    monkeypatch.setattr(urllib.request, "urlopen", fail)


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


# ----------------------------------------------------------------------------------- decoding


@pytest.mark.parametrize(
    ("layout", "sub"),
    [("bin", None), ("bin", "cifar-10-batches-bin"), ("py", "cifar-10-batches-py"), ("py", None)],
)
def test_loads_fake_layouts(fake_cifar, layout, sub):
    fake = fake_cifar(layout, sub)
    data = load_cifar10(fake.root, download=False)
    assert data.val_split == "test"
    assert data.source == fake.folder
    assert data.classes == CLASSES
    assert data.train_images.shape == (100, 3, 32, 32)
    assert data.val_images.shape == (10, 3, 32, 32)
    for images, labels in [
        (data.train_images, data.train_labels),
        (data.val_images, data.val_labels),
    ]:
        assert images.dtype == torch.uint8 and images.is_contiguous()
        assert labels.dtype == torch.int64 and labels.shape == (len(images),)
    np.testing.assert_array_equal(data.train_images.numpy(), fake.train_images)
    np.testing.assert_array_equal(data.train_labels.numpy(), fake.train_labels)
    np.testing.assert_array_equal(data.val_images.numpy(), fake.test_images)
    np.testing.assert_array_equal(data.val_labels.numpy(), fake.test_labels)


def test_binary_record_layout(fake_cifar):
    """Pixel (c, y, x) of record j is byte j*3073 + 1 + c*1024 + y*32 + x of the file."""
    fake = fake_cifar("bin")
    data = load_cifar10(fake.root, download=False)
    raw = np.frombuffer(fake.path(2).read_bytes(), dtype=np.uint8)
    for j, c, y, x in [(0, 0, 0, 0), (3, 0, 0, 1), (3, 0, 1, 0), (7, 1, 5, 9), (19, 2, 31, 31)]:
        offset = j * 3073
        assert data.train_labels[20 + j] == raw[offset]
        assert data.train_images[20 + j, c, y, x] == raw[offset + 1 + c * 1024 + y * 32 + x]


def test_python_row_layout(fake_cifar):
    import pickle

    fake = fake_cifar("py", "cifar-10-batches-py")
    data = load_cifar10(fake.root, download=False)
    with open(fake.path(3), "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    row = batch[b"data"][4]
    assert data.train_labels[40 + 4] == batch[b"labels"][4]
    assert data.train_images[44, 0, 0, 1] == row[1]  # R plane first
    assert data.train_images[44, 1, 2, 3] == row[1024 + 2 * 32 + 3]  # then G
    assert data.train_images[44, 2, 31, 0] == row[2048 + 31 * 32]  # then B


def test_binary_layout_preferred_over_python(fake_cifar):
    fake_cifar("py", "cifar-10-batches-py", seed=1)
    fake = fake_cifar("bin", "cifar-10-batches-bin", seed=2)
    data = load_cifar10(fake.root, download=False)
    assert data.source == fake.folder
    np.testing.assert_array_equal(data.train_images.numpy(), fake.train_images)


# ------------------------------------------------------------------------------------- splits


def test_holdout_takes_last_images_and_skips_test_file(fake_cifar, monkeypatch):
    fake = fake_cifar("bin")
    # A test file that would fail verification proves the holdout path never reads it.
    monkeypatch.setitem(cifar10.BINARY_MD5, "test_batch.bin", "0" * 32)
    data = load_cifar10(fake.root, holdout=30, download=False)  # spans batches 4 and 5
    assert data.val_split == "holdout"
    np.testing.assert_array_equal(data.train_images.numpy(), fake.train_images[:70])
    np.testing.assert_array_equal(data.train_labels.numpy(), fake.train_labels[:70])
    np.testing.assert_array_equal(data.val_images.numpy(), fake.train_images[70:])
    np.testing.assert_array_equal(data.val_labels.numpy(), fake.train_labels[70:])
    assert data.val_images.is_contiguous() and data.val_labels.dtype == torch.int64
    assert "MD5 mismatch" in _error(data_dir=fake.root, download=False)


@pytest.mark.parametrize("layout", ["bin", "py"])
def test_train_limit(fake_cifar, layout):
    fake = fake_cifar(layout)
    data = load_cifar10(fake.root, train_limit=25, download=False)
    np.testing.assert_array_equal(data.train_images.numpy(), fake.train_images[:25])
    assert data.val_images.shape[0] == 10
    # The limit applies after the holdout is removed, and never takes holdout images.
    data = load_cifar10(fake.root, holdout=30, train_limit=1000, download=False)
    np.testing.assert_array_equal(data.train_labels.numpy(), fake.train_labels[:70])
    np.testing.assert_array_equal(data.val_labels.numpy(), fake.train_labels[70:])


def test_train_limit_reads_only_needed_batches(fake_cifar, monkeypatch):
    fake = fake_cifar("bin")
    monkeypatch.setitem(cifar10.BINARY_MD5, "data_batch_3.bin", "0" * 32)
    data = load_cifar10(fake.root, train_limit=40, download=False)
    assert data.train_images.shape[0] == 40
    assert "data_batch_3.bin" in _error(data_dir=fake.root, train_limit=41, download=False)


@pytest.mark.parametrize(("holdout", "train_limit"), [(100, None), (500, None), (-1, None), (0, 0)])
def test_bad_holdout_or_limit(fake_cifar, holdout, train_limit):
    fake = fake_cifar("bin")
    message = _error(data_dir=fake.root, holdout=holdout, train_limit=train_limit, download=False)
    assert ("holdout" if train_limit is None else "train_limit") in message


# ------------------------------------------------------------------------------ verification


@pytest.mark.parametrize("layout", ["bin", "py"])
def test_md5_mismatch_names_file(fake_cifar, layout):
    fake = fake_cifar(layout)
    path = fake.path(3)
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF  # same size, different content
    path.write_bytes(bytes(raw))
    message = _error(data_dir=fake.root, download=False)
    assert path.name in message and "MD5 mismatch" in message and str(fake.folder) in message


def test_truncated_file(fake_cifar):
    fake = fake_cifar("bin")
    path = fake.path(2)
    path.write_bytes(path.read_bytes()[:1234])
    message = _error(data_dir=fake.root, download=False)
    assert "data_batch_2.bin" in message and "truncated" in message and "1234 bytes" in message


def test_real_md5_table_rejects_fake_files(tmp_path):
    """Without patched tables, fake files fail verification against the official sums."""
    write_fake_cifar(tmp_path)
    assert "MD5 mismatch" in _error(data_dir=tmp_path, download=False)


def test_missing_test_set_needs_holdout(fake_cifar, monkeypatch):
    _no_network(monkeypatch)
    fake = fake_cifar("bin", test=False)
    # A partial test file must not stand in for the test set.
    (fake.folder / "test_batch_first1000.bin").write_bytes(fake.path(1).read_bytes())
    message = _error(data_dir=fake.root)  # download allowed: still no silent fix-up
    assert "no test set" in message and "--holdout" in message and "test_batch.bin" in message
    assert load_cifar10(fake.root, holdout=20).val_split == "holdout"


@pytest.mark.parametrize("layout", ["bin", "py"])
def test_missing_training_file_named(fake_cifar, layout):
    fake = fake_cifar(layout)
    fake.path(4).unlink()
    message = _error(data_dir=fake.root, download=False)
    # Exactly the missing file is listed, with the folder it belongs in.
    assert message.startswith(f"{fake.path(4).name} missing from {fake.folder}"), message


def test_no_data_no_download(tmp_path):
    message = _error(data_dir=tmp_path / "empty", download=False)
    assert "not found" in message and "data_batch_1.bin" in message


def test_source_names_no_machine_path():
    for path in (REPO_ROOT / "src").rglob("*.py"):
        text = path.read_text()
        for bad in ("/work", "../shared", "shared/cifar10"):
            assert bad not in text, f"{path} names a machine path ({bad!r})"


# ----------------------------------------------------------------------------------- download


def _archive_of(fake_folder: Path) -> bytes:
    """A .tar.gz laid out like the official one (cifar-10-batches-bin/...)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in sorted(fake_folder.iterdir()):
            tar.add(path, arcname=f"cifar-10-batches-bin/{path.name}")
    return buffer.getvalue()


@pytest.fixture
def served_archive(fake_cifar, monkeypatch, tmp_path):
    """Fake batches packed as the archive, served by a patched urlopen; returns (fake, urls)."""
    fake = fake_cifar("bin", sub="../served")
    payload = _archive_of(fake.folder)
    url = "https://example.invalid/cifar-10-binary.tar.gz"
    monkeypatch.setattr(cifar10, "ARCHIVE", (url, hashlib.md5(payload).hexdigest()))
    requested: list[str] = []

    def urlopen(u, timeout=None):
        requested.append(u)
        return io.BytesIO(payload)

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    return fake, requested


def test_download_when_absent(served_archive, tmp_path):
    fake, requested = served_archive
    root = tmp_path / "cache"
    data = load_cifar10(root, holdout=0)
    assert requested == [cifar10.ARCHIVE[0]]
    assert data.source == root / "cifar-10-batches-bin"
    np.testing.assert_array_equal(data.train_images.numpy(), fake.train_images)
    np.testing.assert_array_equal(data.val_images.numpy(), fake.test_images)
    assert not list(root.rglob("*.part"))
    # The kept archive serves later runs without the network.
    calls_before = requested.copy()
    (data.source / "data_batch_5.bin").unlink()
    load_cifar10(root, download=False)
    assert requested == calls_before


def test_download_fills_gaps_without_overwriting(served_archive, tmp_path):
    fake, _ = served_archive
    root = tmp_path / "mine"
    write_fake_cifar(root, seed=0)  # same content as served (same seed), md5s already patched
    (root / "data_batch_5.bin").unlink()
    (root / "notes.txt").write_text("mine")
    before = {p.name: p.stat().st_mtime_ns for p in root.iterdir()}
    data = load_cifar10(root)
    assert data.source == root
    assert (root / "data_batch_5.bin").is_file() and (root / "notes.txt").read_text() == "mine"
    for name, mtime in before.items():
        assert (root / name).stat().st_mtime_ns == mtime
    np.testing.assert_array_equal(data.train_labels.numpy(), fake.train_labels)


def test_offline_download_leaves_nothing(tmp_path, monkeypatch):
    _no_network(monkeypatch)
    root = tmp_path / "cache"
    message = _error(data_dir=root)
    assert "download failed" in message and "no network here" in message
    assert "REGLAB_DATA" in message and str(root) in message
    assert _files(tmp_path) == []


def test_interrupted_download_leaves_nothing(tmp_path, monkeypatch):
    class Broken(io.BytesIO):
        def read(self, size=-1):
            if self.tell():
                raise ConnectionResetError("connection reset")
            return super().read(1000)

    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: Broken(b"x" * 5000))
    assert "connection reset" in _error(data_dir=tmp_path)
    assert _files(tmp_path) == []


def test_corrupt_download_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: io.BytesIO(b"junk"))
    assert "MD5" in _error(data_dir=tmp_path)
    assert _files(tmp_path) == []


# ----------------------------------------------------------------------------------- data dir


def test_data_dir_resolution(tmp_path, monkeypatch, fake_cifar):
    monkeypatch.setenv("REGLAB_DATA", str(tmp_path / "env"))
    assert default_data_dir() == tmp_path / "env"
    assert resolve_data_dir(None) == tmp_path / "env"
    assert resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_data_dir("~/x") == tmp_path / "home" / "x"
    monkeypatch.delenv("REGLAB_DATA")
    assert default_data_dir() == tmp_path / "home" / ".cache" / "reglab"
    fake = fake_cifar("bin")
    monkeypatch.setenv("REGLAB_DATA", str(fake.root))
    assert load_cifar10(download=False).source == fake.root


# ---------------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def real_holdout(real_data_dir):
    return load_cifar10(real_data_dir, holdout=10000, download=False)


def test_real_holdout_split(real_holdout):
    data = real_holdout
    assert data.val_split == "holdout"
    assert data.train_images.shape == (40000, 3, 32, 32)
    assert data.val_images.shape == (10000, 3, 32, 32)
    assert data.train_images.dtype == data.val_images.dtype == torch.uint8
    assert data.train_labels.dtype == data.val_labels.dtype == torch.int64
    counts = torch.bincount(data.train_labels[:10000], minlength=10).tolist()
    assert counts == [1005, 974, 1032, 1016, 999, 937, 1030, 1001, 1025, 981]


def test_real_channel_means(real_holdout):
    data = real_holdout
    sums = sum(
        x.sum(dim=(0, 2, 3), dtype=torch.float64) for x in (data.train_images, data.val_images)
    )
    mean = sums / (50000 * 32 * 32 * 255)
    np.testing.assert_allclose(mean.numpy(), MEAN, atol=1e-4)


def test_real_no_test_set_is_an_error(real_data_dir):
    if (real_data_dir / "test_batch.bin").is_file():
        pytest.skip("this copy has the official test_batch.bin")
    assert "--holdout" in _error(data_dir=real_data_dir, download=False)


def test_per_image_standardize_matches_tf_formula() -> None:
    """tf.image.per_image_standardization: (x - mean) / max(std, 1/sqrt(N)), per image."""
    from reglab.data.pipeline import per_image_standardize

    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 8, 8, generator=g, dtype=torch.float64) * 255
    x[2] = 7.0  # a flat image: std 0, so the floor 1/sqrt(192) applies
    out = per_image_standardize(x)
    for i in range(3):
        v = x[i].flatten().numpy()
        expected = (v - v.mean()) / max(v.std(), 1 / math.sqrt(v.size))  # numpy: population std
        torch.testing.assert_close(out[i].flatten(), torch.from_numpy(expected))
