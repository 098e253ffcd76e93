"""Tests of reglab.data.cifar10 on the real CIFAR-10 batches (skipped without them): layouts and
decoding, splits, verification and its messages, the download, the data dir.

Data dirs are made of symlinks to the real files, with corrupted copies where a test needs one.
The project machines have no official test_batch.bin: where a test set is needed, a stand-in
(data_batch_5.bin's bytes) is loaded with ``md5=stand_in_md5()`` (see conftest.py).
"""

from __future__ import annotations

import hashlib
import http.server
import math
import pickle
import socket
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, TRAIN_BIN, link_cifar10, stand_in_md5

from reglab.data.cifar10 import (
    ARCHIVE,
    ARCHIVE_NAME,
    BIN_DIR,
    CLASSES,
    MEAN,
    PY_DIR,
    DataError,
    default_data_dir,
    load_cifar10,
    resolve_data_dir,
)

N = 10_000  # images per batch file
TRAIN_PY = tuple(name.removesuffix(".bin") for name in TRAIN_BIN)


def _error(**kwargs) -> str:
    """The message of the DataError ``load_cifar10(**kwargs)`` raises; checks it is one line."""
    with pytest.raises(DataError) as info:
        load_cifar10(**kwargs)
    message = str(info.value)
    assert "\n" not in message and "\r" not in message, message
    return message


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _decode(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A binary batch decoded here: images (N, 3, 32, 32) uint8 and labels int64."""
    raw = np.fromfile(path, dtype=np.uint8).reshape(N, 3073)
    return raw[:, 1:].reshape(N, 3, 32, 32), raw[:, 0].astype(np.int64)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _same(tensor: torch.Tensor, array: np.ndarray) -> None:
    assert torch.equal(tensor, torch.from_numpy(np.ascontiguousarray(array)))


def _replace(path: Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` in a linked data dir (the link goes, the real file stays)."""
    path.unlink()
    path.write_bytes(payload)


@pytest.fixture(scope="module")
def batches(real_bin_dir) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The five real training batches, by name: (images, labels)."""
    return {name: _decode(real_bin_dir / name) for name in TRAIN_BIN}


@pytest.fixture(scope="module")
def py_version(tmp_path_factory, batches) -> tuple[Path, dict[str, str]]:
    """data_batch_1 of the python version, as the official one holds it (a pickled dict: b"data"
    (10000, 3072) uint8 rows, b"labels" a list), with the other batch names and test_batch as
    links to it (writing and reading pickles is slow); returns (folder, MD5 table for them)."""
    folder = tmp_path_factory.mktemp("py")
    images, labels = batches["data_batch_1.bin"]
    batch = {b"batch_label": b"training batch 1 of 5", b"labels": labels.tolist(),
             b"data": images.reshape(N, -1)}  # fmt: skip
    (folder / "data_batch_1").write_bytes(pickle.dumps(batch, protocol=2))
    for name in (*TRAIN_PY[1:], "test_batch"):
        (folder / name).symlink_to(folder / "data_batch_1")
    return folder, dict.fromkeys((*TRAIN_PY, "test_batch"), _md5(folder / "data_batch_1"))


def _link_py(py_version, folder: Path) -> dict[str, str]:
    """Link the python-version files into ``folder``; returns their MD5 table."""
    source, md5 = py_version
    folder.mkdir(parents=True, exist_ok=True)
    for name in md5:
        (folder / name).symlink_to(source / name)
    return md5


# ----------------------------------------------------------------------------------- decoding


@pytest.mark.parametrize(
    ("binary", "sub"), [(True, ""), (True, BIN_DIR), (False, PY_DIR), (False, "")]
)
def test_loads_each_layout(tmp_path, real_bin_dir, py_version, batches, binary, sub):
    folder = tmp_path / sub
    if binary:
        link_cifar10(real_bin_dir, folder, test=True)
        md5 = stand_in_md5()
    else:
        md5 = _link_py(py_version, folder)
    data = load_cifar10(tmp_path, train_limit=N, download=False, md5=md5)
    assert data.val_split == "test" and data.source == folder and data.classes == CLASSES
    assert data.train_images.shape == data.val_images.shape == (N, 3, 32, 32)
    for images, labels in [
        (data.train_images, data.train_labels),
        (data.val_images, data.val_labels),
    ]:
        assert images.dtype == torch.uint8 and images.is_contiguous()
        assert labels.dtype == torch.int64 and labels.shape == (len(images),)
    # what the files hold (the python ones are all data_batch_1's images; see py_version)
    x1, y1 = batches["data_batch_1.bin"]
    xt, yt = batches["data_batch_5.bin" if binary else "data_batch_1.bin"]
    _same(data.train_images, x1)
    _same(data.train_labels, y1)
    _same(data.val_images, xt)
    _same(data.val_labels, yt)


def test_binary_record_layout(tmp_path, real_bin_dir):
    """Pixel (c, y, x) of record j is byte j*3073 + 1 + c*1024 + y*32 + x of the file."""
    folder = link_cifar10(real_bin_dir, tmp_path)
    data = load_cifar10(folder, holdout=N, train_limit=N, download=False)
    raw = np.fromfile(real_bin_dir / "data_batch_5.bin", dtype=np.uint8)
    for j, c, y, x in [(0, 0, 0, 0), (3, 0, 0, 1), (3, 0, 1, 0), (7, 1, 5, 9), (9999, 2, 31, 31)]:
        offset = j * 3073
        assert data.val_labels[j] == raw[offset]
        assert data.val_images[j, c, y, x] == raw[offset + 1 + c * 1024 + y * 32 + x]


def test_python_row_layout(tmp_path, py_version):
    md5 = _link_py(py_version, tmp_path / PY_DIR)
    data = load_cifar10(tmp_path, holdout=N, train_limit=N, download=False, md5=md5)
    with open(py_version[0] / "data_batch_1", "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    row = batch[b"data"][44]
    assert data.train_labels[44] == batch[b"labels"][44]
    assert data.train_images[44, 0, 0, 1] == row[1]  # R plane first
    assert data.train_images[44, 1, 2, 3] == row[1024 + 2 * 32 + 3]  # then G
    assert data.train_images[44, 2, 31, 0] == row[2048 + 31 * 32]  # then B


def test_complete_binary_set_wins(tmp_path, real_bin_dir, py_version):
    _link_py(py_version, tmp_path / PY_DIR)
    link_cifar10(real_bin_dir, tmp_path / BIN_DIR)
    (tmp_path / "data_batch_1.bin").symlink_to(real_bin_dir / "data_batch_1.bin")  # partial set
    data = load_cifar10(tmp_path, holdout=N, train_limit=1, download=False)
    assert data.source == tmp_path / BIN_DIR


# ------------------------------------------------------------------------------------- splits


def test_holdout_is_the_last_images_and_skips_the_test_file(tmp_path, real_bin_dir, batches):
    # The stand-in test file fails the official MD5: the holdout run proves it is never read.
    folder = link_cifar10(real_bin_dir, tmp_path, test=True)
    data = load_cifar10(folder, holdout=15_000, train_limit=2, download=False)  # batches 1, 4, 5
    assert data.val_split == "holdout" and data.val_labels.shape == (15_000,)
    (x1, _), (x4, y4), (x5, y5) = (batches[f"data_batch_{i}.bin"] for i in (1, 4, 5))
    _same(data.train_images, x1[:2])
    _same(data.val_images, np.concatenate([x4[5000:], x5]))
    _same(data.val_labels, np.concatenate([y4[5000:], y5]))
    assert data.val_images.is_contiguous() and data.val_labels.dtype == torch.int64
    message = _error(data_dir=folder, train_limit=1, download=False)
    assert message.startswith(f"test_batch.bin in {folder}: MD5 mismatch"), message


def test_train_limit(tmp_path, real_bin_dir, batches):
    folder = link_cifar10(real_bin_dir, tmp_path, test=True)
    data = load_cifar10(folder, train_limit=25, download=False, md5=stand_in_md5())
    _same(data.train_images, batches["data_batch_1.bin"][0][:25])
    assert data.val_split == "test" and len(data.val_labels) == N
    # The limit applies after the holdout is removed, and never takes holdout images.
    data = load_cifar10(folder, holdout=15_000, train_limit=49_000, download=False)
    (x1, _), (x4, y4), (x5, _) = (batches[f"data_batch_{i}.bin"] for i in (1, 4, 5))
    assert len(data.train_labels) == 35_000
    _same(data.train_images[:N], x1)
    _same(data.train_images[3 * N :], x4[:5000])
    _same(data.train_labels[3 * N :], y4[:5000])
    _same(data.val_images, np.concatenate([x4[5000:], x5]))


def test_train_limit_reads_only_needed_batches(tmp_path, real_bin_dir):
    folder = link_cifar10(real_bin_dir, tmp_path)
    (folder / "data_batch_3.bin").unlink()  # the right size, the wrong bytes
    (folder / "data_batch_3.bin").symlink_to(real_bin_dir / "data_batch_1.bin")
    assert len(load_cifar10(folder, holdout=N, train_limit=2 * N).train_labels) == 2 * N
    message = _error(data_dir=folder, holdout=N, train_limit=2 * N + 1)
    assert message.startswith(f"data_batch_3.bin in {folder}: MD5 mismatch"), message


@pytest.mark.parametrize(
    ("holdout", "train_limit", "needle"),
    [(50_000, None, "--holdout"), (-1, None, "--holdout"), (0.5, None, "integers"),
     (N, 0, "train_limit"), (N, 1.5, "integers")],
)  # fmt: skip
def test_bad_holdout_or_limit(tmp_path, holdout, train_limit, needle):
    assert needle in _error(data_dir=tmp_path, holdout=holdout, train_limit=train_limit)
    assert not any(tmp_path.iterdir())


def test_data_dir_that_is_a_file(tmp_path):
    (tmp_path / "file").write_text("")
    assert "is a file" in _error(data_dir=tmp_path / "file")


# ------------------------------------------------------------------------------ verification


@pytest.mark.parametrize("binary", [True, False])
def test_corrupt_file_named(tmp_path, real_bin_dir, py_version, binary):
    if binary:
        folder, name, md5 = link_cifar10(real_bin_dir, tmp_path), "data_batch_1.bin", None
        fix = "cifar-10-binary.tar.gz"
    else:
        folder, name = tmp_path, "data_batch_1"
        md5, fix = _link_py(py_version, folder), "cifar-10-python.tar.gz"
    raw = bytearray((folder / name).read_bytes())
    raw[-1] ^= 0xFF  # same size, different content
    _replace(folder / name, bytes(raw))
    message = _error(data_dir=folder, holdout=N, train_limit=1, download=False, md5=md5)
    assert message.startswith(f"{name} in {folder}: MD5 mismatch") and fix in message, message


@pytest.mark.parametrize(("size", "word"), [(1234, "truncated"), (N * 3073 + 1, "too long")])
def test_binary_file_of_wrong_size(tmp_path, real_bin_dir, size, word):
    folder = link_cifar10(real_bin_dir, tmp_path)
    path = folder / "data_batch_2.bin"
    _replace(path, (path.read_bytes() + b"\0")[:size])
    message = _error(data_dir=folder, holdout=N, download=False)
    expected = f"data_batch_2.bin in {folder} is {word} ({size} bytes, expected 30730000)"
    assert message.startswith(expected), message


def test_a_callers_md5_table_still_needs_official_batches(tmp_path):
    folder = tmp_path / PY_DIR
    folder.mkdir()
    payload = pickle.dumps({b"data": np.zeros((3, 3072), np.uint8), b"labels": [0, 1, 2]})
    for name in TRAIN_PY:
        (folder / name).write_bytes(payload)
    md5 = dict.fromkeys(TRAIN_PY, hashlib.md5(payload).hexdigest())
    message = _error(data_dir=tmp_path, holdout=N, download=False, md5=md5)
    assert message.startswith(f"data_batch_1 in {folder} is not a CIFAR-10 batch"), message


def test_missing_test_set_needs_holdout(tmp_path, real_bin_dir):
    folder = link_cifar10(real_bin_dir, tmp_path)
    (folder / "test_batch_first1000.bin").write_bytes(bytes(3073 * 10))  # not the test set
    no_network = (f"http://127.0.0.1:{_closed_port()}/{ARCHIVE_NAME}", ARCHIVE[1])
    message = _error(data_dir=folder, archive=no_network)  # download allowed: still no fix-up
    assert message == (
        f"no test set in {folder} (test_batch.bin missing): pass --holdout 10000 to validate on "
        "data_batch_5.bin, or add the official test_batch.bin"
    )
    assert load_cifar10(folder, holdout=N, train_limit=1, archive=no_network).val_split == "holdout"


@pytest.mark.parametrize("binary", [True, False])
def test_missing_training_file_named(tmp_path, real_bin_dir, py_version, binary):
    folder = tmp_path / (BIN_DIR if binary else PY_DIR)
    if binary:
        link_cifar10(real_bin_dir, folder)
    else:
        _link_py(py_version, folder)
    name = "data_batch_4.bin" if binary else "data_batch_4"
    (folder / name).unlink()
    message = _error(data_dir=tmp_path, holdout=N, download=False)
    # Exactly the missing file is listed, with the folder it belongs in.
    assert message.startswith(f"{name} missing from {folder}"), message
    assert ("downloading is disabled" if binary else "cifar-10-python.tar.gz") in message


def test_no_data_no_download(tmp_path):
    root = tmp_path / "empty"
    message = _error(data_dir=root, download=False)
    expected = f"CIFAR-10 not found in {root} and downloading is disabled: put data_batch_1.bin"
    assert message.startswith(expected), message
    assert not root.exists()


def test_source_names_no_machine_path_nor_unofficial_file():
    for path in (REPO_ROOT / "src").rglob("*.py"):
        text = path.read_text()
        for bad in ("/work", "../shared", "shared/cifar10", "first1000"):
            assert bad not in text, f"{path} names {bad!r}"


# ----------------------------------------------------------------------------------- download


@pytest.fixture(scope="module")
def archive(tmp_path_factory, real_bin_dir) -> tuple[str, str]:
    """The real batches and the stand-in test_batch.bin packed like the official archive (but
    not compressed, to be quick), as ``load_cifar10(archive=...)`` takes it: (file:// url, md5)."""
    path = tmp_path_factory.mktemp("served") / ARCHIVE_NAME
    with tarfile.open(path, "w:gz", compresslevel=0) as tar:
        for name in (*TRAIN_BIN, "test_batch.bin"):
            source = real_bin_dir / ("data_batch_5.bin" if name == "test_batch.bin" else name)
            tar.add(source, arcname=f"{BIN_DIR}/{name}")
    return path.as_uri(), _md5(path)


def test_download_when_absent(tmp_path, archive, batches):
    root = tmp_path / "cache"
    data = load_cifar10(root, train_limit=5, archive=archive, md5=stand_in_md5())
    assert data.source == root / BIN_DIR and data.val_split == "test"
    _same(data.val_labels, batches["data_batch_5.bin"][1])
    written = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    assert written == sorted([ARCHIVE_NAME, BIN_DIR, *(f"{BIN_DIR}/{n}" for n in TRAIN_BIN),
                              f"{BIN_DIR}/test_batch.bin"])  # fmt: skip


def test_download_fills_gaps_without_overwriting(tmp_path, real_bin_dir, archive):
    root = link_cifar10(real_bin_dir, tmp_path / "mine")
    (root / "data_batch_5.bin").unlink()
    (root / "notes.txt").write_text("mine")
    before = {p.name: p.lstat() for p in root.iterdir()}
    data = load_cifar10(root, holdout=N, train_limit=1, archive=archive)
    assert data.source == root
    added = [ARCHIVE_NAME, "data_batch_5.bin", "test_batch.bin"]  # the archive is kept
    assert sorted(p.name for p in root.iterdir()) == sorted([*before, *added])
    for name, stat in before.items():
        after = (root / name).lstat()
        assert (after.st_ino, after.st_mode, after.st_mtime_ns) == (
            stat.st_ino, stat.st_mode, stat.st_mtime_ns)  # fmt: skip
    assert (root / "notes.txt").read_text() == "mine"
    # The kept archive serves later runs without the network; the test set alone is never a
    # reason to download, but is taken from an archive that is there.
    (root / "test_batch.bin").unlink()
    no_network = (f"http://127.0.0.1:{_closed_port()}/{ARCHIVE_NAME}", archive[1])
    data = load_cifar10(root, train_limit=1, archive=no_network, md5=stand_in_md5())
    assert data.val_split == "test" and (root / "test_batch.bin").is_file()


@pytest.fixture(scope="module")
def bad_server():
    """An HTTP server on 127.0.0.1: /cut sends 1000 of the 5000 bytes it announces, anything
    else gets a reply that is not HTTP. Yields its base url."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path.startswith("/cut/"):
                self.send_response(200)
                self.send_header("Content-Length", "5000")
                self.end_headers()
                self.wfile.write(b"x" * 1000)
            else:
                self.wfile.write(b"not http\r\n\r\n")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("case", ["offline", "cut", "not http", "corrupt"])
def test_failed_download_leaves_nothing(tmp_path, bad_server, case):
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"junk")
    url, reason = {
        "offline": (f"http://127.0.0.1:{_closed_port()}/{ARCHIVE_NAME}", "refused"),
        "cut": (f"{bad_server}/cut/{ARCHIVE_NAME}", "MD5 of the download"),
        "not http": (f"{bad_server}/{ARCHIVE_NAME}", "not http"),
        "corrupt": (junk.as_uri(), "MD5 of the download"),
    }[case]
    root = tmp_path / "cache"
    message = _error(data_dir=root, archive=(url, ARCHIVE[1]))
    assert message.startswith(f"CIFAR-10 not found in {root} and getting {ARCHIVE_NAME} failed")
    assert reason in message and "REGLAB_DATA" in message, message
    assert not root.exists()


def test_corrupt_local_archive_is_named(tmp_path):
    (tmp_path / ARCHIVE_NAME).write_bytes(b"junk")
    message = _error(data_dir=tmp_path)
    assert message.startswith(f"{ARCHIVE_NAME} in {tmp_path}: MD5 mismatch"), message
    assert (tmp_path / ARCHIVE_NAME).read_bytes() == b"junk"  # the user's file is left alone


# ----------------------------------------------------------------------------------- data dir


def test_data_dir_resolution(tmp_path, monkeypatch, real_bin_dir):
    monkeypatch.setenv("REGLAB_DATA", str(tmp_path / "env"))
    assert default_data_dir() == tmp_path / "env"
    assert resolve_data_dir(None) == tmp_path / "env"
    assert resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_data_dir("~/x") == tmp_path / "home" / "x"
    monkeypatch.delenv("REGLAB_DATA")
    assert default_data_dir() == tmp_path / "home" / ".cache" / "reglab"
    folder = link_cifar10(real_bin_dir, tmp_path / "linked")
    monkeypatch.setenv("REGLAB_DATA", str(folder))
    assert load_cifar10(holdout=N, train_limit=1, download=False).source == folder


# ---------------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def real_holdout(real_data_dir):
    return load_cifar10(real_data_dir, holdout=N, download=False)


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
    sums = sum(x.numpy().sum(axis=(0, 2, 3), dtype=np.uint64)
               for x in (real_holdout.train_images, real_holdout.val_images))  # fmt: skip
    np.testing.assert_allclose(sums / (50000 * 32 * 32 * 255), MEAN, atol=1e-4)


def test_real_no_test_set_is_an_error(real_data_dir):
    for sub, name in [("", "test_batch.bin"), (BIN_DIR, "test_batch.bin"), (PY_DIR, "test_batch")]:
        if (real_data_dir / sub / name).is_file():
            pytest.skip("this copy has the official test set")
    message = _error(data_dir=real_data_dir, download=False)
    assert message.startswith("no test set in") and "--holdout 10000" in message, message


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
