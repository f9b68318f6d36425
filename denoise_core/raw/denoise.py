"""Denoise camera raw files with the `raw` model and write what a photographer continues with.

    from denoise_core.raw.denoise import RawDenoiser, process_raw
    rd = RawDenoiser("raw")
    process_raw(rd, "IMG_0001.NEF", "out/IMG_0001.tif")          # LibRaw development, 16-bit TIFF
    process_raw(rd, "IMG_0002.dng", "out/IMG_0002.dng")          # a DNG with new raw data

`strength` blends the denoised mosaic with the original (0 keeps it, 1 is the full result);
`noise_level` multiplies the noise level the model is told (1 = the camera profile's, or the
image estimate's; 2 assumes twice the noise, 0.5 half).

Outputs (all written atomically; the input is only read):
- developed (TIFF by default, or any format `imageio.write_image` writes): LibRaw develops the
  denoised mosaic (written back into its raw buffer): camera white balance, AHD demosaic, sRGB
  primaries with the sRGB tone curve, no automatic brightening (the exposure is the camera's), 16
  bits, white at the file's white level; the sRGB ICC profile and the raw file's EXIF (make, model, date,
  exposure, GPS; orientation dropped, as LibRaw has already rotated the pixels) go with it.
- DNG from a DNG: a byte copy of the input in which only the raw image changes: uncompressed
  16-bit raw data keeps its place and size; compressed (or other bit depths) raw data is written
  uncompressed at the end of the file and the raw IFD's Compression, BitsPerSample, Predictor and
  strip/tile offsets and byte counts point at it. The input's NoiseProfile is dropped and
  NoiseReductionApplied says `strength` (so converters do not denoise again at the camera's noise
  level; IFD0 may move to the end of the file for the added tag). Every other tag, IFD, preview
  and maker note stays as it was.
"""
from __future__ import annotations

import os
import shutil
import struct
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from ..imaging.atomic import atomic_path
from ..imaging.imageio import ImageWarning, Photo, write_image
from ..inference.api import check_output
from ..inference.checkpoint import load_checkpoint
from ..inference.device import autocast, precision_name
from ..inference.tiler import CancelFn, ProgressFn, make_grid, run_tiles
from .rawfile import (RawImage, RawReadError, RawWriteError, cfa_page, noise_sigma, open_raw, quiet_stderr, read_raw,
                      unpack)

DEFAULT_RAW_MODEL = "raw"
DEFAULT_RAW_TILE = 512  # packed pixels (a 1024x1024 mosaic window)
MAX_RAW_NOISE_LEVEL = 4.0


class RawDenoiser:
    def __init__(self, model: str | os.PathLike = DEFAULT_RAW_MODEL, *, device: str = "auto",
                 precision: str = "auto", tile: int = DEFAULT_RAW_TILE) -> None:
        from ..inference.api import build_for_inference, resolve_model
        self.path = resolve_model(model)
        ckpt = load_checkpoint(self.path)
        if ckpt.arch != "raw":
            raise ValueError(f"{self.path.name} holds a {ckpt.arch!r} model, not a raw-domain one ('raw')")
        self.card = ckpt.card
        net, self.device, self.amp_dtype = build_for_inference(ckpt, device, precision)
        self.precision = precision_name(self.amp_dtype)
        self.model = net
        self.multiple = int(getattr(net, "size_multiple"))
        self.receptive = int(getattr(net, "receptive_radius"))
        self.tile = int(tile)

    @torch.inference_mode()
    def denoise_planes(self, planes: np.ndarray, sigma: np.ndarray, progress: ProgressFn | None = None,
                       cancel: CancelFn | None = None) -> np.ndarray:
        """(4, h, w) packed mosaic and noise std -> (4, h, w) denoised, tile by tile (exact: the
        overlap covers the receptive field). `cancel()` true before a tile raises `Cancelled`."""
        _, h, w = planes.shape
        stack = np.concatenate([planes, sigma]).transpose(1, 2, 0)  # (h, w, 8) for the tiler
        grid = make_grid(h, w, tile=self.tile, overlap=self.receptive, multiple=self.multiple,
                         border=self.receptive)
        out = np.zeros((h, w, 4), np.float32)

        def run(window: np.ndarray) -> np.ndarray:
            x = torch.from_numpy(np.ascontiguousarray(window.transpose(2, 0, 1), np.float32))[None].to(self.device)
            if self.device.type == "cpu":
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(self.device, self.amp_dtype):
                y = self.model(x[:, :4], x[:, 4:])
            y = y.float()
            check_output(x[:, :4], y, self.path)
            return y.cpu()[0].permute(1, 2, 0).numpy()

        def put_rows(y0: int, rows: np.ndarray) -> None:
            out[y0:y0 + rows.shape[0]] = rows

        run_tiles(stack, grid, run, 4, put_rows, progress=progress, cancel=cancel)
        return out.transpose(2, 0, 1)

    def denoise(self, img: RawImage, *, strength: float = 1.0, noise_level: float | None = None,
                progress: ProgressFn | None = None, cancel: CancelFn | None = None) -> np.ndarray:
        """The denoised (H, W) normalized mosaic of `img`."""
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"strength must be within 0..1, got {strength}")
        scale = 1.0 if noise_level is None else float(noise_level)
        if not 0.0 <= scale <= MAX_RAW_NOISE_LEVEL:
            raise ValueError(f"noise level must be within 0..{MAX_RAW_NOISE_LEVEL:g}, got {noise_level}")
        planes = img.planes()
        if strength == 0.0:
            return img.mosaic.copy()
        sigma = noise_sigma(planes, img.A, img.B) * np.float32(scale)
        den = self.denoise_planes(planes, sigma, progress, cancel)
        if strength < 1.0:
            den = planes + np.float32(strength) * (den - planes)
        return unpack(den, img.mosaic.shape[0], img.mosaic.shape[1], *img.phase)


