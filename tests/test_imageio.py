from typing import Any
import functools
import os
import warnings

import imagecodecs
import numpy as np
import pytest
import tifffile
from PIL import Image, ImageCms, JpegImagePlugin, TiffImagePlugin

from denoise_core.imaging import imageio
from denoise_core.imaging.imageio import ImageReadError, ImageWriteError, Photo, read_image, write_image

RNG = np.random.default_rng(1234)
H, W = 24, 32


@functools.cache
def _icc() -> bytes:
    # One profile per session: lcms stamps the creation time, so two builds a second apart differ.
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def _exif() -> bytes:
    exif = Image.Exif()
    exif[271] = "Canon"
    exif[272] = "EOS R5"
    exif.get_ifd(0x8769)[36867] = "2024:05:06 07:08:09"
    return exif.tobytes()


def _samples(dtype, shape) -> np.ndarray:
    if dtype == np.float32:
        return RNG.random(shape, dtype=np.float32)
    arr = RNG.integers(0, np.iinfo(dtype).max + 1, shape).astype(dtype)
    if dtype == np.uint16:
        arr[arr % 257 == 0] += 1          # 8-bit rounding anywhere would show
    return arr


def _photo(dtype: Any = np.uint16, channels=3, alpha=False, **kw) -> Photo:
    return Photo(_samples(dtype, (H, W, channels)), _samples(dtype, (H, W)) if alpha else None, **kw)


def _exif_tags(blob: bytes | None) -> tuple[dict, dict]:
    assert blob is not None, "no EXIF"
    exif = Image.Exif()
    exif.load(blob)
    return dict(exif), dict(exif.get_ifd(0x8769))


def _assert_rejected(path, *reason_parts):
    with pytest.raises(ImageReadError) as ei:
        read_image(path)
    msg = str(ei.value)
    assert msg.startswith(f"{path}: ") and ei.value.path == str(path)
    for part in reason_parts:
        assert part in ei.value.reason, msg
    return ei.value


def read_image_as(path, ext):
    target = path.with_suffix(ext)
    target.write_bytes(path.read_bytes())
    return read_image(target)


# ------------------------------------------------------------------------------------- round trips

@pytest.mark.parametrize("ext", [".png", ".tif"])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("channels,alpha", [(3, False), (3, True), (1, False), (1, True)])
def test_lossless_round_trip_is_bit_exact(tmp_path, ext, dtype, channels, alpha):
    photo = _photo(dtype, channels, alpha)
    path = tmp_path / f"img{ext}"
    write_image(path, photo)
    back = read_image(path)
    assert back.format == imageio.format_for_path(path)
    assert back.pixels.dtype == dtype and back.pixels.shape == (H, W, channels)
    assert back.bit_depth == np.dtype(dtype).itemsize * 8
    np.testing.assert_array_equal(back.pixels, photo.pixels)
    if alpha:
        assert back.alpha.dtype == dtype
        np.testing.assert_array_equal(back.alpha, photo.alpha)
    else:
        assert back.alpha is None


def test_tiff_float32_exact(tmp_path):
    photo = _photo(np.float32, 3, alpha=True)
    write_image(tmp_path / "f.tiff", photo)
    back = read_image(tmp_path / "f.tiff")
    assert back.pixels.dtype == np.float32 and back.bit_depth == 32
    np.testing.assert_array_equal(back.pixels, photo.pixels)
    np.testing.assert_array_equal(back.alpha, photo.alpha)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_png_metadata_preserved(tmp_path, dtype):
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/">rating 5</x:xmpmeta>'
    info = {"dpi": (300.0, 240.0), "text": {"Title": "Harbour", "Author": "Zoë Ł"}, "xmp": xmp,
            "png_chunks": [(b"gAMA", (45455).to_bytes(4, "big"))]}
    photo = _photo(dtype, 3, alpha=True, icc_profile=_icc(), exif=_exif(), info=info)
    write_image(tmp_path / "m.png", photo)
    back = read_image(tmp_path / "m.png")
    assert back.icc_profile == photo.icc_profile
    assert back.exif == photo.exif
    assert back.info["text"] == info["text"] and back.info["xmp"] == xmp
    assert back.info["png_chunks"] == info["png_chunks"]
    assert back.info["dpi"] == pytest.approx(info["dpi"], abs=0.02)
    np.testing.assert_array_equal(back.pixels, photo.pixels)
    with Image.open(tmp_path / "m.png") as im:       # what Pillow reads from our chunks
        im.load()
        assert im.info["icc_profile"] == photo.icc_profile and im.info["exif"] == photo.exif
        assert im.text["Author"] == "Zoë Ł"


