"""Shared pytest fixtures: the real CIFAR-10 folder (or a skip), tiny fake CIFAR-10 files, and a
throwaway PostgreSQL server (or a skip)."""

from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import pickle
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# Where the shared read-only copy lives on the project machines (tests may name it; src/ may not).
SHARED_CIFAR10 = REPO_ROOT.parent / "shared" / "cifar10"


def _holds_cifar10(folder: Path) -> bool:
    """True if ``folder`` has the training batches in one of the layouts the loader accepts."""
    return any(
        all((sub / f"data_batch_{i}{ext}").is_file() for i in range(1, 6))
        for sub, ext in (
            (folder, ".bin"),
            (folder / "cifar-10-batches-bin", ".bin"),
            (folder / "cifar-10-batches-py", ""),
            (folder, ""),
        )
    )


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    """Folder with the real CIFAR-10 batches: ``$REGLAB_DATA``, else ``../shared/cifar10``
    relative to the repo root; the test is skipped if neither holds them."""
    candidates = [Path(os.environ["REGLAB_DATA"])] if os.environ.get("REGLAB_DATA") else []
    candidates.append(SHARED_CIFAR10)
    for folder in candidates:
        if _holds_cifar10(folder.expanduser()):
            return folder.expanduser()
    tried = ", ".join(str(c) for c in candidates)
    pytest.skip(
        f"real CIFAR-10 not found (tried {tried}): set REGLAB_DATA to a folder holding "
        "data_batch_1.bin..data_batch_5.bin"
    )


@dataclass
class FakeCifar:
    """What ``fake_cifar`` wrote. Images are uint8 NCHW, labels int64, in file order."""

    root: Path  # the data dir to pass to load_cifar10
    folder: Path  # the folder holding the batch files (root or a cifar-10-batches-* subfolder)
    layout: str  # "bin" or "py"
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    md5: dict[str, str]  # file name -> md5 of what was written

    def path(self, i: int | str) -> Path:
        """Training batch ``i`` (1..5) or ``"test"`` as a path in this layout."""
        stem = "test_batch" if i == "test" else f"data_batch_{i}"
        return self.folder / (stem + (".bin" if self.layout == "bin" else ""))


