"""Checkpoint files: safetensors weights plus metadata, loaded without running any code.

Metadata (all strings in the safetensors header): format, format_version, arch, arch_args (JSON),
and free-form card fields (noise, data, steps, psnr as JSON). Loading never unpickles: a file that
is not safetensors is rejected, even a torch pickle, so a hostile file cannot execute code. What a
file is goes by its content (a header length that fits the file, then a JSON object), not its
first two bytes: a 640-byte header's length starts like pickle protocol 2.

Loading validates before it spends memory: the header is read with a bounded read (never the whole
file) and must be a JSON object whose tensor entries fit the file; the architecture arguments must
be in range (a width of 6000 or a million blocks is refused, not built) and take RGB input; the
network is then laid out on torch's meta device (no memory) and its parameter names and shapes
must equal the header's, and number at most MAX_PARAMETERS. Only then are tensors read. Every
refusal is a CheckpointError "<path>: <reason>".
"""
from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as st_save

from ..imaging.atomic import atomic_write_bytes
from ..imaging.files import file_problem
from ..models import create_model, is_model, list_models

FORMAT = "denoise-cnn"
FORMAT_VERSION = 1
_PICKLE_MAGIC = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05", b"PK\x03\x04")
MAX_HEADER_BYTES = 100_000_000          # safetensors' own limit
MAX_PARAMETERS = 100_000_000            # 400 MB of float32; the shipped nets hold about 1 M
_DTYPE_SIZES = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8}
# Ranges of the registered architectures' arguments (models/seed.py, models/unet.py): far beyond any
# trained net, small enough that building one cannot exhaust memory. (kind, low, high, length)
_ARG_RULES: dict[str, tuple[str, int, int, int]] = {
    "in_channels": ("int", 3, 3, 0),    # Denoiser feeds RGB (gray is replicated), so 3 in and out
    "width": ("int", 1, 1024, 0),
    "widths": ("ints", 1, 1024, 3),
    "enc_blocks": ("ints", 0, 64, 2),
    "dec_blocks": ("ints", 0, 64, 2),
    "mid_blocks": ("int", 0, 64, 0),
    "level_input": ("bool", 0, 1, 0),
}
# an argument no rule names (an architecture registered later, the raw model's scales): a bool, a
# finite number (an integer, which may size something, within 0..1024), a short list of such
# integers or a short string
_OTHER_ARG = ("other", 0, 1024, 16)


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
    return _read_header(Path(path))[0]


def _not_safetensors_reason(head: bytes) -> str:
    if head.startswith(_PICKLE_MAGIC):
        return "is a pickle/torch.save file; refusing to unpickle it (only safetensors checkpoints load)"
    return "is not a safetensors checkpoint"


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    """What the file is, from its first 9 bytes: a little-endian header length that fits the file,
    then the header's JSON object. (A 640-byte header's length, 80 02 00 ..., starts like pickle
    protocol 2, so the first two bytes alone cannot tell.)"""
    (n,) = struct.unpack("<Q", head[:8])
    return len(head) == 9 and head[8:9] == b"{" and 2 <= n <= min(MAX_HEADER_BYTES, size - 8)


def _read_header(p: Path) -> tuple[dict[str, str], dict[str, tuple[str, tuple[int, ...]]]]:
    """(metadata, {tensor name: (dtype, shape)}) from a bounded read of the header, every entry
    checked against the file's size."""
    problem = file_problem(p, "a checkpoint file", missing="no such file")
    if problem:
        raise CheckpointError(p, problem)
    try:
        st = os.stat(p)
        with open(p, "rb") as f:
            head = f.read(9)
            if len(head) < 8:
                raise CheckpointError(p, "file is empty or truncated (no safetensors header)")
            (n,) = struct.unpack("<Q", head[:8])
            if (head.startswith(_PICKLE_MAGIC) and not _looks_like_safetensors(head, st.st_size)) \
                    or n > MAX_HEADER_BYTES:
                raise CheckpointError(p, _not_safetensors_reason(head))
            if n > st.st_size - 8:
                raise CheckpointError(p, "file is truncated (header runs past the end)")
            f.seek(8)
            raw = f.read(n)
    except FileNotFoundError:
        raise CheckpointError(p, "no such file") from None
    except OSError as e:
        raise CheckpointError(p, f"cannot read: {e.strerror or e}") from None
    if len(raw) < n:
        raise CheckpointError(p, "file is truncated (header cut short)")
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError):
        raise CheckpointError(p, "corrupt safetensors header (not JSON)") from None
    if not isinstance(header, dict):
        raise CheckpointError(p, f"corrupt safetensors header (the JSON is {_json_kind(header)}, not an object)")
    meta = header.pop("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise CheckpointError(p, "corrupt safetensors header (__metadata__ is not a map of strings)")
    data_size = st.st_size - 8 - n
    tensors: dict[str, tuple[str, tuple[int, ...]]] = {}
    for name, entry in header.items():
        dtype, shape, span = (entry.get(k) for k in ("dtype", "shape", "data_offsets")) if isinstance(entry, dict) \
            else (None, None, None)
        if (not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape)
                or not isinstance(span, list) or len(span) != 2 or not all(type(o) is int for o in span)):
            raise CheckpointError(p, f"corrupt safetensors header (entry {name[:80]!r} is malformed)")
        if not isinstance(dtype, str) or dtype not in _DTYPE_SIZES:
            shown = repr(dtype[:20]) if isinstance(dtype, str) else json.dumps(dtype)[:40]
            raise CheckpointError(p, f"tensor {name[:80]!r} has dtype {shown}; weights must be "
                                     f"floating point ({', '.join(_DTYPE_SIZES)})")
        begin, end = span
        if not 0 <= begin <= end or end - begin != math.prod(shape) * _DTYPE_SIZES[dtype]:
            raise CheckpointError(p, f"corrupt safetensors header (tensor {name[:80]!r}: offsets do not fit its shape)")
        if end > data_size:
            raise CheckpointError(p, "file is truncated (tensor data runs past the end)")
        tensors[name] = (dtype, tuple(shape))
    return meta, tensors