def test_png16_from_imagecodecs_and_pillow_reads_exact(tmp_path):
    rgb16 = _samples(np.uint16, (H, W, 3))
    (tmp_path / "a.png").write_bytes(imagecodecs.png_encode(rgb16))
    np.testing.assert_array_equal(read_image(tmp_path / "a.png").pixels, rgb16)
    gray16 = _samples(np.uint16, (H, W))
    Image.fromarray(gray16).save(tmp_path / "g.png")            # Pillow "I;16"
    back = read_image(tmp_path / "g.png")
    assert back.pixels.dtype == np.uint16
    np.testing.assert_array_equal(back.pixels[:, :, 0], gray16)
    la = _samples(np.uint8, (H, W, 2))
    Image.fromarray(la).save(tmp_path / "la.png")
    back = read_image(tmp_path / "la.png")
    np.testing.assert_array_equal(back.pixels[:, :, 0], la[:, :, 0])
    np.testing.assert_array_equal(back.alpha, la[:, :, 1])


def test_png_writer_interop(tmp_path):
    rgba16 = _photo(np.uint16, 3, alpha=True)
    write_image(tmp_path / "rgba.png", rgba16)
    assert rgba16.alpha is not None
    full = np.dstack([rgba16.pixels, rgba16.alpha])
    np.testing.assert_array_equal(imagecodecs.png_decode((tmp_path / "rgba.png").read_bytes()), full)
    with Image.open(tmp_path / "rgba.png") as im:                # Pillow 13 keeps only the high byte
        np.testing.assert_array_equal(np.asarray(im), (full >> 8).astype(np.uint8))
    gray16 = _photo(np.uint16, 1)
    write_image(tmp_path / "g.png", gray16)
    with Image.open(tmp_path / "g.png") as im:
        assert im.mode == "I;16"
        np.testing.assert_array_equal(np.asarray(im), gray16.pixels[:, :, 0])
    rgba8 = _photo(np.uint8, 3, alpha=True)
    write_image(tmp_path / "rgba8.png", rgba8)
    with Image.open(tmp_path / "rgba8.png") as im:
        assert rgba8.alpha is not None
        np.testing.assert_array_equal(np.asarray(im), np.dstack([rgba8.pixels, rgba8.alpha]))


def test_png_tRNS_colour_key_is_kept_not_turned_into_alpha(tmp_path):
    rgb = _samples(np.uint8, (H, W, 3))
    Image.fromarray(rgb).save(tmp_path / "t.png", transparency=(1, 2, 3))
    photo = read_image(tmp_path / "t.png")
    assert photo.alpha is None and photo.info["transparency"] == (1, 2, 3)
    np.testing.assert_array_equal(photo.pixels, rgb)
    write_image(tmp_path / "t2.png", photo)
    with Image.open(tmp_path / "t2.png") as im:
        assert im.info["transparency"] == (1, 2, 3)


def test_tiff_keeps_icc_exif_xmp_and_dpi(tmp_path):
    photo = _photo(np.uint16, 3, icc_profile=_icc(), exif=_exif(), info={"dpi": (300.0, 300.0), "xmp": b"<xmp/>"})
    write_image(tmp_path / "e.tif", photo)
    with Image.open(tmp_path / "e.tif") as im:                   # an independent EXIF reader
        exif = im.getexif()
        assert exif[271] == "Canon" and exif[272] == "EOS R5"
        assert exif.get_ifd(0x8769)[36867] == "2024:05:06 07:08:09"
    with tifffile.TiffFile(tmp_path / "e.tif") as tif:
        np.testing.assert_array_equal(tif.pages[0].asarray(), photo.pixels)
    back = read_image(tmp_path / "e.tif")
    assert back.icc_profile == photo.icc_profile and back.info["xmp"] == b"<xmp/>"
    assert back.info["dpi"] == pytest.approx((300.0, 300.0))
    ifd0, exif_ifd = _exif_tags(back.exif)
    assert ifd0[271] == "Canon" and ifd0[272] == "EOS R5" and exif_ifd[36867] == "2024:05:06 07:08:09"
    write_image(tmp_path / "again.jpg", Photo(back.pixels, None, "TIFF", back.icc_profile, back.exif))
    ifd0, exif_ifd = _exif_tags(read_image(tmp_path / "again.jpg").exif)   # TIFF EXIF -> JPEG EXIF
    assert ifd0[272] == "EOS R5" and exif_ifd[36867] == "2024:05:06 07:08:09"


