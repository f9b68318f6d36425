"""The noise-level control: the map measures noise, grown weights start as the blind net, the
two-pass run tiles exactly, and the API, CLI and worker refuse what they cannot do, by name."""
from __future__ import annotations

from typing import Any
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from denoise_core.inference.api import Denoiser
from denoise_core.inference.checkpoint import save_checkpoint
from denoise_core.inference.levels import level_map, level_planes, training_levels
from denoise_core.models import create_model

SMALL = {"widths": (8, 16, 16), "enc_blocks": (1, 1), "mid_blocks": 1, "dec_blocks": (1, 1)}


def test_level_map_reads_gaussian_sigma_in_units_of_25():
    noise = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(0)) * (12.5 / 255)
    m = level_map(noise)
    assert m.shape == (1, 1, 128, 128)
    assert abs(float(m.mean()) - 0.5) < 0.02
    assert float(level_map(torch.zeros(1, 3, 8, 8)).abs().max()) == 0.0


def test_level_map_on_tiny_inputs_equals_hand_computed_values():
    """Values worked out by hand, not with the module's constants: a level is the RMS of the
    residual over a 9x9 window (mirrored at the edges, the edge pixel not repeated) and the colour
    channels, in units of 25/255."""
    u = 25 / 255
    # 25/255 everywhere: level 1; in one channel of three only: sqrt(1/3)
    torch.testing.assert_close(level_map(torch.full((1, 3, 9, 9), u)), torch.ones(1, 1, 9, 9))
    one = torch.zeros(1, 3, 9, 9)
    one[:, 1] = 2 * u
    torch.testing.assert_close(level_map(one), torch.full((1, 1, 9, 9), 2 / 3 ** 0.5))
    # one pixel of 9 * 25/255 in the middle of a 9x9 residual: every 9x9 window holds it once, so the
    # centre reads sqrt(81 u^2 / 81) = 1; at an edge's middle the mirror brings it in twice (sqrt 2),
    # in a corner four times (2)
    imp = torch.zeros(1, 1, 9, 9)
    imp[0, 0, 4, 4] = 9 * u
    m = level_map(imp)[0, 0]
    assert float(m[4, 4]) == pytest.approx(1.0, abs=1e-6)
    assert float(m[0, 4]) == pytest.approx(2 ** 0.5, abs=1e-6) and float(m[4, 8]) == pytest.approx(2 ** 0.5, abs=1e-6)
    assert float(m[0, 0]) == pytest.approx(2.0, abs=1e-6) and float(m[8, 8]) == pytest.approx(2.0, abs=1e-6)
    # the window reaches 4 px from its centre and no farther
    imp = torch.zeros(1, 1, 21, 21)
    imp[0, 0, 10, 10] = 9 * u
    row = level_map(imp)[0, 0, 10]
    assert [round(float(v), 6) for v in row[4:17]] == [0, 0] + [1] * 9 + [0, 0]


def test_training_levels_give_the_true_map_or_nothing():
    # the noise is exactly 2 * 25/255 everywhere: a told patch reads 2.0 and says so, a blind one 0, 0
    clean = torch.rand(64, 3, 16, 16)
    noisy = clean + 2 * 25 / 255
    lv = training_levels(noisy, clean, torch.Generator().manual_seed(1))
    assert lv.shape == (64, 2, 16, 16)
    given = lv[:, 1, 0, 0]
    assert set(given.unique().tolist()) == {0.0, 1.0}
    torch.testing.assert_close(lv[given == 1], torch.stack([torch.full((16, 16), 2.0), torch.ones(16, 16)])
                               .expand(int(given.sum()), 2, 16, 16))
    assert float(lv[given == 0].abs().max()) == 0.0
    # about half the patches are told (2,000 draws: 0.5 +- 0.035 holds with 99.8% probability)
    many = training_levels(torch.full((2000, 1, 9, 9), 0.3), torch.zeros(2000, 1, 9, 9),
                           torch.Generator().manual_seed(2))
    assert 0.465 < float(many[:, 1, 0, 0].mean()) < 0.535
    assert torch.equal(level_planes(None, (2, 3, 4, 4)), torch.zeros(2, 2, 4, 4))
    m = torch.rand(2, 1, 4, 4)
    assert torch.equal(level_planes(m, (2, 3, 4, 4)), torch.cat([m, torch.ones(2, 1, 4, 4)], 1))


def test_grown_level_net_computes_what_the_blind_net_did():
    torch.manual_seed(0)
    blind = create_model("unet", **SMALL)
    for p in blind.parameters():  # the outro starts at zero; make every layer count
        torch.nn.init.normal_(p, std=0.05)
    grown: Any = create_model("unet", **SMALL, level_input=True)
    grown.load_state_dict(grown.grow_from(blind.state_dict()))
    x = torch.rand(2, 3, 32, 32)
    planes = torch.rand(2, 2, 32, 32)
    with torch.no_grad():
        ref = blind(x)
        torch.testing.assert_close(grown(x), ref, atol=0, rtol=0)
        torch.testing.assert_close(grown(x, planes), ref, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="no noise-level input"):
        blind(x, planes)


