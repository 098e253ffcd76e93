"""Checkpoints that survive a kill at any moment: atomic, verified, the last good one kept.

    RUN/checkpoints/step-0001000.pt       torch.save of the state (loadable with torch.load)
    RUN/checkpoints/step-0001000.sha256   its SHA-256, written after the .pt is in place

A checkpoint is written to a temporary file, flushed and fsync'ed, renamed into place (atomic on
POSIX), and only then is its checksum written the same way. A checkpoint without its checksum,
or whose bytes do not match it (torn, truncated, corrupted), is never loaded: the newest valid
one is, and a message says which ones were skipped. After each write the newest ``keep`` valid
ones are kept and the rest removed.
A full disk (or any write error) raises :class:`CheckpointError` naming it, and leaves the
previous checkpoints untouched.

What a checkpoint holds (:func:`capture_rng` and the loop's state): model, optimizer, step,
every random generator (torch CPU and CUDA, numpy, Python, the batch pipeline's with its
position in the epoch), the regularizers' state, the loop's running sums and metrics so far,
and the config.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reglab.errors import ReglabError

FORMAT = "reglab-checkpoint-1"
_NAME = re.compile(r"step-(\d+)\.pt$")


class CheckpointError(ReglabError):
    """A checkpoint that cannot be written or read; one line naming the fix."""


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be opened
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file, fsync, rename, fsync the folder).
    On failure the temporary file is removed and ``path`` is as it was."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """(step, path) of the checkpoint files in ``folder``, newest first."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found, reverse=True)


def save_checkpoint(folder: Path, step: int, state: dict[str, Any], keep: int = 2) -> Path:
    """Write the checkpoint of ``step`` and prune all but the newest ``keep`` valid ones."""
    folder.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "step": step, **state}, buffer)
    data = buffer.getvalue()
    path = folder / f"step-{step:07d}.pt"
    try:
        write_atomic(path, data)
        digest = hashlib.sha256(data).hexdigest()
        write_atomic(path.with_suffix(".sha256"), f"{digest}  {path.name}\n".encode())
    except OSError as e:
        with contextlib.suppress(OSError):
            path.unlink()  # a .pt without its checksum would be skipped anyway
        previous = next((s for s, p in checkpoints(folder) if _valid(p)), None)
        kept = f"the checkpoint of step {previous} is intact" if previous is not None else (
            "no earlier checkpoint exists")  # fmt: skip
        raise CheckpointError(
            f"cannot write the checkpoint of step {step} in {folder} ({e.strerror or e}): free "
            f"disk space (it needs {len(data) / 2**20:.1f} MiB) and resume the run; {kept}"
        ) from None
    kept = [p for _, p in checkpoints(folder) if _valid(p)][:keep]
    for _, old in checkpoints(folder):  # older valid ones, and torn or unsummed leftovers
        if old not in kept:
            for f in (old, old.with_suffix(".sha256")):
                with contextlib.suppress(OSError):
                    f.unlink()
    return path


def _valid(path: Path) -> bool:
    return _read_verified(path) is not None


def _read_verified(path: Path) -> bytes | None:
    """The bytes of ``path`` if its checksum file exists and matches, else None."""
    sums = path.with_suffix(".sha256")
    try:
        expected = sums.read_text().split()[0]
        data = path.read_bytes()
    except (OSError, IndexError):
        return None
    return data if hashlib.sha256(data).hexdigest() == expected else None


def _load_verified(path: Path, map_location: Any) -> tuple[dict[str, Any] | None, str]:
    """(the state at ``path``, "") if its checksum matches and its format is this version's,
    else (None, why not)."""
    data = _read_verified(path)
    if data is None:
        torn = path.with_suffix(".sha256").exists()
        return None, "checksum mismatch (torn or corrupted)" if torn else "no checksum (cut short)"
    state = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    if state.get("format") != FORMAT:
        return None, "unknown format"
    return state, ""


def read_checkpoint(path: Path, map_location: Any = "cpu") -> dict[str, Any]:
    """The state of the checkpoint at ``path`` (verified as :func:`load_latest` does);
    CheckpointError saying why it cannot be read."""
    state, why = _load_verified(path, map_location)
    if state is None:
        raise CheckpointError(f"checkpoint {path} not read: {why}; use another checkpoint")
    return state


def load_latest(folder: Path, map_location: Any = "cpu") -> tuple[dict[str, Any] | None, list[str]]:
    """(the newest valid checkpoint's state or None, notes on the ones skipped as invalid)."""
    notes = []
    for step, path in checkpoints(folder):
        state, why = _load_verified(path, map_location)
        if state is not None:
            return state, notes
        notes.append(f"skipped the checkpoint of step {step}: {why}")
    return None, notes


# --------------------------------------------------------------------------------------------
# Random generators, as plain tensors and numbers (torch.load(weights_only=True) reads them).


def capture_rng() -> dict[str, Any]:
    mt = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(mt[1].astype(np.int64)),
            "pos": int(mt[2]),
            "has_gauss": int(mt[3]),
            "cached": float(mt[4]),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached"]))  # fmt: skip
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