@pytest.mark.parametrize("endian", [">", "<"])
def test_full_exif_survives_tiff(tmp_path, endian):
    R = TiffImagePlugin.IFDRational
    exif = Image.Exif()
    exif.endian = endian
    exif.update({271: "Nikon", 272: "Z8", 274: 6, 305: "fw 1.0", 282: R(300, 1)})
    exif.get_ifd(0x8769).update({33434: R(1, 250), 33437: R(28, 10), 34855: 800, 36867: "2024:01:01 10:00:00",
                                 37500: b"Nikon\0" + bytes(range(200)), 37510: b"ASCII\0\0\0hello"})
    exif.get_ifd(0x8825).update({1: "N", 2: (R(51, 1), R(30, 1), R(1234, 100))})
    blob = exif.tobytes()
    write_image(tmp_path / "src.jpg", Photo(_samples(np.uint8, (H, W, 3)), exif=blob))
    photo = read_image(tmp_path / "src.jpg")
    assert photo.exif == blob
    write_image(tmp_path / "out.tif", photo)
    assert (tmp_path / "out.tif").read_bytes()[:2] == (b"MM" if endian == ">" else b"II")
    with Image.open(tmp_path / "src.jpg") as a, Image.open(tmp_path / "out.tif") as b:
        ea, eb = a.getexif(), b.getexif()
        assert all(eb[t] == ea[t] for t in (271, 272, 274, 305))
        assert eb.get_ifd(0x8769) == ea.get_ifd(0x8769) and eb.get_ifd(0x8825) == ea.get_ifd(0x8825)
    ifd0, exif_ifd = _exif_tags(read_image(tmp_path / "out.tif").exif)
    assert ifd0[272] == "Z8" and 282 not in ifd0 and exif_ifd == dict(exif.get_ifd(0x8769))


def test_compressed_tiff_is_read(tmp_path):
    rgb = _samples(np.uint16, (H, W, 3))
    for comp in ("lzw", "zlib"):
        tifffile.imwrite(tmp_path / f"{comp}.tif", rgb, photometric="rgb", compression=comp, predictor=True)
        back = read_image(tmp_path / f"{comp}.tif")
        np.testing.assert_array_equal(back.pixels, rgb)
        write_image(tmp_path / f"{comp}-out.tif", back)
        with tifffile.TiffFile(tmp_path / f"{comp}-out.tif") as tif:
            assert tif.pages[0].compression == back.info["tiff_compression"]
    gray16 = _samples(np.uint16, (H, W))
    Image.fromarray(gray16).save(tmp_path / "pil.tif")          # Pillow "I;16" TIFF
    np.testing.assert_array_equal(read_image(tmp_path / "pil.tif").pixels[:, :, 0], gray16)