def _json_kind(value) -> str:
    return ("null" if value is None else "an array" if isinstance(value, list) else "a string" if isinstance(value, str)
            else "a boolean" if isinstance(value, bool) else "a number")


def _check_arch_args(p: Path, arch: str, text: str) -> dict[str, Any]:
    try:
        args = json.loads(text)
    except (ValueError, RecursionError):
        raise CheckpointError(p, "arch_args metadata is not JSON") from None
    if not isinstance(args, dict):
        raise CheckpointError(p, f"arch_args metadata is {_json_kind(args)}, not a JSON object")
    for key, value in args.items():
        kind, low, high, length = _ARG_RULES.get(key, _OTHER_ARG)
        items = value if kind in ("ints", "other") and isinstance(value, list) else [value]
        if kind == "bool":
            ok = type(value) is bool
        elif kind == "other":
            ok = (type(value) is bool or (type(value) is float and math.isfinite(value) and abs(value) <= 1e6)
                  or (type(value) is str and len(value) <= 64)
                  or (len(items) <= length and all(type(v) is int and low <= v <= high for v in items)))
        else:
            ok = (all(type(v) is int and low <= v <= high for v in items)
                  and (kind != "ints" or (isinstance(value, list) and len(value) == length)))
        if not ok:
            if key == "in_channels":
                raise CheckpointError(p, f"the network takes {json.dumps(value)[:40]} input channels "
                                         "(arch_args in_channels); photos are denoised as RGB, so it must take 3")
            want = ("true or false" if kind == "bool" else
                    f"a list of {length} integers within {low}..{high}" if kind == "ints" else
                    f"an integer within {low}..{high}" if kind == "int" else
                    f"true/false, a number within -1e6..1e6 (integers {low}..{high}), up to {length} such "
                    "integers or a string of up to 64 characters")
            raise CheckpointError(p, f"arch_args {key}={json.dumps(value)[:40]} is out of range for "
                                     f"architecture {arch!r} (must be {want})")
    return args


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    p = Path(path)
    meta, specs = _read_header(p)
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
    arch_args = _check_arch_args(p, arch, meta.get("arch_args", "{}"))
    count = sum(math.prod(shape) for _, shape in specs.values())
    if count > MAX_PARAMETERS:
        raise CheckpointError(p, f"holds {count:,} parameters, more than the {MAX_PARAMETERS:,} a denoiser "
                                 "here may have")
    try:
        with torch.device("meta"):   # layout only: parameter names and shapes, no memory
            layout = {k: tuple(v.shape) for k, v in create_model(arch, **arch_args).state_dict().items()}
    except Exception as e:
        raise CheckpointError(p, f"arch_args {json.dumps(arch_args)[:120]} do not fit architecture {arch!r} "
                                 f"({type(e).__name__}: {e})") from None
    problems = _shape_diff(layout, {k: shape for k, (_, shape) in specs.items()})
    if problems:
        raise CheckpointError(p, f"weights do not match architecture {arch!r}: {problems}")
    try:
        with safe_open(p, framework="pt", device="cpu") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, ValueError, RuntimeError, OSError) as e:
        raise CheckpointError(p, f"corrupt or truncated tensor data ({e})") from None
    card: dict[str, Any] = {"_path": str(p)}
    for k, v in meta.items():
        if k in ("format", "format_version", "arch", "arch_args"):
            continue
        try:
            card[k] = json.loads(v)
        except (ValueError, RecursionError):
            card[k] = v
    return Checkpoint(arch=arch, arch_args=arch_args, state_dict=tensors, card=card)


def _shape_diff(want: dict[str, tuple], have: dict[str, tuple]) -> str:
    """A readable key and shape diff, as timm's load_state_dict gives; empty when they match."""
    missing = sorted(set(want) - set(have))
    unexpected = sorted(set(have) - set(want))
    shapes = [f"{k}: file {have[k]} vs model {want[k]}" for k in sorted(set(want) & set(have)) if have[k] != want[k]]
    lines = []
    if missing:
        lines.append(f"missing keys ({len(missing)}): {', '.join(missing[:8])}" + (" ..." if len(missing) > 8 else ""))
    if unexpected:
        lines.append(f"unexpected keys ({len(unexpected)}): {', '.join(k[:80] for k in unexpected[:8])}"
                     + (" ..." if len(unexpected) > 8 else ""))
    if shapes:
        lines.append("shape mismatches: " + "; ".join(shapes[:8]))
    return " | ".join(lines)


def load_state_dict_strict(model: nn.Module, state: dict[str, torch.Tensor], *, source: str) -> None:
    """Strict key and shape matching with a readable diff, as timm's load_state_dict does."""
    problems = _shape_diff({k: tuple(v.shape) for k, v in model.state_dict().items()},
                           {k: tuple(v.shape) for k, v in state.items()})
    if problems:
        raise CheckpointError(source, f"weights do not match architecture {getattr(model, 'arch_name', '?')!r}: "
                                      + problems)
    for k, v in state.items():
        if not torch.isfinite(v).all():
            raise CheckpointError(source, f"tensor {k} holds NaN or infinite values")
    model.load_state_dict(state, strict=True)
