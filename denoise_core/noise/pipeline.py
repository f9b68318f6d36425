"""Camera-pipeline simulator: what a camera or raw converter does to a high-ISO shot.

A clean sRGB photo is unprocessed into a plausible sensor mosaic (inverse tone curve, inverse
colour matrix, inverse white balance, exposure pushed down, RGGB mosaic), darktable-profile
Poisson-Gaussian noise is added per photosite, and then *signal and noise together* go through a
development: a demosaic algorithm, white balance and colour matrix, a tone curve, sharpening,
sometimes in-camera chroma noise reduction, sometimes downscaling, and JPEG or lossless output.
The target is the same development of the noise-free mosaic (same demosaic, curve, sharpening and
scaling; no noise reduction, no JPEG): what the camera would have written at base ISO.

Every stage draws its settings from a `Stage` table, so a benchmark can hold settings out of
training: `TRAIN_SETTINGS` is what the shipped weights see, and `bench/quality.py` builds its
held-out pipelines from other demosaics (LibRaw's, through rawpy), other sharpening kernels,
4:2:2 JPEG and cameras that `TRAIN_SETTINGS` never draws.

Images are float tensors (N, 3, H, W) in [0, 1]; mosaics (N, 1, H, W), RGGB at the origin.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .camera import CameraProfile, bayer_masks, camera_key, camera_table, demosaic_masked, interp_profile

# --------------------------------------------------------------------------- tone curves
_LUT_N = 4096


def _srgb_oetf(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x <= 0.0031308, x * 12.92, 1.055 * x.clamp_min(1e-12) ** (1 / 2.4) - 0.055)


def _s_curve(y: torch.Tensor, k: float) -> torch.Tensor:
    """Monotone contrast S-curve: a blend of identity and smoothstep (slope >= 1 - k > 0)."""
    return (1 - k) * y + k * y * y * (3 - 2 * y)


def _base_curve(x: torch.Tensor, shoulder: float) -> torch.Tensor:
    """A camera-like base curve: a gentle highlight shoulder, then gamma 1/2.2."""
    t = x * (1 + shoulder) / (1 + shoulder * x)
    return t.clamp_min(0) ** (1 / 2.2)


TONE_CURVES: dict[str, Callable[[torch.Tensor, float], torch.Tensor]] = {
    "srgb": lambda x, p: _srgb_oetf(x),
    "srgb-s": lambda x, p: _s_curve(_srgb_oetf(x), p),
    "base": lambda x, p: _base_curve(x, p),
}


def _interp(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear interpolation of the increasing table (xp, fp) at x."""
    x = x.clamp(float(xp[0]), float(xp[-1]))
    i = torch.searchsorted(xp, x.contiguous()).clamp(1, len(xp) - 1)
    x0, x1, f0, f1 = xp[i - 1], xp[i], fp[i - 1], fp[i]
    return f0 + (f1 - f0) * (x - x0) / (x1 - x0).clamp_min(1e-12)


def tone(x: torch.Tensor, curve: str, param: float) -> torch.Tensor:
    return TONE_CURVES[curve](x.clamp(0, 1), param)


def inverse_tone(y: torch.Tensor, curve: str, param: float) -> torch.Tensor:
    """The curve's inverse, through a table on a uniform grid of encoded values."""
    lin = torch.linspace(0, 1, _LUT_N, dtype=torch.float64) ** 2  # dense in the shadows
    enc = TONE_CURVES[curve](lin, param)
    grid = torch.linspace(0, 1, _LUT_N, dtype=torch.float64)
    table = _interp(grid, enc, lin).to(y.dtype)
    pos = y.clamp(0, 1) * (_LUT_N - 1)
    i0 = pos.floor().long().clamp(0, _LUT_N - 2)
    frac = pos - i0
    return table[i0] * (1 - frac) + table[i0 + 1] * frac


