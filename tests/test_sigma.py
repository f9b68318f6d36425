"""The absolute noise level (`sigma`, 0-255 scale): the net is told a constant level map of
sigma / 25 in one pass; the API, CLI and worker pass it on and refuse what cannot be done, by name."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from denoise_core.inference.api import Denoiser
from denoise_core.inference.checkpoint import save_checkpoint
from denoise_core.models import create_model

SMALL = {"widths": (8, 16, 16), "enc_blocks": (1, 1), "mid_blocks": 1, "dec_blocks": (1, 1)}


@pytest.fixture(scope="module")
def level_net(tmp_path_factory):
    torch.manual_seed(2)
    net = create_model("unet", **SMALL, level_input=True)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.05)
    net.eval()
    path = tmp_path_factory.mktemp("sigma") / "lv.safetensors"
    save_checkpoint(path, net, {"test": "random level net"})
    return net, path


def test_sigma_is_a_constant_level_map_in_units_of_25(level_net):
    """Oracle: the network called by hand on the image with its 16 px mirrored border (the API's
    DEFAULT_BORDER) and planes (sigma / 25, 1) everywhere."""
    net, path = level_net
    img = np.random.default_rng(0).random((64, 96, 3)).astype(np.float32)
    padded = np.pad(img, ((16, 16), (16, 16), (0, 0)), mode="symmetric")
    x = torch.from_numpy(padded).permute(2, 0, 1)[None]
    planes = torch.cat([torch.full((1, 1, 96, 128), 12.5 / 25.0), torch.ones(1, 1, 96, 128)], 1)
    with torch.no_grad():
        want = net(x, planes)[0].permute(1, 2, 0).numpy()[16:-16, 16:-16]
    dn = Denoiser(path, device="cpu", precision="fp32")
    got = dn.denoise(img, sigma=12.5, tile=4096)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    # one pass tiles exactly (to float rounding: convolutions of other sizes sum in another order)
    np.testing.assert_allclose(dn.denoise(img, sigma=12.5, tile=32), got, rtol=0, atol=1e-6)
    assert float(np.abs(got - dn.denoise(img, sigma=40.0, tile=4096)).max()) > 1e-3


def test_sigma_refused_by_name(level_net, tmp_path):
    _, path = level_net
    dn = Denoiser(path, device="cpu")
    img = np.zeros((16, 16, 3), np.uint8)
    with pytest.raises(ValueError, match="not both"):
        dn.denoise(img, noise_level=1.0, sigma=5.0)
    for bad in (-1.0, 101.0, float("nan")):
        with pytest.raises(ValueError, match="sigma must be within 0..100"):
            dn.denoise(img, sigma=bad)
    blind = tmp_path / "blind.safetensors"
    save_checkpoint(blind, create_model("seed"), {})
    with pytest.raises(ValueError, match=r"blind\.safetensors \(seed\) has no noise-level input"):
        Denoiser(blind, device="cpu").denoise(img, sigma=5.0)


def _folder(tmp_path, img):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(img).save(src / "a.png")
    return src


def test_cli_sigma_writes_the_apis_result(level_net, tmp_path):
    from denoise_cli.batch import main
    _, path = level_net
    img = (np.random.default_rng(1).random((40, 56, 3)) * 255).astype(np.uint8)
    src = _folder(tmp_path, img)
    r = CliRunner().invoke(main, [str(src), "-o", str(tmp_path / "out"), "--model", str(path), "--sigma", "8",
                                  "--device", "cpu", "--precision", "fp32"])
    assert r.exit_code == 0, r.output
    got = np.asarray(Image.open(tmp_path / "out" / "a.png"))
    want = Denoiser(path, device="cpu", precision="fp32").denoise(img, sigma=8.0)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("args,words", [
    (["--sigma", "8", "--noise-level", "1"], "not both"),
    (["--sigma", "nan"], "sigma must be within"),
    (["--sigma", "101"], "--sigma"),
])
def test_cli_sigma_usage_errors(level_net, tmp_path, args, words):
    from denoise_cli.batch import main
    _, path = level_net
    src = _folder(tmp_path, np.zeros((16, 16, 3), np.uint8))
    r = CliRunner().invoke(main, [str(src), "-o", str(tmp_path / "out"), "--model", str(path), *args])
    assert r.exit_code == 2, r.output
    assert words in r.output
    assert not (tmp_path / "out" / "a.png").exists()


def test_worker_passes_sigma(level_net, tmp_path):
    _, path = level_net
    img = np.random.default_rng(3).random((40, 48, 3)).astype(np.float32)
    (tmp_path / "in.raw").write_bytes(img.astype("<f4").tobytes())
    job = {"version": 1, "width": 48, "height": 40, "channels": 3, "input": "in.raw", "output": "out.raw",
           "model": str(path), "strength": 1.0, "sigma": 20.0, "device": "cpu", "precision": "fp32"}
    (tmp_path / "job.json").write_text(json.dumps(job))
    r = subprocess.run([sys.executable, "-m", "denoise_core.worker", str(tmp_path / "job.json")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    out = np.frombuffer((tmp_path / "out.raw").read_bytes(), "<f4").reshape(40, 48, 3)
    dn = Denoiser(path, device="cpu", precision="fp32")
    np.testing.assert_allclose(out, dn.denoise(img, sigma=20.0), rtol=0, atol=5e-4)
    assert float(np.abs(out - dn.denoise(img)).max()) > 1e-2  # the sigma reached the model


def test_client_settings_refuse_both_and_range():
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent / "denoise_plugins" / "common"))
    import denoise_client as c
    assert c.job_settings(sigma=7)["sigma"] == 7.0 and c.job_settings()["sigma"] is None
    with pytest.raises(c.WorkerError, match="not both"):
        c.job_settings(sigma=7, noise_level=1)
    with pytest.raises(c.WorkerError, match="within 0..100"):
        c.job_settings(sigma=200)
