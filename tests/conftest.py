"""Shared pytest fixtures: the real CIFAR-10 folder (or a skip), data dirs linked to it, synthetic
in-memory CIFAR-10, and a throwaway PostgreSQL server (or a skip)."""

from __future__ import annotations

import contextlib
import glob
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# Under pytest-xdist (`-n N`), each worker takes its share of the cores for torch's threads and
# for its subprocesses' (set before torch is imported), so that N workers share the machine
# instead of each running as many threads as it has cores.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _share = (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, _share)))

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


TRAIN_BIN = tuple(f"data_batch_{i}.bin" for i in range(1, 6))


@pytest.fixture(scope="session")
def real_bin_dir(real_data_dir: Path) -> Path:
    """The folder holding the real binary batches data_batch_1.bin..data_batch_5.bin."""
    for folder in (real_data_dir, real_data_dir / "cifar-10-batches-bin"):
        if all((folder / name).is_file() for name in TRAIN_BIN):
            return folder
    pytest.skip(f"{real_data_dir} holds only the python version of CIFAR-10, not the binary one")


def stand_in_md5() -> dict[str, str]:
    """The official MD5 table, except that test_batch.bin is expected to hold data_batch_5.bin's
    bytes: the stand-in test set of ``link_cifar10`` (the project machines have no official
    test_batch.bin). Pass it as ``load_cifar10(..., md5=stand_in_md5())``."""
    from reglab.data import BINARY_MD5

    return {**BINARY_MD5, "test_batch.bin": BINARY_MD5["data_batch_5.bin"]}


def link_cifar10(real_bin: Path, folder: Path, test: bool = False) -> Path:
    """Symlink the real data_batch_1.bin..data_batch_5.bin of ``real_bin`` into ``folder`` (made
    if needed); with ``test``, also a stand-in test_batch.bin, a link to data_batch_5.bin that
    loads with ``md5=stand_in_md5()``. Returns ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in TRAIN_BIN:
        (folder / name).symlink_to(real_bin / name)
    if test:
        (folder / "test_batch.bin").symlink_to(real_bin / "data_batch_5.bin")
    return folder


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
def cifar_dir(
    tmp_path: Path, real_bin_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., Path]:
    """Factory for in-process CLI runs: ``cifar_dir(test=False, n_test=30)`` makes a data dir of
    links to the real training batches (``link_cifar10``). With ``test`` it adds the stand-in
    test_batch.bin and replaces ``load_cifar10`` wherever reglab has imported it by a wrapper
    that accepts the stand-in (``md5=stand_in_md5()``) and keeps only its first ``n_test``
    images, so that an evaluation on "the test set" stays quick."""
    from reglab.data import cifar10

    def make(test: bool = False, n_test: int = 30) -> Path:
        folder = link_cifar10(real_bin_dir, tmp_path / "data", test=test)
        if not test:
            return folder
        original = cifar10.load_cifar10

        def load(*args, **kwargs):
            data = original(*args, **{"md5": stand_in_md5(), **kwargs})
            if data.val_split == "test":
                data.val_images = data.val_images[:n_test]
                data.val_labels = data.val_labels[:n_test]
            return data

        for name, module in list(sys.modules.items()):
            if name.startswith("reglab") and getattr(module, "load_cifar10", None) is original:
                monkeypatch.setattr(module, "load_cifar10", load)
        return folder

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
