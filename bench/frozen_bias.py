"""What freezing the faded whitening bias saves: one training step (forward, loss, backward) of
airbench and airbench94 at a batch of 1000 with the whitening bias taking gradients, as during
its fade (--whiten-bias-epochs), and frozen, as after it (reglab.training.optim.fade_groups).
Without the bias's gradient, backward skips the first conv's input gradient. Interleaved
repeats, medians, one run.

    python bench/frozen_bias.py [--repeats 5] [--batch-size 1000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from bench import machine  # bench/bench.py's machine lines (date, torch, CPU model and flags)
from reglab.models import create_model
from reglab.training.allocator import keep_freed_memory


def step_seconds(model, x, y) -> float:
    t0 = time.perf_counter()
    loss = F.cross_entropy(model(x), y, label_smoothing=0.2)
    for p in model.parameters():
        p.grad = None
    loss.backward()
    return time.perf_counter() - t0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=1000)
    args = p.parse_args()
    keep_freed_memory()  # reglab's default --malloc keep
    torch.manual_seed(0)
    print(machine(), "- fp32, channels-last, --malloc keep\n", sep="\n")
    print("| model | batch | s / step, bias taking gradients | s / step, bias frozen | "
          "frozen / taking |\n|---|---|---|---|---|")
    for name in ("airbench", "airbench94"):
        model = create_model(name).to(memory_format=torch.channels_last)
        x = torch.randn(args.batch_size, 3, 32, 32).to(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (args.batch_size,))
        times: dict[bool, list[float]] = {True: [], False: []}
        for r in range(args.repeats + 1):  # the first round warms up
            for grad in (True, False):
                model.whiten.bias.requires_grad_(grad)
                t = step_seconds(model, x, y)
                if r:
                    times[grad].append(t)
        on, off = (statistics.median(times[g]) for g in (True, False))
        print(f"| {name} | {args.batch_size} | {on:.3f} | {off:.3f} | {off / on:.2f} |",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