@pytest.fixture(scope="module")
def level_ckpt(tmp_path_factory):
    torch.manual_seed(1)
    net = create_model("unet", **SMALL, level_input=True)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.05)
    path = tmp_path_factory.mktemp("lv") / "lv.safetensors"
    save_checkpoint(path, net, {"test": "random level net"})
    return path


def _reach(dn: Denoiser, noise_level: float | None) -> int:
    """How far (in pixels, either axis) one changed input pixel changes the output, measured: the
    most over a few positions on the model's 8 px grid."""
    rng = np.random.default_rng(5)
    img = rng.random((224, 224, 3)).astype(np.float32)
    base = dn.denoise(img, noise_level=noise_level, tile=4096)
    reach = 0
    for off in (0, 3, 5, 7):
        y = x = 108 + off
        moved = img.copy()
        moved[y, x] = 1.0 - moved[y, x]
        diff = np.abs(dn.denoise(moved, noise_level=noise_level, tile=4096) - base).max(axis=2)
        ys, xs = np.nonzero(diff)
        reach = max(reach, int(np.abs(ys - y).max()), int(np.abs(xs - x).max()))
    return reach


def test_context_covers_what_the_output_depends_on(level_ckpt):
    """context() is what the tiler and the plug-ins read around a region; it must cover the reach
    measured on the network itself (an independent oracle), blind and with a level, where two
    passes and the map's window reach much farther than one pass."""
    dn = Denoiser(level_ckpt, device="cpu", precision="fp32")
    blind, level = _reach(dn, None), _reach(dn, 1.0)
    assert 0 < blind <= dn.context(None)
    assert blind < level <= dn.context(1.0)
    assert level > dn.context(None)  # a level run needs more than one pass's context


def test_two_pass_tiles_exactly_and_levels_change_the_result(level_ckpt):
    dn = Denoiser(level_ckpt, device="cpu", precision="fp32")
    assert dn.has_levels
    img = (np.random.default_rng(0).random((150, 133, 3)) * 255).astype(np.uint8)
    whole = dn.denoise(img, noise_level=1.5, tile=4096)
    tiled = dn.denoise(img, noise_level=1.5, tile=32)
    np.testing.assert_array_equal(tiled, whole)
    assert not np.array_equal(whole, dn.denoise(img, noise_level=0.5, tile=4096))
    assert not np.array_equal(whole, dn.denoise(img, tile=4096))


def test_noise_level_refused_by_name(level_ckpt, tmp_path):
    blind = create_model("seed")
    path = tmp_path / "blind.safetensors"
    save_checkpoint(path, blind, {})
    dn = Denoiser(path, device="cpu")
    img = np.zeros((16, 16, 3), np.uint8)
    with pytest.raises(ValueError, match=r"blind\.safetensors \(seed\) has no noise-level input"):
        dn.denoise(img, noise_level=1.0)
    with pytest.raises(ValueError, match="within 0..4"):
        Denoiser(level_ckpt, device="cpu").denoise(img, noise_level=9.0)


def test_cli_noise_level_on_a_blind_model_is_a_usage_error(tmp_path):
    from denoise_cli.batch import main

    path = tmp_path / "blind.safetensors"
    save_checkpoint(path, create_model("seed"), {})
    src = tmp_path / "in"
    src.mkdir()
    from PIL import Image
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(src / "a.png")
    r = CliRunner().invoke(main, [str(src), "-o", str(tmp_path / "out"), "--model", str(path),
                                  "--noise-level", "2"])
    assert r.exit_code == 2
    assert "has no noise-level input" in r.output
    assert not (tmp_path / "out" / "a.png").exists()


def test_worker_passes_the_noise_level(level_ckpt, tmp_path):
    img = np.random.default_rng(3).random((40, 48, 3)).astype(np.float32)
    (tmp_path / "in.raw").write_bytes(img.astype("<f4").tobytes())
    job = {"version": 1, "width": 48, "height": 40, "channels": 3, "input": "in.raw", "output": "out.raw",
           "model": str(level_ckpt), "strength": 1.0, "noise_level": 2.0, "device": "cpu", "precision": "fp32"}
    (tmp_path / "job.json").write_text(json.dumps(job))
    r = subprocess.run([sys.executable, "-m", "denoise_core.worker", str(tmp_path / "job.json")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    out = np.frombuffer((tmp_path / "out.raw").read_bytes(), "<f4").reshape(40, 48, 3)
    dn = Denoiser(level_ckpt, device="cpu", precision="fp32")
    ref, blind = dn.denoise(img, noise_level=2.0), dn.denoise(img)
    # the same fp32 arithmetic in another process (its own thread count): equal to rounding
    np.testing.assert_allclose(out, ref, rtol=0, atol=5e-4)
    assert float(np.abs(out - blind).max()) > 1e-2  # the level reached the model