# ----------------------------------------------------------------------------------- development
def srgb_icc() -> bytes:
    from PIL import ImageCms
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


DEVELOP_PARAMS = dict(output_bps=16, use_camera_wb=True, no_auto_bright=True, gamma=(2.4, 12.92),
                      adjust_maximum_thr=0.0)  # white is the file's white level, not the data maximum


def develop(path, mosaic: np.ndarray | None, img: RawImage, **overrides) -> np.ndarray:
    """LibRaw's development of `mosaic` (normalized, as `img.mosaic`) in place of the file's raw data,
    or of the file as it is when `mosaic` is None: (H, W, 3) uint16 sRGB."""
    import rawpy
    raw = open_raw(path)
    try:
        if mosaic is not None:
            vis = raw.raw_image_visible
            if vis.shape != mosaic.shape:
                raise RawReadError(path, f"raw data changed size ({vis.shape} vs {mosaic.shape})")
            vis[...] = img.to_raw_values(mosaic)
        params = {**DEVELOP_PARAMS, **overrides}
        with quiet_stderr():
            return raw.postprocess(**params)
    except rawpy.LibRawError as e:
        raise RawReadError(path, f"LibRaw cannot develop it ({type(e).__name__})") from None
    finally:
        raw.close()


def raw_exif(path) -> bytes | None:
    """The raw file's EXIF as an APP1-style block (b"Exif\\0\\0" + TIFF) for the developed output:
    IFD0's descriptive tags and the Exif/GPS IFDs of TIFF-based raws, the embedded JPEG's EXIF of a
    RAF, the CMT1 block of a CR3. Orientation is left out (LibRaw rotates the pixels).

    None when there is nothing to copy. EXIF the copy refuses (tags copying more than
    imageio.MAX_METADATA_BYTES, a preview JPEG PIL rejects) is no reason to lose the denoised
    result: the output is written without EXIF and an `ImageWarning` naming the file says why
    (denoise-batch prints it as a one-line warning)."""
    try:
        return _raw_exif(path)
    except (ValueError, struct.error, OSError) as e:  # _ExifTooLarge is a ValueError; PIL raises OSError
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        warnings.warn(ImageWarning(path, f"EXIF not copied to the output ({reason})"), stacklevel=2)
        return None


