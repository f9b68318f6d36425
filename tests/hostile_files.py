"""Small valid photo and checkpoint files, the hostile variants found so far, and the mutators the
fuzz test applies to them. Everything is built in memory from a seed; nothing is downloaded."""
from __future__ import annotations

import functools
import io
import json
import random
import struct
import zlib

import numpy as np
import tifffile
import torch
from PIL import Image

RGB = np.random.default_rng(16).integers(0, 256, (24, 32, 3), dtype=np.uint8)


def png_chunk(ctype: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + ctype + body + struct.pack(">I", zlib.crc32(ctype + body))


def exif_blob() -> bytes:
    exif = Image.Exif()
    exif[271] = "Canon"
    exif[272] = "EOS R5"
    exif.get_ifd(0x8769)[36867] = "2024:05:06 07:08:09"
    exif.get_ifd(0x8825)[1] = "N"
    return exif.tobytes()


def icc_blob() -> bytes:
    from PIL import ImageCms
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


XMP = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF/></x:xmpmeta>'


def insert_after_ihdr(png: bytes, *chunks: bytes) -> bytes:
    return png[:33] + b"".join(chunks) + png[33:]


def valid_png() -> bytes:
    b = io.BytesIO()
    Image.fromarray(RGB).save(b, "PNG", icc_profile=icc_blob(), exif=exif_blob())
    png = b.getvalue()
    return insert_after_ihdr(png, png_chunk(b"tEXt", b"Title\0denoise"),
                             png_chunk(b"zTXt", b"Comment\0\0" + zlib.compress(b"a long comment " * 20)),
                             png_chunk(b"iTXt", b"XML:com.adobe.xmp\0\0\0\0\0" + XMP))


def valid_png16() -> bytes:
    import imagecodecs
    return bytes(imagecodecs.png_encode(RGB[:, :, 0].astype(np.uint16) * 257 + 3))


def valid_jpeg() -> bytes:
    b = io.BytesIO()
    Image.fromarray(RGB).save(b, "JPEG", quality=90, icc_profile=icc_blob(), exif=exif_blob(), xmp=XMP)
    return b.getvalue()


def valid_tiff() -> bytes:
    b = io.BytesIO()
    tifffile.imwrite(b, RGB, photometric="rgb", compression="lzw", iccprofile=icc_blob(), metadata=None,
                     resolution=(300.0, 300.0), resolutionunit="INCH", extratags=[(700, 1, len(XMP), XMP, True)])
    return _add_exif_ifd(b.getvalue())


def _add_exif_ifd(tif: bytes) -> bytes:
    """The TIFF with an Exif sub-IFD (DateTimeOriginal) hung off IFD0, as cameras write it."""
    import tempfile
    from pathlib import Path

    from denoise_core.imaging import imageio
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "x.tif"
        p.write_bytes(tif)
        _, entries = imageio._exif_ifd0(exif_blob())
        imageio._add_exif_to_tiff(p, "<", entries)
        return p.read_bytes()


def valid_webp() -> bytes:
    b = io.BytesIO()
    Image.fromarray(RGB).save(b, "WEBP", lossless=True, icc_profile=icc_blob(), exif=exif_blob(), xmp=XMP)
    return b.getvalue()


def valid_safetensors() -> bytes:
    from safetensors.torch import save

    from denoise_core.models import create_model
    torch.manual_seed(0)
    m = create_model("seed", width=4)
    meta = {"format": "denoise-cnn", "format_version": "1", "arch": "seed", "arch_args": json.dumps({"width": 4})}
    return save({k: v.contiguous() for k, v in m.state_dict().items()}, metadata=meta)


# ---------------------------------------------------------------------------------- known hostile cases

def jpeg_qtables_1_2() -> bytes:
    """A valid JPEG whose quantisation tables are numbered 1 and 2 instead of 0 and 1."""
    j = bytearray(valid_jpeg())
    i = 2
    while i < len(j):
        marker, length = j[i + 1], struct.unpack(">H", j[i + 2:i + 4])[0]
        if marker == 0xDB:
            k = i + 4
            while k < i + 2 + length:
                pq = j[k] >> 4
                j[k] += 1
                k += 1 + 64 * (1 + pq)
        elif marker == 0xC0:
            for c in range(j[i + 9]):
                j[i + 12 + 3 * c] += 1
        elif marker == 0xDA:
            break
        i += 2 + length
    return bytes(j)


def tiff_resolution_per_cm(value: int = 4294967295) -> bytes:
    b = io.BytesIO()
    tifffile.imwrite(b, RGB, photometric="rgb", resolution=((value, 1), (value, 1)),
                     resolutionunit="CENTIMETER", metadata=None)
    return b.getvalue()


def exif_pointer_loop(links: int, bo: str = "<") -> bytes:
    """EXIF whose IFD0 holds `links` Exif-IFD pointers, all back to IFD0 (cost N^4 when each is followed)."""
    head = b"II*\0" if bo == "<" else b"MM\0*"
    ifd = (struct.pack(bo + "H", links) + b"".join(struct.pack(bo + "HHII", 34665, 4, 1, 8) for _ in range(links))
           + b"\0\0\0\0")
    return b"Exif\0\0" + head + struct.pack(bo + "I", 8) + ifd


def jpeg_with_exif(exif: bytes) -> bytes:
    b = io.BytesIO()
    Image.fromarray(RGB).save(b, "JPEG", exif=exif)
    return b.getvalue()


def tiff_with_ifd_loop(links: int = 60) -> bytes:
    """A TIFF whose IFD0 Exif pointer leads to an IFD of `links` Interop pointers back to itself and IFD0."""
    tif = bytearray(valid_tiff())
    sub_at = len(tif) + (len(tif) & 1)
    tif += b"\0" * (sub_at - len(tif))
    tif += struct.pack("<H", links) + b"".join(struct.pack("<HHII", 40965, 4, 1, sub_at if i % 2 else 8)
                                              for i in range(links)) + b"\0\0\0\0"
    return _point_exif_ifd(bytes(tif), sub_at)


def _point_exif_ifd(tif: bytes, at: int) -> bytes:
    buf = bytearray(tif)
    ifd0 = struct.unpack_from("<I", buf, 4)[0]
    (n,) = struct.unpack_from("<H", buf, ifd0)
    for pos in range(ifd0 + 2, ifd0 + 2 + 12 * n, 12):
        if struct.unpack_from("<H", buf, pos)[0] == 34665:
            struct.pack_into("<I", buf, pos + 8, at)
            return bytes(buf)
    raise AssertionError("no Exif pointer in IFD0")


def png_bomb(ctype: bytes, size: int = 200 << 20) -> bytes:
    bomb = zlib.compress(b"\0" * size, 9)
    body = {b"iCCP": b"sRGB\0\0" + bomb, b"zTXt": b"Comment\0\0" + bomb,
            b"iTXt": b"Comment\0\x01\0\0\0" + bomb}[ctype]
    b = io.BytesIO()
    Image.fromarray(RGB).save(b, "PNG")
    return insert_after_ihdr(b.getvalue(), png_chunk(ctype, body))


def tiff_blob_tag_as_number(tag: int, value: int = 400_000_000) -> bytes:
    b = io.BytesIO()
    tifffile.imwrite(b, RGB, photometric="rgb", extratags=[(tag, 4, 1, value, True)], metadata=None)
    return b.getvalue()


def tiff_pages(n: int = 3, reduced: bool = False) -> bytes:
    b = io.BytesIO()
    with tifffile.TiffWriter(b) as t:
        t.write(RGB, photometric="rgb", metadata=None)
        for _ in range(n - 1):
            t.write(RGB[::2, ::2] if reduced else RGB, photometric="rgb", metadata=None,
                    subfiletype=1 if reduced else 0)
    return b.getvalue()


def jpeg_with_mpf_preview(mp_type: int | None = None) -> bytes:
    """A camera-style JPEG: the photo plus an MPF-indexed preview; with `mp_type`, the second
    image's MP type code rewritten (0x020002: a stereo disparity frame)."""
    b = io.BytesIO()
    Image.fromarray(RGB).save(b, "MPO", save_all=True, append_images=[Image.fromarray(RGB[::2, ::2])],
                              exif=exif_blob())
    data = bytearray(b.getvalue())
    if mp_type is not None:
        mpf = data.index(b"MPF\0") + 4
        bo = "<" if data[mpf:mpf + 2] == b"II" else ">"
        ifd = mpf + struct.unpack_from(bo + "I", data, mpf + 4)[0]
        (n,) = struct.unpack_from(bo + "H", data, ifd)
        for pos in range(ifd + 2, ifd + 2 + 12 * n, 12):
            if struct.unpack_from(bo + "H", data, pos)[0] == 0xB002:
                entries = mpf + struct.unpack_from(bo + "I", data, pos + 8)[0]
                attr = struct.unpack_from(bo + "I", data, entries + 16)[0]
                struct.pack_into(bo + "I", data, entries + 16, (attr & 0xFF000000) | mp_type)
    return bytes(data)


def png_with_extra_image_data() -> bytes:
    """Valid pixels followed by more compressed rows than the header holds: libpng warns."""
    raw = b"".join(b"\0" + RGB[y].tobytes() for y in range(RGB.shape[0])) + b"\0" * 600
    b = io.BytesIO()
    Image.fromarray(RGB).save(b, "PNG")
    png = b.getvalue()
    return png[:33] + png_chunk(b"IDAT", zlib.compress(raw)) + png_chunk(b"IEND", b"")


def safetensors_raw(header: bytes, data: bytes = b"") -> bytes:
    return struct.pack("<Q", len(header)) + header + data


def safetensors_with_args(arch_args: dict, arch: str = "seed") -> bytes:
    from safetensors.torch import save

    from denoise_core.models import create_model
    meta = {"format": "denoise-cnn", "format_version": "1", "arch": arch, "arch_args": json.dumps(arch_args)}
    return save({k: v.contiguous() for k, v in create_model(arch).state_dict().items()}, metadata=meta)


# --------------------------------------------------------------------- issue 21's cases (second round)

def jpeg_frame_size(width: int, height: int) -> bytes:
    """A 1x1 JPEG whose frame header (SOF0) claims width x height: the scan holds one block."""
    b = io.BytesIO()
    Image.fromarray(RGB[:1, :1]).save(b, "JPEG", quality=90)
    j = bytearray(b.getvalue())
    i = 2
    while j[i + 1] != 0xC0:
        i += 2 + struct.unpack_from(">H", j, i + 2)[0]
    struct.pack_into(">HH", j, i + 5, height, width)
    return bytes(j)


def png_idat_size(width: int, height: int) -> bytes:
    """A 1x1 gray PNG whose IHDR claims width x height: a few bytes of pixel data for all of it."""
    b = io.BytesIO()
    Image.fromarray(RGB[:1, :1, 0]).save(b, "PNG")
    png = b.getvalue()
    ihdr = struct.pack(">II", width, height) + png[24:29]
    return png[:8] + png_chunk(b"IHDR", ihdr) + png[33:]


def jpeg_12bit() -> bytes:
    import imagecodecs
    return bytes(imagecodecs.jpeg8_encode(RGB.astype(np.uint16) * 16, bitspersample=12))


def png_two_ihdr() -> bytes:
    png = valid_png()
    return png[:33] + png[8:33] + png[33:]


def tiff_float(dtype: type = np.float32, nan_at: tuple | None = None) -> bytes:
    px = (RGB / 255).astype(dtype)
    if nan_at is not None:
        px[nan_at] = np.nan
    b = io.BytesIO()
    tifffile.imwrite(b, px, photometric="rgb", metadata=None)
    return b.getvalue()


def tiff_full_image_in_subifd() -> bytes:
    """IFD0 a small image (not flagged as a preview), the full-size image in its SubIFD."""
    b = io.BytesIO()
    with tifffile.TiffWriter(b) as t:
        t.write(RGB[::4, ::4], photometric="rgb", metadata=None, subifds=1)
        t.write(RGB, photometric="rgb", metadata=None)
    return b.getvalue()


MOSAIC = (np.random.default_rng(21).random((32, 48)) * 3000 + 512).astype(np.uint16)


def valid_dng(model: str = "NIKON D750") -> bytes:
    """A small Bayer DNG (RGGB, uncompressed 16-bit strip) of a camera darktable profiles."""
    import tempfile
    from pathlib import Path

    from denoise_core.raw.rawfile import write_bayer_dng
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "x.dng"
        write_bayer_dng(p, MOSAIC, make="NIKON CORPORATION", model=model, iso=3200, black=512, white=4095)
        return p.read_bytes()


def dng_with_cfa(codes: tuple[int, int, int, int]) -> bytes:
    """valid_dng() with its CFAPattern rewritten (TIFF/EP codes: 0 R, 1 G, 2 B, 3 C, 4 M, 5 Y)."""
    b = bytearray(valid_dng())
    bo, entries = _ifd0_entries(b)
    pos = dict(entries)[33422]
    b[pos + 8:pos + 12] = bytes(codes)
    return bytes(b)


def dng_tag_rewrite(tag: int, *, typ: int | None = None, count: int | None = None) -> bytes:
    """valid_dng() with one IFD0 entry's type or count rewritten (as the fuzzer found them)."""
    b = bytearray(valid_dng())
    bo, entries = _ifd0_entries(b)
    pos = dict(entries)[tag]
    if typ is not None:
        struct.pack_into(bo + "H", b, pos + 2, typ)
    if count is not None:
        struct.pack_into(bo + "I", b, pos + 4, count)
    return bytes(b)


def dng_ifd_loop() -> bytes:
    """valid_dng() whose IFD0 names itself as the next IFD (tifffile logs a circular reference)."""
    b = bytearray(valid_dng())
    bo, entries = _ifd0_entries(b)
    at = struct.unpack_from(bo + "I", b, 4)[0]
    struct.pack_into(bo + "I", b, at + 2 + 12 * len(entries), at)
    return bytes(b)


def safetensors_header_padded(length: int) -> bytes:
    """valid_safetensors() with its JSON header padded with spaces (as safetensors pads) to `length`."""
    data = valid_safetensors()
    (n,) = struct.unpack_from("<Q", data)
    header = data[8:8 + n].rstrip(b" ")
    assert len(header) <= length
    return struct.pack("<Q", length) + header.ljust(length, b" ") + data[8 + n:]


def safetensors_dtype(value) -> bytes:
    """valid_safetensors() with the first tensor's dtype replaced by `value` (any JSON)."""
    data = valid_safetensors()
    (n,) = struct.unpack_from("<Q", data)
    header = json.loads(data[8:8 + n])
    header[min(k for k in header if k != "__metadata__")]["dtype"] = value
    return safetensors_raw(json.dumps(header).encode(), data[8 + n:])


def safetensors_scaled(factor: float) -> bytes:
    """A valid seed checkpoint whose weights are all multiplied by `factor` (finite, absurd)."""
    from safetensors.torch import save

    from denoise_core.models import create_model
    torch.manual_seed(0)
    m = create_model("seed", width=4)
    meta = {"format": "denoise-cnn", "format_version": "1", "arch": "seed", "arch_args": json.dumps({"width": 4})}
    return save({k: (v * factor).contiguous() for k, v in m.state_dict().items()}, metadata=meta)


# -------------------------------------------------------------------------------------- mutators

def _flip(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        i = rng.randrange(len(b))
        b[i] ^= 1 << rng.randrange(8)
    return bytes(b)


def _truncate(rng: random.Random, data: bytes) -> bytes:
    return data[:rng.randrange(1, len(data))]


def _overwrite(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    i = rng.randrange(len(b))
    fill = rng.choice([b"\xff", b"\0", bytes([rng.randrange(256)])])
    b[i:i + rng.randint(1, 16)] = fill * rng.randint(1, 16)
    return bytes(b)


_BIG = (0, 1, 0x7F, 0xFF, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 0x10000, 8)


def _png_chunk_rewrite(rng: random.Random, data: bytes) -> bytes:
    """Rewrite one chunk's length, or its body with a valid CRC (so the damage reaches the parsers)."""
    spans, pos = [], 8
    while pos + 12 <= len(data):
        (n,) = struct.unpack_from(">I", data, pos)
        spans.append((pos, n))
        pos += 12 + n
    pos, n = rng.choice(spans)
    b = bytearray(data)
    if rng.random() < 0.4:
        struct.pack_into(">I", b, pos, rng.choice(_BIG))
        return bytes(b)
    ctype = bytes(b[pos + 4:pos + 8])
    body = bytearray(b[pos + 8:pos + 8 + n])
    if body:
        for _ in range(rng.randint(1, 4)):
            body[rng.randrange(len(body))] = rng.randrange(256)
    return bytes(b[:pos]) + png_chunk(ctype, bytes(body)) + bytes(b[pos + 12 + n:])


def _tiff_tag_rewrite(rng: random.Random, data: bytes) -> bytes:
    """Rewrite one IFD entry's type, count or value/offset, or point an IFD link back at IFD0."""
    b = bytearray(data)
    bo = "<" if b[:2] == b"II" else ">"
    ifds, todo = [], [struct.unpack_from(bo + "I", b, 4)[0]]
    while todo and len(ifds) < 8:
        at = todo.pop()
        if at in ifds or at + 2 > len(b):
            continue
        ifds.append(at)
        (n,) = struct.unpack_from(bo + "H", b, at)
        for pos in range(at + 2, min(at + 2 + 12 * n, len(b) - 12), 12):
            if struct.unpack_from(bo + "H", b, pos)[0] in (34665, 34853, 40965):
                todo.append(struct.unpack_from(bo + "I", b, pos + 8)[0])
    at = rng.choice(ifds)
    (n,) = struct.unpack_from(bo + "H", b, at)
    if n == 0 or at + 2 + 12 * n + 4 > len(b):
        return _flip(rng, data)
    what = rng.randrange(4)
    if what == 3:                                   # next-IFD link (or a sub-IFD pointer) loops back
        struct.pack_into(bo + "I", b, at + 2 + 12 * n, rng.choice(ifds))
        return bytes(b)
    pos = at + 2 + 12 * rng.randrange(n)
    if what == 0:
        struct.pack_into(bo + "H", b, pos + 2, rng.choice((1, 2, 3, 4, 5, 7, 11, 12, 13, 16, 0, 99)))
    elif what == 1:
        struct.pack_into(bo + "I", b, pos + 4, rng.choice(_BIG))
    else:
        struct.pack_into(bo + "I", b, pos + 8, rng.choice(_BIG + tuple(ifds)))
    return bytes(b)


def _jpeg_segment_rewrite(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    segs, i = [], 2
    while i + 4 <= len(b) and b[i] == 0xFF and b[i + 1] != 0xDA:
        segs.append(i)
        i += 2 + struct.unpack_from(">H", b, i + 2)[0]
    if not segs:
        return _flip(rng, data)
    at = rng.choice(segs)
    if rng.random() < 0.5:
        struct.pack_into(">H", b, at + 2, rng.choice((0, 1, 2, 3, 0x7FFF, 0xFFFF)))
    else:   # damage inside the segment (EXIF/MPF/ICC bodies: their own offsets and counts)
        length = struct.unpack_from(">H", b, at + 2)[0]
        for _ in range(rng.randint(1, 4)):
            k = at + 4 + rng.randrange(max(1, length - 2))
            if k + 4 <= len(b):
                struct.pack_into(">I", b, k, rng.choice(_BIG))
    return bytes(b)


def _riff_chunk_rewrite(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    spans, pos = [4], 12
    while pos + 8 <= len(b):
        spans.append(pos + 4)
        pos += 8 + struct.unpack_from("<I", b, pos + 4)[0] + (struct.unpack_from("<I", b, pos + 4)[0] & 1)
    struct.pack_into("<I", b, rng.choice(spans), rng.choice(_BIG))
    return bytes(b)


def _safetensors_header_rewrite(rng: random.Random, data: bytes) -> bytes:
    (n,) = struct.unpack_from("<Q", data)
    header = json.loads(data[8:8 + n])
    name = rng.choice(sorted(header))
    entry = header[name]
    if name == "__metadata__":
        key = rng.choice(sorted(entry))
        entry[key] = rng.choice(['{"width": 100000}', '{"width": -1}', "[]", "null", '{"in_channels": 1}',
                                 '{"width": 4, "x": 1}', "seed", "unet", "2", "{", '{"width": 4.5}'])
    else:
        field = rng.choice(("dtype", "shape", "data_offsets"))
        entry[field] = rng.choice({"dtype": ["I64", "F64", "BOOL", 3, None],
                                   "shape": [[], [1 << 40], [-1], [4, 4, 3, 3], "x"],
                                   "data_offsets": [[0, 1 << 40], [8, 0], [-8, 8], [0], None]}[field])
    raw = json.dumps(header).encode()
    if rng.random() < 0.3:
        return struct.pack("<Q", rng.choice((0, 1, len(raw) + 7, 1 << 62))) + raw + data[8 + n:]
    return struct.pack("<Q", len(raw)) + raw + data[8 + n:]


def _ifd0_entries(b: bytes | bytearray):
    bo = "<" if b[:2] == b"II" else ">"
    at = struct.unpack_from(bo + "I", b, 4)[0]
    (n,) = struct.unpack_from(bo + "H", b, at)
    return bo, [(struct.unpack_from(bo + "H", b, pos)[0], pos) for pos in range(at + 2, at + 2 + 12 * n, 12)]


def _tiff_blob_as_number(rng: random.Random, data: bytes) -> bytes:
    """The ICC or XMP tag rewritten as one LONG (the value once became that many zero bytes)."""
    b = bytearray(data)
    bo, entries = _ifd0_entries(b)
    pos = rng.choice([pos for tag, pos in entries if tag in (700, 34675)])
    struct.pack_into(bo + "HII", b, pos + 2, 4, 1, rng.choice((17, 1 << 20, 64 << 20)))
    return bytes(b)


def _tiff_resolution_rewrite(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    bo, entries = _ifd0_entries(b)
    for tag, pos in entries:
        if tag in (282, 283):
            off = struct.unpack_from(bo + "I", b, pos + 8)[0]
            struct.pack_into(bo + "II", b, off, rng.choice(_BIG), rng.choice(_BIG))
        elif tag == 296:
            struct.pack_into(bo + "H", b, pos + 8, rng.choice((1, 2, 3)))
    return bytes(b)


def _jpeg_exif_loop(rng: random.Random, data: bytes) -> bytes:
    """The APP1 EXIF segment replaced by IFD pointers that loop."""
    i = 2
    while data[i + 1] != 0xE1:
        i += 2 + struct.unpack_from(">H", data, i + 2)[0]
    end = i + 2 + struct.unpack_from(">H", data, i + 2)[0]
    blob = exif_pointer_loop(rng.choice((2, 40, 300)), rng.choice("<>"))
    return data[:i] + b"\xff\xe1" + struct.pack(">H", len(blob) + 2) + blob + data[end:]


def _jpeg_qtable_ids(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    i = 2
    while b[i + 1] != 0xDB:
        i += 2 + struct.unpack_from(">H", b, i + 2)[0]
    b[i + 4] = (b[i + 4] & 0xF0) | rng.randrange(4)
    return bytes(b)


@functools.cache
def _zeros_deflated(n: int) -> bytes:
    return zlib.compress(b"\0" * n, 9)


def _png_metadata_bomb(rng: random.Random, data: bytes) -> bytes:
    """A chunk of compressed zeros (iCCP, zTXt or compressed iTXt) inflating past the cap."""
    bomb = _zeros_deflated(rng.choice((1 << 10, 24 << 20)))
    ctype = rng.choice((b"iCCP", b"zTXt", b"iTXt"))
    body = {b"iCCP": b"p\0\0", b"zTXt": b"k\0\0", b"iTXt": b"k\0\x01\0\0\0"}[ctype] + bomb
    return insert_after_ihdr(data, png_chunk(ctype, body))


def _dng_cfa_rewrite(rng: random.Random, data: bytes) -> bytes:
    """CFAPattern rewritten to random colour codes (cyan, magenta, yellow, white, or none known)."""
    b = bytearray(data)
    bo, entries = _ifd0_entries(b)
    pos = dict(entries).get(33422)
    if pos is None:
        return _flip(rng, data)
    b[pos + 8:pos + 12] = bytes(rng.choice((0, 1, 2, 3, 4, 5, 6, 9)) for _ in range(4))
    return bytes(b)


GENERIC = (_flip, _truncate, _overwrite)
STRUCTURED = {"png": (_png_chunk_rewrite, _png_chunk_rewrite, _png_metadata_bomb),
              "tif": (_tiff_tag_rewrite, _tiff_tag_rewrite, _tiff_blob_as_number, _tiff_resolution_rewrite),
              "jpg": (_jpeg_segment_rewrite, _jpeg_segment_rewrite, _jpeg_exif_loop, _jpeg_qtable_ids),
              "webp": (_riff_chunk_rewrite,), "safetensors": (_safetensors_header_rewrite,),
              "dng": (_tiff_tag_rewrite, _tiff_tag_rewrite, _tiff_tag_rewrite, _dng_cfa_rewrite)}


def mutate(rng: random.Random, kind: str, data: bytes) -> bytes:
    for _ in range(rng.choice((1, 1, 1, 2))):
        op = rng.choice(STRUCTURED[kind]) if rng.random() < 0.5 else rng.choice(GENERIC)
        try:
            data = op(rng, data)
        except (IndexError, ValueError, KeyError, TypeError, AttributeError, struct.error):
            data = _flip(rng, data)     # an earlier mutation broke the structure this one walks
    return data


# ------------------------------------------------------------------------------ worker requests

JOB = {"version": 1, "width": 4, "height": 3, "channels": 3, "input": "in.raw", "output": "out.raw",
       "model": "seed", "device": "cpu", "tile": 64, "strength": 0.5, "transfer": "srgb", "dtype": "f32"}
# what a field may become; never "parent_pipe" (the worker would then watch this process's stdin)
_REQUEST_VALUES = (None, True, -1, 0, 1, 3, 2 ** 63, 1.5, float("nan"), float("inf"), "", "x", "../x",
                   "/etc/hostname", [], [0, 0, 2, 2], [1, 2, 3], {}, "fifo.raw", "sub", "link_out.raw",
                   "sub/../in.raw", "in.raw", "out.raw", "job.json", "u8", "f16", "linear", "seed", "info")
_OPTIONAL_KEYS = ("crop", "mask", "rgba8", "rgba8_before", "noise_level", "swap_rb", "precision", "extra")


def job_folder(folder, outside) -> None:
    """A job's folder as the client makes it (job.json, in.raw), plus what a hostile job may point at:
    a FIFO, a subfolder, a mask and a link to a file outside."""
    import os
    folder.mkdir()
    (folder / "in.raw").write_bytes(np.linspace(0, 1, 36, dtype="<f4").tobytes())
    (folder / "mask.raw").write_bytes(bytes(range(0, 240, 20)))
    (folder / "sub").mkdir()
    os.mkfifo(folder / "fifo.raw")
    (folder / "link_out.raw").symlink_to(outside / "secret.raw")


def _damage(rng: random.Random, obj: dict) -> dict:
    obj = dict(obj)
    for _ in range(rng.randint(1, 3)):
        key = rng.choice(sorted(obj) + list(_OPTIONAL_KEYS))
        if rng.random() < 0.2:
            obj.pop(key, None)
        else:
            obj[key] = rng.choice(_REQUEST_VALUES)
    return obj


def worker_request(rng: random.Random, i: int, folder, outside) -> bytes:
    """Request line i for a persistent worker: an info or job request (its job file written into
    `folder`, made by job_folder) with fields damaged, or its bytes; most carry "id": i."""
    if rng.random() < 0.25:
        req = {"cmd": "info", "id": i, "model": "seed", "device": "cpu"}
        if rng.random() < 0.8:
            req = _damage(rng, req)
    else:
        job = _damage(rng, JOB) if rng.random() < 0.85 else dict(JOB)
        (folder / "job.json").write_text(json.dumps(job))
        req = {"cmd": "job", "id": i, "job": str(folder / "job.json")}
        if rng.random() < 0.15:
            req["job"] = rng.choice((None, 5, "", str(folder), str(folder / "fifo.raw"), str(folder / "nope.json"),
                                     str(folder / "in.raw")))
    if req.get("cmd") == "quit":
        req["cmd"] = "info"
    line = json.dumps(req).encode()
    what = rng.random()
    if what < 0.1:
        line = _truncate(rng, line)
    elif what < 0.2:
        line = _flip(rng, line).replace(b"\n", b" ")
    elif what < 0.25:
        line = rng.choice((b"[1, 2, 3]", b"null", b'"job"', b"7", b"{}", b"\xff\xfe", b"[" * 100_000))
    return line + b"\n"
