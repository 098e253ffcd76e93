"""CIFAR-10 loading: find, verify (size + official MD5) and decode the batches into uint8 tensors.

Conventions
-----------
* Images are ``uint8`` tensors of shape ``(N, 3, 32, 32)`` (NCHW, channels R, G, B; pixel values
  0..255, not normalised). ``MEAN`` and ``STD`` are per-channel statistics of the 50,000 training
  images on the 0..1 scale (pixels / 255), for the training loop's normalisation.
* Labels are ``int64`` tensors of class indices 0..9 into ``CLASSES``.
* The data directory comes from the caller, else the ``REGLAB_DATA`` environment variable, else
  ``~/.cache/reglab``. Inside it the batches may lie directly, or in ``cifar-10-batches-bin``
  (official binary version) or ``cifar-10-batches-py`` (official python/pickle version).
* Every file read is checked against its official MD5 first; problems raise ``DataError`` with a
  one-line message that names the file and the fix.
"""

from __future__ import annotations

import hashlib
import operator
import os
import pickle
import sys
import tarfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "ARCHIVE",
    "BINARY_MD5",
    "CIFAR10",
    "CLASSES",
    "MEAN",
    "PYTHON_MD5",
    "STD",
    "DataError",
    "default_data_dir",
    "load_cifar10",
    "resolve_data_dir",
]


class DataError(Exception):
    """A problem with the data files; ``str(err)`` is one line naming the problem and the fix."""

    def __init__(self, message: str) -> None:
        # One line always: the CLI prints it as-is, and download reasons may carry newlines.
        super().__init__(" ".join(str(message).splitlines()))


CLASSES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)

# Per-channel (R, G, B) mean and std of the 50,000 training images, pixels / 255.
MEAN: tuple[float, float, float] = (0.49139968, 0.48215841, 0.44653091)
STD: tuple[float, float, float] = (0.24703223, 0.24348513, 0.26158784)

# Official MD5 sums. Looked up at call time (never copied), so tests can patch them for fake files.
BINARY_MD5: dict[str, str] = {
    "data_batch_1.bin": "5dd7e06a14cb22eb9f671a540d1b7c25",
    "data_batch_2.bin": "5ea93a67294ea407fff1d09f752e9692",
    "data_batch_3.bin": "942cd6a4bcdd0dd3c604fbe906cb4421",
    "data_batch_4.bin": "ae636b3ba5c66a11e91e8cb52e771fcb",
    "data_batch_5.bin": "53f37980c15c3d472c316c40844f3f0d",
    "test_batch.bin": "803d5f7f4d78ea53de84dbe85f74fb6d",
}
PYTHON_MD5: dict[str, str] = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}
# (url, md5) of the official binary version; it unpacks to cifar-10-batches-bin/.
ARCHIVE: tuple[str, str] = (
    "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
    "c32a1d4ab5d03f1284b67883e8d87530",
)

BIN_DIR = "cifar-10-batches-bin"
PY_DIR = "cifar-10-batches-py"
ENV_VAR = "REGLAB_DATA"

_PIXELS = 3 * 32 * 32  # bytes of one image: 1024 R, then 1024 G, then 1024 B, each rows of 32
_RECORD = 1 + _PIXELS  # binary record: 1 label byte, then the pixels
_RECORDS_PER_BATCH = 10_000
_RECORD_DTYPE = np.dtype([("label", np.uint8), ("pixels", np.uint8, (_PIXELS,))])
_CHUNK = 1 << 20  # bytes per read when hashing / downloading
_DOWNLOAD_TIMEOUT_S = 60.0  # per socket operation, not for the whole download

_USAGE = (
    "put data_batch_1.bin..data_batch_5.bin and test_batch.bin (the official binary version) "
    "in {d} or {d}/" + BIN_DIR + ", or pass --data-dir / set " + ENV_VAR
)


@dataclass
class CIFAR10:
    """Decoded CIFAR-10 splits, all in memory.

    Images are ``uint8`` ``(N, 3, 32, 32)`` contiguous NCHW tensors (RGB, 0..255); labels are
    ``int64`` ``(N,)``. ``val_split`` is ``"test"`` when the validation set is the official
    10,000-image test set, ``"holdout"`` when it is the last images of the training batches
    (which are then not in ``train_*``). ``source`` is the folder the batches were read from.
    """

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
    if env:
        return Path(env).expanduser().absolute()
    return Path.home() / ".cache" / "reglab"


def resolve_data_dir(data_dir: str | Path | None) -> Path:
    """``data_dir`` as an absolute path (``~`` expanded); ``None`` means ``default_data_dir()``."""
    if data_dir is None or str(data_dir) == "":
        return default_data_dir()
    return Path(data_dir).expanduser().absolute()


