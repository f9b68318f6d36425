"""The plugins' worker protocol, through the shared stdlib client, as a real subprocess."""
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "plugins" / "common"))
import denoise_client as dc  # noqa: E402


def call(img, **kw):
    h, w, c = img.shape
    out = dc.run_denoise(img.astype("<f4").tobytes(), w, h, c, python=sys.executable, pythonpath=str(ROOT), **kw)
    return np.frombuffer(out, "<f4").reshape(h, w, c)


@pytest.mark.parametrize("channels,transfer", [(4, "srgb"), (4, "linear"), (2, "srgb"), (3, "srgb")])
def test_alpha_untouched_and_pixels_denoised(photo_rgb, channels, transfer):
    rng = np.random.default_rng(0)
    clean = photo_rgb[:96, :128].astype(np.float32) / 255
    if channels in (1, 2):
        clean = clean[..., 1:2]
    noisy = np.clip(clean + rng.normal(0, 0.1, clean.shape), 0, 1).astype(np.float32)
    if transfer == "linear":
        noisy_in = np.where(noisy <= 0.04045, noisy / 12.92, ((noisy + 0.055) / 1.055) ** 2.4).astype(np.float32)
    else:
        noisy_in = noisy
    alpha = rng.random((96, 128, 1)).astype(np.float32)
    img = np.concatenate([noisy_in, alpha], axis=2) if channels in (2, 4) else noisy_in
    seen = []
    out = call(img, model="seed", transfer=transfer, on_progress=seen.append)
    if channels in (2, 4):
        assert np.array_equal(out[..., -1], img[..., -1])
    colour = out[..., : (1 if channels <= 2 else 3)]
    if transfer == "linear":
        colour = np.where(colour <= 0.0031308, colour * 12.92, 1.055 * np.clip(colour, 0, None) ** (1 / 2.4) - 0.055)
    err_in = np.mean((noisy - clean) ** 2)
    err_out = np.mean((colour - clean) ** 2)
    assert err_out < err_in / 2
    assert seen and seen[-1] == 1.0


def test_missing_model_is_a_readable_error():
    with pytest.raises(dc.WorkerError) as e:
        call(np.zeros((8, 8, 4), np.float32), model="/nowhere/model.safetensors")
    assert "/nowhere/model.safetensors" in str(e.value) and "not found" in str(e.value)


def test_missing_interpreter_and_config(tmp_path):
    with pytest.raises(dc.WorkerError, match="no longer exists"):
        dc.run_denoise(b"\0" * 16, 1, 1, 4, python=str(tmp_path / "python9"))
    with pytest.raises(dc.WorkerError, match="missing"):
        dc.load_config(str(tmp_path))


def test_cancel_terminates_the_worker():
    img = np.zeros((64, 64, 3), np.float32)
    with pytest.raises(dc.Cancelled):
        call(img, model="seed", is_cancelled=lambda: True)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the worker through /proc")
def test_worker_stops_and_cleans_up_when_the_plugin_dies(tmp_path):
    """GIMP's progress-bar Cancel kills the plug-in process outright (no cleanup runs there): its
    worker must not go on burning the CPU, and the job folder with the pixels must not be left."""
    import os
    import signal
    import subprocess
    import time
    tmp = tmp_path / "t"
    tmp.mkdir()
    plugin = subprocess.Popen(
        [sys.executable, "-c", (
            "import sys, numpy as np\n"
            f"sys.path.insert(0, {str(ROOT / 'plugins' / 'common')!r})\n"
            "import denoise_client as dc\n"
            "img = np.random.default_rng(0).random((2048, 2048, 3), dtype=np.float32)\n"
            f"dc.run_denoise(img.tobytes(), 2048, 2048, 3, python=sys.executable, pythonpath={str(ROOT)!r},\n"
            "                model='default', tile=128, on_progress=lambda f: print('progress', flush=True))\n")],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "TMPDIR": str(tmp)})
    try:
        assert plugin.stdout.readline().strip() == "progress"
        (job_dir,) = tmp.iterdir()
        workers = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and str(job_dir).encode()
                   in _cmdline(p)]
        assert len(workers) == 1
        os.kill(plugin.pid, signal.SIGKILL)
        plugin.wait()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (job_dir.exists() or Path(f"/proc/{workers[0]}").exists()):
            time.sleep(0.1)
        assert not job_dir.exists(), "the job folder was left behind"
        assert not Path(f"/proc/{workers[0]}").exists() or b"Z" in _stat_state(workers[0]), "the worker runs on"
    finally:
        plugin.kill()


def _cmdline(p: Path) -> bytes:
    try:
        return (p / "cmdline").read_bytes()
    except OSError:
        return b""


def _stat_state(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return b"Z"


def test_noise_level_reaches_the_model(photo_rgb, tmp_path):
    from denoise_core.api import Denoiser
    from plugin_models import level_model
    model = level_model(tmp_path)
    u8 = photo_rgb[:64, :96]
    img = (u8.astype(np.float32) / 255)
    out = call(img, model=model, noise_level=2.0)
    want = Denoiser(model).denoise(img, noise_level=2.0)
    assert np.abs(out - want).max() < 1.5 / 255
    assert np.abs(out - call(img, model=model)).mean() > 1 / 255  # not the automatic result
    with pytest.raises(dc.WorkerError, match="seed.*no noise-level input"):
        call(img, model="seed", noise_level=1.0)
