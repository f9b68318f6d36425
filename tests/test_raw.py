"""Camera raw files: DNGs written here with tifffile, read back through rawpy (LibRaw).

No package reachable here ships real camera raw files (rawpy's wheel and sdist hold none), so every
file is synthesized: a uint16 mosaic with the DNG tags LibRaw needs.
"""
from typing import Any
import struct

import imagecodecs
import numpy as np
import pytest
import rawpy
import tifffile
import torch
from click.testing import CliRunner

from denoise_cli.batch import main
from denoise_core.raw import rawfile as R
from denoise_core.inference.checkpoint import save_checkpoint
from denoise_core.models import create_model
from denoise_core.noise.camera import find_camera
from denoise_core.raw.denoise import RawDenoiser, process_raw, srgb_icc, write_dng
from denoise_core.training.raw_train import pack_t, unpack_t

BLACK, WHITE = 256, 16383
CFAS = {"RGGB": (0, 0), "GRBG": (0, 1), "GBRG": (1, 0), "BGGR": (1, 1)}


def scene(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth linear-light scene (0.02-0.5) with a few edges: texture a denoiser must keep."""
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    x = 0.05 + 0.3 * (0.5 + 0.5 * np.sin(6 * xx + 3 * yy)) + 0.15 * (xx > 0.6)
    return np.clip(x, 0.02, 0.5)


def site_colours(cfa: str, h: int, w: int) -> np.ndarray:
    tile = np.array([["RGB".index(cfa[0]), "RGB".index(cfa[1])], ["RGB".index(cfa[2]), "RGB".index(cfa[3])]])
    return np.tile(tile, (h // 2 + 1, w // 2 + 1))[:h, :w]


def noisy_mosaic(cfa: str, h: int, w: int, A3, B3, seed: int = 0) -> np.ndarray:
    """uint16 raw values: scene + per-site Poisson-Gaussian noise of variance A*x + B."""
    rng = np.random.default_rng(seed)
    x = scene(h, w)
    c = site_colours(cfa, h, w)
    var = np.asarray(A3)[c] * x + np.asarray(B3)[c]
    v = (x + np.sqrt(var) * rng.standard_normal((h, w))) * (WHITE - BLACK) + BLACK
    return np.clip(np.rint(v), 0, 65535).astype(np.uint16)


def profile_ab3(name: str, iso: float):
    p = find_camera(name, iso)
    return 4 * np.clip(p.a, 0, None), 4 * np.clip(p.b, 0, None)


def write(path, mosaic, cfa="RGGB", make="NIKON CORPORATION", model="NIKON D750", iso: float | None = 6400):
    R.write_bayer_dng(path, mosaic, make=make, model=model, iso=iso, black=BLACK, white=WHITE, cfa=cfa,
                      as_shot_neutral=(0.5, 1.0, 0.6))


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    """A small `raw` net with random (non-zero) weights: the plumbing, not the quality, is tested."""
    torch.manual_seed(0)
    m = create_model("raw", widths=(8, 16, 16), mid_blocks=1)
    for p in m.parameters():
        p.data.normal_(0, 0.05)
    path = tmp_path_factory.mktemp("model") / "tiny_raw.safetensors"
    save_checkpoint(path, m, {"test": True})
    return str(path)


K_RGB = (100, 200, 300)  # raw units the offset model adds to red, green and blue photosites


@pytest.fixture(scope="module")
def offset_model(tmp_path_factory) -> str:
    """A `raw` net whose output is known without running it: its head's weights are zero, so it
    returns the mosaic minus the head's bias / detail_scale, and that bias adds K_RGB raw units to
    every photosite of each colour (white - black = 16127 units is 1.0). Expected outputs then come
    from the input's raw numbers (expected_raw), not from RawDenoiser."""
    torch.manual_seed(0)
    m: Any = create_model("raw", widths=(8, 16, 16), mid_blocks=1)
    k = torch.tensor([K_RGB[0], K_RGB[1], K_RGB[1], K_RGB[2]], dtype=torch.float32) / (WHITE - BLACK)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.05)  # the rest of the net computes something; the zero head ignores it
        m.outro.weight.zero_()
        m.outro.bias.copy_(-k * m.detail_scale)
    path = tmp_path_factory.mktemp("model") / "offset_raw.safetensors"
    save_checkpoint(path, m, {"test": "adds K_RGB raw units"})
    return str(path)


def expected_raw(m: np.ndarray, cfa: str, strength: float = 1.0) -> np.ndarray:
    """What the offset model makes of raw values `m` with `cfa`'s colours, worked out by hand."""
    add = np.rint(strength * np.asarray(K_RGB, np.float64)[site_colours(cfa, *m.shape)])
    return np.clip(m.astype(np.int64) + add.astype(np.int64), 0, 65535).astype(np.uint16)


# ----------------------------------------------------------------------------------- reading
@pytest.mark.parametrize("cfa", list(CFAS))
def test_round_trip_every_cfa_phase(tmp_path, cfa):
    h, w = 62, 90
    A3, B3 = profile_ab3("Nikon D750", 6400)
    m = noisy_mosaic(cfa, h, w, A3, B3)
    write(tmp_path / "a.dng", m, cfa)
    img = R.read_raw(tmp_path / "a.dng")
    assert img.phase == CFAS[cfa]
    np.testing.assert_array_equal(img.mosaic, (m.astype(np.float32) - BLACK) / np.float32(WHITE - BLACK))
    np.testing.assert_array_equal(img.to_raw_values(img.mosaic), m)  # exact back to raw numbers
    planes = img.planes()
    np.testing.assert_array_equal(R.unpack(planes, h, w, *img.phase), img.mosaic)
    # the packed planes are R, G, G, B sites whatever the phase, padding included: pack the colour
    # map the same way and every plane is one colour
    cp = R.pack(site_colours(cfa, h, w), *img.phase)
    assert [np.unique(cp[k]).tolist() for k in range(4)] == [[0], [1], [1], [2]]
    assert img.meta == R.RawMeta("NIKON CORPORATION", "NIKON D750", 6400.0)


