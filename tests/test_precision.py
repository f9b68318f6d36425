"""Precision: `auto` is fp16 on CUDA, bf16 on CPUs with native bfloat16 and fp32 elsewhere. The
faster arithmetic must not cost visible quality, and training in it must still learn."""
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from skimage import data

from denoise_cli.batch import main as batch_main
from denoise_core.inference import device as devmod
from denoise_core.inference.api import Denoiser
from denoise_core.inference.device import cpu_has_bf16, pick_precision
from denoise_core.training.metrics import psnr
from denoise_core.training.train import TrainConfig, fixed_val_set, random_patches, train
from denoise_core.noise.synth import apply_noise


@pytest.mark.parametrize("native_bf16, device, want", [
    (True, "cpu", torch.bfloat16), (False, "cpu", None), (True, "cuda", torch.float16),
    (False, "cuda", torch.float16), (True, "mps", None)])
def test_auto_picks_the_fast_exact_enough_dtype(monkeypatch, native_bf16, device, want):
    monkeypatch.setattr(devmod, "cpu_has_bf16", lambda: native_bf16)
    assert pick_precision(torch.device(device), "auto") is want
    assert pick_precision(torch.device(device), "fp32") is None


def test_bad_precision_is_named():
    with pytest.raises(ValueError, match="unknown precision 'fp8'; use one of auto, fp32, bf16, fp16"):
        Denoiser("seed", device="cpu", precision="fp8")
    with pytest.raises(ValueError, match="'bf16' is not supported on Apple MPS"):
        pick_precision(torch.device("mps"), "bf16")
    r = CliRunner().invoke(batch_main, ["x.png", "-o", "out", "--precision", "fp8"])
    assert r.exit_code == 2 and "fp8" in r.output


def test_bf16_runs_here_native_or_emulated():
    """The bf16 tests below run on every CPU: without native bfloat16, torch's CPU autocast emulates
    it (slower; `auto` never picks it there, but --precision bf16 must still work)."""
    print(f"native bfloat16 on this CPU: {cpu_has_bf16()}")
    dn = Denoiser("seed", device="cpu", precision="bf16")
    out = dn.denoise(np.random.default_rng(0).random((16, 16, 3), dtype=np.float32))
    assert dn.precision == "bf16" and out.shape == (16, 16, 3) and np.isfinite(out).all()


def test_bf16_costs_no_visible_quality(photo_rgb, photo_coffee):
    """bf16 rounds inside the net; on real photos at sigma 25 the shipped default must land within
    0.1 dB of its fp32 result and within half an 8-bit level on average."""
    rng = np.random.default_rng(7)
    fp32 = Denoiser("default", device="cpu", precision="fp32")
    bf16 = Denoiser("default", device="cpu", precision="bf16")
    assert (fp32.precision, bf16.precision) == ("fp32", "bf16")
    for img in (photo_rgb, photo_coffee):
        noisy = np.clip(np.rint(img + rng.normal(0, 25, img.shape)), 0, 255).astype(np.uint8)
        a, b = fp32.denoise(noisy), bf16.denoise(noisy)
        pa, pb, pn = (psnr(x / 255.0, img / 255.0) for x in (a, b, noisy))
        print(f"noisy {pn:.2f} dB, fp32 {pa:.2f} dB, bf16 {pb:.2f} dB")
        assert pb > pn + 5.0
        assert abs(pb - pa) < 0.1
        assert np.abs(a.astype(int) - b).mean() < 0.5


def test_batch_reports_its_precision(tmp_path, photo_rgb):
    Image.fromarray(photo_rgb[:64, :64]).save(tmp_path / "a.png")
    r = CliRunner().invoke(batch_main, [str(tmp_path / "a.png"), "-o", str(tmp_path / "o"), "--model", "seed",
                                        "--device", "cpu", "--precision", "fp32", "--json"])
    assert r.exit_code == 0, r.output
    start = json.loads(r.output.splitlines()[0])
    assert start["event"] == "start" and start["precision"] == "fp32"


def test_training_in_bf16_learns_and_says_so(tmp_path):
    imgs = [np.ascontiguousarray(f()[:160, :160]) for f in (data.astronaut, data.coffee, data.chelsea)]
    val = fixed_val_set(imgs[2:], "gaussian:25", crop=64, per_image=2)

    def batches(gen):
        clean = random_patches(imgs[:2], 8, 32, gen)
        return apply_noise(clean, "gaussian:25", gen), clean
    cfg = TrainConfig(arch="seed", noise="gaussian:25", patch=32, batch=8, steps=150, val_every=150,
                      checkpoint_every=150, device="cpu", threads=1, precision="bf16")
    res = train(cfg, tmp_path / "b.safetensors", batches=batches, val_pairs=val)
    noisy = float(np.mean([psnr(n, c) for n, c in val]))
    print(f"validation: noisy {noisy:.2f} dB, after 150 bf16 steps {res['best_psnr']:.2f} dB")
    assert res["card"]["precision"] == "bf16"
    assert res["best_psnr"] > noisy + 3.0


def test_denoiser_leaves_torch_thread_count_alone(tmp_path, monkeypatch):
    """torch's thread count is one setting for the whole process: a library object must not change
    it unless asked (threads=); denoise-batch, which owns its process, sets every available core."""
    before = torch.get_num_threads()
    monkeypatch.setattr(devmod, "available_cores", lambda: 3)  # not 1, not this test's setting
    try:
        torch.set_num_threads(1)
        for dev in ("cpu", "auto"):
            Denoiser("seed", device=dev, precision="fp32")
            assert torch.get_num_threads() == 1, dev
        Denoiser("seed", device="cpu", threads=2)
        assert torch.get_num_threads() == 2
        with pytest.raises(ValueError, match="threads must be at least 1"):
            Denoiser("seed", threads=0)
        torch.set_num_threads(1)
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "a.png")
        r = CliRunner().invoke(batch_main, [str(tmp_path / "a.png"), "-o", str(tmp_path / "out"), "--model", "seed",
                                            "--device", "cpu"])
        assert r.exit_code == 0, r.output
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
