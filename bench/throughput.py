"""Benchmarks on this machine: training throughput of each model, and the quick preset's time to
80% holdout accuracy.

    python bench/throughput.py --data-dir ../shared/cifar10            # both
    python bench/throughput.py --skip-quick                             # throughput only

Throughput is images per second of full training steps (forward, loss + L2 penalty, backward,
momentum SGD) on random batches, after warm-up steps, median of repeats; it excludes data loading,
which the pipeline does on the same device. Time-to-80% is the training time (evaluation
excluded) at the first validation on the 10,000-image holdout with accuracy >= 0.80.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from reglab.config import build_config
from reglab.models import create_model
from reglab.regularization import build_regularization
from reglab.training import build_optimizer, train

CASES = [  # (model, image size, batch size): each model at the size it is used at
    ("airbench", 32, 256),
    ("resnet18", 32, 128),
    ("tutorial-resnet", 96, 64),
]


def throughput(model_name: str, image_size: int, batch_size: int, device: torch.device,
               steps: int = 8, repeats: int = 3) -> float:  # fmt: skip
    torch.manual_seed(0)
    cfg = build_config("tutorial", overrides={"model": model_name, "image_size": image_size})
    model = create_model(model_name).to(device, memory_format=torch.channels_last)
    reg = build_regularization(cfg, model)
    opt = build_optimizer("sgd", [p for p in model.parameters() if p.requires_grad], 0.01, 0.9)
    x = torch.randn(batch_size, 3, image_size, image_size, device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch_size,), device=device)

    def step() -> None:
        loss = F.cross_entropy(model(x), y) + reg.penalty()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(2):
        step()
    rates = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        rates.append(steps * batch_size / (time.perf_counter() - t0))
    return statistics.median(rates)


def time_to_80(data_dir: str | None, device: str) -> dict:
    cfg = build_config("quick", overrides={"data_dir": data_dir, "device": device})
    first: dict = {}

    def on_validation(step: int, row: dict) -> None:
        if row["acc"] >= 0.80 and not first:
            first.update(step=step, acc=row["acc"], elapsed=row["elapsed"])

    summary = train(cfg, on_validation=on_validation)
    return {"summary": summary, "first80": first}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir")
    p.add_argument("--device", default="cpu")
    p.add_argument("--skip-quick", action="store_true")
    args = p.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    print(f"# {time.strftime('%Y-%m-%d')}, torch {torch.__version__}, {device} ({name}), "
          f"{torch.get_num_threads()} threads")  # fmt: skip
    print("| model | image size | batch | training images/s |")
    print("|---|---|---|---|")
    for model_name, size, batch in CASES:
        rate = throughput(model_name, size, batch, device)
        print(f"| {model_name} | {size} | {batch} | {rate:,.0f} |", flush=True)
    if not args.skip_quick:
        r = time_to_80(args.data_dir, args.device)
        s, f = r["summary"], r["first80"]
        reached = (f"{f['elapsed']:.0f} s (step {f['step']}, acc {f['acc']:.4f})"
                   if f else "not reached")  # fmt: skip
        print(f"\nquick preset: final holdout acc {s['final_val_acc']:.4f} after "
              f"{s['total_seconds']:.0f} s ({s['train_seconds']:.0f} s training, "
              f"{s['images_per_second']:.0f} images/s); first >= 80%: {reached}")  # fmt: skip


if __name__ == "__main__":
    main()
