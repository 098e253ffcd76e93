"""Data-parallel training under torchrun, read from torchrun's environment (as the torchvision
references do): ``torchrun --nproc-per-node N -m reglab train ...``.

Each process (rank) trains a replica wrapped in DistributedDataParallel: gloo on CPU, NCCL on
CUDA (one GPU per process, cuda:LOCAL_RANK). Batch norm stays per rank unless ``--sync-bn``.
Only rank 0 writes the run directory, logs and checkpoints, validates (the whole validation set,
once) and audits; its verdicts are broadcast so that every rank stops or goes on together.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None  # None: a single process

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.backend is not None


def from_environment(device_choice: str) -> DistInfo:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR...),
    or a single process when there is none. NCCL when CUDA is used, else gloo."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) < 2:
        return DistInfo()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and not device_choice.startswith("cpu")
    backend = "nccl" if use_cuda else "gloo"
    if not dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(local)
        dist.init_process_group(backend, rank=rank, world_size=world)
    return DistInfo(rank, world, local, backend)


def device_for(info: DistInfo, choice: str) -> torch.device:
    """The training device of this process: cuda:LOCAL_RANK under NCCL, else ``choice``."""
    if info.backend == "nccl":
        return torch.device("cuda", info.local_rank)
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {choice}: no CUDA GPU is available here; use --device cpu")
    return torch.device(choice)


def broadcast(info: DistInfo, obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (a no-op for a single process)."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_sum(info: DistInfo, t: torch.Tensor) -> torch.Tensor:
    """The sum of ``t`` over every rank (``t`` itself for a single process)."""
    if not info.enabled:
        return t
    buf = t if info.backend == "nccl" else t.cpu().clone()
    dist.all_reduce(buf)
    return buf


def all_finite(info: DistInfo, flag: torch.Tensor) -> bool:
    """True iff ``flag`` is True on every rank (one all-reduce; a sync)."""
    if not info.enabled:
        return bool(flag)
    t = flag.to(torch.int32).reshape(1)
    if info.backend == "gloo":
        t = t.cpu()
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