# --------------------------------------------------------------------------------------------
# Layouts: which file names, where, and how to decode them.


@dataclass(frozen=True)
class _Layout:
    kind: str  # "bin" or "py"
    folder: Path
    train: tuple[str, ...]
    test: str

    @property
    def md5_table(self) -> dict[str, str]:
        # Read the module global at call time so monkeypatched tables are honoured.
        return BINARY_MD5 if self.kind == "bin" else PYTHON_MD5

    def files(self) -> tuple[str, ...]:
        return (*self.train, self.test)

    def present(self) -> list[str]:
        return [n for n in self.files() if (self.folder / n).is_file()]

    def missing_train(self) -> list[str]:
        return [n for n in self.train if not (self.folder / n).is_file()]


def _bin_layout(folder: Path) -> _Layout:
    return _Layout(
        "bin", folder, tuple(f"data_batch_{i}.bin" for i in range(1, 6)), "test_batch.bin"
    )


def _py_layout(folder: Path) -> _Layout:
    return _Layout("py", folder, tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch")


def _find_layout(root: Path) -> _Layout | None:
    """The folder holding the batches: a complete set of training files wins over a partial one;
    ties go to the binary layout, the root itself first. ``None`` if no batch file is anywhere."""
    candidates = [
        _bin_layout(root),
        _bin_layout(root / BIN_DIR),
        _py_layout(root / PY_DIR),
        _py_layout(root),
    ]
    for layout in candidates:
        if not layout.missing_train():
            return layout
    for layout in candidates:
        if layout.present():
            return layout
    return None


# --------------------------------------------------------------------------------------------
# Verification and decoding of single files.


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _fix_hint(layout: _Layout) -> str:
    if layout.kind == "bin":
        return "delete it and run again to re-download, or copy a good one"
    return "replace it with the one from the official cifar-10-python.tar.gz"


def _bin_records(layout: _Layout, name: str) -> int:
    """Record count of a binary batch from its size alone (no read); size errors say truncated."""
    size = (layout.folder / name).stat().st_size
    # Official batches hold 10,000 records; fake test files fewer, so accept any whole number.
    if size == 0 or size % _RECORD:
        raise DataError(
            f"{name} in {layout.folder} is truncated ({size} bytes, expected "
            f"{_RECORDS_PER_BATCH * _RECORD}): {_fix_hint(layout)}"
        )
    return size // _RECORD


def _verify(layout: _Layout, name: str) -> None:
    """Raise ``DataError`` unless the file has its official MD5 (checked before any decoding:
    this also keeps pickle from ever loading a file that is not the official one)."""
    path = layout.folder / name
    if path.stat().st_size == 0:
        raise DataError(f"{name} in {layout.folder} is truncated (0 bytes): {_fix_hint(layout)}")
    expected = layout.md5_table[name]
    got = _md5(path)
    if got != expected:
        raise DataError(
            f"{name} in {layout.folder}: MD5 mismatch (got {got}, expected {expected}): "
            f"the file is corrupt; {_fix_hint(layout)}"
        )


def _read(layout: _Layout, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Verify and decode one batch: ``(images uint8 (n, 3072), labels uint8 (n,))``.

    The 3072 pixel bytes of a row are the R plane, then G, then B, each 32 rows of 32, so
    ``reshape(n, 3, 32, 32)`` gives NCHW with no transpose.
    """
    if layout.kind == "bin":
        _bin_records(layout, name)
    _verify(layout, name)
    path = layout.folder / name
    if layout.kind == "bin":
        records = np.fromfile(path, dtype=_RECORD_DTYPE)
        images, labels = records["pixels"], records["label"]
    else:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        try:
            images = np.asarray(batch[b"data"], dtype=np.uint8)
            labels = np.asarray(batch[b"labels"], dtype=np.int64)
        except (KeyError, TypeError, ValueError) as err:
            raise DataError(
                f"{name} in {layout.folder} is not a CIFAR-10 python batch ({err!r}): "
                f"{_fix_hint(layout)}"
            ) from None
        if images.ndim != 2 or images.shape[1] != _PIXELS or len(labels) != len(images):
            raise DataError(
                f"{name} in {layout.folder} is not a CIFAR-10 python batch (data "
                f"{images.shape}, {len(labels)} labels): {_fix_hint(layout)}"
            )
    if len(labels) and (labels.min() < 0 or labels.max() >= len(CLASSES)):
        # Only possible with a patched MD5 table, but a bad label would fail later, cryptically.
        raise DataError(f"{name} in {layout.folder} has labels outside 0..9: {_fix_hint(layout)}")
    return images, labels


# --------------------------------------------------------------------------------------------
# Download / extraction of the official binary archive.


def _archive_path(root: Path) -> Path:
    return root / ARCHIVE[0].rsplit("/", 1)[-1]


def _download(root: Path) -> Path:
    """Download ``ARCHIVE`` to ``root`` (via a ``.part`` file, renamed once its MD5 is right).

    Raises ``OSError`` (``URLError`` included) on failure, after removing the ``.part`` file.
    """
    url, expected = ARCHIVE
    target = _archive_path(root)
    part = target.with_name(target.name + ".part")
    root.mkdir(parents=True, exist_ok=True)
    print(f"reglab: downloading {url} to {root} ...", file=sys.stderr, flush=True)
    digest = hashlib.md5(usedforsecurity=False)
    try:
        # Open the .part first: an unwritable directory then fails before any network traffic.
        with (
            open(part, "wb") as out,
            urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as response,
        ):
            while chunk := response.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != expected:
            raise OSError(
                f"{target.name} from {url} has MD5 {digest.hexdigest()}, expected {expected}"
            )
        os.replace(part, target)
    except BaseException:
        # The .part file is ours; nothing else is touched.
        part.unlink(missing_ok=True)
        raise
    return target


def _extract_missing(archive: Path, layout: _Layout) -> None:
    """Write into ``layout.folder`` the batch files (and ``batches.meta.txt``) that it lacks.

    Members are streamed by exact expected name to paths built here, so a hostile archive can
    never write outside the folder (stricter than ``extractall(filter="data")``); existing files
    are never overwritten. Each file goes via a ``.part`` file and is renamed when complete.
    """
    wanted = {n for n in (*layout.files(), "batches.meta.txt") if not (layout.folder / n).exists()}
    if not wanted:
        return
    layout.folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar:  # sequential: a .gz cannot seek, so read each member once, in order
            name = member.name.rsplit("/", 1)[-1]
            if name not in wanted or not member.isfile():
                continue
            source = tar.extractfile(member)
            target = layout.folder / name
            part = target.with_name(name + ".part")
            try:
                with source, open(part, "wb") as out:
                    while chunk := source.read(_CHUNK):
                        out.write(chunk)
                os.replace(part, target)
            except BaseException:
                part.unlink(missing_ok=True)
                raise


def _fetch(root: Path, layout: _Layout, download: bool, what: str) -> None:
    """Fill in missing files of a binary ``layout`` from the archive in ``root`` (kept from an
    earlier download or put there by the user), else from a fresh download when allowed.

    ``what`` starts the error message, e.g. ``"CIFAR-10 not found in DIR"``.
    """
    archive = _archive_path(root)
    try:
        if archive.is_file():
            got, expected = _md5(archive), ARCHIVE[1]
            if got != expected:
                raise DataError(
                    f"{archive.name} in {root}: MD5 mismatch (got {got}, expected {expected}): "
                    "the archive is corrupt; delete it and run again to re-download"
                )
        elif download:
            archive = _download(root)
        else:
            raise DataError(f"{what} and downloading is disabled: {_USAGE.format(d=root)}")
        _extract_missing(archive, layout)
    except (OSError, tarfile.TarError, EOFError) as err:
        reason = getattr(err, "reason", None) or err
        raise DataError(
            f"{what} and the download failed ({reason}): {_USAGE.format(d=root)}"
        ) from err
    still = layout.missing_train()
    if still:
        raise DataError(
            f"{what} and {archive.name} in {root} does not hold {', '.join(still)}: "
            f"delete it and run again to re-download; or {_USAGE.format(d=root)}"
        )


# --------------------------------------------------------------------------------------------
# Public entry point.


def _locate(root: Path, holdout: int, download: bool) -> _Layout:
    """The layout to read from, fetching missing binary batches first where possible."""
    layout = _find_layout(root)
    if layout is None:
        layout = _bin_layout(root / BIN_DIR)
        _fetch(root, layout, download, f"CIFAR-10 not found in {root}")
        return layout
    missing = layout.missing_train()
    if missing and layout.kind == "bin":
        what = f"{', '.join(missing)} missing from {layout.folder}"
        _fetch(root, layout, download, what)
    elif missing:
        raise DataError(
            f"{', '.join(missing)} missing from {layout.folder}: copy them from the official "
            f"cifar-10-python.tar.gz, or put the binary version in {root / BIN_DIR}"
        )
    test_path = layout.folder / layout.test
    local_archive = _archive_path(root).is_file()
    if holdout == 0 and not test_path.is_file() and layout.kind == "bin" and local_archive:
        # The test set can come from a local archive without network; never download just for it.
        _fetch(root, layout, False, f"{layout.test} missing from {layout.folder}")
    if holdout == 0 and not test_path.is_file():
        # Never fall back to a holdout silently: results would not be comparable to test numbers.
        note = ""
        if (layout.folder / "test_batch_first1000.bin").is_file():
            note = "; test_batch_first1000.bin is only part of it, never used as the test set"
        raise DataError(
            f"no test set in {layout.folder} ({layout.test} missing{note}): pass --holdout 10000 "
            f"to validate on data_batch_5, or add the official {layout.test}"
        )
    return layout


def load_cifar10(
    data_dir: str | Path | None = None,
    holdout: int = 0,
    download: bool = True,
    train_limit: int | None = None,
) -> CIFAR10:
    """Load CIFAR-10 as uint8 NCHW tensors, verifying every file read against its official MD5.

    Args:
        data_dir: folder holding the batches (directly, or in ``cifar-10-batches-bin`` /
            ``cifar-10-batches-py``); ``None``: ``REGLAB_DATA`` env var, else ``~/.cache/reglab``.
        holdout: 0 validates on the official test set (``val_split="test"``; a ``DataError`` if
            it is absent). ``N > 0`` validates on the LAST ``N`` training images (batches 1..5 in
            order) and trains on the rest (``val_split="holdout"``); the test file is not read.
        download: if batches are missing, download the official binary archive into
            ``data_dir`` (never overwriting existing files).
        train_limit: keep only the first ``train_limit`` training images (after the holdout is
            removed), for quick runs. Batch files holding none of the kept images are not read.

    Raises:
        DataError: one-line message naming the file / problem and the fix.
    """
    root = resolve_data_dir(data_dir)
    try:  # accept numpy / torch integers, refuse floats ("--holdout 0.1" is not a fraction)
        holdout = operator.index(holdout)
        train_limit = None if train_limit is None else operator.index(train_limit)
    except TypeError:
        raise DataError(
            f"holdout and train_limit must be integers (got {holdout!r}, {train_limit!r})"
        ) from None
    if holdout < 0:
        raise DataError(f"--holdout must be >= 0 (got {holdout}): e.g. --holdout 10000")
    if train_limit is not None and train_limit < 1:
        raise DataError(f"train_limit must be >= 1 or None (got {train_limit})")
    if root.exists() and not root.is_dir():
        raise DataError(f"data dir {root} is a file, not a folder: pass --data-dir FOLDER")
    layout = _locate(root, holdout, download)

    # Record counts per training file: from sizes for binary files (so unneeded files are never
    # read), by decoding for pickles (which cannot be sized without loading).
    cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if layout.kind == "bin":
        counts = [_bin_records(layout, n) for n in layout.train]
    else:
        cache = {n: _read(layout, n) for n in layout.train}
        counts = [len(cache[n][1]) for n in layout.train]
    total = sum(counts)
    if holdout >= total:
        raise DataError(
            f"--holdout {holdout} leaves no training images ({total} in {layout.folder}): "
            f"use 0 <= holdout < {total}, e.g. --holdout 10000"
        )
    n_train = total - holdout
    n_keep = n_train if train_limit is None else min(train_limit, n_train)

    # Preallocate the outputs and copy each batch in once: peak memory is the result plus one
    # batch, not two copies of the whole set.
    train_x = np.empty((n_keep, _PIXELS), dtype=np.uint8)
    train_y = np.empty(n_keep, dtype=np.int64)
    val_x = np.empty((holdout, _PIXELS), dtype=np.uint8)
    val_y = np.empty(holdout, dtype=np.int64)
    start = 0
    for name, count in zip(layout.train, counts):
        stop = start + count
        # Overlaps of this file's global index range [start, stop) with [0, n_keep) and
        # [n_train, total).
        t0, t1 = start, min(stop, n_keep)
        v0, v1 = max(start, n_train), stop
        if t1 > t0 or v1 > v0:
            images, labels = cache.pop(name, None) or _read(layout, name)
            if t1 > t0:
                train_x[t0:t1] = images[t0 - start : t1 - start]
                train_y[t0:t1] = labels[t0 - start : t1 - start]
            if v1 > v0:
                val_x[v0 - n_train : v1 - n_train] = images[v0 - start : v1 - start]
                val_y[v0 - n_train : v1 - n_train] = labels[v0 - start : v1 - start]
        start = stop

    if holdout == 0:
        images, labels = _read(layout, layout.test)
        val_x = np.ascontiguousarray(images)
        val_y = labels.astype(np.int64)
        val_split = "test"
    else:
        val_split = "holdout"

    return CIFAR10(
        train_images=torch.from_numpy(train_x.reshape(-1, 3, 32, 32)),
        train_labels=torch.from_numpy(train_y),
        val_images=torch.from_numpy(val_x.reshape(-1, 3, 32, 32)),
        val_labels=torch.from_numpy(val_y),
        val_split=val_split,
        source=layout.folder,
    )
