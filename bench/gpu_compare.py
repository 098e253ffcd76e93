"""GPU comparison: reglab's GPU recipe against airbench94 (PyPI ``airbench``) on the same tensors.

Both train on data_batch_1..4 (40,000 images) and are scored on data_batch_5 (the 10,000-image
holdout), with flip + translate TTA. Times are training seconds (CUDA-synchronised wall clock,
evaluation excluded, after one warm-up run each); the table gives medians over ``--runs`` runs.

    PYTHONPATH=src python3 bench/gpu_compare.py --data-dir DIR --runs 3 --out OUT

airbench's package imports torchvision at the top, only for its CIFAR-10 download and Normalize;
where torchvision is absent a small stand-in module supplies Normalize, and the data is given to
airbench in its own cached-tensor format (cifar10/train.pt, cifar10/test.pt), so nothing is
downloaded. ``--tiny`` runs reglab alone on a few images (a CPU dry run of this script).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import types
from pathlib import Path

import torch

from reglab.config import build_config
from reglab.data import CLASSES, load_cifar10
from reglab.training import train


def reglab_runs(preset: str, data, runs: int, device: str, tiny: bool, **overrides) -> list:
    results = []
    for seed in range(-1, runs):  # seed -1: warm-up run, not counted
        o = {"device": device, "seed": max(seed, 0), "holdout": len(data.val_labels),
             "tensorboard": False, **overrides}
        if tiny:  # half an epoch (a preset's low-res share is a share of it)
            o.update(epochs=0.5, eval_batch_size=500)
        cfg = build_config(preset, overrides=o)
        s = train(cfg, data=data, quiet=True)
        row = {"seed": seed, "train_seconds": s.train_seconds, "acc": s.final_val_acc,
               "images_per_second": s.images_per_second}  # fmt: skip
        print(f"reglab {preset} {overrides or ''}: {row}", flush=True)
        if seed >= 0:
            results.append(row)
    return results


def airbench_runs(data, runs: int, workdir: Path) -> list:
    try:
        import torchvision  # noqa: F401
    except ImportError:  # a stand-in with the one thing airbench uses from it
        tv = types.ModuleType("torchvision")
        tf = types.ModuleType("torchvision.transforms")

        class Normalize:
            def __init__(self, mean, std):
                self.mean, self.std = torch.as_tensor(mean), torch.as_tensor(std)

            def __call__(self, x):
                m = self.mean.to(x.device, x.dtype).view(-1, 1, 1)
                s = self.std.to(x.device, x.dtype).view(-1, 1, 1)
                return (x - m) / s

        tf.Normalize = Normalize
        tv.transforms = tf
        sys.modules["torchvision"], sys.modules["torchvision.transforms"] = tv, tf
    import airbench

    cache = workdir / "cifar10"
    cache.mkdir(parents=True, exist_ok=True)
    for name, x, y in (("train", data.train_images, data.train_labels),
                       ("test", data.val_images, data.val_labels)):  # fmt: skip
        # airbench's cache format: uint8 NHWC images, int64 labels
        torch.save({"images": x.permute(0, 2, 3, 1).contiguous(), "labels": y,
                    "classes": list(CLASSES)}, cache / f"{name}.pt")  # fmt: skip
    os.chdir(workdir)  # airbench reads ./cifar10/*.pt
    hyp = airbench.lib_airbench94.hyp
    loader = airbench.CifarLoader("cifar10", train=True, batch_size=hyp["opt"]["batch_size"],
                                  aug=hyp["aug"], altflip=True)  # fmt: skip
    test_loader = airbench.CifarLoader("cifar10", train=False, batch_size=2000)
    results = []
    for run in range(-1, runs):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        model = airbench.train94(loader, verbose=False)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        acc = airbench.evaluate(model, test_loader, tta_level=hyp["net"]["tta_level"])
        row = {"run": run, "train_seconds": round(seconds, 2), "acc": acc}
        print(f"airbench94: {row}", flush=True)
        if run >= 0:
            results.append(row)
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--out", default=".")
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--skip-airbench", action="store_true")
    p.add_argument("--variant", action="append", default=[], help="KEY=VALUE of the gpu preset")
    p.add_argument("--also", default="", help="comma-separated presets run --runs times too "
                   "(e.g. gpu94: the Muon recipe)")
    args = p.parse_args()
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    gpu = torch.cuda.get_device_name() if cuda else "no GPU"
    print(f"torch {torch.__version__}, {gpu}", flush=True)
    # --tiny: 2,048 training images and the last 1,000 as the holdout (not the batch-5 split)
    data = load_cifar10(args.data_dir, holdout=1000 if args.tiny else 10_000,
                        train_limit=2048 if args.tiny else None)  # fmt: skip
    Path(args.out).mkdir(parents=True, exist_ok=True)

    table = {}
    table["reglab gpu preset (airbench94 net)"] = reglab_runs("gpu", data, args.runs, device,
                                                              args.tiny)  # fmt: skip
    table["reglab quick preset (CPU net)"] = reglab_runs("quick", data, 1, device, args.tiny)
    for preset in filter(None, args.also.split(",")):
        table[f"reglab {preset} preset"] = reglab_runs(preset, data, args.runs, device, args.tiny)
    for variant in args.variant:  # e.g. lr=1.6 or compile=true: one run each after a warm-up
        key, value = variant.split("=")  # the settings schema parses the value
        table[f"reglab gpu preset, {variant}"] = reglab_runs("gpu", data, 1, device, args.tiny,
                                                             **{key: value})  # fmt: skip
    if cuda and not args.skip_airbench:
        workdir = Path(args.out).resolve()
        table["airbench94 (PyPI airbench 0.1.8)"] = airbench_runs(data, args.runs, workdir)

    Path(args.out, "gpu_compare.json").write_text(json.dumps({"gpu": gpu, "runs": table}, indent=2))
    print(f"\n{gpu}, torch {torch.__version__}; medians over runs; training on "
          f"{len(data.train_labels):,} images, accuracy on the {len(data.val_labels):,}-image "
          "holdout (the last of data_batch_5)")  # fmt: skip
    print("| trainer | runs | train seconds (median) | holdout acc (median) |")
    print("|---|---|---|---|")
    for name, rows in table.items():
        t = statistics.median(r["train_seconds"] for r in rows)
        a = statistics.median(r["acc"] for r in rows)
        print(f"| {name} | {len(rows)} | {t:.2f} | {a:.4f} |")
    ab = table.get("airbench94 (PyPI airbench 0.1.8)")
    if ab:  # the criteria: time ratio at most 1.0 at equal or better median accuracy
        print()
        for name, line in against_airbench(table, ab).items():
            print(f"{name} / airbench94: {line}")


def against_airbench(table: dict, ab: list) -> dict[str, str]:
    """For every reglab row with as many runs as airbench94's (not the one-run rows): its median
    training time over airbench94's, and its median accuracy less airbench94's, in points."""
    t_ab = statistics.median(r["train_seconds"] for r in ab)
    a_ab = statistics.median(r["acc"] for r in ab)
    lines = {}
    for name, rows in table.items():
        if name.startswith("reglab") and len(rows) == len(ab):
            t = statistics.median(r["train_seconds"] for r in rows)
            a = statistics.median(r["acc"] for r in rows)
            lines[name] = f"time ratio {t / t_ab:.2f}, accuracy {100 * (a - a_ab):+.2f} points"
    return lines


if __name__ == "__main__":
    main()