def test_jpeg_keeps_icc_exif_and_subsampling(tmp_path):
    rgb = _samples(np.uint8, (H, W, 3))
    Image.fromarray(rgb).save(tmp_path / "s.jpg", quality=90, subsampling=0, icc_profile=_icc(), exif=_exif(),
                              comment=b"shot on film")
    photo = read_image(tmp_path / "s.jpg")
    assert photo.format == "JPEG" and photo.pixels.dtype == np.uint8
    assert photo.info["jpeg_subsampling"] == 0 and abs(photo.info["jpeg_quality"] - 90) <= 1
    write_image(tmp_path / "out.jpg", photo)
    back = read_image(tmp_path / "out.jpg")
    assert back.icc_profile == _icc() and back.exif == _exif() and back.info["comment"] == b"shot on film"
    assert back.info["jpeg_subsampling"] == 0 and abs(back.info["jpeg_quality"] - 95) <= 1
    write_image(tmp_path / "q.jpg", photo, quality=70)
    assert abs(read_image(tmp_path / "q.jpg").info["jpeg_quality"] - 70) <= 1
    gray = Photo(_samples(np.uint8, (H, W, 1)), format="JPEG")
    write_image(tmp_path / "gray.jpg", gray)
    assert read_image(tmp_path / "gray.jpg").pixels.shape == (H, W, 1)


def test_jpeg_output_of_exif_too_large_for_jpeg_is_written_without_it_and_warns(tmp_path):
    """A PNG may carry 200 kB of EXIF; one JPEG APP1 segment holds 65,533 bytes. The denoised
    result is written without the EXIF and a warning names the file, instead of failing."""
    exif = Image.Exif()
    exif[0x010F] = "TestMaker"
    exif[0x9286] = b"ASCII\0\0\0" + b"x" * 200_000  # a UserComment that big
    big = exif.tobytes()
    assert len(big) > 200_000
    rgb = _samples(np.uint8, (H, W, 3))
    Image.fromarray(rgb).save(tmp_path / "a.png", exif=big, icc_profile=_icc())
    photo = read_image(tmp_path / "a.png")
    assert photo.exif is not None and len(photo.exif) > 200_000
    with pytest.warns(imageio.ImageWarning, match=r"out\.jpg: EXIF not copied to the output \(JPEG holds at "
                                                   r"most 65,533 bytes of it, this photo has 200,"):
        write_image(tmp_path / "out.jpg", photo)
    back = read_image(tmp_path / "out.jpg")
    assert back.exif is None and back.icc_profile == _icc() and back.pixels.shape == (H, W, 3)
    # EXIF that fits is kept, with no warning; the other formats keep the large one
    small = Image.Exif()
    small[0x010F] = "TestMaker"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        write_image(tmp_path / "fits.jpg", Photo(rgb, exif=b"Exif\0\0" + small.tobytes()))
        write_image(tmp_path / "out.png", photo)
    assert read_image(tmp_path / "fits.jpg").exif == b"Exif\0\0" + small.tobytes()
    assert read_image(tmp_path / "out.png").exif == photo.exif


def test_webp_lossless_stays_lossless_with_metadata(tmp_path):
    rgba = _samples(np.uint8, (H, W, 4))
    Image.fromarray(rgba).save(tmp_path / "l.webp", lossless=True, exact=True, icc_profile=_icc(), exif=_exif())
    photo = read_image(tmp_path / "l.webp")
    assert photo.info["webp_lossless"] is True and photo.format == "WEBP"
    np.testing.assert_array_equal(photo.pixels, rgba[:, :, :3])
    np.testing.assert_array_equal(photo.alpha, rgba[:, :, 3])
    assert photo.icc_profile == _icc() and photo.exif == _exif()
    write_image(tmp_path / "out.webp", photo)
    back = read_image(tmp_path / "out.webp")
    assert back.info["webp_lossless"] is True
    np.testing.assert_array_equal(back.pixels, photo.pixels)
    np.testing.assert_array_equal(back.alpha, photo.alpha)
    assert back.icc_profile == _icc() and back.exif == _exif()


def test_webp_lossy_stays_lossy(tmp_path):
    Image.fromarray(_samples(np.uint8, (H, W, 3))).save(tmp_path / "y.webp", quality=80)
    photo = read_image(tmp_path / "y.webp")
    assert photo.info["webp_lossless"] is False and photo.alpha is None
    write_image(tmp_path / "out.webp", photo)
    assert read_image(tmp_path / "out.webp").info["webp_lossless"] is False


