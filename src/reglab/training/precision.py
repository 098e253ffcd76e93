"""Numeric precision of the training step: which autocast, and why.

``auto`` picks bf16 autocast on CUDA and on CPUs whose instructions make bf16 faster than fp32
(AVX512-BF16 or AMX: oneDNN's bf16 kernels; elsewhere bf16 is emulated and slower), fp32
elsewhere. fp16 needs a gradient scaler and is offered on CUDA only. Weights, optimizer state
and the loss stay float32 in every mode (autocast changes the matmuls and convolutions).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from reglab.errors import ConfigError


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo; empty where it is not readable)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    import platform

    return platform.processor() or platform.machine()


def cpu_has_fast_bf16() -> bool:
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


@dataclass(frozen=True)
class Precision:
    name: str  # fp32 | bf16 | fp16
    reason: str
    device_type: str

    @property
    def dtype(self) -> torch.dtype | None:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.name)

    def autocast(self) -> Callable[[], Any]:
        """A factory of autocast contexts (nullcontext for fp32)."""
        if self.dtype is None:
            return contextlib.nullcontext
        device_type, dtype = self.device_type, self.dtype
        return lambda: torch.autocast(device_type, dtype=dtype)

    def scaler(self) -> torch.amp.GradScaler | None:
        return torch.amp.GradScaler("cuda") if self.name == "fp16" else None


def resolve_precision(choice: str, device: torch.device) -> Precision:
    """The precision ``choice`` (auto | fp32 | bf16 | fp16) means on ``device``, with the reason."""
    kind = device.type
    if choice == "fp16" and kind != "cuda":
        raise ConfigError("--precision fp16 needs a CUDA GPU (it needs loss scaling, and CPUs "
                          "have no fast fp16); use --precision bf16 or fp32")  # fmt: skip
    if choice in ("fp32", "bf16", "fp16"):
        return Precision(choice, "asked for (--precision)", kind)
    if kind == "cuda":
        return Precision("bf16", "auto: CUDA (bf16 tensor cores)", kind)
    if kind == "cpu" and cpu_has_fast_bf16():
        found = sorted({"avx512_bf16", "amx_bf16"} & cpu_flags())
        return Precision("bf16", f"auto: this CPU has {', '.join(found)}", kind)
    return Precision("fp32", "auto: this CPU has no AVX512-BF16 or AMX, so bf16 would be "
                     "emulated (slower)" if kind == "cpu" else f"auto: {kind}", kind)  # fmt: skip
