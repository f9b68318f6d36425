"""End to end in real Krita 5 under Xvfb (../shared/HOSTS.md).

One Krita start runs every case: the plugin is installed with the real command into a temporary
HOME, next to a test-only plugin (`denoise_cnn_test`: tests/host_plugins/krita_driver.py) that
waits for the main window, makes documents from raw pixels this test wrote, triggers the real
action `denoise_cnn`, drives the real dialog (found with a QTimer, then `accept()`), waits for the
job, and writes the layer's pixels back to files; it ends Krita with `os._exit(rc)`. All the
numbers are checked here, in pytest.

Cases: RGBA U8 (sRGB; then Edit › Undo), RGBA U16 and F32 and GRAYA U16 (linear profiles), U8 with
a rectangular selection, a missing checkpoint file (error message, layer untouched), Cancel
clicked in the progress dialog, refusals before the dialog (an active group layer, a CMYK
document), and the noise level: set to 2 with a model that has the input (compared with the core's
own result), then set with a model that has not (the worker's message).

Set DENOISE_KRITA_SHOTS=DIR to also save docs-style screenshots (krita-menu.png, krita-dialog.png).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage import data

from denoise_core.inference.api import Denoiser
from denoise_core.training.metrics import psnr
from denoise_core.noise.synth import apply_noise

REPO = Path(__file__).resolve().parent.parent
DRIVER_SRC = REPO / "tests" / "host_plugins" / "krita_driver.py"  # the test-only plugin that drives it
LEVEL = 2.0  # the noise level the level case sets in the dialog
ABS_SIGMA = 9.0  # the absolute noise sigma (0-255) the sigma case sets
PW, PH = 608, 576  # the preview case's document
KRITA_TIMEOUT = 900
W, H = 256, 192
# x, y, w, h of the selection case: not on the model's 8 px grid; the default's 178 px of context
# reach the layer's edges (the off-grid context arithmetic has its own tests in test_worker.py)
SEL = (160, 120, 64, 48)

pytestmark = pytest.mark.skipif(
    not (shutil.which("krita") and shutil.which("xvfb-run")),
    reason="krita or xvfb-run not installed (.ci/setup_krita.sh installs them)")

TEST_DESKTOP = """[Desktop Entry]
Type=Service
ServiceTypes=Krita/PythonPlugin
X-KDE-Library=denoise_cnn_test
X-Python-2-Compatible=false
Name=Denoise CNN end-to-end test
"""


def _srgb_to_linear(x):
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def _linear_to_srgb(x):
    x = np.clip(x, 0, 1)
    return np.where(x <= 0.0031308, x * 12.92, 1.055 * x ** (1 / 2.4) - 0.055)


# Krita's layouts (HOSTS.md): U8/U16 RGBA are B,G,R,A, F16/F32 R,G,B,A, grayscale G,A; documents
# made with an empty profile are sRGB at U8 and linear (…-g10) at deeper depths
_DTYPES = {"U8": (np.uint8, 255), "U16": (np.uint16, 65535), "F16": (np.float16, None),
           "F32": (np.float32, None)}


def _alpha(h, w, dt, peak):
    a = np.full((h, w), peak or 1.0, np.float64)
    a[:, ::8] = round(peak * 2 / 3) if peak else 0.6  # stripes of partial alpha: must come back exactly
    return a.astype(dt)


def _encode(img, model, depth):
    """sRGB float (H, W, 3) RGB or (H, W) gray -> Krita pixel bytes of MODEL/DEPTH."""
    h, w = img.shape[:2]
    dt, peak = _DTYPES[depth]
    val = img if depth == "U8" else _srgb_to_linear(img)
    if model == "RGBA":
        col = val[..., ::-1] if peak else val
    else:
        col = val[..., None]
    c = col.shape[-1] + 1
    px = np.empty((h, w, c), dt)
    px[..., :-1] = np.clip(np.rint(col * peak), 0, peak) if peak else col
    px[..., -1] = _alpha(h, w, dt, peak)
    return px.tobytes()


def _decode(raw, model, depth, h=H, w=W):
    """Krita pixel bytes -> (sRGB float RGB (H, W, 3) or gray (H, W), alpha as stored)."""
    dt, peak = _DTYPES[depth]
    c = 4 if model == "RGBA" else 2
    px = np.frombuffer(raw, dt).reshape(h, w, c)
    col = px[..., :-1].astype(np.float64) / (peak or 1.0)
    if model == "RGBA" and peak:
        col = col[..., ::-1]
    if depth != "U8":
        col = _linear_to_srgb(col)
    col = np.ascontiguousarray(col if model == "RGBA" else col[..., 0])
    return col, px[..., -1].copy()


@pytest.fixture(scope="module")
def krita_run(tmp_path_factory, photo_rgb):
    home = tmp_path_factory.mktemp("krita-home")
    out = tmp_path_factory.mktemp("krita-out")
    py = str(Path(sys.executable).absolute())
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("XDG_", "PYTHON", "QT_", "KRITA")) and k not in ("DISPLAY",)}
    tmpdir = tmp_path_factory.mktemp("krita-tmp")  # where the client's job folders go
    env.update(HOME=str(home), LANG="C.UTF-8", LC_ALL="C.UTF-8", TMPDIR=str(tmpdir))
    # the real install command (the `denoise-plugin` console script runs this same click group)
    r = subprocess.run([py, "-m", "denoise_cli.plugin", "install", "krita", "--python", py],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    pykrita = home / ".local/share/krita/pykrita"
    assert (pykrita / "denoise_cnn/denoise_worker.json").is_file()
    (pykrita / "denoise_cnn_test").mkdir()
    shutil.copyfile(DRIVER_SRC, pykrita / "denoise_cnn_test/__init__.py")
    (pykrita / "denoise_cnn_test.desktop").write_text(TEST_DESKTOP)
    sys.path.insert(0, str(REPO))
    from denoise_cli.install_krita import set_kritarc_flag
    set_kritarc_flag(home / ".config/kritarc", "enable_denoise_cnn_test", "true")

    clean = photo_rgb[:H, :W].astype(np.float32) / 255.0
    x = torch.from_numpy(clean).permute(2, 0, 1)[None]
    noisy = apply_noise(x, "gaussian:25", torch.Generator().manual_seed(5))[0].permute(1, 2, 0).numpy()
    clean_gray = clean.mean(axis=2)
    xg = torch.from_numpy(clean_gray)[None, None].expand(1, 3, H, W).contiguous()
    noisy_gray = apply_noise(xg, "gaussian:25", torch.Generator().manual_seed(6))[0, 0].numpy()
    shots = os.environ.get("DENOISE_KRITA_SHOTS")
    missing = str(home / "no-such-dir" / "missing.safetensors")
    from plugin_models import level_model
    levels = level_model(out)
    # a 608x576 photo (astronaut, mirrored past its 512 px) for the preview: the first case, so its
    # first preview starts the worker
    big = np.pad(data.astronaut().astype(np.float32) / 255.0, ((0, 64), (0, 96), (0, 0)), mode="reflect")
    xb = torch.from_numpy(big).permute(2, 0, 1)[None]
    nbig = apply_noise(xb, "gaussian:25", torch.Generator().manual_seed(7))[0].permute(1, 2, 0).numpy()
    cases = [
        {"name": "preview", "depth": "U8", "set_model": "default", "w": PW, "h": PH, "preview": [96, 64],
         "strength": 0.7},
        {"name": "u8", "depth": "U8", "set_model": "default", "undo": 2},
        {"name": "u16", "depth": "U16", "set_model": "seed"},
        {"name": "newlayer", "depth": "U8", "set_model": "seed", "new_layer": True, "undo": 1},
        {"name": "u8sel", "depth": "U8", "set_model": "default", "selection": list(SEL)},
        {"name": "missing", "depth": "U8", "set_model": missing},
        # small tiles: the job runs for seconds, so Cancel lands while it works
        {"name": "cancel", "depth": "U8", "set_model": "default", "tile": 64, "cancel": True},
        {"name": "f32", "depth": "F32", "set_model": "seed"},
        {"name": "gray16", "depth": "U16", "model": "GRAYA", "set_model": "seed"},
        {"name": "level", "depth": "U8", "set_model": levels, "noise_level": LEVEL},
        {"name": "level_blind", "depth": "U8", "set_model": "seed", "noise_level": 1.0},
        {"name": "sigma", "depth": "U8", "set_model": levels, "noise_level": 1.0, "sigma": ABS_SIGMA},
        {"name": "group", "depth": "U8", "group": True},
        {"name": "cmyk", "depth": "U8", "model": "CMYKA"},
    ]
    for c in cases:
        c.setdefault("model", "RGBA")
        c.setdefault("w", W)
        c.setdefault("h", H)
        if c["model"] != "CMYKA":
            img = nbig if c["name"] == "preview" else noisy_gray if c["model"] == "GRAYA" else noisy
            (out / f"{c['name']}.in").write_bytes(_encode(img, c["model"], c["depth"]))
    if shots:  # a larger, opaque photo for the docs; the dialog is cancelled after the shots
        Path(shots).mkdir(parents=True, exist_ok=True)
        big = data.astronaut()[:384].astype(np.float32) / 255.0
        xb = torch.from_numpy(big).permute(2, 0, 1)[None]
        nb = apply_noise(xb, "gaussian:20", torch.Generator().manual_seed(1))[0].permute(1, 2, 0).numpy()
        px = np.empty((384, 512, 4), np.uint8)
        px[..., :3] = np.rint(nb[..., ::-1] * 255)
        px[..., 3] = 255
        (out / "shots.in").write_bytes(px.tobytes())
        cases.insert(0, {"name": "shots", "depth": "U8", "model": "RGBA", "w": 512, "h": 384,
                         "set_model": "default", "reject": True,
                         "menu_shot": str(Path(shots, "krita-menu.png").absolute()),
                         "dialog_shot": str(Path(shots, "krita-dialog.png").absolute())})
    spec = out / "spec.json"
    spec.write_text(json.dumps({"out": str(out), "cases": cases}))
    env["DENOISE_KRITA_TEST"] = str(spec)
    t0 = time.time()
    with open(out / "krita.log", "wb") as logf:
        try:
            proc = subprocess.run(["xvfb-run", "-a", "-s", "-screen 0 1280x1024x24", "krita", "--nosplash"],
                                  env=env, stdout=logf, stderr=subprocess.STDOUT, timeout=KRITA_TIMEOUT)
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    seconds = time.time() - t0
    # Krita is gone: its worker must follow (end-of-file on its stdin), not linger with the model
    deadline = time.time() + 15
    while (workers_left := _workers_of(home)) and time.time() < deadline:
        time.sleep(0.2)
    plugin_log = (out / "plugin.log").read_text() if (out / "plugin.log").exists() else "(no plugin log)"
    krita_log = (out / "krita.log").read_text(errors="replace")[-3000:]
    assert rc == 0, f"Krita exited with {rc} after {seconds:.0f}s\n{plugin_log}\n--- krita log ---\n{krita_log}"
    results = json.loads((out / "results.json").read_text())
    if shots:  # 256 colours: a third of the size, no visible loss in UI screenshots
        from PIL import Image
        for name in ("krita-menu.png", "krita-dialog.png"):
            im = Image.open(Path(shots, name)).convert("RGB")
            im.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
                Path(shots, name), optimize=True)
    print(f"\nKrita run: {seconds:.1f}s; " + json.dumps(results))
    return {"out": out, "results": results, "clean": clean, "clean_gray": clean_gray, "cases": cases,
            "tmp_left": sorted(p.name for p in tmpdir.glob("denoise-cnn-*")), "workers_left": workers_left,
            "level_model": levels}


def _workers_of(home: Path) -> list:
    """Worker processes started under this HOME (the test's Krita) that are still running."""
    found = []
    for p in Path("/proc").iterdir():
        try:
            if (p.name.isdigit() and b"denoise_core.worker" in (p / "cmdline").read_bytes()
                    and f"HOME={home}".encode() in (p / "environ").read_bytes().split(b"\0")
                    and b"Z" not in (p / "stat").read_bytes().rsplit(b")", 1)[1].split()[:1]):
                found.append(int(p.name))
        except OSError:
            continue
    return found


def _read(run, name, ext="out"):
    case = next(c for c in run["cases"] if c["name"] == name)
    return _decode((run["out"] / f"{name}.{ext}").read_bytes(), case["model"], case["depth"], case["h"], case["w"])


def test_action_in_krita(krita_run):
    r = krita_run["results"]
    assert r["action"] and r["action_text"] == "Denoise (CNN)…"
    assert r["u8"]["dialog"] and "seed" in r["u8"]["models"] and r["u8"]["models"][0] == "default"


@pytest.mark.parametrize("name", ["u8", "u16", "f32", "gray16"])
def test_denoise_raises_psnr_keeps_alpha(krita_run, name):
    res = krita_run["results"][name]
    assert res["state"] == "done", res
    if name != "u8":
        assert "g10" in res["profile"], res["profile"]  # linear: the transfer='linear' path ran
    clean = krita_run["clean_gray" if name == "gray16" else "clean"]
    # what Krita held before the run is what this test wrote (byte order and depth as assumed)
    assert (krita_run["out"] / f"{name}.before").read_bytes() == (krita_run["out"] / f"{name}.in").read_bytes()
    before, alpha_in = _read(krita_run, name, "in")
    after, alpha_out = _read(krita_run, name)
    p0, p1 = psnr(before, clean), psnr(after, clean)
    print(f"{name}: PSNR {p0:.2f} -> {p1:.2f} dB in {res['seconds']}s")
    assert p1 > p0 + 3.0, (p0, p1)
    np.testing.assert_array_equal(alpha_out, alpha_in)


def test_whole_layer_is_the_cores_result(krita_run):
    """With the default model, Krita's result is `Denoiser.denoise` on the same pixels (to 1 level):
    a wrong channel order, transfer curve or scaling cannot pass."""
    assert krita_run["results"]["u8"]["state"] == "done"
    before, _ = _read(krita_run, "u8", "in")
    after, _ = _read(krita_run, "u8")
    want = Denoiser("default").denoise(np.rint(before * 255).astype(np.uint8)).astype(int)
    assert np.abs(np.rint(after * 255).astype(int) - want).max() <= 1


def test_result_replaces_layer_and_undo_restores(krita_run):
    res = krita_run["results"]["u8"]
    assert res["layers"] == ["Background"] and res["active"] == "Background", res
    before = (krita_run["out"] / "u8.in").read_bytes()
    assert (krita_run["out"] / "u8.out").read_bytes() != before
    # Krita 5.1: the result layer replaces the original in two undoable commands (add, remove)
    assert res["layers_after_undo"] == ["Background"], res
    assert (krita_run["out"] / "u8.undo").read_bytes() == before


def test_new_layer_keeps_the_original(krita_run):
    """"Put the result on a new layer": the original node stays, untouched, below the result; one
    undo removes the result; the option is remembered for the next run."""
    res = krita_run["results"]["newlayer"]
    assert res["state"] == "done", res
    assert res["layers"] == ["Background", "Background (denoised)"] and res["original_kept"], res
    before = (krita_run["out"] / "newlayer.in").read_bytes()
    assert (krita_run["out"] / "newlayer.orig").read_bytes() == before
    out = (krita_run["out"] / "newlayer.out").read_bytes()
    assert out != before
    assert res["layers_after_undo"] == ["Background"], res
    assert (krita_run["out"] / "newlayer.undo").read_bytes() == before
    nxt = krita_run["cases"][[c["name"] for c in krita_run["cases"]].index("newlayer") + 1]["name"]
    assert krita_run["results"][nxt]["loaded"]["new_layer"] is True
    assert krita_run["results"]["u8"]["settings"]["new_layer"] is False
    assert not krita_run["results"]["u8"]["original_kept"]  # in place: the node is replaced


def test_selection_only(krita_run):
    res = krita_run["results"]["u8sel"]
    assert res["state"] == "done", res
    x, y, w, h = SEL
    before, a0 = _read(krita_run, "u8sel", "in")
    after, a1 = _read(krita_run, "u8sel")
    inside = np.zeros(before.shape[:2], bool)
    inside[y:y + h, x:x + w] = True
    np.testing.assert_array_equal(after[~inside], before[~inside])
    np.testing.assert_array_equal(a1, a0)
    clean = krita_run["clean"]
    assert psnr(after[inside], clean[inside]) > psnr(before[inside], clean[inside]) + 3.0
    # the model's full context around the selection, on its grid: exactly the whole layer's pixels
    full, _ = _read(krita_run, "u8")
    np.testing.assert_array_equal(after[inside], full[inside])


def test_missing_model_shows_message_and_leaves_layer(krita_run):
    res = krita_run["results"]["missing"]
    assert res["state"] == "error"
    assert "missing.safetensors" in res["box_text"] and "not found" in res["box_text"], res["box_text"]
    assert "unchanged" in res["box_text"]
    assert (krita_run["out"] / "missing.out").read_bytes() == (krita_run["out"] / "missing.in").read_bytes()


def test_cancel_leaves_layer(krita_run):
    res = krita_run["results"]["cancel"]
    assert res.get("cancel_clicked") and res["state"] == "cancelled", res
    assert "cancelled" in res["box_text"]
    assert krita_run["tmp_left"] == []  # no job folder (pixels) left behind, after any case
    assert (krita_run["out"] / "cancel.out").read_bytes() == (krita_run["out"] / "cancel.in").read_bytes()


@pytest.mark.parametrize("name,words", [("group", ["paint layers", "group layer"]),
                                        ("cmyk", ["RGB and grayscale", "CMYK", "Convert"])])
def test_refuses_with_message_and_leaves_layer(krita_run, name, words):
    res = krita_run["results"][name]
    assert res["active_type"] == ("grouplayer" if name == "group" else "paintlayer"), res
    assert res["state"] == "error" and not res.get("dialog"), res  # refused before the dialog
    for w in words:
        assert w in res["box_text"], res["box_text"]
    assert (krita_run["out"] / f"{name}.out").read_bytes() == (krita_run["out"] / f"{name}.before").read_bytes()


def test_noise_level_gives_the_cores_result(krita_run):
    """The dialog's noise level reaches the model: Krita's result is the core's own
    `Denoiser.denoise(same pixels, noise_level=LEVEL)` (to 1 level at 8 bit), not the automatic one."""
    res = krita_run["results"]["level"]
    assert res["state"] == "done", res
    assert res["settings"]["noise_level"] == LEVEL and res["settings"]["model"] == krita_run["level_model"]
    before, a0 = _read(krita_run, "level", "in")
    after, a1 = _read(krita_run, "level")
    u8 = np.rint(before * 255).astype(np.uint8)
    got = np.rint(after * 255).astype(int)
    dn = Denoiser(krita_run["level_model"])
    want = dn.denoise(u8, noise_level=LEVEL).astype(int)
    auto = dn.denoise(u8).astype(int)
    assert np.abs(got - want).max() <= 1, np.abs(got - want).max()
    assert np.abs(got - auto).mean() > 0.5, np.abs(got - auto).mean()  # an ignored level gives 0
    np.testing.assert_array_equal(a1, a0)
    # the next dialog opens with the level that was accepted
    assert krita_run["results"]["level_blind"]["loaded"]["noise_level"] == LEVEL


def test_absolute_sigma_gives_the_cores_result(krita_run):
    """The dialog's absolute sigma reaches the model: Krita's result is the core's
    `Denoiser.denoise(same pixels, sigma=ABS_SIGMA)` (to 1 level at 8 bit); setting it cleared the
    relative level the case set first."""
    res = krita_run["results"]["sigma"]
    assert res["state"] == "done", res
    assert res["settings"]["sigma"] == ABS_SIGMA and res["settings"]["noise_level"] is None, res["settings"]
    before, _ = _read(krita_run, "sigma", "in")
    after, _ = _read(krita_run, "sigma")
    u8 = np.rint(before * 255).astype(np.uint8)
    got = np.rint(after * 255).astype(int)
    dn = Denoiser(krita_run["level_model"])
    want = dn.denoise(u8, sigma=ABS_SIGMA).astype(int)
    assert np.abs(got - want).max() <= 1, np.abs(got - want).max()
    assert np.abs(got - dn.denoise(u8).astype(int)).mean() > 0.5  # an ignored sigma gives 0


def test_noise_level_with_a_blind_model_says_so(krita_run):
    res = krita_run["results"]["level_blind"]
    assert res["state"] == "error", res
    assert "seed" in res["box_text"] and "no noise-level input" in res["box_text"], res["box_text"]
    assert (krita_run["out"] / "level_blind.out").read_bytes() == (krita_run["out"] / "level_blind.in").read_bytes()
    # automatic is what the other cases ran with
    assert krita_run["results"]["u8"]["settings"]["noise_level"] is None


def test_live_preview_is_the_result_and_reuses_one_worker(krita_run):
    """The preview updates by itself (at opening, after the box moved, after a control changed),
    shows at 1:1 exactly what OK then writes in that box, and the three previews and the job run
    on one worker process, started once."""
    res = krita_run["results"]["preview"]
    assert res["state"] == "done", res
    pids = res["pids"]
    assert len(pids) == 4 and len(set(pids)) == 1 and pids[0], pids
    assert res["worker_starts"] == 1
    assert krita_run["workers_left"] == []  # it ended with Krita
    secs = res["preview_seconds"]
    assert len(secs) == 3, secs
    x, y, w, h = res["preview_box"]
    assert (x, y, w, h) == (96, 64, 512, 512)
    pv = np.frombuffer((krita_run["out"] / "preview.preview").read_bytes(), np.uint8).reshape(h, w, 4)
    out = np.frombuffer((krita_run["out"] / "preview.out").read_bytes(), np.uint8).reshape(PH, PW, 4)
    np.testing.assert_array_equal(pv, out[y:y + h, x:x + w])  # the preview is the result, byte for byte
    after, _ = _read(krita_run, "preview")
    before, _ = _read(krita_run, "preview", "in")
    u8 = np.rint(before * 255).astype(np.uint8)
    dn = Denoiser("default")
    want = dn.denoise(u8, strength=0.7).astype(int)  # the job: strength 0.7, the last preview's
    assert np.abs(np.rint(after * 255).astype(int) - want).max() <= 1
    print(f"\npreview: first {secs[0]:.2f} s (worker start and model load), then 512x512 "
          f"{secs[1]:.2f} s (box moved), {secs[2]:.2f} s (strength changed)")
