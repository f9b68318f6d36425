"""Device and precision choice.

`auto` device picks CUDA, then Apple MPS, then the CPU. Picking a device leaves torch's thread
count alone (it is one setting for the whole process); the commands that own their process
(denoise-batch, denoise-eval, the plug-in worker) call `use_all_cores()`. `auto` precision runs the
convolutions in float16 on CUDA, in bfloat16 on a CPU that has native bfloat16 instructions
(AVX512-BF16 or AMX: 2.4-2.6x the float32 speed of `unet` on this project's Xeon) and in float32
elsewhere.
"""
from __future__ import annotations

import os

import torch

from denoise_plugins.common.denoise_protocol import DEVICES

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_has_bf16() -> bool:
    """Whether oneDNN runs bfloat16 convolutions natively on this CPU (AVX512-BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def pick_precision(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype for `precision` on `device`; None means plain float32."""
    name = (precision or "auto").lower()
    if name == "auto":
        if device.type == "cuda":
            return torch.float16
        return torch.bfloat16 if device.type == "cpu" and cpu_has_bf16() else None
    if name not in _DTYPES:
        raise ValueError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    dtype = _DTYPES[name]
    if dtype is not None and device.type == "mps":
        raise ValueError(f"precision {name!r} is not supported on Apple MPS; use fp32 or auto")
    return dtype


def autocast(device: torch.device, dtype: torch.dtype | None):
    """The autocast context for a `pick_precision` result (None: plain float32)."""
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def precision_name(dtype: torch.dtype | None) -> str:
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, which schedulers and `taskset` narrow)."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def use_all_cores() -> int:
    """Set torch's (process-wide) intra-op thread count to every available core; returns it. For
    programs that own their process; the library (`Denoiser`, `pick_device`) never changes it."""
    n = available_cores()
    torch.set_num_threads(n)
    return n


def pick_device(name: str = "auto") -> torch.device:
    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        name = "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available; use --device cpu or auto")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError("device 'mps' requested but Apple MPS is not available; use --device cpu or auto")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; use one of {', '.join(DEVICES)}") from None
