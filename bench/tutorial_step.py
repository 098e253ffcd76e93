"""The tutorial network's training step on a CPU, in the variants that might make it faster.

    python bench/tutorial_step.py                    # batch 64 at 96 px, 3 x 6 steps each

Times one step (forward, cross-entropy, backward, momentum SGD; no regularization) of
tutorial-resnet on a fixed random channels-last batch, interleaved, medians of the repeats:

- fp32, and bf16 autocast (what `--precision bf16` runs);
- bf16 autocast under torch.compile (default mode; its compile time is reported apart);
- bf16 weights and activations end to end (the model cast to bfloat16, no autocast: what
  "bf16 weights for oneDNN" would give, without the fp32 master copy it would need);
- the network's 1x1 convolutions computed as matmuls of the channels-last activations
  (``F.linear`` on the NHWC view; a strided 1x1 subsamples first), in both bf16 forms;
- bf16 autocast in NCHW layout, and on one thread (the default: one per core).

The issue's target is 0.084 s per batch, the tutorial's own GPU. bench/compile_profile.py
splits a step by what ran.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
import types
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import machine
from reglab.models.tutorial_resnet import TutorialResNet
from reglab.training.allocator import keep_freed_memory

VARIANTS = {
    "fp32": "fp32",
    "bf16 autocast (reglab's --precision bf16)": "autocast",
    "bf16 autocast, torch.compile": "autocast compile",
    "bf16 weights and activations": "bf16",
    "bf16 autocast, 1x1 convs as matmuls": "autocast mm",
    "bf16 weights and activations, 1x1 convs as matmuls": "bf16 mm",
    "bf16 autocast, NCHW (not channels-last)": "autocast nchw",
    "bf16 autocast, 1 thread": "autocast 1thread",
}


def conv1x1_as_matmul(conv: torch.nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """A bias-free 1x1 convolution of a channels-last batch as one matmul (NHWC view)."""
    s = conv.stride[0]
    xs = x[:, :, ::s, ::s] if s > 1 else x
    return F.linear(xs.permute(0, 2, 3, 1), conv.weight.flatten(1)).permute(0, 3, 1, 2)


def matmul_gflops(dtype: torch.dtype, n: int = 2048, repeats: int = 10) -> float:
    """A square matmul's rate on this CPU, GFLOP/s (the convolutions' ceiling)."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return repeats * 2 * n**3 / (time.perf_counter() - t0) / 1e9


def make_step(mode: str, x: torch.Tensor, y: torch.Tensor):
    torch.manual_seed(0)
    model = TutorialResNet()
    if "nchw" in mode:
        x = x.contiguous()
    else:
        model.to(memory_format=torch.channels_last)
    if "mm" in mode:
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (1, 1):
                m.forward = types.MethodType(conv1x1_as_matmul, m)
    if mode.startswith("bf16"):
        model.to(torch.bfloat16)
        x = x.to(torch.bfloat16)
    forward = torch.compile(model) if "compile" in mode else model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    autocast = mode.startswith("autocast")

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = F.cross_entropy(forward(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--image-size", type=int, default=96)
    p.add_argument("--steps", type=int, default=6, help="steps per timing (6)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats (3)")
    args = p.parse_args()
    keep_freed_memory()
    threads = torch.get_num_threads()
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (args.batch_size,))
    steps, first = {}, {}
    for name, mode in VARIANTS.items():
        steps[name] = make_step(mode, x, y)
        t0 = time.perf_counter()
        steps[name]()  # compiles the compiled variant
        first[name] = time.perf_counter() - t0
        steps[name]()
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(args.repeats):
        for name, step in steps.items():
            torch.set_num_threads(1 if "1 thread" in name else threads)
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step()
            times[name].append((time.perf_counter() - t0) / args.steps)
    torch.set_num_threads(threads)
    t = {k: statistics.median(v) for k, v in times.items()}
    base = t["bf16 autocast (reglab's --precision bf16)"]
    command = shlex.join(["python", "bench/tutorial_step.py", *sys.argv[1:]])
    print(f"Command: `{command}`\n")
    print(machine())
    print(f"- 2048² matmul: fp32 {matmul_gflops(torch.float32):.0f} GFLOP/s, bf16 "
          f"{matmul_gflops(torch.bfloat16):.0f} GFLOP/s\n")
    print(f"tutorial-resnet, batch {args.batch_size} at {args.image_size} px, channels-last; "
          f"medians of {args.repeats} x {args.steps} steps, interleaved\n")  # fmt: skip
    print("| variant | s / step | x bf16 autocast's time | first step (s) |\n|---|---|---|---|")
    for name in steps:
        print(f"| {name} | {t[name]:.4f} | {t[name] / base:.2f}x | {first[name]:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
