"""--malloc keep: glibc keeps freed memory, so re-allocating a step's large tensors does not
page-fault again (each fresh 4 KiB page is a fault and a kernel zeroing)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from reglab.config import build_config
from reglab.errors import ConfigError
from reglab.training.builder import build, environment

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="needs glibc")

# Allocate, touch and free a 64 MiB tensor once, then ten more times: the page faults of the
# ten, counted by the kernel (ru_minflt).
CHILD = """
import resource, sys, torch
from reglab.training.allocator import malloc_mode
print(malloc_mode(sys.argv[1], "cpu"))
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
x = torch.ones(16 * 2**20); del x
f0 = faults()
for _ in range(10):
    x = torch.ones(16 * 2**20); del x
print(faults() - f0)
"""


def page_faults(mode: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True,
                         check=True).stdout.splitlines()  # fmt: skip
    return out[0], int(out[1])


def test_keep_stops_the_page_faults_of_reallocation():
    kept, kept_faults = page_faults("keep")
    system, system_faults = page_faults("system")
    assert kept.startswith("keep") and system == "system"
    pages = 10 * 64 * 2**20 // 4096
    # kept: the freed block is reused (now and then a small allocation splits it and the heap
    # grows once more, as training's first steps do before they settle)
    assert kept_faults < 0.3 * pages, (kept_faults, system_faults)
    # glibc's default mmaps blocks this large and unmaps them on free: every page faults again
    # (fewer with transparent huge pages always on: 2 MiB each, still far more than kept)
    assert system_faults > 3 * kept_faults + 20, (kept_faults, system_faults)


def test_the_run_records_the_allocator(tmp_path):
    from conftest import synthetic_cifar

    cfg = build_config(overrides={"model": "airbench", "image_size": 32, "batch_size": 8,
                                  "steps": 1, "malloc": "system", "device": "cpu"})  # fmt: skip
    # in this process an earlier test may have kept memory already: then it says so
    env = environment(build(cfg, data=synthetic_cifar(n_train=16, n_val=8)))
    assert env["malloc"] == "system" or env["malloc"].startswith("keep")
    with pytest.raises(ConfigError, match="malloc"):
        build_config(overrides={"malloc": "jemalloc"})