def test_format_choice(tmp_path):
    tiff16 = _photo(np.uint16, 3, format="TIFF")
    write_image(tmp_path / "noext.out", tiff16)                         # no known extension: photo.format
    assert read_image_as(tmp_path / "noext.out", ".tif").format == "TIFF"
    write_image(tmp_path / "forced.png", tiff16, format="tiff")        # explicit format wins
    assert (tmp_path / "forced.png").read_bytes()[:4] in (b"II*\0", b"MM\0*")
    write_image(tmp_path / "x.png", tiff16)                             # extension decides otherwise
    back = read_image(tmp_path / "x.png")
    assert back.format == "PNG" and back.bit_depth == 16
    np.testing.assert_array_equal(back.pixels, tiff16.pixels)
    write_image(tmp_path / "f.png", _photo(np.float32, 1))               # float -> 16-bit PNG
    assert read_image(tmp_path / "f.png").bit_depth == 16
    with pytest.raises(ValueError, match="unsupported image format"):
        write_image(tmp_path / "x.bmp", tiff16, format="BMP")
    with pytest.raises(ValueError, match=r"x\.bmp: unsupported file extension"):
        imageio.format_for_path(tmp_path / "x.bmp")
    assert [imageio.format_for_path(f"a{e}") for e in imageio.SUPPORTED_EXTENSIONS] == \
        ["PNG", "TIFF", "TIFF", "JPEG", "JPEG", "WEBP"]


def test_16bit_to_8bit_formats_round_to_nearest(tmp_path):
    px = np.array([[[0, 128, 65535], [32767, 32768, 257 * 100 + 128]]], np.uint16)
    write_image(tmp_path / "r.webp", Photo(px), format="WEBP", quality=100)
    write_image(tmp_path / "lossless.webp", Photo(px, info={"webp_lossless": True}))
    back = read_image(tmp_path / "lossless.webp")
    np.testing.assert_array_equal(back.pixels, [[[0, 0, 255], [127, 128, 100]]])


def test_input_file_is_not_modified(tmp_path):
    src = tmp_path / "in.png"
    write_image(src, _photo(np.uint16, 3, icc_profile=_icc()))
    before, mtime = src.read_bytes(), src.stat().st_mtime_ns
    photo = read_image(src)
    photo.pixels[:] = 0
    write_image(tmp_path / "out.png", photo)
    assert src.read_bytes() == before and src.stat().st_mtime_ns == mtime


# -------------------------------------------------------------------------------------- rejections

def test_missing_empty_directory_and_extension(tmp_path):
    _assert_rejected(tmp_path / "nope.png", "file not found")
    (tmp_path / "empty.jpg").write_bytes(b"")
    _assert_rejected(tmp_path / "empty.jpg", "file is empty")
    (tmp_path / "dir.png").mkdir()
    _assert_rejected(tmp_path / "dir.png", "is a directory")
    (tmp_path / "x.bmp").write_bytes(b"BM....")
    _assert_rejected(tmp_path / "x.bmp", "unsupported file extension '.bmp'")
    (tmp_path / "x.NEF").write_bytes(b"II*\0")
    _assert_rejected(tmp_path / "x.NEF", "a camera raw file: denoise it with denoise-batch")
    # a raw format the raw path does not read either: said so, without claiming raw is unsupported
    (tmp_path / "x.KDC").write_bytes(b"II*\0")
    e = _assert_rejected(tmp_path / "x.KDC", "KDC camera raw files are not supported", "DNG", "NEF")
    assert "KDC" not in e.reason.split("reads", 1)[1]


@pytest.mark.parametrize("ext", [".png", ".tif", ".jpg", ".webp"])
def test_non_image_with_image_extension(tmp_path, ext):
    (tmp_path / f"notes{ext}").write_text("shopping list: eggs, milk\n")
    _assert_rejected(tmp_path / f"notes{ext}", "not a", "image")


def test_other_format_behind_image_extension(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "really_gif.png", format="GIF")
    _assert_rejected(tmp_path / "really_gif.png", "GIF images are not supported")


def test_content_decides_over_extension(tmp_path):
    rgb = _samples(np.uint8, (H, W, 3))
    Image.fromarray(rgb).save(tmp_path / "actually_png.jpg", format="PNG")
    photo = read_image(tmp_path / "actually_png.jpg")
    assert photo.format == "PNG"
    np.testing.assert_array_equal(photo.pixels, rgb)


