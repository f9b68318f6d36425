"""Noise synthesis shared by training, evaluation and benchmarks.

Every function takes and returns sRGB-encoded float tensors in [0, 1], shape (N, C, H, W), and
draws from an explicit `torch.Generator` so runs are reproducible. Specs are strings users type:

    gaussian:25          sigma 25 on the 0-255 scale
    gaussian:5-50        sigma uniform in [5, 50] per image
    poisson-gaussian     random shot and read levels, applied in linear light
    camera:"Nikon D750"@12800   darktable profile through an unprocessing pipeline
    camera:random        a random camera profile at ISO 1600-25600 per image
    pipeline             a random camera development of signal and noise together
                         (`denoise_core.noise.pipeline`: demosaic, tone curve, sharpening, chroma NR,
                         scaling, JPEG); the target is the noise-free development
    pipeline:"Nikon D750"@12800   the same with that camera's profile at that ISO (your camera)
    mild-camera          what cameras write at moderate ISO after their own processing: mild
                         (luma sigma 1-9), spatially correlated, blotchy, chroma 0.3-1.3x luma,
                         signal-dependent, JPEG-compressed most of the time; target the clean input
    mix-v1 ... mix-v6    the training mixtures of the shipped weights, by version
    mix                  the current mixture (mix-v6)

`noisy_pair` gives (noisy, target) for every spec; `apply_noise` only the noisy image, for specs
whose target is the clean input itself (all but `pipeline` and `mix-v3` onwards).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

from . import pipeline
from .camera import CameraProfile, NoiseSpecError, bayer_masks, demosaic_masked, find_camera, random_camera


MIX_VERSIONS = ("mix-v1", "mix-v2", "mix-v3", "mix-v4", "mix-v5", "mix-v6")
CURRENT_MIX = "mix-v6"
_PAIRED = ("pipeline", "mix-v3", "mix-v4", "mix-v5", "mix-v6")  # kinds whose target is a development, not the input


# --------------------------------------------------------------------------- transfer curves
def srgb_to_linear(x: torch.Tensor) -> torch.Tensor:
    x = x.clamp(0.0, 1.0)
    return torch.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(x: torch.Tensor) -> torch.Tensor:
    x = x.clamp(0.0, 1.0)
    return torch.where(x <= 0.0031308, x * 12.92, 1.055 * x.clamp_min(1e-12) ** (1 / 2.4) - 0.055)


def quantize(x: torch.Tensor, levels: int = 255) -> torch.Tensor:
    return torch.round(x.clamp(0.0, 1.0) * levels) / levels


# --------------------------------------------------------------------------- noise models
def add_gaussian(x: torch.Tensor, sigma: torch.Tensor | float, gen: torch.Generator) -> torch.Tensor:
    """sigma on the 0-255 scale, scalar or one per image."""
    s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1, 1, 1, 1) / 255.0
    return x + s * torch.randn(x.shape, generator=gen, dtype=x.dtype).to(x.device)


def add_poisson_gaussian(x: torch.Tensor, gen: torch.Generator,
                         shot: tuple[float, float] = (1e-4, 2e-2),
                         read: tuple[float, float] = (1e-4, 3e-2)) -> torch.Tensor:
    """Heteroscedastic noise in linear light: var = shot * x + read^2, levels log-uniform per image."""
    n = x.shape[0]
    lin = srgb_to_linear(x)
    a = _log_uniform(n, shot, gen).to(x)
    b = _log_uniform(n, read, gen).to(x) ** 2
    var = a * lin + b
    noisy = lin + var.sqrt() * torch.randn(x.shape, generator=gen, dtype=x.dtype).to(x.device)
    return _signed_linear_to_srgb(noisy)


def _signed_linear_to_srgb(x: torch.Tensor) -> torch.Tensor:
    return linear_to_srgb(x.clamp(0.0, 1.0))


def _log_uniform(n: int, rng: tuple[float, float], gen: torch.Generator) -> torch.Tensor:
    u = torch.rand(n, generator=gen)
    return torch.exp(math.log(rng[0]) + u * (math.log(rng[1]) - math.log(rng[0]))).reshape(n, 1, 1, 1)


def add_camera_noise(
    x: torch.Tensor,
    profiles: list[CameraProfile],
    gen: torch.Generator,
    *,
    ev_push: torch.Tensor | float = 0.0,
    wb: torch.Tensor | None = None,
    saturation: torch.Tensor | float = 0.0,
) -> torch.Tensor:
    """Unprocess sRGB to linear camera RGB, add profile noise on a Bayer mosaic, process back.

    The image is taken as shot `ev_push` stops darker and brightened afterwards. Noise variance at
    each photosite is 4*(a*x + b) (darktable's profiles report half the standard deviation); the
    noise is demosaiced (bilinear), so it comes out coloured and spatially correlated, while the
    signal itself is not resampled, so a clean target needs no demosaicing model.
    """
    n, c, h, w = x.shape
    if c != 3:
        raise ValueError("camera noise needs RGB images")
    dev, dt = x.device, x.dtype
    a = torch.tensor([p.a for p in profiles], dtype=dt).clamp_min(0).reshape(n, 3, 1, 1).to(dev)
    b = torch.tensor([p.b for p in profiles], dtype=dt).clamp_min(0).reshape(n, 3, 1, 1).to(dev)
    push = torch.as_tensor(ev_push, dtype=dt).reshape(-1, 1, 1, 1).expand(n, 1, 1, 1).to(dev)
    gain = 2.0 ** push
    if wb is None:
        wb = torch.ones(n, 3, dtype=dt)
    wb = wb.to(dt).reshape(n, 3, 1, 1).to(dev)
    s = torch.as_tensor(saturation, dtype=dt).reshape(-1, 1, 1).expand(n, 1, 1).to(dev)
    eye = torch.eye(3, dtype=dt, device=dev).expand(n, 3, 3)
    ccm = (1 + s) * eye - s / 3.0  # camera RGB -> output RGB, rows sum to 1
    lin = srgb_to_linear(x)
    cam = torch.einsum("nij,njhw->nihw", torch.linalg.inv(ccm), lin)
    raw = cam / wb / gain  # what the sensor recorded, white = 1
    var = 4.0 * (a * raw.clamp_min(0) + b)
    masks = bayer_masks(h, w, dev)
    noise_raw = var.sqrt() * torch.randn(x.shape, generator=gen, dtype=dt).to(dev) * masks
    noise = demosaic_masked(noise_raw) * wb * gain
    out = torch.einsum("nij,njhw->nihw", ccm, cam + noise)
    return linear_to_srgb(out)


# --------------------------------------------------------------------------- specs
@dataclass(frozen=True)
class NoiseSpec:
    kind: str  # gaussian | poisson-gaussian | camera | pipeline | mix-v1/2/3 | none
    sigma: tuple[float, float] = (0.0, 0.0)
    camera: str | None = None
    iso: float | None = None
    ev: tuple[float, float] = (0.0, 2.0)
    quantize: bool = True

    def __str__(self) -> str:
        if self.kind == "gaussian":
            lo, hi = self.sigma
            return f"gaussian:{lo:g}" if lo == hi else f"gaussian:{lo:g}-{hi:g}"
        if self.kind == "camera":
            return "camera:random" if self.camera is None else f'camera:"{self.camera}"@{self.iso:g}'
        if self.kind == "pipeline" and self.camera is not None:
            return f'pipeline:"{self.camera}"@{self.iso:g}'
        return self.kind


_CAMERA_RE = re.compile(r'^(camera|pipeline):\s*"?([^"@]+?)"?\s*@\s*(\d+(?:\.\d+)?)$', re.I)


def parse_noise(spec: str) -> NoiseSpec:
    s = spec.strip()
    low = s.lower()
    if low == "mix":
        return NoiseSpec(kind=CURRENT_MIX)
    if low in ("none", "poisson-gaussian", "pipeline", "mild-camera", *MIX_VERSIONS):
        return NoiseSpec(kind=low)
    if low.startswith("gaussian:"):
        body = s.split(":", 1)[1]
        try:
            if "-" in body:
                lo, hi = (float(v) for v in body.split("-", 1))
            else:
                lo = hi = float(body)
        except ValueError:
            raise NoiseSpecError(f"bad gaussian sigma in {spec!r}; use gaussian:25 or gaussian:5-50") from None
        if not 0 <= lo <= hi <= 255:
            raise NoiseSpecError(f"gaussian sigma must be within 0-255 (low <= high): {spec!r}")
        return NoiseSpec(kind="gaussian", sigma=(lo, hi))
    if low in ("camera:random", "camera"):
        return NoiseSpec(kind="camera")
    m = _CAMERA_RE.match(s)
    if m:
        name, iso = m.group(2).strip(), float(m.group(3))
        find_camera(name, iso)  # validates now, with suggestions
        return NoiseSpec(kind=m.group(1).lower(), camera=name, iso=iso)
    raise NoiseSpecError(
        f"unknown noise spec {spec!r}; use gaussian:SIGMA, gaussian:LO-HI, poisson-gaussian, "
        f'camera:"MAKER MODEL"@ISO, camera:random, pipeline, pipeline:"MAKER MODEL"@ISO, mild-camera, mix or '
        f'{", ".join(MIX_VERSIONS)}')


def apply_noise(x: torch.Tensor, spec: NoiseSpec | str, gen: torch.Generator) -> torch.Tensor:
    """Return a noisy copy of clean sRGB batch `x` in [0, 1] (clipped, 8-bit quantized if asked),
    for specs whose target is `x` itself; `noisy_pair` handles every spec."""
    if isinstance(spec, str):
        spec = parse_noise(spec)
    if spec.kind in _PAIRED:
        raise NoiseSpecError(f"{spec} changes the target too (a camera development): use noisy_pair")
    return noisy_pair(x, spec, gen)[0]


def noisy_pair(x: torch.Tensor, spec: NoiseSpec | str, gen: torch.Generator,
               out_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(noisy, target) for the clean sRGB batch `x`. The target is `x` except under camera
    developments (`pipeline`, part of `mix-v3` onwards), where it is the noise-free development. With
    `out_size`, each pair is cut to a random out_size^2 crop at least 8 px inside (the input must
    be larger), so filters and demosaicing never see a patch edge."""
    if isinstance(spec, str):
        spec = parse_noise(spec)
    n = x.shape[0]
    if spec.kind in _PAIRED:
        noisy, target = [], []
        choice = torch.rand(n, generator=gen)
        for i in range(n):
            xi = x[i:i + 1]
            u = 0.0 if spec.kind == "pipeline" else float(choice[i])
            if spec.kind in _AS_V3:  # v3's parts in other shares, plus noise-free camera files
                u = _as_v3(u, _AS_V3[spec.kind])
            if u < 0.45:
                cam = find_camera(spec.camera, spec.iso) if spec.camera and spec.iso is not None else None
                ni, ti = pipeline.pipeline_pair(xi, gen, camera=cam)
            elif u < 0.93:
                ni, ti = _mix_v3_simple(xi, gen, u), xi
            elif u >= _MILD:  # mix-v6 on: mild in-camera noise on the clean photo
                ni, ti = mild_camera_noise(xi, gen), xi
            elif u < 1.0:  # a clean photo saved as JPEG: must come back as it is
                q = int(round(75 + 23 * float(torch.rand((), generator=gen))))
                ni = pipeline.jpeg(xi, q, "4:2:0" if float(torch.rand((), generator=gen)) < 0.5 else "4:4:4")
                ti = ni
            else:  # mix-v4 on: a noise-free camera file, left as it is
                ni, ti = pipeline.clean_development_pair(xi, gen)
            if out_size is not None:
                ni, ti = pipeline.random_crop(ni, ti, out_size, gen)
            noisy.append(ni.clamp(0, 1))
            target.append(ti.clamp(0, 1))
        return torch.cat(noisy), torch.cat(target)
    if spec.kind == "none":
        y = x.clone()
    elif spec.kind == "gaussian":
        lo, hi = spec.sigma
        sig = lo + (hi - lo) * torch.rand(n, generator=gen)
        y = add_gaussian(x, sig, gen)
    elif spec.kind == "poisson-gaussian":
        y = add_poisson_gaussian(x, gen)
    elif spec.kind == "mild-camera":
        y = torch.cat([mild_camera_noise(x[i:i + 1], gen) for i in range(n)])
    elif spec.kind == "camera":
        y = _camera_batch(x, spec, gen)
    elif spec.kind in ("mix-v1", "mix-v2"):
        y = torch.empty_like(x)
        choice = torch.rand(n, generator=gen)
        for i in range(n):
            if spec.kind == "mix-v1":
                y[i:i + 1] = _mix_v1_one(x[i:i + 1], gen, float(choice[i]))
            else:
                y[i:i + 1] = _mix_v2_one(x[i:i + 1], gen, float(choice[i]))
    else:
        raise NoiseSpecError(f"unknown noise kind {spec.kind!r}")
    y = quantize(y) if spec.quantize else y.clamp(0.0, 1.0)
    target = x
    if out_size is not None:
        pairs = [pipeline.random_crop(y[i:i + 1], x[i:i + 1], out_size, gen) for i in range(n)]
        y, target = torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])
    return y, target