def _raw_exif(path) -> bytes | None:
    from ..imaging.imageio import IFD0_EXIF_TAGS, pack_ifd, read_ifd
    p = Path(path)
    try:
        with open(p, "rb") as f:
            head = f.read(1 << 18)
            if head.startswith(b"FUJIFILMCCD-RAW") and len(head) >= 92:
                off, n = struct.unpack(">II", head[84:92])
                f.seek(off)
                import io
                from PIL import Image
                with Image.open(io.BytesIO(f.read(n))) as im:
                    exif = im.info.get("exif")
                return exif if exif and exif.startswith(b"Exif\0\0") else (b"Exif\0\0" + exif if exif else None)
            if head[4:12] == b"ftypcrx ":
                i = head.find(b"CMT1")
                if i < 4:
                    return None
                size = struct.unpack(">I", head[i - 4:i])[0]
                buf = head[i + 4:i - 4 + size]
            else:
                f.seek(0)
                buf = f.read()
    except OSError:
        return None
    bo = {b"II": "<", b"MM": ">"}.get(bytes(buf[:2]))
    if bo is None or len(buf) < 8:
        return None
    try:
        entries = read_ifd(buf, struct.unpack_from(bo + "I", buf, 4)[0], bo, keep=IFD0_EXIF_TAGS - {274})
    except struct.error:
        return None
    if not entries:
        return None
    header = (b"II*\0" if bo == "<" else b"MM\0*") + struct.pack(bo + "I", 8)
    return b"Exif\0\0" + header + pack_ifd(entries, 8, bo)


def write_developed(src, dst, mosaic: np.ndarray, img: RawImage, *, format: str = "TIFF",
                    quality: int | None = None) -> None:
    rgb = develop(src, mosaic, img)
    photo = Photo(pixels=np.ascontiguousarray(rgb), format="TIFF", icc_profile=srgb_icc(), exif=raw_exif(src))
    write_image(dst, photo, format=format, quality=quality)


# ----------------------------------------------------------------------------------- DNG
_T_COMPRESSION, _T_BPS, _T_PREDICTOR = 259, 258, 317
_T_STRIP_OFF, _T_STRIP_BYTES, _T_ROWS = 273, 279, 278
_T_TILE_OFF, _T_TILE_BYTES = 324, 325
_T_LINEARIZATION = 50712
_T_NR_APPLIED, _T_NOISE_PROFILE = 50935, 51041


def _ifd_entries(f, offset: int, bo: str, dst) -> tuple[list[bytes], int]:
    """The 12-byte entries of the classic-TIFF IFD at `offset` and its next-IFD pointer."""
    f.seek(offset)
    (n,) = struct.unpack(bo + "H", f.read(2))
    raw = f.read(12 * n)
    (nxt,) = struct.unpack(bo + "I", f.read(4))
    if len(raw) != 12 * n:
        raise RawWriteError(dst, "a DNG IFD runs past the end of the file")
    return [raw[i:i + 12] for i in range(0, 12 * n, 12)], nxt


def _entry_tag(entry: bytes, bo: str) -> int:
    return struct.unpack(bo + "H", entry[:2])[0]


def _mark_denoised(f, bo: str, ifd0: int, raw_ifd: int, strength: float, dst) -> None:
    """Tell raw converters the data is denoised.

    NoiseProfile (51041, IFD0 or the raw IFD) is dropped: it is the camera's per-photosite noise
    model (variance S*x + O) of the data as captured. Left as it was, converters that read it
    (Adobe's, for instance) would denoise the result again as if nothing had been done, at the input's
    strength. A rewritten profile would be a guess: what the model leaves is little, spatially
    correlated and depends on the content and `strength`, which S*x + O per photosite cannot
    describe. Without it a converter falls back to its own defaults for the camera.

    NoiseReductionApplied (50935, IFD0: "0 none, 1 the ideal amount: apply no more by default") is
    set to `strength`. IFD0 is rewritten in place when it does not grow, else after the data at the
    end of the file, with the header pointing at the new copy; values stay where they are.
    """
    if raw_ifd != ifd0:
        entries, nxt = _ifd_entries(f, raw_ifd, bo, dst)
        kept = [e for e in entries if _entry_tag(e, bo) != _T_NOISE_PROFILE]
        if len(kept) < len(entries):  # shrink in place; the freed entries are zeroed
            f.seek(raw_ifd)
            f.write(struct.pack(bo + "H", len(kept)) + b"".join(kept) + struct.pack(bo + "I", nxt)
                    + bytes(12 * (len(entries) - len(kept))))
    entries, nxt = _ifd_entries(f, ifd0, bo, dst)
    f.seek(0, os.SEEK_END)
    pos = f.tell()
    pos += pos & 1
    num = int(round(min(max(strength, 0.0), 1.0) * 1000))
    f.seek(pos)
    f.write(struct.pack(bo + "II", num, 1000))  # the RATIONAL's value
    kept = [e for e in entries if _entry_tag(e, bo) not in (_T_NOISE_PROFILE, _T_NR_APPLIED)]
    kept.append(struct.pack(bo + "HHII", _T_NR_APPLIED, 5, 1, pos))
    kept.sort(key=lambda e: _entry_tag(e, bo))
    block = struct.pack(bo + "H", len(kept)) + b"".join(kept) + struct.pack(bo + "I", nxt)
    if len(kept) <= len(entries):
        f.seek(ifd0)
        f.write(block + bytes(12 * (len(entries) - len(kept))))
    else:
        new = pos + 8
        if new + len(block) >= 1 << 32:
            raise RawWriteError(dst, "the DNG would pass 4 GB")
        f.seek(new)
        f.write(block)
        f.seek(4)
        f.write(struct.pack(bo + "I", new))


