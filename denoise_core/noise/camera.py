"""Camera noise profiles and the Bayer mosaic: darktable's measured noise profiles (per camera and
ISO, `a * x + b` variance per channel, interpolated in ISO), looked up by name (`find_camera`) or
drawn at random, and the RGGB masks and bilinear demosaic that the camera-noise models share.

Used by the noise synthesis (`synth`), the camera-pipeline simulator (`pipeline`), raw files
(`denoise_core.raw`) and raw training; imports none of them.
"""
from __future__ import annotations

import difflib
import functools
import gzip
import json
import math
import re
from dataclasses import dataclass
from importlib import resources

import torch
import torch.nn.functional as F


class NoiseSpecError(ValueError):
    pass


@dataclass(frozen=True)
class CameraProfile:
    maker: str
    model: str
    iso: float
    a: tuple[float, float, float]
    b: tuple[float, float, float]

    @property
    def name(self) -> str:
        return f"{self.maker} {self.model}@{self.iso:g}"


def camera_key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


@functools.lru_cache(maxsize=1)
def camera_table() -> dict[str, tuple[str, str, list]]:
    raw = resources.files("denoise_core.data").joinpath("noiseprofiles.json.gz").read_bytes()
    data = json.loads(gzip.decompress(raw))
    table: dict[str, tuple[str, str, list]] = {}
    for maker in data["noiseprofiles"]:
        for model in maker["models"]:
            profs = sorted(model["profiles"], key=lambda p: p[0])
            display = model["model"]
            key = camera_key(display if display.lower().startswith(maker["maker"].lower())
                        else f"{maker['maker']} {display}")
            table[key] = (maker["maker"], display, profs)
            table.setdefault(camera_key(display), (maker["maker"], display, profs))
    return table


def list_cameras() -> list[str]:
    seen = {(mk, md) for mk, md, _ in camera_table().values()}
    return sorted(f"{mk} {md}" for mk, md in seen)


def find_camera(name: str, iso: float) -> CameraProfile:
    """Look a camera up by "MAKER MODEL" (case and spacing ignored) and interpolate its ISO."""
    table = camera_table()
    key = camera_key(name)
    if key not in table:
        near = difflib.get_close_matches(key, list(table), n=5, cutoff=0.6)
        names = sorted({f"{table[k][0]} {table[k][1]}" for k in near})
        hint = f"; did you mean: {', '.join(names)}?" if names else "; `denoise-train --list-cameras` lists them"
        raise NoiseSpecError(f"unknown camera {name!r}{hint}")
    maker, model, profs = table[key]
    isos = [p[0] for p in profs]
    if not isos[0] * 0.5 <= iso <= isos[-1] * 2:
        raise NoiseSpecError(
            f"{maker} {model} has noise profiles for ISO {isos[0]:g}-{isos[-1]:g}, not {iso:g}")
    a, b = interp_profile(profs, iso)
    return CameraProfile(maker, model, float(iso), a, b)


def interp_profile(profs: list, iso: float) -> tuple[tuple, tuple]:
    """Interpolate a and b linearly in ISO between the two nearest measured profiles."""
    isos = [p[0] for p in profs]
    if iso <= isos[0] or len(profs) == 1:
        lo = hi = profs[0] if iso <= isos[0] else profs[-1]
        t = iso / lo[0]
        return tuple(v * t for v in lo[1]), tuple(v * t * t for v in lo[2])
    if iso >= isos[-1]:
        hi = profs[-1]
        t = iso / hi[0]
        return tuple(v * t for v in hi[1]), tuple(v * t * t for v in hi[2])
    for lo, hi in zip(profs, profs[1:]):
        if lo[0] <= iso <= hi[0]:
            t = (iso - lo[0]) / max(hi[0] - lo[0], 1e-9)
            a = tuple((1 - t) * x + t * y for x, y in zip(lo[1], hi[1]))
            b = tuple((1 - t) * x + t * y for x, y in zip(lo[2], hi[2]))
            return a, b
    raise AssertionError("unreachable")


def random_camera(gen: torch.Generator, iso_range: tuple[float, float] = (1600, 25600)) -> CameraProfile:
    table = camera_table()
    keys = sorted({(mk, md) for mk, md, _ in table.values()})
    while True:
        mk, md = keys[int(torch.randint(len(keys), (1,), generator=gen))]
        profs = table[camera_key(f"{mk} {md}")][2] if camera_key(f"{mk} {md}") in table else table[camera_key(md)][2]
        lo = max(iso_range[0], profs[0][0])
        hi = min(iso_range[1], profs[-1][0])
        if lo > hi:
            continue
        u = float(torch.rand((), generator=gen))
        iso = math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))
        a, b = interp_profile(profs, iso)
        return CameraProfile(mk, md, iso, a, b)


# --------------------------------------------------------------------------- Bayer mosaic
_K_RB = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 4.0
_K_G = torch.tensor([[0.0, 1.0, 0.0], [1.0, 4.0, 1.0], [0.0, 1.0, 0.0]]) / 4.0


def bayer_masks(h: int, w: int, device) -> torch.Tensor:
    """RGGB masks, shape (1, 3, h, w)."""
    yy = torch.arange(h, device=device).reshape(h, 1) % 2
    xx = torch.arange(w, device=device).reshape(1, w) % 2
    r = ((yy == 0) & (xx == 0)).float()
    b = ((yy == 1) & (xx == 1)).float()
    g = 1.0 - r - b
    return torch.stack([r, g, b]).unsqueeze(0)


def demosaic_masked(mosaic3: torch.Tensor) -> torch.Tensor:
    """Bilinear demosaic of a masked (N, 3, H, W) mosaic (zeros where a channel is absent)."""
    k = torch.stack([_K_RB, _K_G, _K_RB]).unsqueeze(1).to(mosaic3)
    return F.conv2d(F.pad(mosaic3, (1, 1, 1, 1), mode="reflect"), k, groups=3)