def test_pack_torch_matches_numpy():
    m = np.random.default_rng(1).random((8, 12)).astype(np.float32)
    t = pack_t(torch.from_numpy(m)[None, None])[0].numpy()
    np.testing.assert_array_equal(t, R.pack(m))
    np.testing.assert_array_equal(unpack_t(torch.from_numpy(R.pack(m))[None])[0, 0].numpy(), m)


def test_profile_lookup_from_exif(tmp_path):
    A3, B3 = profile_ab3("Nikon D750", 5000)
    write(tmp_path / "a.dng", noisy_mosaic("RGGB", 32, 32, A3, B3), iso=5000)
    img = R.read_raw(tmp_path / "a.dng")
    prof = find_camera("Nikon D750", 5000)  # 5000 lies between measured ISOs: interpolated
    assert img.profile == prof and img.noise_source == f"darktable profile {prof.name}"
    np.testing.assert_allclose(img.A, 4 * np.array(prof.a)[[0, 1, 1, 2]].clip(0))
    np.testing.assert_allclose(img.B, 4 * np.array(prof.b)[[0, 1, 1, 2]].clip(0))


@pytest.mark.parametrize("make,model,expect", [
    ("SONY", "ILCE-7M3", "Sony ILCE-7M3"), ("Canon", "Canon EOS 5D Mark III", "Canon EOS 5D Mark III"),
    ("OLYMPUS IMAGING CORP.", "E-M1", "Olympus E-M1"), ("PENTAX", "PENTAX K-1", "Pentax K-1"),
    ("RICOH IMAGING COMPANY, LTD.", "PENTAX K-3 Mark III", "Pentax K-3 Mark III"),
    ("NIKON CORPORATION", "NIKON D750", "Nikon D750")])
def test_exif_names_map_to_darktable_cameras(make, model, expect):
    prof, why = R.lookup_profile(R.RawMeta(make, model, 3200))
    assert why == "" and f"{prof.maker} {prof.model}" == expect


def test_unknown_camera_falls_back_to_an_estimate_and_says_so(tmp_path):
    A3, B3 = profile_ab3("Nikon D750", 12800)
    write(tmp_path / "a.dng", noisy_mosaic("RGGB", 256, 384, A3, B3), make="Acme", model="X1", iso=12800)
    img = R.read_raw(tmp_path / "a.dng")
    assert img.profile is None
    assert img.noise_source == "estimated from the image (darktable has no noise profile for Acme X1)"
    true_A, true_B = np.asarray(A3)[[0, 1, 1, 2]], np.asarray(B3)[[0, 1, 1, 2]]
    for x in (0.1, 0.3):  # the noise std at mid-tones within 20 %
        ratio = np.sqrt((img.A * x + img.B) / (true_A * x + true_B))
        assert np.all(np.abs(ratio - 1) < 0.2), ratio


def test_out_of_range_iso_and_missing_iso_fall_back(tmp_path):
    A3, B3 = profile_ab3("Nikon D750", 6400)
    write(tmp_path / "a.dng", noisy_mosaic("RGGB", 64, 64, A3, B3), iso=None)
    assert R.read_raw(tmp_path / "a.dng").noise_source.startswith("estimated from the image (the file gives no ISO")
    write(tmp_path / "b.dng", noisy_mosaic("RGGB", 64, 64, A3, B3), iso=20)
    assert "noise profiles for ISO" in R.read_raw(tmp_path / "b.dng").noise_source


def _base_tags():
    return [(271, "s", 0, "Nikon", True), (272, "s", 0, "D750", True), (50706, "B", 4, (1, 4, 0, 0), True),
            (50714, "H", 1, (BLACK,), True), (50717, "I", 1, (WHITE,), True),
            (50721, 10, 9, R._rationals(np.eye(3).ravel()), True), (50778, "H", 1, (21,), True),
            (34855, "H", 1, (3200,), True)]


def test_linear_and_xtrans_dngs_are_refused_clearly(tmp_path):
    rgb = (np.random.default_rng(0).random((32, 48, 3)) * 60000).astype(np.uint16)
    tifffile.imwrite(tmp_path / "linear.dng", rgb, photometric=34892, extratags=_base_tags())
    with pytest.raises(R.RawReadError, match="linear .already demosaiced. raw file, not a Bayer mosaic"):
        R.read_raw(tmp_path / "linear.dng")
    xt = (1, 1, 0, 1, 1, 2, 1, 1, 2, 1, 1, 0, 2, 0, 1, 0, 2, 1, 1, 1, 2, 1, 1, 0, 1, 1, 0, 1, 1, 2, 0, 2, 1, 2, 0, 1)
    m = (np.random.default_rng(0).random((48, 48)) * 3000 + 512).astype(np.uint16)
    tifffile.imwrite(tmp_path / "xtrans.dng", m, photometric=32803, extratags=sorted(
        _base_tags() + [(33421, "H", 2, (6, 6), True), (33422, "B", 36, xt, True)]))
    with pytest.raises(R.RawReadError, match="X-Trans"):
        R.read_raw(tmp_path / "xtrans.dng")