# --------------------------------------------------------------------------- demosaicing
def _conv_same(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    r = k.shape[-1] // 2
    return F.conv2d(F.pad(x, (r, r, r, r), mode="reflect"), k.to(x).reshape(1, 1, *k.shape))


def _site_masks(h: int, w: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """RGGB site masks (1, 1, h, w): red, green in a red row, green in a blue row, blue."""
    yy = torch.arange(h, device=device).reshape(h, 1) % 2
    xx = torch.arange(w, device=device).reshape(1, w) % 2
    f = lambda m: m.float().reshape(1, 1, h, w)  # noqa: E731
    return f((yy == 0) & (xx == 0)), f((yy == 0) & (xx == 1)), f((yy == 1) & (xx == 0)), f((yy == 1) & (xx == 1))


def demosaic_bilinear(m: torch.Tensor) -> torch.Tensor:
    masks = bayer_masks(m.shape[-2], m.shape[-1], m.device).to(m)
    return demosaic_masked(m * masks)


_MHC_G = torch.tensor([[0, 0, -1, 0, 0], [0, 0, 2, 0, 0], [-1, 2, 4, 2, -1],
                       [0, 0, 2, 0, 0], [0, 0, -1, 0, 0]], dtype=torch.float32) / 8
_MHC_ROW = torch.tensor([[0, 0, .5, 0, 0], [0, -1, 0, -1, 0], [-1, 4, 5, 4, -1],
                         [0, -1, 0, -1, 0], [0, 0, .5, 0, 0]], dtype=torch.float32) / 8
_MHC_DIAG = torch.tensor([[0, 0, -1.5, 0, 0], [0, 2, 0, 2, 0], [-1.5, 0, 6, 0, -1.5],
                          [0, 2, 0, 2, 0], [0, 0, -1.5, 0, 0]], dtype=torch.float32) / 8


def demosaic_malvar(m: torch.Tensor) -> torch.Tensor:
    """Malvar, He and Cutler (2004): bilinear plus gradient correction, 5x5 linear filters."""
    r, gr, gb, b = _site_masks(m.shape[-2], m.shape[-1], m.device)
    g_rb = _conv_same(m, _MHC_G)
    row = _conv_same(m, _MHC_ROW)   # the colour of the horizontal neighbours at a green site
    col = _conv_same(m, _MHC_ROW.t().contiguous())
    diag = _conv_same(m, _MHC_DIAG)
    red = r * m + gr * row + gb * col + b * diag
    green = (gr + gb) * m + (r + b) * g_rb
    blue = b * m + gb * row + gr * col + r * diag
    return torch.cat([red, green, blue], 1)


def _shift(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """x[y + dy, x + dx] with mirrored edges."""
    p = max(abs(dy), abs(dx))
    xp = F.pad(x, (p, p, p, p), mode="reflect")
    h, w = x.shape[-2:]
    return xp[..., p + dy:p + dy + h, p + dx:p + dx + w]


def _directional_green(m: torch.Tensor):
    """Hamilton-Adams horizontal and vertical green estimates and their gradients at every site."""
    lf, rr, u, d = _shift(m, 0, -1), _shift(m, 0, 1), _shift(m, -1, 0), _shift(m, 1, 0)
    l2, r2, u2, d2 = _shift(m, 0, -2), _shift(m, 0, 2), _shift(m, -2, 0), _shift(m, 2, 0)
    lap_h, lap_v = 2 * m - l2 - r2, 2 * m - u2 - d2
    gh, gv = (lf + rr) / 2 + lap_h / 4, (u + d) / 2 + lap_v / 4
    dh, dv = (lf - rr).abs() + lap_h.abs(), (u - d).abs() + lap_v.abs()
    return gh, gv, dh, dv


def _chroma_from_green(m: torch.Tensor, green: torch.Tensor) -> torch.Tensor:
    """Red and blue by bilinear interpolation of the colour differences R-G and B-G."""
    r, gr, gb, b = _site_masks(m.shape[-2], m.shape[-1], m.device)
    k = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 4.0
    dr = _conv_same((m - green) * r, k)
    db = _conv_same((m - green) * b, k)
    return torch.cat([green + dr, green, green + db], 1)


def demosaic_hamilton_adams(m: torch.Tensor) -> torch.Tensor:
    """Edge-directed: green along the smoother direction (gradient + Laplacian test), chroma by
    colour-difference interpolation (the family of LibRaw's PPG and most in-camera demosaics)."""
    r, gr, gb, b = _site_masks(m.shape[-2], m.shape[-1], m.device)
    gh, gv, dh, dv = _directional_green(m)
    g_rb = torch.where(dh < dv, gh, torch.where(dv < dh, gv, (gh + gv) / 2))
    green = (gr + gb) * m + (r + b) * g_rb
    return _chroma_from_green(m, green)


def demosaic_weighted(m: torch.Tensor) -> torch.Tensor:
    """Edge-weighted: horizontal and vertical green estimates blended by inverse squared
    gradients (soft where Hamilton-Adams switches), chroma by colour differences."""
    r, gr, gb, b = _site_masks(m.shape[-2], m.shape[-1], m.device)
    gh, gv, dh, dv = _directional_green(m)
    eps = 1e-4
    wh, wv = 1 / (dh + eps) ** 2, 1 / (dv + eps) ** 2
    g_rb = (wh * gh + wv * gv) / (wh + wv)
    green = (gr + gb) * m + (r + b) * g_rb
    return _chroma_from_green(m, green)


DEMOSAICS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "bilinear": demosaic_bilinear,
    "malvar": demosaic_malvar,
    "hamilton-adams": demosaic_hamilton_adams,
    "weighted": demosaic_weighted,
}


# --------------------------------------------------------------------------- filters
def _gauss_kernel(sigma: float) -> torch.Tensor:
    r = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-t * t / (2 * sigma * sigma))
    return k / k.sum()


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    k = _gauss_kernel(sigma).to(x)
    r = k.numel() // 2
    c = x.shape[1]
    x = F.pad(x, (r, r, r, r), mode="reflect")
    x = F.conv2d(x, k.reshape(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, k.reshape(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


_YCC = torch.tensor([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])


def to_ycc(x: torch.Tensor) -> torch.Tensor:
    return torch.einsum("ij,njhw->nihw", _YCC.to(x), x)


def from_ycc(y: torch.Tensor) -> torch.Tensor:
    return torch.einsum("ij,njhw->nihw", torch.linalg.inv(_YCC).to(y), y)


def sharpen(x: torch.Tensor, kind: str, radius: float, amount: float, luma_only: bool) -> torch.Tensor:
    """Unsharp mask (`usm`: Gaussian of `radius`) or a 3x3 Laplacian sharpen (`laplacian`),
    on all channels or on luma only, as cameras and raw converters do."""
    if kind == "none" or amount <= 0:
        return x
    src = to_ycc(x)[:, :1] if luma_only else x
    if kind == "usm":
        detail = src - gaussian_blur(src, radius)
    elif kind == "laplacian":
        k = torch.tensor([[0.0, -1.0, 0.0], [-1.0, 4.0, -1.0], [0.0, -1.0, 0.0]]) / 4
        c = src.shape[1]
        detail = F.conv2d(F.pad(src, (1, 1, 1, 1), mode="reflect"), k.to(src).expand(c, 1, 3, 3), groups=c)
    else:
        raise ValueError(f"unknown sharpening {kind!r}")
    return x + amount * detail  # luma detail added to R, G and B alike keeps the chroma


def chroma_nr(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """In-camera noise reduction that smooths chroma only (what leaves low-frequency blotches)."""
    y = to_ycc(x)
    y = torch.cat([y[:, :1], gaussian_blur(y[:, 1:], sigma)], 1)
    return from_ycc(y)


def jpeg(x: torch.Tensor, quality: int, subsampling: str) -> torch.Tensor:
    """Round trip through Pillow's JPEG encoder (libjpeg) at `quality`, "4:4:4", "4:2:2" or "4:2:0"."""
    sub = {"4:4:4": 0, "4:2:2": 1, "4:2:0": 2}[subsampling]
    out = []
    for im in x:
        a = np.round(im.clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="JPEG", quality=int(quality), subsampling=sub)
        with Image.open(io.BytesIO(buf.getvalue())) as dec:
            b = np.asarray(dec.convert("RGB"), dtype=np.float32) / 255.0
        out.append(torch.from_numpy(b).permute(2, 0, 1))
    return torch.stack(out).to(x)


# --------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class Development:
    """One draw of every pipeline setting, for one image."""
    camera: CameraProfile
    ev_push: float
    wb: tuple[float, float, float]
    ccm: tuple[tuple[float, float, float], ...]  # camera RGB -> output RGB, rows sum to 1
    curve: str
    curve_param: float
    demosaic: str
    clip_black: bool
    sharpen: str
    sharpen_radius: float
    sharpen_amount: float
    sharpen_luma: bool
    chroma_nr: float       # Gaussian sigma of the chroma smoothing; 0 = none
    downscale: float       # >= 1; 1 = none
    output: str            # jpeg | png8 | png16
    jpeg_quality: int = 95
    jpeg_subsampling: str = "4:2:0"


@dataclass(frozen=True)
class Settings:
    """The ranges a pipeline draws from. Probabilities are per image."""
    demosaics: tuple[str, ...] = ("bilinear", "malvar", "hamilton-adams", "weighted")
    demosaic_weights: tuple[float, ...] = (0.15, 0.3, 0.3, 0.25)
    cameras: str = "train"          # train | heldout | all | "MAKER MODEL"
    iso: tuple[float, float] = (800, 25600)
    ev_push: tuple[float, float] = (0.0, 2.0)
    curves: tuple[str, ...] = ("srgb", "srgb-s", "base")
    clip_black: float = 0.3
    sharpen_kinds: tuple[str, ...] = ("usm",)
    sharpen_p: float = 0.7
    sharpen_radius: tuple[float, float] = (0.5, 1.5)
    sharpen_amount: tuple[float, float] = (0.2, 1.2)
    chroma_nr_p: float = 0.3
    chroma_nr_sigma: tuple[float, float] = (1.0, 4.0)
    downscale_p: float = 0.2
    downscale: tuple[float, float] = (1.15, 1.5)
    outputs: tuple[str, ...] = ("jpeg", "png8", "png16")
    output_weights: tuple[float, ...] = (0.55, 0.35, 0.1)
    jpeg_quality: tuple[int, int] = (60, 98)
    jpeg_subsamplings: tuple[str, ...] = ("4:2:0", "4:4:4")


TRAIN_SETTINGS = Settings()

# Makers whose darktable profiles training never draws (cameras held out for the benchmark).
HELDOUT_MAKERS = ("Fujifilm", "Pentax", "Olympus", "Ricoh")


def _u(gen: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=gen))


def _pick(gen: torch.Generator, items: tuple, weights: tuple[float, ...] | None = None):
    if weights is None:
        return items[int(torch.randint(len(items), (1,), generator=gen))]
    w = torch.tensor(weights, dtype=torch.float64)
    return items[int(torch.multinomial(w, 1, generator=gen))]


def camera_keys(which: str) -> list[tuple[str, str]]:
    table = camera_table()
    keys = sorted({(mk, md) for mk, md, _ in table.values()})
    held = {camera_key(m) for m in HELDOUT_MAKERS}
    if which == "train":
        return [k for k in keys if camera_key(k[0]) not in held]
    if which == "heldout":
        return [k for k in keys if camera_key(k[0]) in held]
    if which == "all":
        return keys
    want = camera_key(which)
    return [k for k in keys if camera_key(f"{k[0]} {k[1]}") == want or camera_key(k[1]) == want]


def draw_camera(gen: torch.Generator, which: str, iso_range: tuple[float, float]) -> CameraProfile:
    table = camera_table()
    keys = camera_keys(which)
    if not keys:
        raise ValueError(f"no camera profiles match {which!r}")
    for _ in range(1000):
        mk, md = _pick(gen, tuple(keys))
        key = camera_key(f"{mk} {md}")
        profs = table[key][2] if key in table else table[camera_key(md)][2]
        lo, hi = max(iso_range[0], profs[0][0]), min(iso_range[1], profs[-1][0])
        if lo > hi:
            continue
        iso = math.exp(_u(gen, math.log(lo), math.log(hi)))
        a, b = interp_profile(profs, iso)
        return CameraProfile(mk, md, iso, a, b)
    raise ValueError(f"no profile of {which!r} covers ISO {iso_range}")


def random_ccm(gen: torch.Generator) -> tuple[tuple[float, float, float], ...]:
    """A camera-like colour matrix: saturation boost plus small cross-talk, rows summing to 1."""
    s = _u(gen, 0.2, 0.8)
    m = (1 + s) * torch.eye(3) - s / 3
    m = m + 0.08 * (torch.rand((3, 3), generator=gen) * 2 - 1)
    m = m / m.sum(1, keepdim=True)
    return tuple((float(row[0]), float(row[1]), float(row[2])) for row in m)


def draw_development(gen: torch.Generator, s: Settings = TRAIN_SETTINGS,
                     camera: CameraProfile | None = None) -> Development:
    cam = camera or draw_camera(gen, s.cameras, s.iso)
    curve = _pick(gen, s.curves)
    sharp = _pick(gen, s.sharpen_kinds) if float(torch.rand((), generator=gen)) < s.sharpen_p else "none"
    out = _pick(gen, s.outputs, s.output_weights)
    return Development(
        camera=cam, ev_push=_u(gen, *s.ev_push),
        wb=(_u(gen, 1.5, 2.6), 1.0, _u(gen, 1.2, 2.2)), ccm=random_ccm(gen),
        curve=curve, curve_param={"srgb": 0.0, "srgb-s": _u(gen, 0.1, 0.5), "base": _u(gen, 0.5, 3.0)}[curve],
        demosaic=_pick(gen, s.demosaics, s.demosaic_weights),
        clip_black=float(torch.rand((), generator=gen)) < s.clip_black,
        sharpen=sharp, sharpen_radius=_u(gen, *s.sharpen_radius), sharpen_amount=_u(gen, *s.sharpen_amount),
        sharpen_luma=float(torch.rand((), generator=gen)) < 0.5,
        chroma_nr=_u(gen, *s.chroma_nr_sigma) if float(torch.rand((), generator=gen)) < s.chroma_nr_p else 0.0,
        downscale=_u(gen, *s.downscale) if float(torch.rand((), generator=gen)) < s.downscale_p else 1.0,
        output=out, jpeg_quality=int(round(_u(gen, *s.jpeg_quality))),
        jpeg_subsampling=_pick(gen, s.jpeg_subsamplings))


# --------------------------------------------------------------------------- the pipeline
def unprocess(x: torch.Tensor, d: Development) -> torch.Tensor:
    """sRGB-encoded photo (1, 3, H, W) -> the linear RGGB mosaic (1, 1, H, W) a sensor would record."""
    lin = inverse_tone(x, d.curve, d.curve_param)
    ccm = torch.tensor(d.ccm, dtype=x.dtype)
    cam = torch.einsum("ij,njhw->nihw", torch.linalg.inv(ccm), lin).clamp_min(0)
    wb = torch.tensor(d.wb, dtype=x.dtype).reshape(1, 3, 1, 1)
    raw = cam / wb / 2.0 ** d.ev_push
    masks = bayer_masks(x.shape[-2], x.shape[-1], x.device).to(x)
    return (raw * masks).sum(1, keepdim=True)


def add_sensor_noise(mosaic: torch.Tensor, cam: CameraProfile, gen: torch.Generator) -> torch.Tensor:
    """Per-photosite Poisson-Gaussian noise, variance 4*(a*x + b) (darktable's profiles report half
    the standard deviation), a and b of the photosite's colour."""
    h, w = mosaic.shape[-2:]
    masks = bayer_masks(h, w, mosaic.device).to(mosaic)
    a = (torch.tensor(cam.a, dtype=mosaic.dtype).clamp_min(0).reshape(1, 3, 1, 1) * masks).sum(1, keepdim=True)
    b = (torch.tensor(cam.b, dtype=mosaic.dtype).clamp_min(0).reshape(1, 3, 1, 1) * masks).sum(1, keepdim=True)
    var = 4.0 * (a * mosaic.clamp_min(0) + b)
    return mosaic + var.sqrt() * torch.randn(mosaic.shape, generator=gen, dtype=mosaic.dtype)


def develop_rgb(rgb: torch.Tensor, d: Development) -> torch.Tensor:
    """Demosaiced, white-balanced camera RGB -> colour matrix, tone curve, sharpening, scaling."""
    ccm = torch.tensor(d.ccm, dtype=rgb.dtype)
    lin = torch.einsum("ij,njhw->nihw", ccm, rgb).clamp(0, 1)
    y = tone(lin, d.curve, d.curve_param)
    y = sharpen(y, d.sharpen, d.sharpen_radius, d.sharpen_amount, d.sharpen_luma)
    if d.downscale > 1.0:
        h, w = y.shape[-2:]
        size = (max(8, round(h / d.downscale)), max(8, round(w / d.downscale)))
        y = F.interpolate(y, size=size, mode="bicubic", antialias=True, align_corners=False)
    return y


def upscale_source(x: torch.Tensor, d: Development) -> torch.Tensor:
    """For a development that downscales: the photo enlarged by the same factor, so the sensor
    has more photosites than the output has pixels (noise is added at sensor resolution) and the
    written image has the photo's size again."""
    if d.downscale <= 1.0:
        return x
    h, w = x.shape[-2:]
    size = (round(h * d.downscale), round(w * d.downscale))
    return F.interpolate(x, size=size, mode="bicubic", align_corners=False).clamp(0, 1)


def develop(mosaic: torch.Tensor, d: Development, demosaic: Callable[[torch.Tensor], torch.Tensor] | None = None):
    """White balance and exposure gain on the mosaic (as dcraw and LibRaw scale before
    interpolating), demosaic, then `develop_rgb`."""
    h, w = mosaic.shape[-2:]
    gains = torch.tensor(d.wb, dtype=mosaic.dtype).reshape(1, 3, 1, 1) * 2.0 ** d.ev_push
    site_gain = (gains * bayer_masks(h, w, mosaic.device).to(mosaic)).sum(1, keepdim=True)
    rgb = (demosaic or DEMOSAICS[d.demosaic])(mosaic * site_gain)
    return develop_rgb(rgb, d)


def finish(y: torch.Tensor, d: Development) -> torch.Tensor:
    """The noisy path's last steps: in-camera chroma NR, then the file's encoding."""
    if d.chroma_nr > 0:
        y = chroma_nr(y, d.chroma_nr)
    y = y.clamp(0, 1)
    if d.output == "jpeg":
        return jpeg(y, d.jpeg_quality, d.jpeg_subsampling)
    if d.output == "png8":
        return torch.round(y * 255) / 255
    return torch.round(y * 65535) / 65535


def simulate(x: torch.Tensor, d: Development, gen: torch.Generator,
             demosaic: Callable[[torch.Tensor], torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(noisy, target) for one sRGB image (1, 3, H, W) under development `d` (about the input's size;
    exactly with no downscaling)."""
    clean = unprocess(upscale_source(x, d), d)
    noisy = add_sensor_noise(clean, d.camera, gen)
    if d.clip_black:
        noisy = noisy.clamp_min(0)
    target = develop(clean, d, demosaic).clamp(0, 1)
    return finish(develop(noisy, d, demosaic), d), target


def pipeline_pair(x: torch.Tensor, gen: torch.Generator, settings: Settings = TRAIN_SETTINGS,
                  out_size: int | None = None, camera: CameraProfile | None = None,
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """A (noisy, target) batch: each image of `x` through its own random development (with
    `camera`, that profile instead of a random one; the push still varies). With
    `out_size`, a random out_size^2 crop is taken from each result, at least 8 px from its edges,
    so demosaic and filter borders never reach the patch and JPEG blocks fall anywhere on it."""
    noisy, target = [], []
    for i in range(x.shape[0]):
        d = draw_development(gen, settings, camera=camera)
        n, t = simulate(x[i:i + 1], d, gen)
        if out_size is not None:
            n, t = random_crop(n, t, out_size, gen)
        noisy.append(n)
        target.append(t)
    return torch.cat(noisy), torch.cat(target)


def clean_development_pair(x: torch.Tensor, gen: torch.Generator, settings: Settings = TRAIN_SETTINGS,
                           out_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A noise-free camera file (the development of the clean mosaic, sharpened, maybe chroma-smoothed,
    JPEG-compressed) as both input and target: camera-processed detail without noise is left alone."""
    outs = []
    for i in range(x.shape[0]):
        d = draw_development(gen, settings)
        y = finish(develop(unprocess(upscale_source(x[i:i + 1], d), d), d).clamp(0, 1), d)
        if out_size is not None:
            y = random_crop(y, y, out_size, gen)[0]
        outs.append(y)
    y = torch.cat(outs)
    return y, y.clone()


def random_crop(a: torch.Tensor, b: torch.Tensor, size: int, gen: torch.Generator):
    h, w = a.shape[-2:]
    m = 8 if min(h, w) >= size + 16 else max(0, (min(h, w) - size) // 2)
    if h < size or w < size:
        raise ValueError(f"a {w}x{h} development is smaller than the {size}px patch")
    y = m + int(torch.randint(h - size - 2 * m + 1, (1,), generator=gen))
    x = m + int(torch.randint(w - size - 2 * m + 1, (1,), generator=gen))
    return a[..., y:y + size, x:x + size], b[..., y:y + size, x:x + size]


__all__ = ["DEMOSAICS", "Development", "HELDOUT_MAKERS", "Settings", "TONE_CURVES", "TRAIN_SETTINGS",
           "clean_development_pair", "develop", "draw_camera", "draw_development", "finish", "pipeline_pair",
           "simulate", "unprocess"]
