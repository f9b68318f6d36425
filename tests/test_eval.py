"""`denoise-eval` against oracles: an identity network's denoised columns equal the noisy ones, and
SSIM equals scikit-image's (Wang et al.: Gaussian window, sigma 1.5, population covariance)."""
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from skimage.metrics import structural_similarity

from denoise_cli.eval import image_metrics
from denoise_cli.eval import main as eval_main
from denoise_core.inference.checkpoint import save_checkpoint
from denoise_core.training.metrics import ssim
from denoise_core.models import create_model


def _skimage_ssim(a: np.ndarray, b: np.ndarray) -> float:
    return float(structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                 data_range=1.0, channel_axis=2))  # pyright: ignore[reportArgumentType]


@pytest.fixture
def pairs(tmp_path, photo_rgb, photo_coffee):
    rng = np.random.default_rng(11)
    for name, img in (("astronaut", photo_rgb), ("coffee", photo_coffee)):
        for kind in ("clean", "noisy"):
            (tmp_path / kind).mkdir(exist_ok=True)
            out = img if kind == "clean" else np.clip(np.rint(img + rng.normal(0, 20, img.shape)), 0, 255)
            Image.fromarray(out.astype(np.uint8)).save(tmp_path / kind / f"{name}.png")
    return tmp_path


def test_identity_checkpoint_denoised_columns_equal_noisy_columns(tmp_path, pairs):
    ckpt = tmp_path / "identity.safetensors"
    save_checkpoint(ckpt, create_model("fast"))        # zero last conv: returns its input exactly
    r = CliRunner().invoke(eval_main, ["--noisy", str(pairs / "noisy"), "--clean", str(pairs / "clean"),
                                       "--model", str(ckpt), "--device", "cpu", "--precision", "fp32"])
    assert r.exit_code == 0, r.output
    rows = {ln.split()[0]: [float(v) for v in ln.split()[1:]] for ln in r.stdout.splitlines()[1:]}
    assert set(rows) == {"astronaut", "coffee", "mean"}
    for name, (pn, pd, sn, sd) in rows.items():
        assert 20 < pn < 35 and 0.2 < sn < 0.95, (name, pn, sn)
        assert (pd, sd) == (pn, sn), name


def test_eval_denoised_columns_follow_the_model(tmp_path, pairs):
    """The shipped net must raise both denoised columns well above the noisy ones (sigma 20)."""
    r = CliRunner().invoke(eval_main, ["--noisy", str(pairs / "noisy"), "--clean", str(pairs / "clean"),
                                       "--model", "fast", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    for ln in r.stdout.splitlines()[1:]:
        _, pn, pd, sn, sd = ln.split()
        assert float(pd) > float(pn) + 4 and float(sd) > float(sn) + 0.1, ln


@pytest.mark.parametrize("case", ["noise", "blur", "gray", "photo"])
def test_ssim_equals_scikit_image(photo_rgb, case):
    rng = np.random.default_rng(3)
    if case == "photo":
        a = photo_rgb[:97, :131].astype(np.float64) / 255
    else:
        a = rng.random((61, 77, 1 if case == "gray" else 3))
    b = (np.clip(a + rng.normal(0, 0.08, a.shape), 0, 1) if case != "blur"
         else (a + np.roll(a, 1, 0) + np.roll(a, 1, 1)) / 3)
    want = _skimage_ssim(a, b)
    t = [torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1)[None] for x in (a, b)]
    assert ssim(*t) == pytest.approx(want, abs=1e-9)
    assert image_metrics(a.astype(np.float32), b.astype(np.float32), band=16)[1] == pytest.approx(want, abs=1e-6)


def test_sigterm_while_a_comparison_is_written_leaves_no_temp_file(tmp_path, pairs, monkeypatch):
    import os
    import signal
    real_fsync = os.fsync

    def fsync_then_killed(fd):
        real_fsync(fd)
        # SIGTERM between the temp file's write and its rename, as the handler the command installed
        # runs it; sending the real signal would end pytest itself if the command had none
        handler = signal.getsignal(signal.SIGTERM)
        assert callable(handler), f"no SIGTERM handler installed ({handler!r})"
        handler(signal.SIGTERM, None)

    monkeypatch.setattr(os, "fsync", fsync_then_killed)
    before = signal.getsignal(signal.SIGTERM)
    cmp = tmp_path / "cmp"
    r = CliRunner().invoke(eval_main, ["--noisy", str(pairs / "noisy"), "--clean", str(pairs / "clean"),
                                       "--model", "seed", "--device", "cpu", "--compare-dir", str(cmp)],
                           catch_exceptions=False)
    assert r.exit_code == 143, r.output
    assert "denoise-eval: interrupted (SIGTERM)" in r.output
    assert list(cmp.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) is before
