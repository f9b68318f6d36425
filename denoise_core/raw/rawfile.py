"""Camera raw files: read the Bayer mosaic through LibRaw (`rawpy`), pack it into RGGB planes,
give each photosite its noise level, and write results (a LibRaw development, or a DNG).

A mosaic here is the sensor's visible area with the black level subtracted and divided by
(white - black), so white is 1 (what darktable's noise profiles are fitted on). `pack` turns it
into four half-resolution planes in R, G1, G2, B order whatever the camera's CFA phase (the
mosaic is reflect-padded by one row/column where needed: reflection keeps the CFA phase), and
`unpack` undoes it exactly.

The noise level of a photosite is the standard deviation sqrt(4 * (a * x + b)) of the darktable
profile of the file's camera at its ISO (`denoise_core.noise.camera.find_camera`, interpolated in ISO),
x the local signal. Without a profile (an unknown camera, or an ISO outside its range), a and b
are estimated from the image itself (`estimate_noise`) and `RawImage.noise_source` says so.

Only Bayer sensors are handled. X-Trans, Foveon, linear (demosaiced) DNGs and four-colour
sensors get a `RawReadError` saying so, never a wrong image.
"""
from __future__ import annotations

import contextlib
import io
import os
import re
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from ..imaging.files import file_problem
from ..imaging.imageio import RAW_EXTENSIONS, ImageReadError, ImageWriteError
from ..noise.camera import CameraProfile, NoiseSpecError, find_camera

PLANES = ("R", "G1", "G2", "B")


class RawReadError(ImageReadError):
    """A raw file that cannot be read or is not a Bayer mosaic; `reason` is one line."""


class RawWriteError(ImageWriteError):
    """A result that cannot be written (e.g. a DNG layout this writer cannot re-encode)."""


