"""CIFAR-10 loading: find the official batch files, verify them, decode them into uint8 tensors.

* Images are ``uint8`` tensors ``(N, 3, 32, 32)``: NCHW, channels R, G, B, pixel values 0..255
  (not normalised). Labels are ``int64`` class indices 0..9 into ``CLASSES``. ``MEAN``/``STD``
  are per-channel statistics of the 50,000 training images on the 0..1 scale (pixels / 255).
* Every official batch file holds 10,000 images; training image ``i`` (0..49,999) is image
  ``i % 10,000`` of ``data_batch_{i // 10,000 + 1}``.
* Every file is checked before it is decoded: binary batches by size (so that a truncated file
  is called truncated), then every file by MD5. Problems raise ``DataError``.
"""

from __future__ import annotations

import hashlib
import http.client
import operator
import os
import pickle
import shutil
import sys
import tarfile
import urllib.request
from collections.abc import Iterable, Mapping
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np
import torch

__all__ = [
    "ARCHIVE", "BINARY_MD5", "CIFAR10", "CLASSES", "MEAN", "PYTHON_MD5", "STD", "DataError",
    "default_data_dir", "load_cifar10", "resolve_data_dir",
]  # fmt: skip


class DataError(Exception):
    """A problem with the data files; ``str(err)`` is one line naming the problem and the fix."""

    def __init__(self, message: str) -> None:
        # One line always: the CLI prints it as-is, and download reasons may carry newlines.
        super().__init__(" ".join(str(message).splitlines()))


CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip

# Per-channel (R, G, B) mean and std of the 50,000 training images, pixels / 255.
MEAN: tuple[float, float, float] = (0.49139968, 0.48215841, 0.44653091)
STD: tuple[float, float, float] = (0.24703223, 0.24348513, 0.26158784)

# The published MD5 sums of the official files (read-only).
BINARY_MD5: Mapping[str, str] = MappingProxyType({
    "data_batch_1.bin": "5dd7e06a14cb22eb9f671a540d1b7c25",
    "data_batch_2.bin": "5ea93a67294ea407fff1d09f752e9692",
    "data_batch_3.bin": "942cd6a4bcdd0dd3c604fbe906cb4421",
    "data_batch_4.bin": "ae636b3ba5c66a11e91e8cb52e771fcb",
    "data_batch_5.bin": "53f37980c15c3d472c316c40844f3f0d",
    "test_batch.bin": "803d5f7f4d78ea53de84dbe85f74fb6d",
})  # fmt: skip
PYTHON_MD5: Mapping[str, str] = MappingProxyType({
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
})  # fmt: skip
# (url, md5) of the official binary version; it unpacks to cifar-10-batches-bin/.
ARCHIVE: tuple[str, str] = (
    "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
    "c32a1d4ab5d03f1284b67883e8d87530",
)

BIN_DIR = "cifar-10-batches-bin"
PY_DIR = "cifar-10-batches-py"
ENV_VAR = "REGLAB_DATA"
ARCHIVE_NAME = "cifar-10-binary.tar.gz"  # the download's file name in the data directory

_PER_BATCH = 10_000  # images in every official batch file
_TOTAL = 5 * _PER_BATCH  # training images
_PIXELS = 3 * 32 * 32  # bytes of one image: 1024 R, then 1024 G, then 1024 B, each rows of 32
_RECORD = np.dtype([("label", np.uint8), ("pixels", np.uint8, (_PIXELS,))])  # binary record
_BIN_SIZE = _PER_BATCH * _RECORD.itemsize  # bytes of an official binary batch: 30,730,000
_CHUNK = 1 << 20  # bytes per read when hashing / copying
_TIMEOUT_S = 60.0  # download: per socket operation, not for the whole download


