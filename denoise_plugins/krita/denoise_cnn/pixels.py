"""Pixel conversions between Krita's `Node.pixelData` bytes and the worker's float32 layout.

No Krita or Qt here, so this module is unit-tested in any Python (tests/test_krita_pixels.py).
Uses numpy when it imports (Krita's Python on Debian has it), else stdlib `array`/`struct`.

Krita's byte orders: U8 and U16 RGBA documents give B,G,R,A; F16 and F32
give R,G,B,A; grayscale gives G,A. Values are in the machine's byte order. The worker wants
float32 little-endian, interleaved, colour first and alpha last (R,G,B,A or G,A), 0..1.
"""
from __future__ import annotations

import array
import struct
import sys

try:  # fast path
    import numpy as _np
except Exception:  # pragma: no cover - Krita builds without numpy
    _np = None

SUPPORTED_MODELS = ("RGBA", "GRAYA")
SUPPORTED_DEPTHS = ("U8", "U16", "F16", "F32")
_MODEL_NAMES = {"CMYKA": "CMYK", "LABA": "Lab", "XYZA": "XYZ", "YCbCrA": "YCbCr",
                "GRAYA": "grayscale", "RGBA": "RGB"}
# bytes per channel, struct code, scale to 0..1
_DEPTH = {"U8": (1, "B", 255.0), "U16": (2, "H", 65535.0), "F16": (2, "e", 1.0), "F32": (4, "f", 1.0)}


class UnsupportedFormat(ValueError):
    """A document colour model or depth the plugin cannot denoise; the message is for the user."""


def check_format(color_model: str, depth: str) -> None:
    if color_model not in SUPPORTED_MODELS:
        name = _MODEL_NAMES.get(color_model, color_model)
        raise UnsupportedFormat(
            f"Denoise (CNN) works on RGB and grayscale images; this document is {name}. "
            f"Convert it with Image › Convert Image Color Space… (RGB/Alpha) and try again.")
    if depth not in SUPPORTED_DEPTHS:
        raise UnsupportedFormat(f"unsupported channel depth {depth!r}; use 8 or 16-bit integer, "
                                f"16 or 32-bit float")


def channels_of(color_model: str) -> int:
    return 4 if color_model == "RGBA" else 2


def bytes_per_pixel(color_model: str, depth: str) -> int:
    return channels_of(color_model) * _DEPTH[depth][0]


def is_linear_profile(profile_name: str) -> bool:
    """True for linear-light profiles: Krita's default deep-document profiles (…-g10.icc),
    "linear" and scRGB ones. Everything else is treated as sRGB-like (gamma-encoded)."""
    p = (profile_name or "").lower()
    return "g10" in p or "linear" in p or "scrgb" in p or "gamma 1.0" in p or "gamma1.0" in p


def swaps_rb(color_model: str, depth: str) -> bool:
    """True where Krita's bytes are B,G,R,A (U8 and U16 RGBA)."""
    return color_model == "RGBA" and depth in ("U8", "U16")


_swap_rb = swaps_rb


def to_float(data: bytes, color_model: str, depth: str) -> bytes:
    """Krita pixel bytes -> float32 little-endian R,G,B,A (or G,A), 0..1 for integer depths."""
    check_format(color_model, depth)
    size, code, scale = _DEPTH[depth]
    c = channels_of(color_model)
    if len(data) % (size * c):
        raise ValueError(f"{len(data)} bytes is not a whole number of {color_model}/{depth} pixels")
    swap = _swap_rb(color_model, depth)
    if _np is not None:
        dt = {"U8": _np.uint8, "U16": _np.uint16, "F16": _np.float16, "F32": _np.float32}[depth]
        a = _np.frombuffer(bytes(data), dtype=_np.dtype(dt).newbyteorder("=")).reshape(-1, c)
        f = a.astype(_np.float32)
        if scale != 1.0:
            f /= _np.float32(scale)
        if swap:
            f = f[:, [2, 1, 0, 3]]
        return _np.ascontiguousarray(f, dtype="<f4").tobytes()
    n = len(data) // size
    vals = struct.unpack(f"={n}{code}", bytes(data))
    if scale != 1.0:
        vals = [v / scale for v in vals]
    out = array.array("f", vals)
    if swap:
        out[0::4], out[2::4] = out[2::4], out[0::4]
    if sys.byteorder != "little":
        out.byteswap()
    return out.tobytes()


def from_float(data: bytes, color_model: str, depth: str) -> bytes:
    """float32 little-endian R,G,B,A (or G,A) -> Krita pixel bytes (rounded, clipped for integers)."""
    check_format(color_model, depth)
    size, code, scale = _DEPTH[depth]
    c = channels_of(color_model)
    swap = _swap_rb(color_model, depth)
    if _np is not None:
        f = _np.frombuffer(bytes(data), dtype="<f4").reshape(-1, c)
        if swap:
            f = f[:, [2, 1, 0, 3]]
        if depth in ("U8", "U16"):
            f = _np.clip(_np.rint(_np.nan_to_num(f) * _np.float32(scale)), 0, scale)
            out = f.astype(_np.uint8 if depth == "U8" else _np.uint16)
        else:
            out = f.astype(_np.float16 if depth == "F16" else _np.float32)
        return _np.ascontiguousarray(out).tobytes()
    vals = array.array("f")
    vals.frombytes(bytes(data))
    if sys.byteorder != "little":
        vals.byteswap()
    if swap:
        vals[0::4], vals[2::4] = vals[2::4], vals[0::4]
    if depth in ("U8", "U16"):
        ints = [0 if v != v else int(min(max(round(v * scale), 0), scale)) for v in vals]
        return struct.pack(f"={len(ints)}{code}", *ints)
    return struct.pack(f"={len(vals)}{code}", *vals)