def write_dng(src, dst, mosaic: np.ndarray, img: RawImage, *, strength: float = 1.0) -> None:
    """A copy of the DNG `src` with the raw data replaced by `mosaic` (normalized, as img.mosaic),
    denoised with `strength`: unless it is 0 the copy drops the input's NoiseProfile and says
    NoiseReductionApplied = strength (see `_mark_denoised`)."""
    import tifffile
    src, dst = Path(src), Path(dst)
    raw = open_raw(src)
    try:
        full = np.array(raw.raw_image, dtype=np.uint16)
        s = raw.sizes
    finally:
        raw.close()
    full[s.top_margin:s.top_margin + mosaic.shape[0], s.left_margin:s.left_margin + mosaic.shape[1]] = \
        img.to_raw_values(mosaic)
    try:
        with tifffile.TiffFile(src) as tif:
            page = cfa_page(tif)
            if page is None:
                raise RawWriteError(dst, "no Bayer raw image found in the DNG's IFDs")
            if _T_LINEARIZATION in page.tags or _T_LINEARIZATION in tif.pages[0].tags:
                raise RawWriteError(dst, "DNG with a linearization table: DNG output not supported; use --format tiff")
            if page.samplesperpixel != 1 or (page.imagelength, page.imagewidth) != full.shape:
                raise RawWriteError(dst, f"raw IFD {page.imagewidth}x{page.imagelength} does not match LibRaw's "
                                         f"{full.shape[1]}x{full.shape[0]} data; DNG output not supported, "
                                         f"use --format tiff")
            if tif.is_bigtiff:
                raise RawWriteError(dst, "a BigTIFF DNG: DNG output not supported; use --format tiff")
            bo = tif.byteorder
            ifd0_offset, raw_offset = tif.pages[0].offset, page.offset
            tiled = page.is_tiled
            if tiled:
                th, tw = page.tilelength, page.tilewidth
                segs = [(y, x, th, tw) for y in range(0, full.shape[0], th) for x in range(0, full.shape[1], tw)]
                off_tag, cnt_tag = page.tags[_T_TILE_OFF], page.tags[_T_TILE_BYTES]
            else:
                rows = page.rowsperstrip or full.shape[0]
                segs = [(y, 0, min(rows, full.shape[0] - y), full.shape[1]) for y in range(0, full.shape[0], rows)]
                off_tag, cnt_tag = page.tags[_T_STRIP_OFF], page.tags[_T_STRIP_BYTES]
            old_offsets, old_counts = list(page.dataoffsets), list(page.databytecounts)
            if not all(type(v) is int and v >= 0 for v in old_offsets + old_counts):
                raise RawWriteError(dst, f"the raw image's {off_tag.name} or {cnt_tag.name} are not byte offsets "
                                         "(damaged DNG); DNG output not supported, use --format tiff")
            if len(segs) != len(old_offsets) or len(old_counts) != len(old_offsets):
                raise RawWriteError(dst, "unexpected strip/tile layout in the DNG; use --format tiff")
            in_place = page.compression == 1 and page.bitspersample == 16 and not page.predictor > 1
            tags = {k: page.tags[k] for k in (_T_COMPRESSION, _T_BPS, _T_PREDICTOR) if k in page.tags}
            for code, name in ((_T_COMPRESSION, "Compression"), (_T_BPS, "BitsPerSample")):
                if not in_place and code not in tags:
                    raise RawWriteError(dst, f"the raw image has no readable {name} tag (damaged DNG); DNG output "
                                             "not supported, use --format tiff")
    except RawWriteError:
        raise
    except Exception as e:
        raise RawWriteError(dst, f"cannot parse the DNG's TIFF structure ({type(e).__name__})") from None
    dt = np.dtype(bo + "u2")

    def seg_bytes(y, x, h, w) -> bytes:
        if tiled:
            block = np.zeros((h, w), dt)
            part = full[y:y + h, x:x + w]
            block[:part.shape[0], :part.shape[1]] = part
            return block.tobytes()
        return full[y:y + h, x:x + w].astype(dt).tobytes()

    def put(f, tag, values) -> None:
        code = {3: "H", 4: "I", 16: "Q"}.get(tag.dtype)
        if code is None or tag.count != len(values):
            raise RawWriteError(dst, f"cannot rewrite DNG tag {tag.code}")
        if code == "H" and max(values) > 0xFFFF:
            raise RawWriteError(dst, f"DNG tag {tag.code} is 16-bit and cannot hold {max(values)}")
        f.seek(tag.valueoffset)
        f.write(struct.pack(f"{bo}{len(values)}{code}", *values))

    try:
        with atomic_path(dst) as tmp:
            shutil.copyfile(src, tmp)
            with open(tmp, "r+b") as f:
                if in_place:
                    for (y, x, h, w), off, cnt in zip(segs, old_offsets, old_counts):
                        data = seg_bytes(y, x, h, w)
                        if len(data) != cnt:
                            raise RawWriteError(dst, "strip/tile size does not match 16-bit samples; use --format tiff")
                        f.seek(off)
                        f.write(data)
                else:
                    f.seek(0, os.SEEK_END)
                    pos = f.tell()
                    offsets, counts = [], []
                    for y, x, h, w in segs:
                        pos += pos & 1
                        f.seek(pos)
                        data = seg_bytes(y, x, h, w)
                        f.write(data)
                        offsets.append(pos)
                        counts.append(len(data))
                        pos += len(data)
                    if pos >= 1 << 32:
                        raise RawWriteError(dst, "the uncompressed DNG would pass 4 GB")
                    put(f, off_tag, offsets)
                    put(f, cnt_tag, counts)
                    put(f, tags[_T_COMPRESSION], [1])
                    put(f, tags[_T_BPS], [16])
                    if _T_PREDICTOR in tags:
                        put(f, tags[_T_PREDICTOR], [1])
                if strength > 0:
                    _mark_denoised(f, bo, ifd0_offset, raw_offset, strength, dst)
    except OSError as e:
        if isinstance(e, RawWriteError):
            raise
        raise RawWriteError(dst, e.strerror or str(e)) from None
    except (ValueError, TypeError, KeyError, struct.error, OverflowError) as e:   # tags the checks above let by
        raise RawWriteError(dst, f"cannot rewrite the DNG's raw image ({type(e).__name__}: {e}); "
                                 "use --format tiff") from None