@contextlib.contextmanager
def quiet_stderr():
    """LibRaw prints its own complaints ("Unexpected end of file") on file descriptor 2; the batch
    reports each file in one line, so they are swallowed while LibRaw runs."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        _flush_c_stdio()  # LibRaw's stdio buffer would otherwise reach the terminal at exit
        os.dup2(saved, 2)
        os.close(saved)


def _flush_c_stdio() -> None:
    try:
        import ctypes
        ctypes.CDLL(None).fflush(None)
    except Exception:
        pass


def is_raw(path) -> bool:
    return Path(path).suffix.lower() in RAW_EXTENSIONS


# ----------------------------------------------------------------------------------- metadata
_MAKERS = (  # EXIF Make (lower case, prefix) -> darktable's maker name
    ("nikon", "Nikon"), ("canon", "Canon"), ("sony", "Sony"), ("fujifilm", "Fujifilm"),
    ("olympus", "Olympus"), ("om digital", "OM System"), ("panasonic", "Panasonic"),
    ("pentax", "Pentax"), ("ricoh", "Ricoh"), ("samsung", "Samsung"), ("leica", "Leica"),
    ("eastman kodak", "Kodak"), ("kodak", "Kodak"), ("hasselblad", "Hasselblad"), ("sigma", "Sigma"),
    ("apple", "Apple"), ("google", "Google"), ("huawei", "Huawei"), ("xiaomi", "Xiaomi"), ("zeiss", "Zeiss"))


@dataclass(frozen=True)
class RawMeta:
    make: str
    model: str
    iso: float | None

    @property
    def camera(self) -> str:
        return f"{self.make} {self.model}".strip()


def _exif_tags(data: BinaryIO) -> dict:
    import exifread
    try:
        return exifread.process_file(data, details=False, debug=False) or {}
    except Exception:  # exifread raises many kinds on damaged files; metadata is then simply absent
        return {}


def _embedded_exif_stream(path: Path) -> io.BytesIO | list[io.BytesIO] | None:
    """For containers exifread does not parse: Fujifilm RAF (a JPEG preview carries the EXIF) and
    Canon CR3 (ISO-BMFF; the CMT1/CMT2 boxes are TIFF blocks with IFD0 and the Exif IFD)."""
    with open(path, "rb") as f:
        head = f.read(1 << 18)
    if head.startswith(b"FUJIFILMCCD-RAW"):
        if len(head) < 92:
            return None
        off, n = struct.unpack(">II", head[84:92])
        with open(path, "rb") as f:
            f.seek(off)
            return io.BytesIO(f.read(n))
    if head[4:12] == b"ftypcrx ":
        blocks = []
        for box in (b"CMT1", b"CMT2"):
            i = head.find(box)
            if i >= 4:
                size = struct.unpack(">I", head[i - 4:i])[0]
                blocks.append(head[i + 4:i - 4 + size])
        return [io.BytesIO(b) for b in blocks] or None
    return None


def _first(tags: dict, *names: str) -> str | None:
    for n in names:
        v = tags.get(n)
        if v is not None and str(v).strip():
            return str(v).strip()
    return None


def read_meta(path, libraw_iso: float | None = None) -> RawMeta:
    """Camera make, model and ISO from the file's EXIF (exifread), LibRaw's ISO as a fallback."""
    p = Path(path)
    tags: dict = {}
    with open(p, "rb") as f:
        tags = _exif_tags(f)
    if not tags.get("Image Make"):
        try:
            extra = _embedded_exif_stream(p)
        except OSError:
            extra = None
        for stream in extra if isinstance(extra, list) else [extra] if extra else []:
            tags.update(_exif_tags(stream))
    make = _first(tags, "Image Make") or ""
    model = _first(tags, "Image UniqueCameraModel", "Image Model") or ""
    if tags.get("Image Model") and tags.get("Image Make"):
        model = _first(tags, "Image Model") or model     # a Model of spaces names nothing
    iso_s = _first(tags, "EXIF ISOSpeedRatings", "Image ISOSpeedRatings", "EXIF PhotographicSensitivity",
                   "EXIF RecommendedExposureIndex")
    iso = None
    if iso_s:
        m = re.search(r"\d+(\.\d+)?", iso_s)
        iso = float(m.group()) if m else None
    if (not iso or iso <= 0) and libraw_iso:
        iso = float(libraw_iso)
    return RawMeta(make.rstrip("\0 "), model.rstrip("\0 "), iso if iso and iso > 0 else None)


def camera_names(make: str, model: str) -> list[str]:
    """Names to try in darktable's table for an EXIF make and model, most specific first."""
    mk = make.strip()
    low = mk.lower()
    clean = next((name for prefix, name in _MAKERS if low.startswith(prefix)), mk.split(" ")[0].title() if mk else "")
    md = model.strip()
    for prefix in {mk, mk.split(" ")[0], clean}:
        if prefix and md.lower().startswith(prefix.lower() + " "):
            md = md[len(prefix) + 1:].strip()
    names = [f"{clean} {md}", md, f"{mk} {model}", model]
    if clean == "Ricoh" and md.upper().startswith("PENTAX"):
        names.insert(0, "Pentax " + md.split(" ", 1)[-1])
    seen, out = set(), []
    for n in names:
        n = n.strip()
        if n and n.lower() not in seen:
            seen.add(n.lower())
            out.append(n)
    return out


def lookup_profile(meta: RawMeta) -> tuple[CameraProfile | None, str]:
    """(profile, why-not) for the file's camera and ISO."""
    if not meta.make and not meta.model:
        return None, "the file names no camera"
    if meta.iso is None:
        return None, f"the file gives no ISO for {meta.camera}"
    range_error = None
    for name in camera_names(meta.make, meta.model):
        try:
            return find_camera(name, meta.iso), ""
        except NoiseSpecError as e:
            if "noise profiles for ISO" in str(e):
                range_error = str(e)
    return None, range_error or f"darktable has no noise profile for {meta.camera}"


# ----------------------------------------------------------------------------------- packing
def _phase(pattern: np.ndarray, color_desc: bytes) -> tuple[int, int, tuple[int, int]]:
    """(dy, dx, green site order): the offset of red inside the 2x2 CFA tile."""
    letters = [[chr(color_desc[int(c)]) for c in row] for row in pattern]
    for dy in range(2):
        for dx in range(2):
            if letters[dy][dx] == "R":
                return dy, dx, (0, 0)
    raise ValueError("no red photosite in the CFA pattern")


