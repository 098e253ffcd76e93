"""Why torch.compile trains slower than eager on a CPU: both timed, then both profiled.

    python bench/compile_profile.py                          # tutorial-resnet, 64 x 96 px
    python bench/compile_profile.py --model airbench --image-size 32 --batch-size 256
    python bench/compile_profile.py --precision bf16          # autocast, on a CPU with AVX512-BF16

One run times reglab's full training step (bench.py's `measure`: forward, loss, backward,
the preset's L2, the optimizer, the guard) eager and under ``torch.compile`` (default mode),
interleaved, medians of the repeats; then profiles a few steps of each with torch.profiler and
splits the CPU time by what ran: convolutions forward and backward (oneDNN through ATen in both
modes: inductor does not generate convolutions on CPU), batch norm (ATen's kernels in eager;
inside inductor's generated C++ when compiled), inductor's generated kernels, the optimizer
and regularization, the rest. The categories are the profiler's self times, so they add up to
the profiled total; what the profiled steps' wall time holds beyond them (Python, the
autograd engine, waiting threads) is its own row. The compile time (first step) is reported
apart.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import machine, measure, setup_for

# (category, pattern over the profiler's event names), the first match wins
CATEGORIES = [
    ("conv backward", r"convolution_backward|mkldnn_convolution_backward"),
    ("conv forward", r"convolution|mkldnn_conv|conv2d"),
    ("batch norm", r"batch_norm"),
    ("inductor kernels", r"CompiledFxGraph|cpp_fused"),  # its graphs' calls, kernels inside
    ("optimizer + regularization", r"_foreach|Optimizer|sgd|addcmul|lerp"),
    ("matmul (linear)", r"\bmm\b|addmm|matmul|linear"),
    ("copies, layout", r"copy_|contiguous|clone|to_dense|_to_copy|reorder|empty_strided"),
    ("pointwise, pooling", r"relu|gelu|threshold|add|mul|max_pool|where|fill_|zero_"),
]


def categorise(name: str) -> str:
    for cat, pattern in CATEGORIES:
        if re.search(pattern, name, re.IGNORECASE):
            return cat
    return "other ops"


def profile(setup, steps: int) -> tuple[dict[str, float], list[tuple[str, float]]]:
    """Seconds per step by category (with the profiled wall time that no operator accounts
    for), and the top events by self time."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        wall = measure(setup, steps, guard=True)
    by_cat: dict[str, float] = defaultdict(float)
    events = []
    for e in prof.key_averages():
        secs = e.self_cpu_time_total / 1e6 / steps
        by_cat[categorise(e.key)] += secs
        events.append((e.key, secs))
    events.sort(key=lambda kv: -kv[1])
    by_cat["outside any operator"] = max(0.0, wall - sum(by_cat.values()))
    return by_cat, events[:12]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tutorial-resnet")
    p.add_argument("--image-size", type=int, default=96)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--preset", default="tutorial", help="whose regularization the step uses")
    p.add_argument("--steps", type=int, default=8, help="steps per timing (8)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats (3)")
    p.add_argument("--profile-steps", type=int, default=4)
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                   help="the step's autocast (fp32: none)")
    args = p.parse_args()
    torch.manual_seed(0)
    setups = {}
    compile_secs = 0.0
    for mode in ("eager", "compiled"):
        s = setup_for(args.model, args.image_size, args.batch_size, args.preset, args.precision,
                      True, "cpu")  # fmt: skip
        if mode == "compiled":
            s.forward = torch.compile(s.forward)
            t0 = time.perf_counter()
            measure(s, 1, guard=True)  # compiles forward and backward
            compile_secs = time.perf_counter() - t0
        setups[mode] = s
    for s in setups.values():  # warm-up
        measure(s, 2, guard=True)
    times: dict[str, list[float]] = {k: [] for k in setups}
    for _ in range(args.repeats):
        for k, s in setups.items():
            times[k].append(measure(s, args.steps, guard=True))
    t = {k: statistics.median(v) for k, v in times.items()}
    profiles = {k: profile(s, args.profile_steps) for k, s in setups.items()}

    print(f"Command: `python bench/compile_profile.py {' '.join(sys.argv[1:])}`\n")
    print(machine() + "\n")
    print(f"{args.model}, batch {args.batch_size} at {args.image_size} px, {args.precision}, "
          f"channels-last; compile time (first step) {compile_secs:.0f} s\n")  # fmt: skip
    print(f"| | eager | torch.compile | compiled / eager |\n|---|---|---|---|\n"
          f"| seconds per step (median of {args.repeats} x {args.steps}) | {t['eager']:.4f} | "
          f"{t['compiled']:.4f} | {t['compiled'] / t['eager']:.2f}x |")  # fmt: skip
    cats = [c for c, _ in CATEGORIES] + ["other ops", "outside any operator"]
    totals = {k: sum(v[0].values()) for k, v in profiles.items()}
    print(f"\nProfiled ({args.profile_steps} steps each), CPU self time per step:\n")
    print("| category | eager s/step | compiled s/step |\n|---|---|---|")
    for c in cats:
        e, cmp_ = profiles["eager"][0].get(c, 0.0), profiles["compiled"][0].get(c, 0.0)
        if e or cmp_:
            print(f"| {c} | {e:.4f} | {cmp_:.4f} |")
    print(f"| wall time of the profiled steps | {totals['eager']:.4f} | "
          f"{totals['compiled']:.4f} |")
    conv = {k: v[0].get("conv forward", 0.0) + v[0].get("conv backward", 0.0)
            for k, v in profiles.items()}  # fmt: skip
    rest = {k: totals[k] - conv[k] for k in totals}
    print(f"\nConvolutions: {100 * conv['eager'] / totals['eager']:.0f}% of the eager step; "
          f"compiled / eager: convolutions {conv['compiled'] / conv['eager']:.2f}x, everything "
          f"else {rest['compiled'] / rest['eager']:.2f}x")  # fmt: skip
    for k, (_, top) in profiles.items():
        print(f"\nTop events, {k} (self s/step):")
        for name, secs in top:
            print(f"  {secs:.4f}  {name[:110]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