# ----------------------------------------------------------------------------------- one file
def output_name(src: Path, out_format: str | None) -> str:
    """A DNG gives a DNG, another raw file a TIFF; --format picks a developed format instead."""
    if out_format is None:
        return src.name if src.suffix.lower() == ".dng" else src.stem + ".tif"
    return src.stem + {"png": ".png", "tiff": ".tif", "jpeg": ".jpg", "webp": ".webp"}[out_format]


def process_raw(rd: RawDenoiser, src, dst, *, strength: float = 1.0, noise_level: float | None = None,
                out_format: str | None = None, quality: int | None = None,
                progress: ProgressFn | None = None, cancel: CancelFn | None = None) -> dict:
    """Denoise one raw file into `dst` (format from `out_format`, else DNG for a DNG in, else TIFF).
    Returns what was done: noise source, camera, seconds."""
    t0 = time.perf_counter()
    img = read_raw(src)
    mosaic = rd.denoise(img, strength=strength, noise_level=noise_level, progress=progress, cancel=cancel)
    if out_format is None and Path(src).suffix.lower() == ".dng":
        write_dng(src, dst, mosaic, img, strength=strength)
    else:
        write_developed(src, dst, mosaic, img, format=(out_format or "tiff").upper(), quality=quality)
    return {"noise": img.noise_source, "camera": img.meta.camera, "iso": img.meta.iso,
            "seconds": time.perf_counter() - t0}


__all__ = ["DEFAULT_RAW_MODEL", "RawDenoiser", "develop", "output_name", "process_raw", "raw_exif", "srgb_icc",
           "write_developed", "write_dng"]
