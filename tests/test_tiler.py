from typing import Any
import numpy as np
import pytest
import torch

from denoise_core.inference.api import Denoiser
from denoise_core.inference.checkpoint import save_checkpoint
from denoise_core.models import create_model
from denoise_core.inference.tiler import make_grid, mirror_indices, read_window


@pytest.mark.parametrize("h,w,tile,overlap,mult", [(1, 1, 64, 8, 8), (37, 53, 16, 8, 8),
                                                   (300, 200, 64, 24, 8), (1000, 999, 256, 40, 1)])
def test_blend_weights_partition_unity_and_cover(h, w, tile, overlap, mult):
    g = make_grid(h, w, tile=tile, overlap=overlap, multiple=mult)
    acc = np.zeros((h, w))
    for t in g:
        y0, x0, y1, x1 = t.support
        acc[y0:y1, x0:x1] += g.weights(t)
        assert t.window[0] % mult == 0 and t.window[1] % mult == 0
        assert (t.window[2] - t.window[0]) % mult == 0 and (t.window[3] - t.window[1]) % mult == 0
    np.testing.assert_allclose(acc, 1.0, atol=1e-6)


def test_tile_window_size_bounded_by_tile_not_image():
    g = make_grid(20000, 15000, tile=512, overlap=64, multiple=8)
    biggest = max((t.window[2] - t.window[0]) * (t.window[3] - t.window[1]) for t in g)
    assert biggest <= (512 + 2 * 64 + 8) ** 2


def test_context_past_the_image_edge_is_the_border_not_the_overlap():
    g = make_grid(300, 200, tile=64, overlap=40, multiple=8, border=16)
    assert g.rows > 2 and g.cols > 2
    for t in g:
        (wy0, wx0, wy1, wx1), (y0, x0, y1, x1) = t.window, t.core
        assert wy0 == max(-16, y0 - 40) and wx0 == max(-16, x0 - 40)
        assert wy1 - min(y1 + 40, 300 + 16) in range(8) and wx1 - min(x1 + 40, 200 + 16) in range(8)
    assert make_grid(50, 50, tile=64, overlap=40, multiple=8).border == 40  # default: the overlap


def test_mirror_indices_any_distance():
    assert mirror_indices(-3, 4, 1).tolist() == [0] * 7
    assert mirror_indices(-2, 5, 3).tolist() == [1, 0, 0, 1, 2, 2, 1]


@pytest.mark.parametrize("window", [(-20, -30, 60, 90), (0, 0, 37, 53), (5, -8, 30, 20), (-100, 10, 5, 200),
                                    (10, 10, 20, 20), (30, -5, 45, 50)])
def test_read_window_mirrors_like_the_index_map(window):
    a = np.random.default_rng(0).integers(0, 255, (37, 53, 3)).astype(np.uint8)
    y0, x0, y1, x1 = window
    want = a[mirror_indices(y0, y1, 37)][:, mirror_indices(x0, x1, 53)]
    np.testing.assert_array_equal(read_window(a, window), want)


@pytest.fixture(scope="module")
def random_unet(tmp_path_factory):
    torch.manual_seed(0)
    m = create_model("unet")
    for p in m.parameters():
        p.data.normal_(0, 0.05)  # non-trivial weights so every layer matters
    path = tmp_path_factory.mktemp("ck") / "u.safetensors"
    save_checkpoint(path, m)
    return Denoiser(path, device="cpu", precision="fp32")


@pytest.mark.parametrize("shape", [(1, 1, 3), (37, 53, 3), (150, 230, 3), (90, 70)])
@pytest.mark.parametrize("border", [0, 16, None])
def test_tiled_equals_untiled(random_unet, shape, border):
    img = np.random.default_rng(1).random(shape).astype(np.float32)
    dn = Denoiser(random_unet.path, device="cpu", precision="fp32",
                  border=random_unet.overlap if border is None else border)
    whole = dn.denoise(img, tile=4096)
    tiled = dn.denoise(img, tile=32)
    assert tiled.shape == img.shape and tiled.dtype == img.dtype
    np.testing.assert_allclose(tiled, whole, atol=1e-4)


@pytest.mark.parametrize("scene,overlap,tol,precision", [
    ("flat", None, 1e-4, "fp32"), ("flat", 16, 1.0 / 255, "fp32"), ("flat", None, 1.0 / 255, "bf16"),
    ("photo", None, 1e-4, "fp32"), ("photo", 16, 10.0 / 255, "fp32"), ("photo", None, 1.0 / 255, "bf16")])
def test_no_seams(photo_rgb, scene, overlap, tol, precision):
    """Tile borders leave no trace: with the shipped model, tiled output matches the whole-image run,
    exactly (fp32) with the default overlap, and within one 8-bit level in bf16 (whose convolutions
    round differently with the input's size). With the overlap cut to 16 px the missing context
    shows: within one level on a flat image; on the photo's texture up to 0.0070 (1.8 levels) with
    unet 0.3 and 0.030 (7.6 levels) with unet 0.4 and later, which read farther (the mean
    stays near 0.1 level): `--overlap` below the receptive radius trades exactness for speed."""
    dn = Denoiser("default", device="cpu", precision=precision)
    img = (np.full((200, 264, 3), 0.4, np.float32) if scene == "flat" else
           np.ascontiguousarray(photo_rgb[:200, :248]).astype(np.float32) / 255)
    whole = dn.denoise(img, tile=4096)
    tiled = dn.denoise(img, tile=48, overlap=overlap)
    assert float(np.abs(tiled - whole).max()) < tol
    assert float(np.abs(tiled - whole).mean()) < 0.5 / 255