@dataclass
class CIFAR10:
    """Decoded CIFAR-10 splits in memory: images ``uint8`` ``(N, 3, 32, 32)`` contiguous NCHW
    (RGB, 0..255), labels ``int64`` ``(N,)``. ``val_split``: ``"test"`` (the official test set)
    or ``"holdout"`` (the last training images, then not in ``train_*``). ``source``: the folder
    the batches were read from."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    val_images: torch.Tensor
    val_labels: torch.Tensor
    val_split: str
    source: Path
    classes: tuple[str, ...] = CLASSES


def default_data_dir() -> Path:
    """The ``REGLAB_DATA`` environment variable if set and non-empty, else ``~/.cache/reglab``."""
    env = os.environ.get(ENV_VAR, "").strip()
    return Path(env).expanduser().absolute() if env else Path.home() / ".cache" / "reglab"


def resolve_data_dir(data_dir: str | Path | None) -> Path:
    """``data_dir`` as an absolute path (``~`` expanded); ``None`` means ``default_data_dir()``."""
    if data_dir is None or str(data_dir) == "":
        return default_data_dir()
    return Path(data_dir).expanduser().absolute()


@dataclass(frozen=True)
class _Layout:
    """The file names of one official version (binary or python) in one folder."""

    folder: Path
    binary: bool

    @property
    def train(self) -> tuple[str, ...]:
        return tuple(f"data_batch_{i}{'.bin' if self.binary else ''}" for i in range(1, 6))

    @property
    def test(self) -> str:
        return "test_batch.bin" if self.binary else "test_batch"

    def missing(self, names: Iterable[str]) -> list[str]:
        return [n for n in names if not (self.folder / n).is_file()]


def _find_layout(root: Path) -> _Layout | None:
    """Where the batches are: the first of the four places with all five training files, else
    the first with any batch file, else ``None``. The binary version comes first."""
    places = [_Layout(root, True), _Layout(root / BIN_DIR, True),
              _Layout(root / PY_DIR, False), _Layout(root, False)]  # fmt: skip
    complete = [p for p in places if not p.missing(p.train)]
    partial = [p for p in places if len(p.missing((*p.train, p.test))) < 6]
    return (complete or partial or [None])[0]


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _read(layout: _Layout, name: str, md5: Mapping[str, str]) -> tuple[np.ndarray, np.ndarray]:
    """Verify, then decode one batch: ``(images uint8 (10000, 3072), labels int64 (10000,))``.
    An image's bytes are the R, G, B planes of 32 rows of 32, so ``reshape(-1, 3, 32, 32)`` is
    NCHW. Binary images may be a strided view."""
    path, where = layout.folder / name, f"{name} in {layout.folder}"
    if layout.binary:
        fix = f"delete it and run again to extract it from {ARCHIVE_NAME}, or copy a good one"
    else:
        fix = "replace it with the one from the official cifar-10-python.tar.gz"
    size = path.stat().st_size
    if layout.binary and size != _BIN_SIZE:
        kind = "truncated" if size < _BIN_SIZE else "too long"
        raise DataError(f"{where} is {kind} ({size} bytes, expected {_BIN_SIZE}): {fix}")
    if (got := _md5(path)) != md5.get(name):  # before decoding: pickle loads only expected files
        raise DataError(f"{where}: MD5 mismatch (got {got}, expected {md5.get(name)}): the file "
                        f"is corrupt or truncated; {fix}")  # fmt: skip
    if layout.binary:
        records = np.fromfile(path, dtype=_RECORD)
        images, labels = records["pixels"], records["label"].astype(np.int64)
    else:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        images, labels = np.asarray(batch[b"data"]), np.asarray(batch[b"labels"], np.int64)
    # True of every official file; checked for files verified against a caller's MD5 table.
    shape_ok = images.shape == (_PER_BATCH, _PIXELS) and labels.shape == (_PER_BATCH,)
    if not shape_ok or images.dtype != np.uint8 or labels.min() < 0 or labels.max() > 9:
        raise DataError(f"{where} is not a CIFAR-10 batch (10,000 images, labels 0..9): {fix}")
    return images, labels


def _download(url: str, md5: str, target: Path) -> None:
    """Download ``url`` to ``target`` via ``target.part``, renamed once its MD5 is ``md5``. On
    failure it removes the ``.part`` file (and ``target``'s folder if it made it) and re-raises."""
    part = target.with_name(target.name + ".part")
    made = not target.parent.exists()
    target.parent.mkdir(parents=True, exist_ok=True)
    print(f"reglab: downloading {url} to {target.parent} ...", file=sys.stderr, flush=True)
    digest = hashlib.md5(usedforsecurity=False)
    try:
        # The .part first: an unwritable folder then fails before any network traffic.
        with open(part, "wb") as out, urllib.request.urlopen(url, timeout=_TIMEOUT_S) as response:
            while chunk := response.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != md5:
            raise OSError(f"MD5 of the download is {digest.hexdigest()}, expected {md5}")
        os.replace(part, target)
    except BaseException:
        part.unlink(missing_ok=True)
        if made:
            with suppress(OSError):
                target.parent.rmdir()
        raise


def _extract_missing(archive: Path, layout: _Layout) -> None:
    """Copy into ``layout.folder``, each via a ``.part`` file, the batch files (and
    ``batches.meta.txt``) it lacks. Members are picked by file name and written to paths built
    here, so an archive cannot write elsewhere; existing files are never overwritten."""
    wanted = set(layout.missing((*layout.train, layout.test, "batches.meta.txt")))
    layout.folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar:  # in order: a .gz cannot seek
            name = member.name.rsplit("/", 1)[-1]
            if name not in wanted or not member.isfile():
                continue
            wanted.discard(name)
            part = layout.folder / (name + ".part")
            try:
                with tar.extractfile(member) as source, open(part, "wb") as out:  # type: ignore
                    shutil.copyfileobj(source, out, _CHUNK)
                os.replace(part, layout.folder / name)
            except BaseException:
                part.unlink(missing_ok=True)
                raise


def _fetch(root: Path, layout: _Layout, download: bool, archive: tuple, what: str) -> None:
    """Extract the files ``layout`` lacks from ``root/cifar-10-binary.tar.gz``: the one there (an
    earlier download, or put there by hand), else a fresh download of ``archive`` (url, md5) if
    ``download``. ``what`` (e.g. ``"CIFAR-10 not found in DIR"``) starts the error messages."""
    (url, expected), path = archive, root / ARCHIVE_NAME
    usage = (f"put data_batch_1.bin..data_batch_5.bin and test_batch.bin (the official "
             f"binary version) in {root} or {root / BIN_DIR}, or pass --data-dir / set "
             f"{ENV_VAR}")  # fmt: skip
    if path.is_file() and (got := _md5(path)) != expected:
        raise DataError(f"{ARCHIVE_NAME} in {root}: MD5 mismatch (got {got}, expected "
                        f"{expected}): it is corrupt; delete it and run again")  # fmt: skip
    if not path.is_file() and not download:
        raise DataError(f"{what} and downloading is disabled: {usage}")
    try:
        if not path.is_file():
            _download(url, expected, path)
        _extract_missing(path, layout)
    except (OSError, EOFError, tarfile.TarError, http.client.HTTPException) as err:
        reason = getattr(err, "reason", None) or str(err) or repr(err)
        raise DataError(f"{what} and getting {ARCHIVE_NAME} failed ({reason}): {usage}") from err
    if missing := layout.missing(layout.train):
        raise DataError(f"{what} and {ARCHIVE_NAME} in {root} does not hold "
                        f"{', '.join(missing)}: delete it and run again; or {usage}")  # fmt: skip


def _locate(root: Path, holdout: int, download: bool, archive: tuple[str, str]) -> _Layout:
    """The layout to read, after filling in missing binary files with ``_fetch``."""
    found = _find_layout(root)
    layout = found or _Layout(root / BIN_DIR, True)
    if missing := layout.missing(layout.train):
        what = (f"CIFAR-10 not found in {root}" if found is None
                else f"{', '.join(missing)} missing from {layout.folder}")  # fmt: skip
        if not layout.binary:
            raise DataError(f"{what}: copy them from the official cifar-10-python.tar.gz, or put "
                            f"the binary version in {root / BIN_DIR}")  # fmt: skip
        _fetch(root, layout, download, archive, what)
    if holdout == 0 and layout.missing([layout.test]):
        if layout.binary and (root / ARCHIVE_NAME).is_file():  # never downloaded for it alone
            _fetch(root, layout, False, archive, f"{layout.test} missing from {layout.folder}")
        if layout.missing([layout.test]):  # never fall back to a holdout silently
            raise DataError(
                f"no test set in {layout.folder} ({layout.test} missing): pass --holdout 10000 to "
                f"validate on {layout.train[-1]}, or add the official {layout.test}"
            )
    return layout


def load_cifar10(
    data_dir: str | Path | None = None,
    holdout: int = 0,
    download: bool = True,
    train_limit: int | None = None,
    *,
    md5: Mapping[str, str] | None = None,
    archive: tuple[str, str] = ARCHIVE,
) -> CIFAR10:
    """Load CIFAR-10 as uint8 NCHW tensors, verifying every file it reads.

    Args:
        data_dir: folder holding the batches (directly, or in ``cifar-10-batches-bin`` /
            ``cifar-10-batches-py``); ``None``: ``REGLAB_DATA`` env var, else ``~/.cache/reglab``.
        holdout: 0 validates on the official test set (``val_split="test"``; a ``DataError`` if
            it is absent). ``N`` in 1..49,999 validates on the LAST ``N`` training images
            (batches 1..5 in order) and trains on the rest (``val_split="holdout"``); the test
            file is then not read.
        download: if batches are missing, download ``archive`` into ``data_dir`` and extract the
            missing files (never overwriting existing ones); the archive is kept for later runs.
        train_limit: keep only the first ``train_limit`` training images (after the holdout is
            removed), for quick runs. Batch files holding none of the kept images are not read.
        md5: expected MD5 by file name; ``None``: the official sums (``BINARY_MD5`` and
            ``PYTHON_MD5``). Files must still have the official format (10,000 images each).
        archive: ``(url, md5)`` of the binary-version archive to download; default the official.

    Raises:
        DataError: one-line message naming the file or problem and the fix.
    """
    root = resolve_data_dir(data_dir)
    table = {**BINARY_MD5, **PYTHON_MD5} if md5 is None else md5
    try:  # numpy / torch integers are fine; floats are refused ("--holdout 0.1" is no fraction)
        holdout = operator.index(holdout)
        limit = _TOTAL if train_limit is None else operator.index(train_limit)
    except TypeError:
        raise DataError(
            f"holdout and train_limit must be integers (got {holdout!r}, {train_limit!r})"
        ) from None
    if not 0 <= holdout < _TOTAL:
        raise DataError(f"--holdout must be in 0..{_TOTAL - 1} (got {holdout}): e.g. 10000")
    if limit < 1:
        raise DataError(f"train_limit must be >= 1 or None (got {train_limit})")
    if root.exists() and not root.is_dir():
        raise DataError(f"data dir {root} is a file, not a folder: pass --data-dir FOLDER")
    layout = _locate(root, holdout, download, archive)

    # Training images [0, n_keep) go to train_*, [n_train, 50000) to the holdout; batches holding
    # none of them are not read. Filled batch by batch: peak memory is the result plus one batch.
    n_train = _TOTAL - holdout
    n_keep = min(limit, n_train)
    train_x, train_y = np.empty((n_keep, _PIXELS), np.uint8), np.empty(n_keep, np.int64)
    val_x, val_y = np.empty((holdout, _PIXELS), np.uint8), np.empty(holdout, np.int64)
    for b, name in enumerate(layout.train):
        lo, hi = b * _PER_BATCH, (b + 1) * _PER_BATCH
        keep, held = min(hi, n_keep) - lo, max(lo, n_train) - lo  # kept: [:keep], held: [held:]
        if keep <= 0 and held >= _PER_BATCH:
            continue
        images, labels = _read(layout, name, table)
        if keep > 0:
            train_x[lo : lo + keep], train_y[lo : lo + keep] = images[:keep], labels[:keep]
        if held < _PER_BATCH:
            val_x[lo + held - n_train : hi - n_train] = images[held:]
            val_y[lo + held - n_train : hi - n_train] = labels[held:]
    if holdout == 0:
        images, val_y = _read(layout, layout.test, table)
        val_x = np.ascontiguousarray(images)

    return CIFAR10(
        train_images=torch.from_numpy(train_x.reshape(-1, 3, 32, 32)),
        train_labels=torch.from_numpy(train_y),
        val_images=torch.from_numpy(val_x.reshape(-1, 3, 32, 32)),
        val_labels=torch.from_numpy(val_y),
        val_split="test" if holdout == 0 else "holdout",
        source=layout.folder,
    )