def test_bad_files_give_one_line_errors(tmp_path):
    A3, B3 = profile_ab3("Nikon D750", 6400)
    write(tmp_path / "good.dng", noisy_mosaic("RGGB", 64, 64, A3, B3))
    data = (tmp_path / "good.dng").read_bytes()
    (tmp_path / "cut.dng").write_bytes(data[:len(data) // 2])
    (tmp_path / "junk.nef").write_bytes(b"not a raw file " * 50)
    (tmp_path / "empty.cr2").write_bytes(b"")
    for name, words in [("cut.dng", "truncated"), ("junk.nef", "not a raw file"), ("empty.cr2", "empty file"),
                        ("missing.arw", "file not found")]:
        with pytest.raises(R.RawReadError) as e:
            R.read_raw(tmp_path / name)
        assert words in e.value.reason and "\n" not in str(e.value) and name in str(e.value)


# ----------------------------------------------------------------------------------- model
def test_raw_model_is_residual_and_states_its_geometry():
    m: Any = create_model("raw").eval()
    x, s = torch.rand(1, 4, 32, 48), torch.rand(1, 4, 32, 48) * 0.01
    with torch.no_grad():
        assert torch.equal(m(x, s), x)  # zero head: an untrained net passes the mosaic through
    for p in m.parameters():
        p.data.normal_(0, 0.05)
    m.eval()
    x = torch.zeros(1, 4, 96, 96, requires_grad=True)
    m(x, torch.zeros_like(x))[0, :, 48, 48].sum().backward()
    reach = (x.grad[0].abs().sum(0) > 0).nonzero()
    assert int((reach - 48).abs().max()) <= m.receptive_radius
    assert m.size_multiple == 4


def test_tiled_equals_whole(tmp_path, tiny_model):
    A3, B3 = profile_ab3("Nikon D750", 6400)
    write(tmp_path / "a.dng", noisy_mosaic("GRBG", 202, 262, A3, B3))
    img = R.read_raw(tmp_path / "a.dng")
    whole = RawDenoiser(tiny_model, precision="fp32", tile=4096).denoise(img)
    tiled = RawDenoiser(tiny_model, precision="fp32", tile=40).denoise(img)
    np.testing.assert_allclose(tiled, whole, atol=2e-6)
    assert not np.allclose(whole, img.mosaic, atol=1e-4)  # the (random) net did change the mosaic


def test_progress_and_cancel(tmp_path, tiny_model):
    """Raw files go through the same tile loop as images: progress after every tile, and a cancel
    asked before every tile stops the run with Cancelled."""
    from denoise_core import Cancelled
    A3, B3 = profile_ab3("Nikon D750", 6400)
    write(tmp_path / "a.dng", noisy_mosaic("RGGB", 202, 262, A3, B3))
    img = R.read_raw(tmp_path / "a.dng")
    rd = RawDenoiser(tiny_model, precision="fp32", tile=40)
    seen: list[tuple[int, int]] = []
    rd.denoise(img, progress=lambda d, t: seen.append((d, t)))
    total = seen[-1][1]
    assert total > 4 and seen == [(i + 1, total) for i in range(total)]
    asked: list[int] = []
    with pytest.raises(Cancelled):
        rd.denoise(img, cancel=lambda: asked.append(1) is None and len(asked) > 3)
    assert len(asked) == 4  # asked before tiles 1-4; the fourth answer stopped it
    assert RawDenoiser(tiny_model).device.type == ("cuda" if torch.cuda.is_available() else
                                                   "mps" if torch.backends.mps.is_available() else "cpu")


def test_strength_and_noise_level(tmp_path, tiny_model):
    A3, B3 = profile_ab3("Nikon D750", 6400)
    write(tmp_path / "a.dng", noisy_mosaic("RGGB", 64, 96, A3, B3))
    img = R.read_raw(tmp_path / "a.dng")
    rd = RawDenoiser(tiny_model, precision="fp32")
    full = rd.denoise(img)
    np.testing.assert_array_equal(rd.denoise(img, strength=0.0), img.mosaic)
    np.testing.assert_allclose(rd.denoise(img, strength=0.5), img.mosaic + 0.5 * (full - img.mosaic), atol=1e-6)
    assert not np.allclose(rd.denoise(img, noise_level=2.0), full, atol=1e-5)  # the level reaches the net
    np.testing.assert_allclose(rd.denoise(img, noise_level=1.0), full, atol=0)
    with pytest.raises(ValueError):
        rd.denoise(img, noise_level=9)


# ----------------------------------------------------------------------------------- outputs
NR_APPLIED, NOISE_PROFILE = 50935, 51041


def _tags(path):
    """IFD0's tags but the raw data's layout and what a denoised DNG changes on purpose."""
    with tifffile.TiffFile(path) as t:
        return {k: v.value for k, v in t.pages[0].tags.items()
                if k not in (273, 279, 259, 258, 317, NR_APPLIED, NOISE_PROFILE)}


def _nr_applied(path):
    with tifffile.TiffFile(path) as t:
        return t.pages[0].tags[NR_APPLIED].value if NR_APPLIED in t.pages[0].tags else None


def test_dng_out_keeps_tags_with_new_data(tmp_path, offset_model):
    A3, B3 = profile_ab3("Nikon D750", 6400)
    m = noisy_mosaic("BGGR", 64, 96, A3, B3)
    write(tmp_path / "in.dng", m, "BGGR")
    before = (tmp_path / "in.dng").read_bytes()
    info = process_raw(RawDenoiser(offset_model, precision="fp32"), tmp_path / "in.dng", tmp_path / "out.dng")
    assert (tmp_path / "in.dng").read_bytes() == before  # the input is never touched
    assert info["noise"].startswith("darktable profile Nikon D750")
    assert _tags(tmp_path / "out.dng") == _tags(tmp_path / "in.dng")
    with rawpy.imread(str(tmp_path / "out.dng")) as r:  # each photosite moved by its own colour's offset
        np.testing.assert_array_equal(r.raw_image_visible, expected_raw(m, "BGGR"))
        assert (r.raw_pattern == rawpy.imread(str(tmp_path / "in.dng")).raw_pattern).all()
    with tifffile.TiffFile(tmp_path / "in.dng") as a, tifffile.TiffFile(tmp_path / "out.dng") as b:
        assert b.pages[0].dataoffsets == a.pages[0].dataoffsets  # uncompressed: rewritten in place
        n = len(a.pages[0].tags)
    # only IFD0 moved to the end of the file (one tag more: NoiseReductionApplied, its 8-byte value first)
    assert len((tmp_path / "out.dng").read_bytes()) == len(before) + (len(before) & 1) + 8 + 2 + 12 * (n + 1) + 4
    assert _nr_applied(tmp_path / "out.dng") == (1000, 1000)


def test_compressed_dng_out_is_rewritten_uncompressed_at_the_end(tmp_path):
    """A lossless-JPEG DNG (as cameras and converters write): the new data goes uncompressed after
    the old, the raw IFD points at it, every other tag stays."""
    m = (np.random.default_rng(0).random((48, 64)) * 3000 + 512).astype(np.uint16)
    enc = imagecodecs.ljpeg_encode(m, bitspersample=16)
    tags = sorted(_base_tags() + [(33421, "H", 2, (2, 2), True), (33422, "B", 4, (0, 1, 1, 2), True)])
    tifffile.imwrite(tmp_path / "lj.dng", iter([bytes(enc)]), shape=m.shape, dtype="uint16", photometric=32803,
                     compression=7, extratags=tags)
    img = R.read_raw(tmp_path / "lj.dng")
    new = np.clip(img.mosaic * 0.5, 0, 1)
    write_dng(tmp_path / "lj.dng", tmp_path / "out.dng", new, img)
    with tifffile.TiffFile(tmp_path / "out.dng") as t:
        assert t.pages[0].compression == 1 and t.pages[0].bitspersample == 16
    assert _tags(tmp_path / "out.dng") == _tags(tmp_path / "lj.dng")
    with rawpy.imread(str(tmp_path / "out.dng")) as r:
        np.testing.assert_array_equal(r.raw_image_visible, img.to_raw_values(new))


# what the README promises of a developed raw file: camera white balance, LibRaw's default (AHD)
# demosaic, sRGB primaries and tone curve, 16 bits, the camera's exposure (no automatic brightening)
DOCUMENTED_DEVELOPMENT: dict[str, Any] = dict(output_bps=16, use_camera_wb=True, no_auto_bright=True,
                                              gamma=(2.4, 12.92), adjust_maximum_thr=0.0)


def test_tiff_out_is_16_bit_srgb_with_icc_and_exif(tmp_path, offset_model):
    A3, B3 = profile_ab3("Nikon D750", 6400)
    m = noisy_mosaic("RGGB", 64, 96, A3, B3)
    write(tmp_path / "in.nef", m)  # a DNG named .nef reads the same
    process_raw(RawDenoiser(offset_model, precision="fp32"), tmp_path / "in.nef", tmp_path / "out.tif",
                out_format="tiff")
    with tifffile.TiffFile(tmp_path / "out.tif") as t:
        p = t.pages[0]
        assert p.dtype == np.uint16 and p.shape == (64, 96, 3)
        assert p.tags[34675].value == srgb_icc()
        assert p.tags[271].value == "NIKON CORPORATION" and p.tags[272].value == "NIKON D750"
        assert 274 not in p.tags  # LibRaw has rotated already
        out = p.asarray()
    # the oracle: LibRaw itself developing a file that holds the expected raw numbers
    write(tmp_path / "expected.dng", expected_raw(m, "RGGB"))
    with rawpy.imread(str(tmp_path / "expected.dng")) as r:
        np.testing.assert_array_equal(out, r.postprocess(**DOCUMENTED_DEVELOPMENT))
    with rawpy.imread(str(tmp_path / "in.nef")) as r:  # and the offsets did reach the development
        assert np.abs(out.astype(int) - r.postprocess(**DOCUMENTED_DEVELOPMENT)).mean() > 100


def test_batch_continues_past_bad_raw_files(tmp_path, tiny_model):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    A3, B3 = profile_ab3("Nikon D750", 6400)
    write(src / "a.dng", noisy_mosaic("RGGB", 64, 64, A3, B3))
    write(src / "b.nef", noisy_mosaic("GRBG", 64, 64, A3, B3))
    write(src / "c.dng", noisy_mosaic("RGGB", 128, 128, A3, B3), make="Acme", model="X1")
    data = (src / "a.dng").read_bytes()
    (src / "cut.dng").write_bytes(data[:len(data) // 3])
    (src / "junk.cr2").write_bytes(b"\0" * 4000)
    rgb = (np.random.default_rng(0).random((32, 48, 3)) * 60000).astype(np.uint16)
    tifffile.imwrite(src / "linear.dng", rgb, photometric=34892, extratags=_base_tags())
    r = CliRunner().invoke(main, [str(src), "-o", str(out), "--model", tiny_model], catch_exceptions=False)
    assert r.exit_code == 1
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert sorted(e.split(":")[1].strip().rsplit("/", 1)[-1] for e in errors) == ["cut.dng", "junk.cr2", "linear.dng"]
    warned = [ln for ln in r.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warned) == 1 and warned[0].endswith(
        "c.dng: noise level estimated from the image (darktable has no noise profile for Acme X1)")
    assert sorted(p.name for p in out.iterdir()) == ["a.dng", "b.tif", "c.dng"]  # no temp files left behind


def test_exif_block_of_a_tiff_based_raw_drops_orientation(tmp_path):
    from denoise_core.raw.denoise import raw_exif
    A3, B3 = profile_ab3("Nikon D750", 6400)
    R.write_bayer_dng(tmp_path / "a.dng", noisy_mosaic("RGGB", 32, 32, A3, B3), make="Nikon", model="D750",
                      iso=6400, black=BLACK, white=WHITE, orientation=6)
    exif = raw_exif(tmp_path / "a.dng")
    assert exif is not None and exif.startswith(b"Exif\0\0II*\0")
    n = struct.unpack_from("<H", exif, 6 + 8)[0]
    tags = [struct.unpack_from("<H", exif, 6 + 10 + 12 * i)[0] for i in range(n)]
    assert 271 in tags and 272 in tags and 274 not in tags


def test_make_model_iso_of_raf_and_cr3_containers(tmp_path):
    """exifread reads TIFF-based raws directly; a Fujifilm RAF carries its EXIF in a JPEG preview and
    a Canon CR3 in CMT1/CMT2 boxes (TIFF blocks): both are found (LibRaw itself is not involved)."""
    import io

    from PIL import Image
    exif = Image.Exif()
    exif[271], exif[272] = "FUJIFILM", "X-T3"
    exif.get_ifd(0x8769)[0x8827] = 6400
    buf = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buf, "JPEG", exif=exif.tobytes())
    jpeg = buf.getvalue()
    head = b"FUJIFILMCCD-RAW 0201FF383501".ljust(84, b"\0") + struct.pack(">II", 100, len(jpeg))
    (tmp_path / "a.raf").write_bytes(head.ljust(100, b"\0") + jpeg)
    meta = R.read_meta(tmp_path / "a.raf")
    assert (meta.make, meta.model, meta.iso) == ("FUJIFILM", "X-T3", 6400.0)
    assert R.lookup_profile(meta)[0].name == "Fujifilm X-T3@6400"

    def tiff_block(tags):
        b = io.BytesIO()
        tifffile.imwrite(b, np.zeros((1, 1), np.uint8), extratags=tags, software=False, metadata=None)
        return b.getvalue()

    def box(kind, body):
        return struct.pack(">I", 8 + len(body)) + kind + body
    cmt1 = tiff_block([(271, "s", 0, "Canon", True), (272, "s", 0, "Canon EOS R5", True)])
    cmt2 = tiff_block([(34855, "H", 1, (12800,), True)])
    cr3 = box(b"ftyp", b"crx " + b"\0" * 8) + box(b"moov", box(b"uuid", b"\0" * 16 + box(b"CMT1", cmt1)
                                                             + box(b"CMT2", cmt2)))
    (tmp_path / "b.cr3").write_bytes(cr3)
    meta = R.read_meta(tmp_path / "b.cr3")
    assert (meta.make, meta.model, meta.iso) == ("Canon", "Canon EOS R5", 12800.0)


def test_raw_model_is_for_raw_files_only():
    """The shipped raw model is not offered as an image model, and asking for it on an image says why."""
    from denoise_core.inference.api import Denoiser, shipped_models

    assert "raw" in shipped_models(include_raw=True) and "raw" not in shipped_models()
    with pytest.raises(ValueError, match="camera raw files"):
        Denoiser("raw", device="cpu")


# ----------------------------------------------------------------------------------- regressions
def _dng_with_noise_profile(path, mosaic, profile, *, nr_applied=None):
    """A Bayer DNG whose IFD0 carries a NoiseProfile (51041, DOUBLE pairs S, O per colour plane) as
    cameras and Adobe's converter write it, optionally a NoiseReductionApplied already."""
    extra = [(33421, "H", 2, (2, 2), True), (33422, "B", 4, (0, 1, 1, 2), True),
             (50728, 5, 3, R._rationals((0.5, 1.0, 0.6)), True),
             (NOISE_PROFILE, "d", len(profile), tuple(profile), True)]
    if nr_applied is not None:
        extra.append((NR_APPLIED, 5, 1, nr_applied, True))
    tifffile.imwrite(path, mosaic, photometric=32803, extratags=sorted(_base_tags() + extra), software=False,
                     metadata=None)


@pytest.mark.parametrize("strength,nr", [(1.0, (1000, 1000)), (0.4, (400, 1000))])
def test_denoised_dng_drops_the_noise_profile_and_says_noise_reduction_applied(tmp_path, offset_model, strength, nr):
    """The input's NoiseProfile describes noise the output no longer has: a converter reading it would
    denoise again. The output has none, and NoiseReductionApplied = strength."""
    A3, B3 = profile_ab3("Nikon D750", 3200)
    profile = [float(v) for ab in zip(A3, B3) for v in ab]  # S, O for R, G, B
    m = noisy_mosaic("RGGB", 64, 96, A3, B3)
    _dng_with_noise_profile(tmp_path / "in.dng", m, profile)
    with tifffile.TiffFile(tmp_path / "in.dng") as t:  # the fixture does carry the tag
        assert t.pages[0].tags[NOISE_PROFILE].value == pytest.approx(profile, rel=0, abs=0)
    rd = RawDenoiser(offset_model, precision="fp32")
    process_raw(rd, tmp_path / "in.dng", tmp_path / "out.dng", strength=strength)
    with tifffile.TiffFile(tmp_path / "out.dng") as t:
        assert NOISE_PROFILE not in t.pages[0].tags
        assert t.pages[0].tags[NR_APPLIED].value == nr
        assert t.pages[0].tags[NR_APPLIED].dtype == 5  # RATIONAL, as the DNG specification types it
    assert _tags(tmp_path / "out.dng") == _tags(tmp_path / "in.dng")  # everything else as it was
    with rawpy.imread(str(tmp_path / "out.dng")) as r:  # LibRaw still reads the moved IFD0
        np.testing.assert_array_equal(r.raw_image_visible, expected_raw(m, "RGGB", strength))


def test_dng_noise_reduction_applied_is_replaced_in_place(tmp_path, tiny_model):
    """An input that already says NoiseReductionApplied (and has a NoiseProfile) keeps IFD0 where
    it is: one tag fewer, the other's value replaced."""
    A3, B3 = profile_ab3("Nikon D750", 3200)
    _dng_with_noise_profile(tmp_path / "in.dng", noisy_mosaic("RGGB", 64, 64, A3, B3), [1e-4, 1e-6],
                            nr_applied=(0, 1))
    process_raw(RawDenoiser(tiny_model, precision="fp32"), tmp_path / "in.dng", tmp_path / "out.dng")
    with tifffile.TiffFile(tmp_path / "in.dng") as a, tifffile.TiffFile(tmp_path / "out.dng") as b:
        assert b.pages[0].offset == a.pages[0].offset
        assert NOISE_PROFILE not in b.pages[0].tags and b.pages[0].tags[NR_APPLIED].value == (1000, 1000)
        assert len(b.pages[0].tags) == len(a.pages[0].tags) - 1


def test_noise_profile_in_a_raw_subifd_is_dropped(tmp_path, tiny_model):
    """DNGs from converters keep the raw image in a SubIFD behind a preview in IFD0: a NoiseProfile
    there goes too, and NoiseReductionApplied goes to IFD0."""
    A3, B3 = profile_ab3("Nikon D750", 3200)
    m = noisy_mosaic("RGGB", 64, 64, A3, B3)
    raw_tags = [(33421, "H", 2, (2, 2), True), (33422, "B", 4, (0, 1, 1, 2), True),
                (50714, "H", 1, (BLACK,), True), (50717, "I", 1, (WHITE,), True),
                (NOISE_PROFILE, "d", 2, (1e-4, 1e-6), True)]
    ifd0_tags = [t for t in _base_tags() if t[0] not in (50714, 50717)]
    with tifffile.TiffWriter(tmp_path / "in.dng") as w:
        w.write(np.zeros((16, 16, 3), np.uint8), photometric="rgb", subifds=1, subfiletype=1,
                extratags=ifd0_tags, software=False, metadata=None)
        w.write(m, photometric=32803, extratags=sorted(raw_tags), software=False, metadata=None)
    assert R.read_raw(tmp_path / "in.dng").mosaic.shape == (64, 64)  # LibRaw finds the SubIFD
    process_raw(RawDenoiser(tiny_model, precision="fp32"), tmp_path / "in.dng", tmp_path / "out.dng")
    with tifffile.TiffFile(tmp_path / "out.dng") as t:
        sub = t.pages[0].pages[0]
        assert sub.photometric == 32803 and NOISE_PROFILE not in sub.tags and 33422 in sub.tags
        assert t.pages[0].tags[NR_APPLIED].value == (1000, 1000)


def test_raw_exif_over_the_metadata_cap_is_a_warning_and_the_result_is_kept(tmp_path, tiny_model, monkeypatch):
    """EXIF that the copy refuses (imageio.MAX_METADATA_BYTES, hostile or corrupt tags) used to raise
    ValueError out of raw_exif after the denoising: a traceback through the API, a failed file in
    the batch. Now the result is written without EXIF and one warning names the file."""
    from denoise_core.imaging import imageio
    from denoise_core.imaging.imageio import ImageWarning
    from denoise_core.raw.denoise import raw_exif
    A3, B3 = profile_ab3("Nikon D750", 6400)
    write(tmp_path / "in.nef", noisy_mosaic("RGGB", 64, 64, A3, B3))
    assert raw_exif(tmp_path / "in.nef") is not None
    monkeypatch.setattr(imageio, "MAX_METADATA_BYTES", 20)
    with pytest.warns(ImageWarning,
                      match=r"in\.nef: EXIF not copied to the output \(EXIF tags copy more than 20 bytes"):
        assert raw_exif(tmp_path / "in.nef") is None
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    (tmp_path / "in.nef").rename(src / "in.nef")
    r = CliRunner().invoke(main, [str(src), "-o", str(out), "--model", tiny_model], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    warned = [ln for ln in r.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warned) == 1 and "in.nef: EXIF not copied to the output" in warned[0], r.stderr
    assert "Traceback" not in r.output
    with tifffile.TiffFile(out / "in.tif") as t:
        assert t.pages[0].dtype == np.uint16 and 271 not in t.pages[0].tags


# ----------------------------------------------------------------------------------- denoise-train --domain raw
TINY_RAW = '{"widths": [8, 16, 16], "mid_blocks": 1}'


@pytest.fixture(scope="module")
def clean_photos(tmp_path_factory):
    """Three small clean photos (scikit-image's, allowed in tests) as PNG files, as a user brings them."""
    from PIL import Image
    from skimage import data
    d = tmp_path_factory.mktemp("photos")
    for name, im in [("astronaut", data.astronaut()[100:228, 150:278]), ("coffee", data.coffee()[60:188, 200:328]),
                     ("chelsea", data.chelsea()[50:178, 100:228])]:
        Image.fromarray(np.ascontiguousarray(im)).save(d / f"{name}.png")
    return d


def _train_raw_cli(args):
    from denoise_cli.train import main as train_main
    return CliRunner().invoke(train_main, [str(a) for a in args])


def test_denoise_train_domain_raw_writes_a_raw_model_that_learns(tmp_path, clean_photos):
    """`denoise-train --domain raw` on a folder of clean photos: reports the noisy input's and the
    model's validation PSNR on the raw training noise, and the weights it writes are a raw-domain
    checkpoint that RawDenoiser loads, scores what was reported, and denoises a DNG with."""
    import re

    from PIL import Image

    from denoise_core.inference.checkpoint import load_checkpoint
    from denoise_core.training.raw_train import evaluate, noise_description, noisy_psnr, val_set
    from denoise_core.training.train import state_path
    out = tmp_path / "mine.safetensors"
    r = _train_raw_cli(["--domain", "raw", "--clean", clean_photos, "--out", out, "--steps", 200, "--batch", 4,
                        "--patch", 64, "--val-every", 50, "--lr", 3e-3, "--val-fraction", 0.34, "--threads", 1,
                        "--arch-args", TINY_RAW])
    assert r.exit_code == 0, r.output
    noisy_db = float(re.search(r"the noisy input scores ([\d.]+) dB PSNR", r.output).group(1))
    steps = [(int(s), float(v)) for s, v in re.findall(r"step (\d+): loss [\d.]+, validation ([\d.]+) dB", r.output)]
    assert [s for s, _ in steps] == [50, 100, 150, 200]
    best = float(re.search(r"best validation PSNR ([\d.]+) dB", r.output).group(1))
    assert best == pytest.approx(max(v for _, v in steps), abs=0.006)
    assert best > noisy_db + 0.3, r.output  # it learnt to denoise the raw noise (+0.8 dB here)

    ck = load_checkpoint(out)
    assert ck.arch == "raw" and ck.arch_args == {"widths": [8, 16, 16], "mid_blocks": 1}
    assert ck.card["noise"] == noise_description() and ck.card["trained_with"] == "denoise-train --domain raw"
    assert ck.card["patch"] == 32  # packed planes: half the 64 photosites asked for
    val_name = ck.card["data"].rsplit("validation: ", 1)[1]
    pairs = val_set([np.array(Image.open(clean_photos / val_name).convert("RGB"))])
    assert noisy_psnr(pairs) == pytest.approx(noisy_db, abs=0.006)  # the baseline is the same noise
    rd = RawDenoiser(out)
    assert evaluate(rd.model, pairs, rd.amp_dtype)[0] == pytest.approx(ck.card["val_psnr"], abs=0.05)
    hist = torch.load(state_path(out), weights_only=True)["history"]
    assert hist[-1]["step"] == 200 and np.isfinite(hist[-1]["loss"])

    A3, B3 = profile_ab3("Nikon D750", 6400)
    write(tmp_path / "in.dng", noisy_mosaic("RGGB", 64, 64, A3, B3))
    process_raw(rd, tmp_path / "in.dng", tmp_path / "out.dng")
    with rawpy.imread(str(tmp_path / "out.dng")) as a, rawpy.imread(str(tmp_path / "in.dng")) as b:
        assert a.raw_image_visible.shape == b.raw_image_visible.shape
        assert not np.array_equal(a.raw_image_visible, b.raw_image_visible)


def test_denoise_train_domain_raw_one_photo_keeps_the_last_weights_and_resumes(tmp_path, clean_photos):
    """One photo: nothing to validate on, so the loss is reported and the last weights kept; --resume
    continues the run; --init raw fine-tunes the shipped raw weights."""
    from denoise_core.inference.checkpoint import load_checkpoint
    one = tmp_path / "one"
    one.mkdir()
    (one / "coffee.png").write_bytes((clean_photos / "coffee.png").read_bytes())
    out = tmp_path / "one.safetensors"
    base = ["--domain", "raw", "--clean", one, "--out", out, "--batch", 2, "--patch", 64, "--val-every", 3,
            "--threads", 1, "--arch-args", TINY_RAW]
    r = _train_raw_cli(base + ["--steps", 3])
    assert r.exit_code == 0, r.output
    assert "nothing is held out for validation" in r.output and "no validation, final loss" in r.output
    assert load_checkpoint(out).card["steps"] == 3
    r = _train_raw_cli(base + ["--steps", 6, "--resume"])
    assert r.exit_code == 0, r.output
    assert "resumed at step 3" in r.output and load_checkpoint(out).card["steps"] == 6
    ft = tmp_path / "ft.safetensors"
    r = _train_raw_cli(["--domain", "raw", "--init", "raw", "--clean", clean_photos, "--out", ft, "--steps", 2,
                        "--batch", 2, "--patch", 64, "--val-every", 2, "--threads", 1, "--lr", 1e-5])
    assert r.exit_code == 0, r.output
    card = load_checkpoint(ft).card
    assert card["init"] == "raw.safetensors" and card["val_psnr"] > float(
        r.output.split("the noisy input scores ")[1].split(" dB")[0]) + 1  # the shipped weights denoise already


def test_raw_training_interrupted_and_resumed_equals_the_uninterrupted_run(tmp_path):
    """Raw training runs the shared loop (train.fit): stopped after step 2 (an exception out of the
    step-3 report, before that step's state is saved) and resumed, it ends with exactly the weights
    of the run that was never stopped."""
    import json
    from denoise_core.training.raw_train import train_raw
    from denoise_core.training.train import TrainConfig, state_path

    rng = np.random.default_rng(5)
    images = [rng.integers(0, 256, (48, 48, 3), dtype=np.uint8) for _ in range(2)]
    cfg = TrainConfig(arch="raw", arch_args=json.loads(TINY_RAW), patch=8, batch=2, steps=4, val_every=3,
                      checkpoint_every=1, seed=3, threads=1, precision="fp32")

    def weights(path):
        return torch.load(state_path(path), weights_only=True)["model"]

    whole = tmp_path / "whole.safetensors"
    train_raw(cfg, whole, images=images, val_pairs=[], log=lambda _: None)

    class Stop(Exception):
        pass

    def stop_at_step_3(line: str) -> None:
        if line.startswith("step 3:"):
            raise Stop

    part = tmp_path / "part.safetensors"
    with pytest.raises(Stop):
        train_raw(cfg, part, images=images, val_pairs=[], log=stop_at_step_3)
    assert torch.load(state_path(part), weights_only=True)["step"] == 2
    lines: list[str] = []
    res = train_raw(cfg, part, images=images, val_pairs=[], resume=True, log=lines.append)
    assert lines[0].startswith("resumed at step 2") and res["step"] == 4
    a, b = weights(whole), weights(part)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    torch.manual_seed(cfg.seed)  # the starting weights, as the loop draws them
    start = create_model("raw", **json.loads(TINY_RAW)).state_dict()
    assert not all(torch.equal(a[k], start[k]) for k in a)  # four steps did train


@pytest.mark.parametrize("args,message", [
    (["--domain", "raw", "--arch", "unet"],
     "--domain raw needs a raw-domain model (raw); --arch 'unet' is for sRGB images"),
    (["--domain", "raw", "--arch", "fast"], "--arch 'fast' is for sRGB images"),
    (["--domain", "raw", "--init", "default"], "--init default (a 'unet' model) is for sRGB images"),
    (["--arch", "raw", "--noise", "gaussian:25"],
     "--arch 'raw' is a raw-domain model (camera sensor mosaics): add --domain raw"),
    (["--init", "raw", "--noise", "gaussian:25"], "--init raw (a 'raw' model) is a raw-domain model"),
    (["--domain", "raw", "--noise", "gaussian:25"], "--domain raw draws its own noise"),
    (["--domain", "raw", "--noisy", "NOISY"], "pairs are not supported there: drop --noisy"),
    (["--domain", "raw", "--loss", "l2"], "drop --loss"),
    (["--domain", "raw", "--device", "cuda"], "--domain raw trains on the CPU only"),
    (["--domain", "raw", "--patch", 60], "--patch 60 must be a multiple of 8 for 'raw'"),
    (["--domain", "raw", "--patch", 256], "3 image(s) are smaller than the 256x256 patch"),
])
def test_denoise_train_domain_raw_bad_combinations_fail_before_training(tmp_path, clean_photos, args, message):
    out = tmp_path / "x.safetensors"
    args = [tmp_path if a == "NOISY" else a for a in args]
    r = _train_raw_cli(args + ["--clean", clean_photos, "--out", out, "--steps", 2])
    assert r.exit_code == 2, r.output
    assert message in " ".join(r.output.split()), r.output
    assert "Traceback" not in r.output and not out.exists()


# ----------------------------------------------------------------------------------- real camera files
def _real_raw_files():
    """Real camera raw files named by DENOISE_RAW_SAMPLES (files or folders, os.pathsep-separated).
    No package reachable here ships one (searched: PyPI rawpy, exifread, rawkit, colour-hdri,
    colour-demosaicing, cxx-image-io, pidng, flashraw, dngparser; npm dcraw, libraw-wasm, exifr, utif,
    exiftool-vendored.pl; Debian dcraw, libraw-bin, libraw-doc, rawtherapee-data, rawtran,
    libimage-exiftool-perl), so nothing is vendored and nothing is fetched: bring your own."""
    import os
    from pathlib import Path
    found = []
    for part in filter(None, os.environ.get("DENOISE_RAW_SAMPLES", "").split(os.pathsep)):
        p = Path(part)
        found += sorted(f for f in p.iterdir() if R.is_raw(f)) if p.is_dir() else [p]
    return found


@pytest.mark.skipif(not _real_raw_files(), reason="no real camera raw file: none ships in any package reachable "
                    "here; set DENOISE_RAW_SAMPLES=/path/to/IMG_0001.NEF[:folder] to run this test on yours")
@pytest.mark.parametrize("path", _real_raw_files() or [None], ids=lambda p: getattr(p, "name", "none"))
def test_real_camera_raw_file(tmp_path, path):
    """A real file: read as a Bayer mosaic with its camera and ISO, denoised by the shipped raw model
    into a DNG (for a DNG) or a developed TIFF that LibRaw/tifffile read back, with less noise than
    the input by the image's own estimate."""
    from denoise_core.raw.denoise import output_name
    img = R.read_raw(path)
    assert img.meta.make and img.meta.iso, img.meta
    print(f"{path.name}: {img.meta.camera} ISO {img.meta.iso:g}, {img.mosaic.shape}, noise {img.noise_source}")
    dst = tmp_path / output_name(path, None)
    process_raw(RawDenoiser("raw"), path, dst)
    if dst.suffix == ".dng":
        out = R.read_raw(dst)
        assert out.mosaic.shape == img.mosaic.shape and out.meta == img.meta
        before, after = R.estimate_noise(img.planes()), R.estimate_noise(out.planes())
        x = 0.1  # the estimated noise variance at a dark mid-tone
        assert np.all(after[0] * x + after[1] < 0.5 * (before[0] * x + before[1])), (before, after)
    else:
        with tifffile.TiffFile(dst) as t:
            assert t.pages[0].dtype == np.uint16 and t.pages[0].shape[2] == 3
            out = t.pages[0].asarray().astype(np.float64)
        with rawpy.imread(str(path)) as r:  # LibRaw's development of the file as it is
            ref = r.postprocess(**DOCUMENTED_DEVELOPMENT).astype(np.float64)
        assert out.shape == ref.shape
        h, w = (s - s % 16 for s in out.shape[:2])

        def coarse(a):  # 16x16 block means of each channel: the picture without its noise
            return a[:h, :w].reshape(h // 16, 16, w // 16, 16, 3).mean(axis=(1, 3))
        # the same picture, white balance and exposure (denoising before the tone curve brightens
        # noisy shadows a little, so levels are compared by correlation, channel by channel)
        for c in range(3):
            assert np.corrcoef(coarse(out)[..., c].ravel(), coarse(ref)[..., c].ravel())[0, 1] > 0.9, c

        def grain(a):  # median step between neighbouring pixels of the green channel: noise dominates it
            return float(np.median(np.abs(np.diff(a[..., 1], axis=1))))
        assert grain(out) < grain(ref), (grain(out), grain(ref))