@pytest.fixture(scope="module")
def identity_path(tmp_path_factory):
    """A `fast` net as built: its last conv is zero, so it returns its input exactly."""
    path = tmp_path_factory.mktemp("id") / "identity.safetensors"
    save_checkpoint(path, create_model("fast"))
    return path


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize("shape,tile", [((70, 90, 3), 32), ((70, 90, 3), 4096), ((33, 41, 1), 16), ((29, 31), 16)])
def test_identity_network_returns_every_sample_exactly(identity_path, precision, dtype, shape, tile):
    """Exact oracle for dtype scaling, tiling and blending: whatever the tiles, the identity net's
    output is the input, to the last 16-bit level (extremes included) and within float32 rounding."""
    rng = np.random.default_rng(5)
    if dtype == np.float32:
        img = rng.random(shape, dtype=np.float32)
    else:
        top = np.iinfo(dtype).max
        img = rng.integers(0, top + 1, shape).astype(dtype)
        img.flat[:4] = [0, top, 1, top - 1]
    dn = Denoiser(identity_path, device="cpu", precision=precision)
    out = dn.denoise(img, tile=tile)
    assert out.dtype == img.dtype and out.shape == img.shape
    if dtype == np.float32:
        np.testing.assert_allclose(out, img, rtol=0, atol=2 ** -22)
    else:
        np.testing.assert_array_equal(out, img)


def _mirror_pad_reference(net, img: np.ndarray, border: int, multiple: int) -> np.ndarray:
    """The whole image, mirror-padded by numpy (edge sample repeated) by `border` plus what rounds
    the size up to `multiple`, through the net in one call, cropped back: tiler-free."""
    h, w, c = img.shape
    pad_y = -(-(h + 2 * border) // multiple) * multiple - h - border
    pad_x = -(-(w + 2 * border) // multiple) * multiple - w - border
    padded = np.pad(img, ((border, pad_y), (border, pad_x), (0, 0)), mode="symmetric")
    x = torch.from_numpy(np.ascontiguousarray(padded)).permute(2, 0, 1)[None]
    if c == 1:
        x = x.expand(1, 3, *x.shape[2:])
    with torch.no_grad():
        y = net(x)[0]
    if c == 1:
        y = y.mean(0, keepdim=True)
    return y.permute(1, 2, 0).numpy()[border:border + h, border:border + w]


@pytest.mark.parametrize("shape,tile", [((37, 53, 3), 16), ((150, 230, 3), 32), ((90, 70, 1), 24), ((5, 3, 3), 8)])
def test_tiled_output_equals_an_independent_mirror_pad_reference(random_unet, shape, tile):
    from denoise_core.inference.checkpoint import load_checkpoint
    net: Any = load_checkpoint(random_unet.path).build()
    img = np.random.default_rng(8).random(shape).astype(np.float32)
    want = _mirror_pad_reference(net, img, random_unet.border, net.size_multiple)
    got = random_unet.denoise(img, tile=tile)
    assert np.abs(want).max() > 0.1 and np.abs(want - img).max() > 0.01     # the net does change things
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_uint_dtypes_round_trip_shape(random_unet):
    img8 = (np.random.default_rng(2).random((33, 41, 3)) * 255).astype(np.uint8)
    img16 = (np.random.default_rng(2).random((33, 41, 1)) * 65535).astype(np.uint16)
    assert random_unet.denoise(img8).dtype == np.uint8
    out16 = random_unet.denoise(img16)
    assert out16.dtype == np.uint16 and out16.shape == img16.shape


def test_strength_zero_is_identity_and_half_is_between(random_unet):
    img16 = (np.random.default_rng(3).random((40, 40, 3)) * 65535).astype(np.uint16)
    assert np.array_equal(random_unet.denoise(img16, strength=0.0), img16)
    img = img16.astype(np.float32) / 65535
    full = random_unet.denoise(img, strength=1.0)
    half = random_unet.denoise(img, strength=0.5)
    np.testing.assert_allclose(half, (img + full) / 2, atol=1e-5)


@pytest.mark.parametrize("h,w,tile,overlap,multiple", [(100, 130, 32, 8, 4), (57, 41, 16, 5, 1), (20, 20, 64, 4, 2)])
def test_tile_loop_of_an_identity_model_gives_the_image_back(h, w, tile, overlap, multiple):
    """run_tiles with a `run` that returns its window: the blend weights sum to one, so the image
    comes back, delivered in row bands that cover every row once, top to bottom."""
    from denoise_core.inference.tiler import run_tiles
    img = np.random.default_rng(0).random((h, w, 2)).astype(np.float32)
    grid = make_grid(h, w, tile=tile, overlap=overlap, multiple=multiple, border=overlap)
    out = np.full_like(img, np.nan)
    bands: list[tuple[int, int]] = []

    def put(y0: int, rows: np.ndarray) -> None:
        bands.append((y0, y0 + rows.shape[0]))
        out[y0:y0 + rows.shape[0]] = rows

    run_tiles(img, grid, lambda win: np.asarray(win, np.float32), 2, put)
    np.testing.assert_allclose(out, img, atol=1e-6)
    assert bands[0][0] == 0 and bands[-1][1] == h and all(a[1] == b[0] for a, b in zip(bands, bands[1:]))


def test_progress_and_cancel(random_unet):
    from denoise_core.inference.api import Cancelled
    img = np.zeros((100, 100, 3), np.float32)
    seen = []
    random_unet.denoise(img, tile=32, progress=lambda d, t: seen.append((d, t)))
    assert seen[-1][0] == seen[-1][1] and len(seen) == seen[-1][1] > 1
    calls = []
    with pytest.raises(Cancelled):
        random_unet.denoise(img, tile=32, cancel=lambda: len(calls) > 2 or calls.append(1) is not None and False)