def _mix_v1_one(xi: torch.Tensor, gen: torch.Generator, u: float) -> torch.Tensor:
    """mix-v1 (unet 0.1): 45% camera, 40% Gaussian sigma 0-55, 10% Poisson-Gaussian, 5% clean."""
    if u < 0.45:
        return _camera_batch(xi, NoiseSpec(kind="camera"), gen)
    if u < 0.85:
        return add_gaussian(xi, 55.0 * float(torch.rand((), generator=gen)), gen)
    if u < 0.95:
        return add_poisson_gaussian(xi, gen)
    return xi


def _gaussian_v2(xi: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Gaussian noise as mix-v2 onwards draw it: half at the common sigma 5-30, the rest 0-55."""
    v = float(torch.rand((), generator=gen))
    sigma = 55.0 * v if float(torch.rand((), generator=gen)) < 0.5 else 5.0 + 25.0 * v
    return add_gaussian(xi, sigma, gen)


def _simple_one(xi: torch.Tensor, gen: torch.Generator, u: float,
                edges: tuple[float, float, float]) -> torch.Tensor:
    """Camera simulator below edges[0], Gaussian (`_gaussian_v2`) below edges[1], Poisson-Gaussian
    below edges[2], else clean; 8-bit."""
    if u < edges[0]:
        y = _camera_batch(xi, NoiseSpec(kind="camera"), gen)
    elif u < edges[1]:
        y = _gaussian_v2(xi, gen)
    elif u < edges[2]:
        y = add_poisson_gaussian(xi, gen)
    else:
        y = xi
    return quantize(y)


def _mix_v2_one(xi: torch.Tensor, gen: torch.Generator, u: float) -> torch.Tensor:
    """mix-v2 (unet 0.1-0.3): as v1 with 40% camera and half of the Gaussian patches at sigma 5-30."""
    return _simple_one(xi, gen, u, (0.40, 0.85, 0.95))


# mix-v4 and later in terms of mix-v3's draw u. v3's parts, as intervals of u: [0, .45)
# developments, [.45, .55) v2 camera, [.55, .83) Gaussian, [.83, .87) Poisson-Gaussian, [.87, .93)
# clean, [.93, 1) clean JPEG; u >= 1 is a noise-free camera file (v4 on). A later mix gives each part
# its own share and maps its draw linearly into that part's interval.
_MILD = 2.0  # u >= 2 is mild in-camera noise (v6 on)
_V3_PARTS = ((0.0, 0.45), (0.45, 0.10), (0.55, 0.28), (0.83, 0.04), (0.87, 0.06), (0.93, 0.07), (1.0, 0.0),
             (_MILD, 0.0))
_AS_V3 = {
    # v4: 24% left as they are, so the clean JPEG crops come back unchanged
    "mix-v4": (0.38, 0.10, 0.24, 0.04, 0.08, 0.08, 0.08),
    # v5: more of the v2 camera simulator and Gaussian noise, whose benchmark rows v4 alone lost
    # (-1.6 dB and -0.3 to -0.5 dB), fewer developments; 23% clean
    "mix-v5": (0.36, 0.13, 0.25, 0.03, 0.07, 0.08, 0.08),
    # v6: a third mild in-camera noise (what cameras write at ISO 800-6400 after their own
    # processing); the clean parts shrink from 23% to 9%, so mild correlated noise is not taught
    # to pass as texture
    "mix-v6": (0.26, 0.10, 0.20, 0.02, 0.03, 0.03, 0.03, 0.33),
}


def _as_v3(u: float, shares: tuple[float, ...]) -> float:
    lo = 0.0
    for (v3_lo, v3_width), share in zip(_V3_PARTS, shares):
        if u < lo + share:
            return v3_lo + (u - lo) / share * v3_width
        lo += share
    return _V3_PARTS[len(shares) - 1][0]  # rounding at the top end: the mix's last part


def _blurred_unit(shape: tuple[int, ...], sigma: float, gen: torch.Generator) -> torch.Tensor:
    """White Gaussian noise blurred by a Gaussian of `sigma` px, scaled back to unit variance."""
    w = torch.randn(shape, generator=gen)
    if sigma > 0:
        w = pipeline.gaussian_blur(w, sigma)
    return w / w.std().clamp_min(1e-6)


def mild_camera_noise(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Noise as a camera leaves it at moderate ISO after demosaicing, its own noise reduction and
    JPEG: drawn in YCbCr, each plane a fine grain (white noise blurred 0.45-0.95 px, chroma 0.6-1.6)
    plus blotches (blurred 2-5 px) holding 2-25% of the luma's energy and 10-50% of the chroma's;
    luma sigma 1-9 on 0-255 (log-uniform), chroma 0.3-1.3x luma; scaled with the square root of
    the signal, then 8-bit and, 70% of the time, JPEG q80-98. One image (1, 3, H, W) in [0, 1].
    Fitted to the statistics of real camera JPEGs (bench/noise_stats.py)."""
    _, _, h, w = x.shape

    def u(lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(torch.rand((), generator=gen))

    luma = math.exp(u(math.log(1.0), math.log(9.0))) / 255.0
    chroma = luma * u(0.3, 1.3)
    planes = []
    for k, sigma in enumerate((luma, chroma, chroma)):
        fine = _blurred_unit((1, 1, h, w), u(0.45, 0.95) if k == 0 else u(0.6, 1.6), gen)
        blot = _blurred_unit((1, 1, h, w), u(2.0, 5.0), gen)
        share = u(0.02, 0.25) if k == 0 else u(0.1, 0.5)
        planes.append(sigma * (math.sqrt(1 - share) * fine + math.sqrt(share) * blot))
    n = torch.cat(planes, 1)
    ycc = pipeline.to_ycc(x)
    floor = u(0.3, 0.7)  # the signal-independent share (read noise)
    amp = floor + (1 - floor) * ycc[:, :1].clamp(0, 1).sqrt() / math.sqrt(0.5)  # 1 at mid-grey
    y = pipeline.from_ycc(ycc + n * amp).clamp(0, 1)
    y = quantize(y)
    if float(torch.rand((), generator=gen)) < 0.7:
        y = pipeline.jpeg(y, int(round(u(80, 98))), "4:2:0" if float(torch.rand((), generator=gen)) < 0.6 else "4:4:4")
    return y


def _mix_v3_simple(xi: torch.Tensor, gen: torch.Generator, u: float) -> torch.Tensor:
    """mix-v3 outside the camera developments (45%) and clean JPEGs (7%): 10% camera noise on an
    undeveloped signal (the v2 simulator), 28% Gaussian (half at sigma 5-30, half 0-55), 4%
    Poisson-Gaussian, 6% clean; 8-bit."""
    return _simple_one(xi, gen, u, (0.55, 0.83, 0.87))


def _camera_batch(x: torch.Tensor, spec: NoiseSpec, gen: torch.Generator) -> torch.Tensor:
    n = x.shape[0]
    if spec.camera is None or spec.iso is None:
        profiles = [random_camera(gen) for _ in range(n)]
    else:
        profiles = [find_camera(spec.camera, spec.iso)] * n
    lo, hi = spec.ev
    push = lo + (hi - lo) * torch.rand(n, generator=gen)
    wb = torch.stack([1.6 + 0.9 * torch.rand(n, generator=gen), torch.ones(n),
                      1.3 + 0.7 * torch.rand(n, generator=gen)], dim=1)
    sat = 0.6 * torch.rand(n, generator=gen)
    return add_camera_noise(x, profiles, gen, ev_push=push, wb=wb, saturation=sat)