def pack(mosaic: np.ndarray, dy: int = 0, dx: int = 0) -> np.ndarray:
    """(H, W) mosaic whose red site is at (dy, dx) -> (4, ceil((H+dy)/2), ceil((W+dx)/2)) planes
    R, G1 (red row), G2 (blue row), B. Reflect padding by one keeps the CFA phase."""
    h, w = mosaic.shape
    pb, pr = (h + dy) % 2, (w + dx) % 2
    m = np.pad(mosaic, ((dy, pb), (dx, pr)), mode="reflect") if dy or dx or pb or pr else mosaic
    return np.stack([m[0::2, 0::2], m[0::2, 1::2], m[1::2, 0::2], m[1::2, 1::2]])


def unpack(planes: np.ndarray, h: int, w: int, dy: int = 0, dx: int = 0) -> np.ndarray:
    """Inverse of `pack`: (4, h2, w2) -> the (h, w) mosaic."""
    _, h2, w2 = planes.shape
    m = np.empty((2 * h2, 2 * w2), planes.dtype)
    m[0::2, 0::2], m[0::2, 1::2], m[1::2, 0::2], m[1::2, 1::2] = planes
    return m[dy:dy + h, dx:dx + w]


# ----------------------------------------------------------------------------------- noise level
def noise_sigma(planes, A, B) -> Any:
    """Noise standard deviation per photosite, sqrt(A*x + B), x the 3x3 local mean of each packed
    plane (clipped at 0): the noisy data is all inference has, and training computes it the same
    way. `planes` (N, 4, h, w) or (4, h, w), torch or numpy (the result has the input's kind)."""
    import torch
    import torch.nn.functional as F
    as_np = isinstance(planes, np.ndarray)
    t = torch.from_numpy(np.ascontiguousarray(planes, np.float32)) if as_np else planes.float()
    squeeze = t.ndim == 3
    if squeeze:
        t = t[None]
    x = F.avg_pool2d(F.pad(t, (1, 1, 1, 1), mode="replicate"), 3, stride=1).clamp_min(0)
    A = torch.as_tensor(np.asarray(A, np.float32) if not torch.is_tensor(A) else A, dtype=torch.float32)
    B = torch.as_tensor(np.asarray(B, np.float32) if not torch.is_tensor(B) else B, dtype=torch.float32)
    s = (A.reshape(1, 4, 1, 1) * x + B.reshape(1, 4, 1, 1)).clamp_min(0).sqrt()
    s = s[0] if squeeze else s
    return s.numpy() if as_np else s


def _box3(p: np.ndarray) -> np.ndarray:
    q = np.pad(p, ((0, 0), (1, 1), (1, 1)), mode="reflect")
    s = np.zeros_like(p)
    for yy in range(3):
        for xx in range(3):
            s += q[:, yy:yy + p.shape[1], xx:xx + p.shape[2]]
    return s / 9.0


def profile_ab(profile: CameraProfile) -> tuple[np.ndarray, np.ndarray]:
    """Per-plane (R, G1, G2, B) variance coefficients A, B with variance = A*x + B: 4x darktable's
    a and b (its fit reports half the standard deviation), clamped at zero."""
    a = np.clip(np.asarray(profile.a, np.float64), 0, None)
    b = np.clip(np.asarray(profile.b, np.float64), 0, None)
    idx = [0, 1, 1, 2]
    return 4.0 * a[idx], 4.0 * b[idx]