@pytest.mark.parametrize("ext", [".png", ".tif", ".jpg", ".webp"])
def test_truncated_files_fail_at_read(tmp_path, ext):
    good = tmp_path / f"good{ext}"
    photo = Photo(_samples(np.uint8, (64, 64, 3)))
    write_image(good, photo, format="TIFF" if ext == ".tif" else None)
    data = good.read_bytes()
    cut = tmp_path / f"cut{ext}"
    cut.write_bytes(data[:len(data) * 2 // 3])
    err = _assert_rejected(cut)
    assert "truncated" in err.reason or "corrupt" in err.reason


def test_tiff_damage_that_tifffile_works_around_is_an_error(tmp_path, capfd):
    path = tmp_path / "icc.tif"
    tifffile.imwrite(path, _samples(np.uint8, (H, W, 3)), photometric="rgb", iccprofile=_icc())
    with tifffile.TiffFile(path) as tif:
        entry = tif.pages[0].tags[34675].offset
    data = bytearray(path.read_bytes())
    data[entry + 8:entry + 12] = (10**9).to_bytes(4, "little")      # ICC profile offset past the end
    path.write_bytes(bytes(data))
    _assert_rejected(path, "corrupt TIFF file", "34675")
    assert "34675" not in capfd.readouterr().err                      # collected, not logged to stderr


def test_png_crc_corruption(tmp_path):
    write_image(tmp_path / "ok.png", _photo(np.uint8))
    data = bytearray((tmp_path / "ok.png").read_bytes())
    data[60] ^= 0xFF                                                 # inside the first IDAT
    (tmp_path / "bad.png").write_bytes(bytes(data))
    _assert_rejected(tmp_path / "bad.png", "corrupt PNG", "CRC")


def test_cmyk_rejected(tmp_path):
    Image.new("CMYK", (8, 8), (10, 20, 30, 40)).save(tmp_path / "c.jpg")
    _assert_rejected(tmp_path / "c.jpg", "CMYK images are not supported; convert to RGB first")
    tifffile.imwrite(tmp_path / "c.tif", np.zeros((8, 8, 4), np.uint8), photometric="separated")
    _assert_rejected(tmp_path / "c.tif", "CMYK images are not supported")


def test_palette_rejected(tmp_path):
    pal = Image.fromarray(_samples(np.uint8, (H, W, 3))).convert("P")
    pal.save(tmp_path / "p.png")
    _assert_rejected(tmp_path / "p.png", "palette (indexed-colour) images are not supported")
    pal.save(tmp_path / "p.tif")
    _assert_rejected(tmp_path / "p.tif", "palette (indexed-colour) images are not supported")


def test_other_modes_rejected(tmp_path):
    bilevel = Image.fromarray(_samples(np.uint8, (H, W))).convert("1")
    bilevel.save(tmp_path / "b.png")
    _assert_rejected(tmp_path / "b.png", "1-bit")
    bilevel.save(tmp_path / "b.tif")
    _assert_rejected(tmp_path / "b.tif", "1-bit")
    Image.fromarray(_samples(np.uint8, (H, W, 3))).convert("LAB").save(tmp_path / "lab.tif")
    _assert_rejected(tmp_path / "lab.tif", "Lab images are not supported")
    tifffile.imwrite(tmp_path / "i32.tif", np.ones((H, W), np.int32))
    _assert_rejected(tmp_path / "i32.tif", "signed-integer")
    tifffile.imwrite(tmp_path / "u32.tif", np.ones((H, W), np.uint32))
    _assert_rejected(tmp_path / "u32.tif", "32-bit integer samples are not supported")
    tifffile.imwrite(tmp_path / "extra.tif", np.ones((H, W, 5), np.uint8), photometric="rgb", extrasamples=[2, 0])
    _assert_rejected(tmp_path / "extra.tif", "2 extra channels")


@pytest.mark.parametrize("ext", [".png", ".tif", ".jpg", ".webp"])
def test_pixel_limit(tmp_path, ext, monkeypatch):
    path = tmp_path / f"big{ext}"
    write_image(path, Photo(_samples(np.uint8, (H, W, 3))))
    monkeypatch.setattr(imageio, "MAX_PIXELS", H * W - 1)
    _assert_rejected(path, "image too large", f"{W}x{H}", "decompression bomb")


def test_pillow_decompression_bomb_error(tmp_path, monkeypatch):
    write_image(tmp_path / "b.jpg", Photo(_samples(np.uint8, (H, W, 3))))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)             # Pillow raises beyond twice this
    _assert_rejected(tmp_path / "b.jpg", "image too large", "decompression bomb")


# ------------------------------------------------------------------------------------------ writing

def test_write_into_missing_folder_fails_cleanly(tmp_path):
    dest = tmp_path / "missing" / "out.png"
    with pytest.raises(ImageWriteError) as ei:
        write_image(dest, _photo())
    assert str(ei.value).startswith(f"{dest}: ") and "output folder does not exist" in ei.value.reason
    assert isinstance(ei.value, OSError) and ei.value.path == str(dest)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root can write anywhere")
def test_write_into_read_only_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(ImageWriteError, match="not writable"):
            write_image(ro / "out.png", _photo())
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o700)


