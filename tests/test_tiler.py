import numpy as np
import pytest
import torch

from denoise_core.api import Denoiser
from denoise_core.checkpoint import save_checkpoint
from denoise_core.models import create_model
from denoise_core.tiler import make_grid, mirror_indices, read_window


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


@pytest.mark.parametrize("overlap,tol,precision", [(None, 1e-4, "fp32"), (16, 1.0 / 255, "fp32"),
                                                   (None, 1.0 / 255, "bf16")])
def test_no_seams_on_flat_image(overlap, tol, precision):
    """Tile borders leave no trace: with the shipped model, tiled output matches the whole-image run,
    exactly (fp32) with the default overlap, and within one 8-bit level when the overlap is cut to
    16 px (there the blend ramps hide what the missing context changes) or in bf16 (whose
    convolutions round differently with the input's size)."""
    dn = Denoiser("default", device="cpu", precision=precision)
    flat = np.full((200, 264, 3), 0.4, np.float32)
    whole = dn.denoise(flat, tile=4096)
    tiled = dn.denoise(flat, tile=48, overlap=overlap)
    assert float(np.abs(tiled - whole).max()) < tol


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


def test_progress_and_cancel(random_unet):
    from denoise_core.api import Cancelled
    img = np.zeros((100, 100, 3), np.float32)
    seen = []
    random_unet.denoise(img, tile=32, progress=lambda d, t: seen.append((d, t)))
    assert seen[-1][0] == seen[-1][1] and len(seen) == seen[-1][1] > 1
    calls = []
    with pytest.raises(Cancelled):
        random_unet.denoise(img, tile=32, cancel=lambda: len(calls) > 2 or calls.append(1) is not None and False)