def estimate_noise(planes: np.ndarray, bins: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """A and B (variance = A*x + B) per plane, estimated from the image itself.

    Each photosite's difference from the mean of its four same-colour neighbours has variance
    1.25x the noise's (independent noise); its robust spread (1.4826 MAD) is taken per bin of local
    brightness, and a line fitted through the bins' variances with weights by bin size. Texture
    raises the spread, so the lower-median bins are trusted: the MAD, not the standard deviation."""
    A, B = np.zeros(4), np.zeros(4)
    for c in range(4):
        p = planes[c].astype(np.float64)
        if p.shape[0] < 4 or p.shape[1] < 4:
            continue
        q = np.pad(p, 1, mode="reflect")
        nb = (q[:-2, 1:-1] + q[2:, 1:-1] + q[1:-1, :-2] + q[1:-1, 2:]) / 4
        r = (p - nb)[1:-1, 1:-1].ravel()
        mean = _box3(p[None])[0][1:-1, 1:-1].ravel()
        lo, hi = np.quantile(mean, [0.01, 0.99])
        edges = np.linspace(lo, hi, bins + 1)
        idx = np.clip(np.digitize(mean, edges) - 1, 0, bins - 1)
        xs, vs, ws = [], [], []
        for k in range(bins):
            sel = r[idx == k]
            if sel.size < 200:
                continue
            mad = np.median(np.abs(sel - np.median(sel))) * 1.4826
            xs.append(float(mean[idx == k].mean()))
            vs.append(mad * mad / 1.25)
            ws.append(sel.size)
        if not xs:
            v = float(np.median(np.abs(r - np.median(r))) * 1.4826) ** 2 / 1.25
            A[c], B[c] = 0.0, v
            continue
        xs, vs, ws = map(np.asarray, (xs, vs, ws))
        if len(xs) >= 2 and np.ptp(xs) > 0:
            M = np.stack([xs, np.ones_like(xs)], 1) * np.sqrt(ws)[:, None]
            a, b = np.linalg.lstsq(M, vs * np.sqrt(ws), rcond=None)[0]
        else:
            a, b = 0.0, float(vs.mean())
        if a < 0:
            a, b = 0.0, float(np.average(vs, weights=ws))
        if b < 0:
            b = 0.0
        A[c], B[c] = a, b
    # both greens share one sensor response
    A[1] = A[2] = (A[1] + A[2]) / 2
    B[1] = B[2] = (B[1] + B[2]) / 2
    return A, B


# ----------------------------------------------------------------------------------- reading
@dataclass
class RawImage:
    path: Path
    meta: RawMeta
    mosaic: np.ndarray            # (H, W) float32, black 0, white 1 (visible area)
    phase: tuple[int, int]        # (dy, dx) of the red site
    black: np.ndarray             # (H, W)-broadcastable per-site black (float32)
    white: float
    A: np.ndarray                 # variance = A*x + B per packed plane
    B: np.ndarray
    noise_source: str             # "darktable profile Nikon D750@3200" or "estimated from the image (...)"
    profile: CameraProfile | None = None
    wb: tuple[float, ...] = field(default_factory=tuple)

    @property
    def estimated(self) -> bool:
        return self.profile is None

    def planes(self) -> np.ndarray:
        return pack(self.mosaic, *self.phase)

    def to_raw_values(self, mosaic: np.ndarray) -> np.ndarray:
        """A normalized (H, W) mosaic -> uint16 raw values (black added back, clipped)."""
        v = mosaic.astype(np.float32) * (self.white - self.black) + self.black
        return np.clip(np.rint(v), 0, 65535).astype(np.uint16)


def open_raw(path):
    """rawpy handle, or RawReadError with one line."""
    import rawpy
    p = Path(path)
    problem = file_problem(p, "a raw file")     # LibRaw would call a FIFO or /dev/zero "damaged"
    if problem:
        raise RawReadError(path, problem)
    try:
        if p.stat().st_size == 0:
            raise RawReadError(path, "empty file, not a raw file")
    except OSError as e:
        raise RawReadError(path, e.strerror or str(e)) from None
    try:
        with quiet_stderr():
            raw = rawpy.imread(str(p))  # opens only; LibRaw unpacks lazily
            try:
                raw.unpack()  # now, quietly: a truncated file fails here
            except BaseException:
                raw.close()
                raise
            return raw
    except rawpy.LibRawFileUnsupportedError:
        raise RawReadError(path, "not a raw file LibRaw can read (unsupported or damaged)") from None
    except (rawpy.LibRawIOError, rawpy.LibRawDataError) as e:
        raise RawReadError(path, f"damaged or truncated raw file ({type(e).__name__})") from None
    except rawpy.LibRawError as e:
        raise RawReadError(path, f"LibRaw cannot read it ({type(e).__name__})") from None
    except OSError as e:
        raise RawReadError(path, e.strerror or str(e)) from None
    except Exception as e:  # anything else LibRaw or rawpy raises on a damaged file
        raise RawReadError(path, f"damaged raw file ({type(e).__name__})") from None


_CFA_LETTERS = "RGBCMYW"     # TIFF/EP CFA colour codes 0..6
_CFA_NAMES = {"R": "red", "G": "green", "B": "blue", "C": "cyan", "M": "magenta", "Y": "yellow", "W": "white"}


def cfa_page(tif):
    """The raw CFA image (photometric 32803, not a preview) of a TIFF-based raw file, in IFD0's
    chain or a SubIFD, as a tifffile page; None when there is none."""
    import tifffile
    pages = list(tif.pages)
    for page in list(pages):
        for off in page.tags.valueof(330, ()) or ():
            try:
                tif.filehandle.seek(int(off))
                pages.append(tifffile.TiffPage(tif, index=0))
            except Exception:
                continue
    for page in pages:
        if page.photometric == 32803 and not (page.tags.valueof(254, 0) or 0) & 1:
            return page
    return None


def tiff_cfa(path) -> str | None:
    """The 2x2 colour pattern a TIFF-based raw file (a DNG) declares in its CFA image's CFAPattern
    tag (TIFF/EP colour codes), as letters in reading order ("RGGB", "CMMY"); None for other files
    or patterns. LibRaw maps a cyan/magenta/yellow pattern onto its R, G, B and reports RGBG, so the
    file's own tag is what tells such a sensor apart."""
    import tifffile
    try:
        with open(path, "rb") as f:
            if f.read(4) not in (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+"):
                return None
        with tifffile.TiffFile(path) as tif:
            page = cfa_page(tif)
            pattern = None if page is None else page.tags.valueof(33422)
            pattern = bytes((pattern,) if isinstance(pattern, int) else pattern or b"")
    except Exception:       # unreadable tags: LibRaw's own view stands
        return None
    if len(pattern) != 4:
        return None
    return "".join(_CFA_LETTERS[c] if c < len(_CFA_LETTERS) else "?" for c in pattern)


def check_bayer(raw, path) -> tuple[int, int]:
    """The red site's (dy, dx), or RawReadError for any sensor that is not a 2x2 Bayer RGGB family."""
    import rawpy
    if raw.raw_type != rawpy.RawType.Flat:
        raise RawReadError(path, "a linear (already demosaiced) raw file, not a Bayer mosaic; develop it "
                                 "to TIFF and denoise that")
    pattern = raw.raw_pattern
    if pattern is None:
        raise RawReadError(path, "no colour filter pattern (Foveon or monochrome sensor): not supported")
    pattern = np.asarray(pattern)
    desc = bytes(raw.color_desc)
    if pattern.shape == (6, 6):
        raise RawReadError(path, "Fujifilm X-Trans sensor (6x6 colour pattern): not supported, only Bayer sensors")
    if pattern.shape != (2, 2) or raw.num_colors != 3 or desc[:3] != b"RGB":
        raise RawReadError(path, f"colour pattern {pattern.shape[0]}x{pattern.shape[1]} "
                                 f"{desc.decode('ascii', 'replace')}: not a Bayer RGGB sensor, not supported")
    letters = sorted(chr(desc[int(c)]) for c in pattern.ravel())
    if letters != ["B", "G", "G", "R"]:
        raise RawReadError(path, f"colour pattern {''.join(letters)}: not a Bayer RGGB sensor, not supported")
    declared = tiff_cfa(path)
    if declared and sorted(declared) != ["B", "G", "G", "R"]:
        names = ", ".join(dict.fromkeys(_CFA_NAMES.get(c, "unknown") for c in declared))
        raise RawReadError(path, f"colour pattern {declared} ({names}): not a Bayer RGGB sensor, not supported")
    dy, dx, _ = _phase(pattern, desc)
    return dy, dx


def read_raw(path, raw=None) -> RawImage:
    """Read a Bayer raw file into a normalized mosaic with its noise model (RawReadError if not)."""
    own = raw is None
    if own:
        raw = open_raw(path)
    try:
        try:
            dy, dx = check_bayer(raw, path)
            vis = np.asarray(raw.raw_image_visible)
            colors = np.asarray(raw.raw_colors_visible)
            black = np.asarray(raw.black_level_per_channel, np.float32)[colors]
            white = float(raw.white_level)
            iso = float(raw.other.iso_speed or 0)
            wb = tuple(float(v) for v in raw.camera_whitebalance)
        except RawReadError:
            raise
        except Exception as e:  # LibRaw unpacks lazily: a truncated file fails here
            raise RawReadError(path, f"damaged or truncated raw file ({type(e).__name__})") from None
        if vis.size == 0 or vis.ndim != 2:
            raise RawReadError(path, "the raw file holds no image data")
        if white <= float(black.max()):
            raise RawReadError(path, f"white level {white:g} is not above the black level {float(black.max()):g}")
        mosaic = (vis.astype(np.float32) - black) / (white - black)
        meta = read_meta(path, iso)
        profile, why = lookup_profile(meta)
        planes = pack(mosaic, dy, dx)
        if profile is not None:
            A, B = profile_ab(profile)
            source = f"darktable profile {profile.name}"
        else:
            A, B = estimate_noise(planes)
            source = f"estimated from the image ({why})"
        return RawImage(Path(path), meta, mosaic, (dy, dx), black, white, A, B, source, profile, wb)
    finally:
        if own:
            raw.close()


# ----------------------------------------------------------------------------------- DNG writing (tests, benchmark)
def _rationals(vals, den: int = 1_000_000) -> list[int]:
    out: list[int] = []
    for v in vals:
        out += [int(round(v * den)), den]
    return out


def write_bayer_dng(path, mosaic: np.ndarray, *, make: str, model: str, iso: float | None,
                    black: int = 0, white: int = 65535, cfa: str = "RGGB",
                    as_shot_neutral: tuple[float, float, float] = (1.0, 1.0, 1.0),
                    color_matrix: np.ndarray | None = None, orientation: int | None = None) -> None:
    """A minimal Bayer DNG (uint16 mosaic + the tags LibRaw needs), written atomically."""
    import tifffile
    from ..imaging.atomic import atomic_path
    codes = {"R": 0, "G": 1, "B": 2}
    cm = np.eye(3) if color_matrix is None else np.asarray(color_matrix, np.float64)
    tags = [(271, "s", 0, make, True), (272, "s", 0, model, True),
            (33421, "H", 2, (2, 2), True), (33422, "B", 4, tuple(codes[c] for c in cfa), True),
            (50706, "B", 4, (1, 4, 0, 0), True), (50707, "B", 4, (1, 1, 0, 0), True),
            (50708, "s", 0, f"{make} {model}", True), (50714, "H", 1, (int(black),), True),
            (50717, "I", 1, (int(white),), True), (50721, 10, 9, _rationals(cm.ravel()), True),
            (50778, "H", 1, (21,), True), (50728, 5, 3, _rationals(as_shot_neutral), True)]
    if iso:
        tags.append((34855, "H", 1, (int(round(iso)),), True))
    if orientation:
        tags.append((274, "H", 1, (int(orientation),), True))
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, np.ascontiguousarray(mosaic, np.uint16), photometric=32803,
                         extratags=sorted(tags), software=False, metadata=None)


__all__ = ["PLANES", "RAW_EXTENSIONS", "RawImage", "RawMeta", "RawReadError", "RawWriteError", "camera_names",
           "cfa_page", "check_bayer", "estimate_noise", "is_raw", "lookup_profile", "noise_sigma", "open_raw", "pack",
           "profile_ab", "read_meta", "read_raw", "tiff_cfa", "unpack", "write_bayer_dng"]