def test_unwritable_folder_reported_even_as_root(tmp_path, monkeypatch):
    monkeypatch.setattr(imageio.os, "access", lambda *args, **kwargs: False)
    with pytest.raises(ImageWriteError, match=f"output folder is not writable: {tmp_path}"):
        write_image(tmp_path / "out.png", _photo())
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


def test_failed_write_leaves_nothing_and_keeps_old_file(tmp_path, monkeypatch):
    dest = tmp_path / "out.tif"
    dest.write_bytes(b"previous")

    def broken(path, *args, **kwargs):
        open(path, "wb").write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tifffile, "imwrite", broken)
    with pytest.raises(ImageWriteError, match="No space left on device"):
        write_image(dest, _photo())
    assert dest.read_bytes() == b"previous" and [p.name for p in tmp_path.iterdir()] == ["out.tif"]


def test_jpeg_refuses_alpha(tmp_path):
    with pytest.raises(ImageWriteError, match="JPEG cannot store an alpha channel"):
        write_image(tmp_path / "a.jpg", _photo(np.uint8, 3, alpha=True))
    assert list(tmp_path.iterdir()) == []


def test_invalid_photo_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="dtype"):
        write_image(tmp_path / "x.png", Photo(np.zeros((4, 4, 3), np.int32)))
    with pytest.raises(ValueError, match="alpha"):
        write_image(tmp_path / "x.png", Photo(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4), np.uint16)))
    assert list(tmp_path.iterdir()) == []


def test_jpeg_subsampling_helper_agrees(tmp_path):
    Image.fromarray(_samples(np.uint8, (H, W, 3))).save(tmp_path / "s.jpg", subsampling=1)
    with Image.open(tmp_path / "s.jpg") as im:
        assert JpegImagePlugin.get_sampling(im) == read_image(tmp_path / "s.jpg").info["jpeg_subsampling"] == 1


@pytest.mark.parametrize("ext", [".png", ".tif", ".jpg", ".webp"])
@pytest.mark.parametrize("dpi", [(0, 0), (float("nan"), 300.0), (1e12, 1e12), (300.0,), "300"])
def test_resolution_no_format_can_store_is_left_out(tmp_path, ext, dpi):
    write_image(tmp_path / f"a{ext}", _photo(np.uint8, info={"dpi": dpi}))
    assert "dpi" not in read_image(tmp_path / f"a{ext}").info


@pytest.mark.parametrize("ext", [".png", ".tif", ".jpg"])
def test_plausible_resolution_round_trips(tmp_path, ext):
    write_image(tmp_path / f"a{ext}", _photo(np.uint8, info={"dpi": (300.0, 150.0)}))
    assert read_image(tmp_path / f"a{ext}").info["dpi"] == pytest.approx((300.0, 150.0), rel=1e-3)


def test_jpeg_refuses_a_resolution_jfif_cannot_hold(tmp_path):
    with pytest.raises(ImageWriteError, match="JPEG stores at most 65535 dpi"):
        write_image(tmp_path / "a.jpg", _photo(np.uint8, info={"dpi": (100000.0, 100000.0)}))
    assert list(tmp_path.iterdir()) == []
