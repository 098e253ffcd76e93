"""Why --malloc keep speeds CPU training up: page faults and system time per training step.

    python bench/page_faults.py                         # airbench94, batches 500 and 2000
    python bench/page_faults.py --batches 256 --model airbench --preset quick

For each batch size and each --malloc mode, a fresh process builds the preset's training step
(bench.py's setup: random batches, channels-last, fp32), runs 2 warm-up steps, then times
``--steps`` steps one by one, reading the kernel's counters around each (getrusage: minor page
faults, user and system CPU seconds). Printed: one line per step, then a table of medians.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def child(model: str, batch: int, preset: str, mode: str, steps: int) -> None:
    from bench import machine, measure, setup_for

    s = setup_for(model, 32, batch, preset, "fp32", True, "cpu", mode)
    print(f"# {machine().splitlines()[1][2:]}; malloc: {s.malloc}", flush=True)
    measure(s, 2, True)
    for _ in range(steps):
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        measure(s, 1, True)
        wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
        print(f"step {wall:.3f} {r1.ru_minflt - r0.ru_minflt} {r1.ru_stime - r0.ru_stime:.3f} "
              f"{r1.ru_utime - r0.ru_utime:.3f}", flush=True)  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="airbench94")
    p.add_argument("--preset", default="cpu94")
    p.add_argument("--batches", default="500,2000")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--child", nargs=2, metavar=("BATCH", "MODE"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        child(a.model, int(a.child[0]), a.preset, a.child[1], a.steps)
        return 0
    print(f"Command: python bench/page_faults.py {' '.join(sys.argv[1:])}")
    rows = ["| model, batch | --malloc | s / step | page faults / step | system CPU s / step "
            "| user CPU s / step |", "|---|---|---|---|---|---|"]  # fmt: skip
    for batch in a.batches.split(","):
        for mode in ("system", "keep"):
            out = subprocess.run([sys.executable, __file__, "--model", a.model, "--preset",
                                  a.preset, "--steps", str(a.steps), "--child", batch, mode],
                                 capture_output=True, text=True, check=True).stdout  # fmt: skip
            print(f"## batch {batch}, --malloc {mode}\n{out}", end="", flush=True)
            steps = [[float(v) for v in line.split()[1:]] for line in out.splitlines()
                     if line.startswith("step ")]  # fmt: skip
            wall, faults, sys_s, user_s = (statistics.median(col) for col in zip(*steps))
            rows.append(f"| {a.model}, {batch} | {mode} | {wall:.2f} | {faults:,.0f} | "
                        f"{sys_s:.2f} | {user_s:.2f} |")  # fmt: skip
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