def apply_mask(original: bytes, denoised: bytes, mask: bytes | None, channels: int) -> bytes:
    """Blend float32 pixels: original + (denoised - original) * mask/255 on colour channels.

    `mask` is Krita's 8-bit selection (one byte a pixel) or None for everything. Alpha (the last
    channel of 2 and 4-channel pixels) always comes from `original`; where the mask is 0 the
    original floats come back bit-identical."""
    has_alpha = channels in (2, 4)
    if _np is not None:
        o = _np.frombuffer(bytes(original), dtype="<f4").reshape(-1, channels)
        d = _np.frombuffer(bytes(denoised), dtype="<f4").reshape(-1, channels)
        out = d.copy()
        if mask is not None:
            m = _np.frombuffer(bytes(mask), dtype=_np.uint8)
            if m.size != o.shape[0]:
                raise ValueError(f"selection mask has {m.size} pixels, image {o.shape[0]}")
            w = (m.astype(_np.float32) / 255.0)[:, None]
            out = o + (d - o) * w
            out[m == 255] = d[m == 255]
            out[m == 0] = o[m == 0]
        if has_alpha:
            out[:, -1] = o[:, -1]
        return _np.ascontiguousarray(out, dtype="<f4").tobytes()
    o = array.array("f")
    o.frombytes(bytes(original))
    d = array.array("f")
    d.frombytes(bytes(denoised))
    if sys.byteorder != "little":
        o.byteswap()
        d.byteswap()
    out = array.array("f", d)
    npx = len(o) // channels
    if mask is not None and len(mask) != npx:
        raise ValueError(f"selection mask has {len(mask)} pixels, image {npx}")
    for i in range(npx):
        m = 255 if mask is None else mask[i]
        base = i * channels
        for k in range(channels):
            j = base + k
            if has_alpha and k == channels - 1:
                out[j] = o[j]
            elif m == 0:
                out[j] = o[j]
            elif m != 255:
                out[j] = o[j] + (d[j] - o[j]) * (m / 255.0)
    if sys.byteorder != "little":
        out.byteswap()
    return out.tobytes()


def _srgb_encode(v: float) -> float:
    v = min(max(v, 0.0), 1.0)
    return v * 12.92 if v <= 0.0031308 else 1.055 * v ** (1 / 2.4) - 0.055


def to_rgba8(data: bytes, channels: int, linear: bool = False) -> bytes:
    """float32 R,G,B,A / G,A -> 8-bit R,G,B,A for an on-screen preview (QImage.Format_RGBA8888)."""
    if _np is not None:
        f = _np.frombuffer(bytes(data), dtype="<f4").reshape(-1, channels)
        col = f[:, :3] if channels >= 3 else _np.repeat(f[:, :1], 3, axis=1)
        col = _np.clip(_np.nan_to_num(col), 0.0, 1.0)
        if linear:
            col = _np.where(col <= 0.0031308, col * 12.92, 1.055 * _np.power(col, 1 / 2.4) - 0.055)
        a = f[:, -1:] if channels in (2, 4) else _np.ones((f.shape[0], 1), _np.float32)
        out = _np.concatenate([col, _np.clip(_np.nan_to_num(a), 0.0, 1.0)], axis=1)
        return _np.rint(out * 255.0).astype(_np.uint8).tobytes()
    f = array.array("f")
    f.frombytes(bytes(data))
    if sys.byteorder != "little":
        f.byteswap()
    res = bytearray()
    for i in range(len(f) // channels):
        px = f[i * channels:(i + 1) * channels]
        col = list(px[:3]) if channels >= 3 else [px[0]] * 3
        col = [_srgb_encode(v) if linear else min(max(v, 0.0), 1.0) for v in col]
        a = min(max(px[-1], 0.0), 1.0) if channels in (2, 4) else 1.0
        res.extend(int(round(v * 255.0)) for v in (*col, a))
    return bytes(res)


def crop(data: bytes, width: int, height: int, bpp: int, x: int, y: int, w: int, h: int) -> bytes:
    """Rows y..y+h, columns x..x+w of a packed width x height image with `bpp` bytes a pixel."""
    if x < 0 or y < 0 or x + w > width or y + h > height:
        raise ValueError("crop outside the image")
    row = width * bpp
    return b"".join(data[(y + r) * row + x * bpp:(y + r) * row + (x + w) * bpp] for r in range(h))


def subsample(data: bytes, width: int, height: int, bpp: int, step: int):
    """Every `step`-th pixel of every `step`-th row (a quick thumbnail): (bytes, w, h)."""
    step = max(1, int(step))
    w, h = -(-width // step), -(-height // step)
    if _np is not None:
        a = _np.frombuffer(bytes(data), dtype=_np.uint8).reshape(height, width, bpp)
        return _np.ascontiguousarray(a[::step, ::step]).tobytes(), w, h
    row = width * bpp
    out = bytearray()
    for y in range(0, height, step):
        line = data[y * row:(y + 1) * row]
        for x in range(0, width, step):
            out += line[x * bpp:(x + 1) * bpp]
    return bytes(out), w, h
