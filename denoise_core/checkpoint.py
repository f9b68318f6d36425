"""Checkpoint files: safetensors weights plus metadata, loaded without running any code.

Metadata (all strings in the safetensors header): format, format_version, arch, arch_args (JSON),
and free-form card fields (noise, data, steps, psnr as JSON). Loading never unpickles: a file that
is not safetensors is rejected, even a torch pickle, so a hostile file cannot execute code.
"""
from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .atomic import atomic_write_bytes
from .models import create_model, is_model, list_models

FORMAT = "denoise-cnn"
FORMAT_VERSION = 1
_PICKLE_MAGIC = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05", b"PK\x03\x04")


class CheckpointError(ValueError):
    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = str(path)
        self.problem = problem


@dataclass
class Checkpoint:
    arch: str
    arch_args: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    card: dict[str, Any] = field(default_factory=dict)

    def build(self) -> nn.Module:
        model = create_model(self.arch, **self.arch_args)
        load_state_dict_strict(model, self.state_dict, source=self.card.get("_path", "checkpoint"))
        return model.eval()


def save_checkpoint(path: str | os.PathLike, model: nn.Module, card: dict[str, Any] | None = None) -> None:
    meta = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "arch": model.arch_name,
        "arch_args": json.dumps(model.arch_args, sort_keys=True),
    }
    for k, v in (card or {}).items():
        meta[k] = v if isinstance(v, str) else json.dumps(v, sort_keys=True)
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(path, st_save(tensors, metadata=meta))


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """Header metadata only, without reading the tensors."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(p, "file is empty or truncated (no safetensors header)")
            (n,) = struct.unpack("<Q", head)
            if n > 100_000_000:
                raise CheckpointError(p, _not_safetensors_reason(head))
            raw = f.read(n)
    except OSError as e:
        raise CheckpointError(p, f"cannot read: {e.strerror or e}") from None
    if len(raw) < n:
        raise CheckpointError(p, "file is truncated (header cut short)")
    try:
        header = json.loads(raw)
    except ValueError:
        raise CheckpointError(p, "corrupt safetensors header (not JSON)") from None
    return header.get("__metadata__", {}) or {}


def _not_safetensors_reason(head: bytes) -> str:
    if head.startswith(_PICKLE_MAGIC):
        return "is a pickle/torch.save file; refusing to unpickle it (only safetensors checkpoints load)"
    return "is not a safetensors checkpoint"


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(p, "no such file" if not p.exists() else "not a file")
    data = p.read_bytes()
    if len(data) < 8:
        raise CheckpointError(p, "file is empty or truncated (no safetensors header)")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        if data.startswith(_PICKLE_MAGIC) or n > 100_000_000:
            raise CheckpointError(p, _not_safetensors_reason(data[:8]))
        raise CheckpointError(p, "file is truncated (header runs past the end)")
    meta = read_metadata(p)
    try:
        tensors = st_load(data)
    except (SafetensorError, ValueError, RuntimeError) as e:
        raise CheckpointError(p, f"corrupt or truncated tensor data ({e})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(p, f"missing or foreign format tag {meta.get('format')!r} (expected {FORMAT!r})")
    try:
        version = int(meta.get("format_version", "0"))
    except ValueError:
        version = -1
    if version != FORMAT_VERSION:
        raise CheckpointError(p, f"format version {meta.get('format_version')!r} is not supported "
                                 f"(this release reads version {FORMAT_VERSION})")
    arch = meta.get("arch", "")
    if not is_model(arch):
        raise CheckpointError(p, f"unknown architecture {arch!r}; valid names: {', '.join(list_models())}")
    try:
        arch_args = json.loads(meta.get("arch_args", "{}"))
    except ValueError:
        raise CheckpointError(p, "arch_args metadata is not JSON") from None
    card: dict[str, Any] = {"_path": str(p)}
    for k, v in meta.items():
        if k in ("format", "format_version", "arch", "arch_args"):
            continue
        try:
            card[k] = json.loads(v)
        except ValueError:
            card[k] = v
    ckpt = Checkpoint(arch=arch, arch_args=arch_args, state_dict=tensors, card=card)
    try:
        create_model(arch, **arch_args)
    except TypeError as e:
        raise CheckpointError(p, f"arch_args do not fit architecture {arch!r}: {e}") from None
    return ckpt


def load_state_dict_strict(model: nn.Module, state: dict[str, torch.Tensor], *, source: str) -> None:
    """Strict key and shape matching with a readable diff, as timm's load_state_dict does."""
    want = model.state_dict()
    missing = sorted(set(want) - set(state))
    unexpected = sorted(set(state) - set(want))
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(want[k].shape)}"
              for k in sorted(set(want) & set(state)) if state[k].shape != want[k].shape]
    if missing or unexpected or shapes:
        lines = []
        if missing:
            lines.append(f"missing keys ({len(missing)}): {', '.join(missing[:8])}" + (" ..." if len(missing) > 8 else ""))
        if unexpected:
            lines.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected[:8])}" + (" ..." if len(unexpected) > 8 else ""))
        if shapes:
            lines.append("shape mismatches: " + "; ".join(shapes[:8]))
        raise CheckpointError(source, f"weights do not match architecture {getattr(model, 'arch_name', '?')!r}: "
                                      + " | ".join(lines))
    for k, v in state.items():
        if not torch.isfinite(v).all():
            raise CheckpointError(source, f"tensor {k} holds NaN or infinite values")
    model.load_state_dict(state, strict=True)
