"""reglab's benchmark, in one run: the machine, then for every model at the size and batch its
preset uses, training images/s in fp32 and bf16, the cost of the regularization and diagnostics,
the cost of a checkpoint, and (with --presets) each preset's time to its accuracy marks.

    python bench/bench.py --data-dir ../shared/cifar10                      # throughput tables
    python bench/bench.py --data-dir ../shared/cifar10 --presets quick      # + a full quick run
    python bench/bench.py --skip-throughput --presets quick,cpu90 ...     # the presets only
    python bench/bench.py ... --write BENCHMARKS.md    # replace the parts measured in the file
    python bench/bench.py --skip-throughput --abba --presets 'cpu90,cpu90 --epochs 7' ...
                                                       # A, B, B, A: a time ratio robust to drift

Throughput is measured on full training steps (reglab's own train_step: forward, loss,
backward, regularization, optimizer, the non-finite guard) on random batches already on the
device, channels-last, after warm-up steps; the variants of one model are interleaved and
repeated, and the figure is the median. Ratios (bf16 / fp32, overhead) come from one run. On
a CPU without AVX512-BF16 or AMX, bf16 is emulated and several times slower: it is then timed on
one step only. Steps are run with reglab's default --malloc keep; the --malloc system column
(glibc's default allocator) is timed the same way in a child process, after the others.
Overhead: the preset's regularization and guard against the same step without them, plus the
diagnostics of a log point divided by the preset's log interval, in two ways: the difference of
the two interleaved step medians (A/B: includes every indirect cost, but on a noisy machine it is
only as exact as the steps' spread, several % at a few steps per measurement), and the
regularization and guard timed alone on a real step's gradients (medians of 20 repeats:
precise to far under 0.1% of a step, but blind to effects on the rest of the step, such as
caches).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from reglab.config import PRESETS, build_config
from reglab.regularization import Regularization
from reglab.regularization.diagnostics import bn_followed_weights, weight_diagnostics
from reglab.training import build
from reglab.training.checkpoint import save_checkpoint
from reglab.training.loop import Progress, checkpoint_state
from reglab.training.precision import cpu_flags, cpu_has_fast_bf16, cpu_model
from reglab.training.step import grads_finite, train_step

# (model, image size, batch, the preset whose regularization and intervals it uses)
CASES = [
    ("airbench", 32, 256, "quick-sgd"),
    ("airbench", 32, 1000, "quick"),  # cpu90's steps too: the same settings, more epochs
    ("airbench94", 32, 1024, "gpu"),
    ("airbench94", 32, 2000, "cpu94"),
    ("resnet18", 32, 128, None),
    ("tutorial-resnet", 96, 64, "tutorial"),
]
MARKS = (0.80, 0.85, 0.90, 0.935)
ROOT = Path(__file__).resolve().parents[1]


def machine() -> str:
    flags = sorted(cpu_flags() & {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"})
    lines = [
        f"- Date: {datetime.date.today().isoformat()}; torch {torch.__version__}; Python "
        f"{platform.python_version()}",
        f"- CPU: {cpu_model()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads;"
        f" flags: {', '.join(flags) or 'none of avx2/avx512/amx'}",
    ]
    if torch.cuda.is_available():
        lines.append(f"- GPU: {torch.cuda.get_device_name(0)}")
    return "\n".join(lines)


def random_data(n: int = 2048):
    """A stand-in CIFAR10 of random images (throughput does not depend on pixel values)."""
    from reglab.data import CIFAR10

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (n,), generator=g)
    return CIFAR10(images, labels, images[:256], labels[:256], "holdout", Path("."))


def setup_for(model: str, size: int, batch: int, preset: str | None, precision: str,
              regularized: bool, device: str, malloc: str = "keep"):  # fmt: skip
    """A preset's training step for the throughput table: its model, optimizer and
    regularization on random images at ``size`` pixels, every batch at that size (a preset's
    progressive resizing is off: its early batches are smaller, and would mix into the timing)."""
    overrides = {"model": model, "image_size": size, "batch_size": batch, "device": device,
                 "precision": precision, "audit": False, "tensorboard": False,
                 "malloc": malloc, "low_res_fraction": 0.0}  # fmt: skip
    if not regularized:
        overrides.update(l2=0.0, regularizers=[])
    cfg = build_config(preset, overrides=overrides)
    s = build(cfg, data=random_data(max(2048, 2 * batch)))
    if not regularized:
        s.reg = Regularization([])
    return s


def measure(setup, steps: int, guard: bool) -> float:
    """Seconds per step over ``steps`` steps of one fixed random batch (already prepared)."""
    x, y = setup.pipeline.next_batch()
    autocast = setup.precision.autocast()
    sync = torch.cuda.synchronize if setup.device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for step in range(steps):
        train_step(setup.forward, x, y, setup.reg, setup.optimizer, setup.lr(step),
                   setup.cfg.label_smoothing, autocast, guard="stop" if guard else None,
                   scaler=setup.scaler)  # fmt: skip
    sync()
    return (time.perf_counter() - t0) / steps


def diagnostics_seconds(setup, repeats: int = 3) -> float:
    bn = bn_followed_weights(setup.model)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        weight_diagnostics(setup.model, setup.reg, 0.01, bn)
        with torch.no_grad():
            setup.reg.penalty()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def regularization_seconds(s, repeats: int = 20) -> float:
    """Median seconds of what train_step runs beyond the bare step, timed alone: the penalty's
    loss term and its backward (None for closed-form penalties), the non-finite check,
    ``before_step`` and ``after_step``, on the gradients a real step left. These are the calls
    of reglab.training.step.train_step that "fp32 bare" lacks: keep the two in step."""
    x, y = s.pipeline.next_batch()
    lr = s.lr(0)
    out = train_step(s.forward, x, y, s.reg, s.optimizer, lr, s.cfg.label_smoothing,
                     s.precision.autocast(), guard="stop", scaler=s.scaler)  # fmt: skip
    params = [p for g in s.optimizer.param_groups for p in g["params"]]
    sync = torch.cuda.synchronize if s.device.type == "cuda" else (lambda: None)
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        term = s.reg.loss_term()
        if term is not None:
            term.backward()
        grads_finite(params, out.data_loss.detach())
        s.reg.before_step(lr)
        s.reg.after_step(lr)
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def checkpoint_seconds(setup, repeats: int = 3) -> tuple[float, float]:
    """(median seconds per checkpoint, MiB) with reglab's atomic, fsync'ed, checksummed write."""
    times, size = [], 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeats):
            t0 = time.perf_counter()
            path = save_checkpoint(Path(tmp), i, checkpoint_state(setup, Progress()))
            times.append(time.perf_counter() - t0)
            size = path.stat().st_size / 2**20
    return statistics.median(times), size


def steps_for(batch: int, steps: int) -> int:
    """Steps per measurement: ``steps`` up to batch 256, fewer (at least 2) for larger batches."""
    return max(2, steps * 256 // max(batch, 256))


def system_malloc_seconds(case: tuple, device: str, steps: int, repeats: int) -> float:
    """Median seconds per fp32 step with ``--malloc system`` (the C library's allocator), in a
    child process: this one keeps freed memory, which cannot be undone in a process."""
    import subprocess

    model, size, batch, preset = case
    spec = f"{model},{size},{batch},{preset or ''},{steps},{repeats}"
    out = subprocess.run([sys.executable, __file__, "--malloc-system-child", spec, "--device",
                          device], capture_output=True, text=True, check=True).stdout  # fmt: skip
    return float(out.split()[-1])


def malloc_system_child(spec: str, device: str) -> None:
    model, size, batch, preset, steps, repeats = spec.split(",")
    s = setup_for(model, int(size), int(batch), preset or None, "fp32", True, device, "system")
    measure(s, 2, True)
    print(statistics.median(measure(s, int(steps), True) for _ in range(int(repeats))))


def throughput_tables(device: str, steps: int, repeats: int, bf16: bool) -> str:
    rows = []
    ckpt_rows = []
    for model, size, batch, preset in CASES:
        n_steps = steps_for(batch, steps)
        variants = {"fp32": ("fp32", True, True), "fp32 bare": ("fp32", False, False)}
        if bf16:
            variants["bf16"] = ("bf16", True, True)
        setups = {k: setup_for(model, size, batch, preset, p, r, device)
                  for k, (p, r, _) in variants.items()}  # fmt: skip
        times: dict[str, list[float]] = {k: [] for k in variants}
        for k, s in setups.items():  # warm-up
            measure(s, 1 if k == "bf16" else 2, variants[k][2])
        slow_bf16 = device == "cpu" and not cpu_has_fast_bf16()
        for r in range(repeats):  # interleaved: the variants see the same machine state
            for k, s in setups.items():
                if k == "bf16" and slow_bf16 and r:  # emulated bf16: one step shows the ratio
                    continue
                n = 1 if k == "bf16" and slow_bf16 else n_steps
                times[k].append(measure(s, n, variants[k][2]))
        t = {k: statistics.median(v) for k, v in times.items()}
        if device == "cpu":
            t_system = system_malloc_seconds((model, size, batch, preset), device, n_steps,
                                             repeats)  # fmt: skip
            sys_col = f"{batch / t_system:,.0f} ({t_system / t['fp32']:.2f}x)"
        else:
            sys_col = "n/a"
        full = setups["fp32"]
        log_every = full.cfg.log_every
        diag = diagnostics_seconds(full)
        overhead = (t["fp32"] + diag / log_every) / t["fp32 bare"] - 1
        alone = (regularization_seconds(full) + diag / log_every) / t["fp32 bare"]
        regs = ", ".join(r.label for r in full.reg.regularizers) or "none"
        regs += f" ({preset})" if preset else ""
        bf = f"{batch / t['bf16']:,.0f} ({t['fp32'] / t['bf16']:.2f}x)" if bf16 else "n/a"
        rows.append(f"| {model} | {size} | {batch} | {batch / t['fp32']:,.0f} | {sys_col} | "
                    f"{bf} | {regs} | {100 * overhead:+.1f}% | {100 * alone:.2f}% |")  # fmt: skip
        secs, mib = checkpoint_seconds(full)
        every = full.cfg.checkpoint_every
        share = f"{100 * secs / (every * t['fp32']):.2f}% (every {every} steps)" if every else "-"
        ckpt_rows.append(f"| {model} | {mib:.1f} MiB | {secs * 1000:.0f} ms | {share} |")
        print(rows[-1], ckpt_rows[-1], sep="\n", file=sys.stderr, flush=True)
    head = ["| model | image size | batch | fp32 images/s | fp32 images/s, --malloc system "
            "(keep's speed-up) | bf16 autocast images/s (x fp32) | regularization (preset) | "
            "overhead of regularization + guard + diagnostics: A/B | the same, timed alone |",
            "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    ckpt_head = ["| model | checkpoint size | time per checkpoint | share of the run's time |",
                 "|---|---|---|---|"]  # fmt: skip
    return "\n".join([*head, *rows, "", *ckpt_head, *ckpt_rows])


def split_presets(text: str) -> list[str]:
    """``--presets``' entries, each a preset and its flags: split at the commas that start a
    preset's name, so a flag's own commas stay with it (``"quick,cpu90 --widths 16,64,128"`` is
    two entries). SystemExit, one line, for an entry whose first word is no preset."""
    import re

    names = "|".join(map(re.escape, sorted(PRESETS, key=len, reverse=True)))
    entries = [e.strip() for e in re.split(rf",(?=\s*(?:{names})(?:\s|,|$))", text)]
    for entry in entries:
        preset = shlex.split(entry)[0] if entry else ""
        if preset not in PRESETS:
            unknown = next((w for w in preset.split(",") if w not in PRESETS), preset)
            raise SystemExit(f"bench.py: --presets: unknown preset {unknown!r} in {entry!r}; "
                             f"give PRESET [FLAGS], comma-separated, PRESET one of: "
                             f"{', '.join(PRESETS)}")  # fmt: skip
    return entries


def abba_ratio(a1: float, b1: float, b2: float, a2: float) -> float:
    """B's time over A's from runs in the order A, B, B, A: (b1 + b2) / (a1 + a2). A machine
    speed that drifts linearly over the four runs slows each pair's sum alike, so it cancels."""
    return (b1 + b2) / (a1 + a2)


def preset_runs(names: list[str], data_dir: str | None, device: str,
                keep: Path | None = None, seed: int | None = None,
                abba: bool = False) -> str:  # fmt: skip
    """Each preset as a user runs it (``reglab train --preset NAME``, a new process): the wall
    time from process start to summary, and when each accuracy mark was first validated.
    A name may carry flags after the preset (``"cpu90 --low-res-fraction 0"``: a same-run A/B).
    ``keep``: run in KEEP/bench-NAME (for ``reglab export --compact-to``; the flags joined
    into the name by dashes) instead of a temporary folder. ``seed``: run with ``--seed SEED``
    (in KEEP/bench-NAME-seedSEED), else the preset's (0). ``abba``: two names A, B run in the
    order A, B, B, A (the second runs in bench-NAME-rep2), and a line gives B's training time
    over A's by :func:`abba_ratio`, and whether each pair's runs learned the same."""
    rows = ["| preset | model | steps x batch | final holdout acc | wall time (process start "
            "to summary) | training time | wall time to " + " / ".join(
                f"{100 * m:g}%" for m in MARKS) + " |", "|---|---|---|---|---|---|---|"]
    order = [(names[0], 1), (names[1], 1), (names[1], 2), (names[0], 2)] if abba else [
        (name, 1) for name in names]  # fmt: skip
    summaries = []
    for name, rep in order:
        row, summary = preset_run(name, data_dir, device, keep, seed, rep)
        rows.append(row)
        summaries.append(summary)
        print(row, file=sys.stderr, flush=True)
    if abba:
        a1, b1, b2, a2 = summaries
        ratio = abba_ratio(*(s["train_seconds"] for s in summaries))
        same = all(x["final_val_acc"] == y["final_val_acc"] for x, y in ((a1, a2), (b1, b2)))
        rows += ["", f"ABBA: training time of {names[1]!r} over {names[0]!r}: {ratio:.3f}x "
                 f"(({b1['train_seconds']:.1f} + {b2['train_seconds']:.1f}) s / "
                 f"({a1['train_seconds']:.1f} + {a2['train_seconds']:.1f}) s); first pair "
                 f"{b1['train_seconds'] / a1['train_seconds']:.3f}x, second pair "
                 f"{b2['train_seconds'] / a2['train_seconds']:.3f}x; each preset's two runs: "
                 + ("the same final accuracy" if same else "DIFFERENT final accuracies "
                    "(not the same computation: the ratio compares unlike runs)")]  # fmt: skip
    return "\n".join(rows)


def preset_run(name: str, data_dir: str | None, device: str, keep: Path | None,
               seed: int | None, rep: int = 1) -> tuple[str, dict]:  # fmt: skip
    """One run of :func:`preset_runs`: its table row and its summary.json."""
    import contextlib
    import json
    import re
    import subprocess

    preset, *flags = shlex.split(name)
    folder = (contextlib.nullcontext(str(keep)) if keep else tempfile.TemporaryDirectory())
    tag = "-".join([preset, *(re.sub(r"[^\w.,]+", "", f).replace(",", "-") for f in flags)])
    tag = tag if seed is None else f"{tag}-seed{seed}"
    tag = tag if rep == 1 else f"{tag}-rep{rep}"
    run = f"bench-{tag}" if keep else "run"
    with folder as tmp:
        cmd = [sys.executable, "-m", "reglab", "train", "--preset", preset, *flags,
               "--device", device, "--runs-dir", tmp, "--name", run,
               "--no-tensorboard"]  # fmt: skip
        if seed is not None:
            cmd += ["--seed", str(seed)]
        if data_dir:
            cmd += ["--data-dir", data_dir]
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - t0
        summary = json.loads((Path(tmp) / run / "summary.json").read_text())
        metrics = [json.loads(line) for line in
                   (Path(tmp) / run / "metrics.jsonl").read_text().splitlines()]
    offset = wall - summary["total_seconds"]  # start-up: imports, data, model
    vals = [r for r in metrics if r["split"] == summary["val_split"]]
    marks = " / ".join(next((f"{r['elapsed'] + offset:.0f} s" for r in vals
                             if r["acc"] >= m), "-") for m in MARKS)  # fmt: skip
    label = name if seed is None else f"{name}, seed {seed}"
    label = label if rep == 1 else f"{label} (repeat)"
    row = (f"| {label} | {summary['model']} | {summary['steps']} x {summary['batch_size']} | "
           f"{100 * summary['final_val_acc']:.2f}% | {wall:.0f} s | "
           f"{summary['train_seconds']:.0f} s | {marks} |")  # fmt: skip
    return row, summary


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir")
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=8, help="steps per measurement (8)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats (3)")
    p.add_argument("--no-bf16", action="store_true", help="skip the bf16 column")
    p.add_argument("--presets", default="", help="comma-separated presets to run in full, "
                   "each with flags if given (\"cpu90,cpu90 --low-res-fraction 0\"; a flag's "
                   "own commas stay with it: \"cpu90 --widths 16,64,128\")")
    p.add_argument("--keep-runs", metavar="DIR", type=Path, help="run the presets in "
                   "DIR/bench-NAME and keep them (default: temporary folders)")
    p.add_argument("--presets-block", default="bench-presets", metavar="KEY", help="the "
                   "generated block of --write that the preset table replaces (bench-presets)")
    p.add_argument("--throughput-block", default="bench-throughput", metavar="KEY", help="the "
                   "generated block of --write that the throughput tables replace "
                   "(bench-throughput)")
    p.add_argument("--seed", type=int, help="train the presets with this seed (default: "
                   "theirs, 0)")
    p.add_argument("--abba", action="store_true", help="two --presets entries A,B run as A, "
                   "B, B, A, with B's training time over A's from the sums (a linear drift of "
                   "the machine's speed cancels)")
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--malloc-system-child", metavar="SPEC", help=argparse.SUPPRESS)
    p.add_argument("--write", metavar="FILE", help="replace the generated parts of FILE that "
                   "this run measured (throughput, presets)")
    args = p.parse_args()
    if args.malloc_system_child:
        malloc_system_child(args.malloc_system_child, args.device)
        return 0
    entries = split_presets(args.presets) if args.presets else []  # checked before measuring
    if args.abba and len(entries) != 2:
        raise SystemExit(f"bench.py: --abba compares two --presets entries, A,B; got "
                         f"{len(entries)}: give two, e.g. --presets 'cpu90,cpu90 --epochs 7'")
    head = [f"Command: `python bench/bench.py {shlex.join(sys.argv[1:])}`", "", machine(), ""]
    blocks = []  # (key of the generated block, its text)
    if not args.skip_throughput:
        tables = throughput_tables(args.device, args.steps, args.repeats, not args.no_bf16)
        blocks.append((args.throughput_block, "\n".join([*head, tables])))
    if args.presets:
        table = preset_runs(entries, args.data_dir, args.device, args.keep_runs,
                            args.seed, args.abba)  # fmt: skip
        blocks.append((args.presets_block, "\n".join([*head, table])))
    print("\n\n".join(text for _, text in blocks))
    if args.write:
        sys.path.insert(0, str(ROOT / "docs"))
        from generated import update  # the marker-block writer of docs/make_*.py

        path = Path(args.write)
        update([(path, key, text) for key, text in blocks], check=False, fix="bench/bench.py")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