def write_fake_cifar(
    folder: Path,
    layout: str = "bin",
    n_per_batch: int = 20,
    n_test: int = 10,
    test: bool = True,
    seed: int = 0,
) -> tuple[dict[str, str], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Write 5 tiny training batches (+ a test batch) in the official ``layout``.

    Returns ``(md5 by file name, train_images, train_labels, test_images, test_labels)``.
    Binary records: 1 label byte then 3072 pixel bytes (R plane, G plane, B plane, rows of 32);
    python batches: pickled dicts with ``b"data"`` (n, 3072) uint8 and ``b"labels"`` list.
    """
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    md5: dict[str, str] = {}
    sizes = [n_per_batch] * 5 + ([n_test] if test else [])
    stems = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    parts = []
    for stem, n in zip(stems, sizes):
        images = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n).astype(np.int64)
        parts.append((images, labels))
        if layout == "bin":
            name = stem + ".bin"
            records = np.empty((n, 3073), dtype=np.uint8)
            records[:, 0] = labels
            records[:, 1:] = images.reshape(n, -1)
            payload = records.tobytes()
        else:
            name = stem
            batch = {
                b"batch_label": stem.encode(),
                b"labels": labels.tolist(),
                b"data": images.reshape(n, -1),
                b"filenames": [f"{stem}_{j}.png".encode() for j in range(n)],
            }
            payload = pickle.dumps(batch, protocol=2)
        (folder / name).write_bytes(payload)
        md5[name] = hashlib.md5(payload).hexdigest()
    train_x = np.concatenate([p[0] for p in parts[:5]])
    train_y = np.concatenate([p[1] for p in parts[:5]])
    if test:
        test_x, test_y = parts[5]
    else:
        test_x, test_y = np.empty((0, 3, 32, 32), np.uint8), np.empty(0, np.int64)
    return md5, train_x, train_y, test_x, test_y


def synthetic_cifar(n_train: int = 64, n_val: int = 32, seed: int = 0):
    """Random uint8 images and labels as a loaded ``CIFAR10`` (no files): for loop tests."""
    import torch

    from reglab.data import CIFAR10

    g = torch.Generator().manual_seed(seed)
    return CIFAR10(
        train_images=torch.randint(0, 256, (n_train, 3, 32, 32), dtype=torch.uint8, generator=g),
        train_labels=torch.randint(0, 10, (n_train,), generator=g),
        val_images=torch.randint(0, 256, (n_val, 3, 32, 32), dtype=torch.uint8, generator=g),
        val_labels=torch.randint(0, 10, (n_val,), generator=g),
        val_split="holdout",
        source=None,  # type: ignore[arg-type]
    )


@pytest.fixture
def fake_cifar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., FakeCifar]:
    """Factory: ``fake_cifar(layout="bin", sub=None, **write_fake_cifar kwargs)`` writes tiny
    fake batches under ``tmp_path/"data"`` (in subfolder ``sub`` if given) and patches the
    loader's MD5 tables to their md5s, so they load as if official."""
    from reglab.data import cifar10

    def make(layout: str = "bin", sub: str | None = None, **kwargs) -> FakeCifar:
        root = tmp_path / "data"
        folder = root / sub if sub else root
        md5, train_x, train_y, test_x, test_y = write_fake_cifar(folder, layout, **kwargs)
        table = cifar10.BINARY_MD5 if layout == "bin" else cifar10.PYTHON_MD5
        for name, digest in md5.items():
            monkeypatch.setitem(table, name, digest)
        return FakeCifar(root, folder, layout, train_x, train_y, test_x, test_y, md5)

    return make


# --------------------------------------------------------------------------------------------
# PostgreSQL: a throwaway server on the loopback interface, for `reglab sweep --storage URL`.


def _postgres_bin() -> Path | None:
    """The folder of initdb and pg_ctl: on PATH, else Debian's /usr/lib/postgresql/<ver>/bin
    (the highest version)."""
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb and pg_ctl and Path(initdb).resolve().parent == Path(pg_ctl).resolve().parent:
        return Path(initdb).resolve().parent
    folders = [Path(f) for f in glob.glob("/usr/lib/postgresql/*/bin")]
    folders = [f for f in folders if (f / "initdb").is_file() and (f / "pg_ctl").is_file()]

    def version(f: Path) -> tuple[int, ...]:
        return tuple(int(x) for x in re.findall(r"\d+", f.parent.name))

    return max(folders, key=version) if folders else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """SQLAlchemy URL of an empty PostgreSQL database for sweep studies.

    ``$REGLAB_TEST_POSTGRES_URL`` if set (tests then use unique study names in it and delete
    them). Otherwise a throwaway cluster: initdb in a temporary folder, a server on a free port
    of 127.0.0.1 only (its Unix socket in that folder), password authentication, stopped and
    removed after the session. As root, the server runs as the ``postgres`` user (initdb refuses
    root). Skipped, with the reason, without the PostgreSQL server binaries or the driver."""
    url = os.environ.get("REGLAB_TEST_POSTGRES_URL")
    if url:
        yield url
        return
    try:
        import psycopg
    except ImportError:
        pytest.skip("PostgreSQL driver psycopg (3) not installed: pip install -e '.[test]'")
    bindir = _postgres_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found on PATH or in "
                    "/usr/lib/postgresql/*/bin: apt-get install postgresql, or set "
                    "REGLAB_TEST_POSTGRES_URL")  # fmt: skip
    as_user: dict = {}
    if os.geteuid() == 0:  # initdb and postgres refuse to run as root
        import pwd

        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run the PostgreSQL "
                        "server as (Debian's postgresql package creates it)")  # fmt: skip
        as_user = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}

    # not under pytest's tmp dir: the server's user must be able to reach the folder
    root = Path(tempfile.mkdtemp(prefix="reglab-pg-"))
    data, log = root / "data", root / "server.log"
    password = secrets.token_hex(16)
    (root / "pwfile").write_text(password + "\n")
    if as_user:
        for path in (root, root / "pwfile"):
            os.chown(path, as_user["user"], as_user["group"])

    def pg(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run([str(a) for a in args], cwd=root, capture_output=True, text=True,
                              timeout=120, **as_user)  # fmt: skip
        if check and done.returncode != 0:
            tail = log.read_text()[-2000:] if log.exists() else ""
            pytest.fail(f"{Path(args[0]).name} failed ({done.returncode}): "
                        f"{done.stdout}{done.stderr}{tail}")  # fmt: skip
        return done

    started = False
    try:
        pg(bindir / "initdb", "-D", data, "-U", "reglab", f"--pwfile={root / 'pwfile'}",
           "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C",
           "--no-sync")  # fmt: skip
        base_conf = (data / "postgresql.conf").read_text()
        for attempt in range(3):  # another process may take the free port before the server
            port = _free_port()
            (data / "postgresql.conf").write_text(base_conf + (
                f"\nlisten_addresses = '127.0.0.1'\nport = {port}\n"
                f"unix_socket_directories = '{root}'\n"
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
            ))  # fmt: skip
            done = pg(bindir / "pg_ctl", "-D", data, "-l", log, "-w", "-t", "60", "start",
                      check=attempt == 2)  # fmt: skip
            if done.returncode == 0:
                started = True
                break
        with psycopg.connect(host="127.0.0.1", port=port, user="reglab", password=password,
                             dbname="postgres", autocommit=True) as conn:  # fmt: skip
            conn.execute("CREATE DATABASE reglab_test")
        # the URL as users write it (SQLAlchemy >= 2.1 reads postgresql:// as psycopg 3)
        yield f"postgresql://reglab:{password}@127.0.0.1:{port}/reglab_test"
    finally:
        if started:
            stop = pg(bindir / "pg_ctl", "-D", data, "-m", "fast", "-w", "-t", "60", "stop",
                      check=False)  # fmt: skip
            if stop.returncode != 0:
                pg(bindir / "pg_ctl", "-D", data, "-m", "immediate", "stop", check=False)
        with contextlib.suppress(OSError):
            shutil.rmtree(root)
