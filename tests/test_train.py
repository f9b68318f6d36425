"""Training (denoise_core.training.train), `denoise-train` and `denoise-eval`: the seed net learns from
synthesized pairs, resume equals an uninterrupted run, torchrun with 2 processes trains, and bad
input fails before training with exit status 2."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from skimage import data
from test_pairs import CAMERA, write_pairs

from denoise_cli.eval import image_metrics
from denoise_cli.eval import main as eval_main
from denoise_cli.train import main as train_main
from denoise_core.inference.checkpoint import load_checkpoint, save_checkpoint
from denoise_core.training.metrics import psnr, ssim
from denoise_core.models import create_model
from denoise_core.noise.camera import NoiseSpecError, find_camera
from denoise_core.noise.synth import noisy_pair, parse_noise
from denoise_core.training.pairs import load_pairs
from denoise_core.training.train import (TrainConfig, TrainingError, fixed_val_set, loss_function, pair_val_set,
                                         random_patches, report_paths, state_path, train)

REPO = Path(__file__).resolve().parent.parent
HIGH_ISO = 'camera:"Nikon D750"@25600'
THREE = {"astronaut": {"shift": (2, -1), "gain": 1.25, "noise": HIGH_ISO},
         "coffee": {"shift": (-3, 2), "gain": 0.8, "noise": HIGH_ISO},
         "chelsea": {"shift": (1, 3), "gain": 1.1, "noise": HIGH_ISO}}


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _invoke(cmd, args):
    return CliRunner().invoke(cmd, [str(a) for a in args])


# --------------------------------------------------------------------------- training works
def test_pairs_training_raises_validation_psnr(tmp_path):
    nd, cd = write_pairs(tmp_path, {k: dict(v) for k, v in THREE.items()})
    out = tmp_path / "mine.safetensors"
    r = _invoke(train_main, ["--noisy", nd, "--clean", cd, "--arch", "seed", "--out", out, "--steps", 300,
                             "--val-fraction", 0.34, "--val-every", 50, "--device", "cpu", "--threads", 1])
    assert r.exit_code == 0, r.output
    assert "shifted by" in r.output and "exposure corrected" in r.output
    hist = torch.load(state_path(out), weights_only=True)["history"]
    first, last = hist[0]["val_psnr"], hist[-1]["val_psnr"]
    card = load_checkpoint(out).card
    val_name = card["data"].rsplit("validation: ", 1)[1]
    pair = next(p for p in load_pairs(nd, cd) if p.info.name == val_name)
    noisy_psnr = np.mean([psnr(n, c) for n, c in pair_val_set([pair.noisy], [pair.clean])])
    print(f"validation PSNR: noisy input {noisy_psnr:.2f} dB, step 50 {first:.2f}, step 300 {last:.2f}")
    assert last > first + 3
    assert last > noisy_psnr + 1
    assert card["val_psnr"] == pytest.approx(max(h["val_psnr"] for h in hist), abs=1e-3)
    assert card["val_ssim"] > hist[0]["val_ssim"]
    for png in report_paths(out):
        assert Image.open(png).size[0] > 300


def _tiny_setup():
    imgs = [np.ascontiguousarray(f()[:160, :160]) for f in (data.astronaut, data.coffee, data.chelsea)]
    val = fixed_val_set(imgs[2:], CAMERA, crop=64, per_image=1)

    def batches(gen):
        clean = random_patches(imgs[:2], 4, 48, gen)
        return noisy_pair(clean, "mix", gen, out_size=32)  # camera developments, JPEG: all replayed on resume
    cfg = TrainConfig(arch="seed", noise="mix", patch=32, batch=4, steps=40, val_every=15, checkpoint_every=10,
                      device="cpu", threads=1)
    return cfg, batches, val


def test_resume_after_interrupt_equals_uninterrupted_run(tmp_path):
    cfg, batches, val = _tiny_setup()
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    train(cfg, a, batches=batches, val_pairs=val)

    def interrupt(p):
        if p.step == 27:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        train(cfg, b, batches=batches, val_pairs=val, on_progress=interrupt)
    assert torch.load(state_path(b), weights_only=True)["step"] == 20  # lost only the steps since then
    train(cfg, b, batches=batches, val_pairs=val, resume=True)

    sa, sb = (torch.load(state_path(x), weights_only=True) for x in (a, b))
    assert sa["step"] == sb["step"] == 40
    for k in sa["model"]:
        assert torch.equal(sa["model"][k], sb["model"][k]), k
    assert sa["history"] == sb["history"] and sa["losses"] == sb["losses"]
    ca, cb = load_checkpoint(a), load_checkpoint(b)
    assert all(torch.equal(ca.state_dict[k], cb.state_dict[k]) for k in ca.state_dict)


def test_nan_loss_stops_with_a_clear_message(tmp_path):
    cfg, _, val = _tiny_setup()

    def bad(gen):
        x = torch.full((2, 3, 32, 32), float("nan"))
        return x, x
    with pytest.raises(TrainingError, match=r"loss became nan at step 1.*lower --lr"):
        train(cfg, tmp_path / "n.safetensors", batches=bad, val_pairs=val)


def test_torchrun_two_processes_train(tmp_path):
    _, cd = write_pairs(tmp_path, {k: dict(v) for k, v in THREE.items()})
    out = tmp_path / "ddp.safetensors"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = Path(sys.executable).with_name("torchrun")
    r = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "denoise_cli.train",
                        "--clean", str(cd), "--noise", "gaussian:25", "--arch", "seed", "--out", str(out),
                        "--steps", "40", "--batch", "4", "--val-every", "20", "--device", "cpu"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "on each of 2 processes" in r.stderr
    assert r.stderr.count("training seed on") == 1  # only rank 0 reports
    card = load_checkpoint(out).card
    assert card["batch"] == 8 and card["steps"] in (20, 40)
    hist = torch.load(state_path(out), weights_only=True)
    assert len(hist["gens"]) == 2 and not torch.equal(hist["gens"][0], hist["gens"][1])


def test_torchrun_ranks_see_different_data_and_end_with_equal_weights(tmp_path):
    """Each rank draws its own batches, so only DDP's gradient averaging keeps the two copies equal:
    without it (or with a rank skipping an all-reduce) the ranks' weights part after one step."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = Path(sys.executable).with_name("torchrun")
    r = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", str(REPO / "tests/ddp_ranks.py"),
                        str(tmp_path)], cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr
    r0, r1 = (torch.load(tmp_path / f"rank{i}.pt", weights_only=True) for i in (0, 1))
    assert (r0["rank"], r1["rank"], r0["world"], r1["world"]) == (0, 1, 2, 2)
    assert r0["seen"].shape == r1["seen"].shape == (12, 4)  # 12 steps of 4 patches on each rank
    assert (r0["seen"] != r1["seen"]).any(dim=1).all()      # different data at every step
    torch.manual_seed(0)                                    # the helper's starting weights
    fresh = create_model("seed").state_dict()
    assert r0["model"].keys() == r1["model"].keys() == fresh.keys()
    for k in r0["model"]:
        assert torch.equal(r0["model"][k], r1["model"][k]), f"{k}: the ranks' weights differ"
        assert not torch.equal(r0["model"][k], fresh[k]), f"{k}: never trained"
    shipped = load_checkpoint(tmp_path / "ddp.safetensors")  # rank 0's checkpoint holds those weights
    assert all(torch.equal(shipped.state_dict[k], r0["model"][k]) for k in r0["model"])


# --------------------------------------------------------------------------- camera lookup
def test_camera_lookup_tolerates_case_and_spacing_and_suggests():
    want = find_camera("Nikon D750", 6400)
    for name in ("nikon d750", "  NIKON   D750 ", "Nikon-D750", "D750"):
        assert find_camera(name, 6400) == want
    assert parse_noise('camera:"nikon d750"@6400').kind == "camera"
    with pytest.raises(NoiseSpecError, match="did you mean: .*Canon EOS 5D Mark II"):
        find_camera("canon 5d mark 2", 3200)


# --------------------------------------------------------------------------- bad input
@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs")
    write_pairs(root, {k: dict(v) for k, v in THREE.items()})
    return root


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def _train_args(tmp_path, *extra):
    return ["--arch", "seed", "--out", tmp_path / "m.safetensors", "--steps", 5, "--device", "cpu", *extra]


@pytest.mark.parametrize("case, message", [
    ("empty", "no images in this folder"),
    ("unmatched", "without a partner"),
    ("sizes", "sizes differ (noisy 192x192, clean 100x192)"),
    ("gray", "noisy is colour, clean is grayscale"),
    ("corrupt", "broken"),
])
def test_bad_pairs_fail_before_training(tmp_path, folders, case, message):
    nd, cd = _copy(folders / "noisy", tmp_path / "n"), _copy(folders / "clean", tmp_path / "c")
    if case == "empty":
        for f in nd.iterdir():
            f.unlink()
    elif case == "unmatched":
        (nd / "coffee.png").rename(nd / "coffee2.png")
    elif case == "sizes":
        Image.open(cd / "chelsea.png").crop((0, 0, 100, 192)).save(cd / "chelsea.png")
    elif case == "gray":
        Image.open(cd / "chelsea.png").convert("L").save(cd / "chelsea.png")
    elif case == "corrupt":
        (nd / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
        (cd / "broken.png").write_bytes((cd / "coffee.png").read_bytes())
    r = _invoke(train_main, ["--noisy", nd, "--clean", cd, *_train_args(tmp_path)])
    assert r.exit_code == 2, r.output
    assert message in r.output
    assert not (tmp_path / "m.safetensors").exists()


@pytest.mark.parametrize("args, message", [
    (["--noise", 'camera:"Nikon D75"@3200'], "did you mean: Nikon D5, Nikon D50, Nikon D750"),
    (["--noise", "gaussian:25", "--patch", 256], "smaller than the 256x256 patch"),
    (["--noise", "gaussian:25", "--patch", 60], "--patch 60 must be a multiple of 8"),
    (["--noise", "salt"], "unknown noise spec 'salt'"),
    (["--noise", "gaussian:25", "--resume"], "no training state"),
    (["--noise", "gaussian:25", "--arch-args", '{"depth": 3}'], "do not fit 'seed'"),
    ([], "give --noisy DIR to train on pairs, or --noise SPEC"),
])
def test_bad_synthetic_input_fails_before_training(tmp_path, folders, args, message):
    if "--patch" in args and 60 in args:
        args = [*args, "--arch", "fast"]
    r = _invoke(train_main, ["--clean", folders / "clean", *_train_args(tmp_path), *args])
    assert r.exit_code == 2, r.output
    assert message in r.output


@pytest.mark.parametrize("out", ["x.png", "weights", "mine.pt"])
def test_out_must_name_a_safetensors_file(tmp_path, folders, out):
    """`--out x.png` would write weights under an image's name: refused before anything is made."""
    args = ["--clean", folders / "clean", "--noise", "gaussian:25", "--arch", "seed", "--steps", 5,
            "--device", "cpu", "--out", tmp_path / out]
    r = _invoke(train_main, args)
    assert r.exit_code == 2, r.output
    assert f"--out {tmp_path / out}: the weights are written as a .safetensors file" in r.output
    assert list(tmp_path.iterdir()) == []


def test_unknown_init_model_suggests_the_near_name(tmp_path, folders):
    r = _invoke(train_main, ["--clean", folders / "clean", "--noise", "gaussian:25", "--init", "defualt",
                             "--out", tmp_path / "m.safetensors", "--steps", 5, "--device", "cpu"])
    assert r.exit_code == 2 and "did you mean 'default'?" in r.output, r.output


def test_noise_with_pairs_is_a_usage_error(tmp_path, folders):
    r = _invoke(train_main, ["--noisy", folders / "noisy", "--clean", folders / "clean", "--noise", "mix",
                             *_train_args(tmp_path)])
    assert r.exit_code == 2 and "--noise is for training from --clean photos alone" in r.output


def test_corrupt_clean_photo_in_synthetic_mode(tmp_path, folders):
    cd = _copy(folders / "clean", tmp_path / "c")
    (cd / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    r = _invoke(train_main, ["--clean", cd, "--noise", "gaussian:10", *_train_args(tmp_path)])
    assert r.exit_code == 2 and "1 file(s) cannot be read" in r.output and "bad.jpg" in r.output


def test_list_cameras():
    r = _invoke(train_main, ["--list-cameras"])
    assert r.exit_code == 0 and "Nikon D750" in r.output.splitlines()


def _card_psnr(path) -> float:
    return float(load_checkpoint(path).card["val_psnr"])


def test_init_fine_tunes_from_shipped_weights(tmp_path, folders):
    """--init starts from trained weights: two tiny steps keep the shipped model's quality, which a
    random start after the same two steps is far from."""
    common = ["--clean", folders / "clean", "--noise", "gaussian:25", "--steps", 2, "--lr", 1e-7,
              "--val-every", 1, "--device", "cpu", "--patch", 32, "--val-fraction", 0.34]
    tuned, scratch = tmp_path / "tuned.safetensors", tmp_path / "scratch.safetensors"
    r = _invoke(train_main, [*common, "--init", "seed", "--out", tuned])
    assert r.exit_code == 0, r.output
    assert "training seed from" in r.output
    r = _invoke(train_main, [*common, "--arch", "seed", "--out", scratch])
    assert r.exit_code == 0, r.output
    # the finished run says what its training state is for (the weights do not need it)
    assert (f"{state_path(scratch)} ({state_path(scratch).stat().st_size / 1e6:.1f} MB) is only needed to train "
            f"this run further") in r.output
    assert load_checkpoint(tuned).card["init"] == "seed.safetensors"
    assert _card_psnr(tuned) > _card_psnr(scratch) + 5.0


@pytest.mark.parametrize("args, message", [
    (["--init", "seed", "--arch", "unet"], "--init takes the architecture from its weights; drop --arch"),
    (["--init", "nosuchmodel"], "--init: unknown model 'nosuchmodel'"),
])
def test_bad_init_fails_before_training(tmp_path, folders, args, message):
    r = _invoke(train_main, ["--clean", folders / "clean", "--noise", "gaussian:25",
                             "--out", tmp_path / "m.safetensors", "--steps", 2, "--device", "cpu", *args])
    assert r.exit_code == 2, r.output
    assert message in r.output
    assert not (tmp_path / "m.safetensors").exists()


# --------------------------------------------------------------------------- denoise-eval
def test_eval_prints_per_image_and_mean_and_writes_comparisons(tmp_path, folders):
    ckpt = tmp_path / "seed.safetensors"
    torch.manual_seed(0)
    save_checkpoint(ckpt, create_model("seed"), {"noise": "none"})
    r = _invoke(eval_main, ["--noisy", folders / "noisy", "--clean", folders / "clean", "--model", ckpt,
                            "--compare-dir", tmp_path / "cmp", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    rows = {line.split()[0]: line.split()[1:] for line in r.stdout.splitlines()[1:]}
    assert set(rows) == {"astronaut", "coffee", "chelsea", "mean"}
    noisy_psnr = [float(v[0]) for k, v in rows.items() if k != "mean"]
    assert float(rows["mean"][0]) == pytest.approx(np.mean(noisy_psnr), abs=0.01)
    assert 20 < min(noisy_psnr) and max(noisy_psnr) < 45
    assert sorted(p.name for p in (tmp_path / "cmp").iterdir()) == ["astronaut.png", "chelsea.png", "coffee.png"]
    r = _invoke(eval_main, ["--noisy", folders / "noisy", "--clean", folders / "clean", "--model", "nope"])
    assert r.exit_code == 2 and "unknown model 'nope'" in r.output


def test_banded_metrics_equal_whole_image_metrics():
    rng = np.random.default_rng(0)
    a = rng.random((70, 50, 3), dtype=np.float32)
    b = np.clip(a + rng.normal(0, 0.1, a.shape).astype(np.float32), 0, 1)
    p, s = image_metrics(a, b, band=16)
    t = [torch.from_numpy(x).permute(2, 0, 1)[None] for x in (a, b)]
    assert p == pytest.approx(psnr(a, b), abs=1e-4)
    assert s == pytest.approx(ssim(*t), abs=1e-6)


def test_export_state_writes_the_last_steps_weights(tmp_path):
    """scripts/export_state.py made the shipped unet: the run's last step, not its best one."""
    cfg, batches, val = _tiny_setup()
    run = tmp_path / "run.safetensors"
    train(cfg, run, batches=batches, val_pairs=val)
    st = torch.load(state_path(run), weights_only=True)
    dest = tmp_path / "last.safetensors"
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "export_state.py"), str(run), str(dest),
                        "--card", "selection=final step"], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr
    ck = load_checkpoint(dest)
    assert all(torch.equal(ck.state_dict[k], st["model"][k]) for k in st["model"])
    assert ck.card["steps"] == st["step"] == cfg.steps and ck.card["selection"] == "final step"
    assert ck.card["val_psnr"] == round(st["history"][-1]["val_psnr"], 3)
    assert ck.card["data"] == load_checkpoint(run).card["data"]


def test_average_weights_interpolates_parameter_by_parameter(tmp_path):
    """scripts/average_weights.py made the shipped unet (an average of three trained nets)."""
    torch.manual_seed(0)
    a, b = create_model("seed", width=8), create_model("seed", width=8)
    save_checkpoint(tmp_path / "a.safetensors", a, {"steps": 1})
    save_checkpoint(tmp_path / "b.safetensors", b, {"steps": 2, "data": "b's photos"})
    save_checkpoint(tmp_path / "w.safetensors", create_model("seed", width=16))

    def average(alpha, second="b.safetensors", *extra):
        dest = tmp_path / f"avg{alpha}.safetensors"
        r = subprocess.run([sys.executable, str(REPO / "scripts" / "average_weights.py"),
                            str(tmp_path / "a.safetensors"), str(tmp_path / second), str(dest),
                            "--alpha", str(alpha), "--card", "selection=mean", *extra],
                           capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        return r, dest

    for alpha, want in ((0, a), (1, b)):
        r, dest = average(alpha)
        assert r.returncode == 0, r.stderr
        got = load_checkpoint(dest).state_dict
        assert all(torch.equal(got[k], v) for k, v in want.state_dict().items())
    r, dest = average(0.25)
    ck = load_checkpoint(dest)
    sa, sb = a.state_dict(), b.state_dict()
    for k in sa:
        torch.testing.assert_close(ck.state_dict[k], 0.75 * sa[k] + 0.25 * sb[k], rtol=0, atol=1e-7)
    assert ck.card["steps"] == 1 and ck.card["selection"] == "mean" and "0.25 x" in ck.card["averaged"]
    r, _ = average(0.5, "w.safetensors")
    assert r.returncode != 0 and "only checkpoints of the same network can be averaged" in r.stderr
    # --grow: a blind U-Net averaged into one with the noise-level input, grown exactly first
    torch.manual_seed(1)
    save_checkpoint(tmp_path / "a.safetensors", create_model("unet", level_input=True))
    blind = create_model("unet").eval()
    save_checkpoint(tmp_path / "blind.safetensors", blind)
    r, _ = average(1, "blind.safetensors")
    assert r.returncode != 0 and "--grow" in r.stderr
    r, dest = average(1, "blind.safetensors", "--grow")
    assert r.returncode == 0, r.stderr
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(load_checkpoint(dest).build()(x), blind(x))


# --------------------------------------------------------------------------- losses
def test_psnr_loss_is_minus_the_mean_image_psnr_and_weighs_light_noise_like_heavy():
    gen = torch.Generator().manual_seed(0)
    clean = torch.rand(2, 3, 48, 48, generator=gen)
    err = torch.randn(2, 3, 48, 48, generator=gen) * torch.tensor([10.0, 50.0]).view(2, 1, 1, 1) / 255
    loss = loss_function("psnr")
    mean_psnr = np.mean([psnr(clean[i:i + 1] + err[i:i + 1], clean[i:i + 1]) for i in range(2)])
    assert float(loss(clean + err, clean)) == pytest.approx(-mean_psnr, abs=0.05)  # the 50 dB cap costs ~0.03

    def gain(name, i):  # loss drop when image i's error shrinks by 10%
        shrunk = err.clone()
        shrunk[i] *= 0.9
        f = loss_function(name)
        return float(f(clean + err, clean) - f(clean + shrunk, clean))
    assert gain("psnr", 0) == pytest.approx(gain("psnr", 1), rel=0.02)
    assert gain("l1", 1) > 5 * gain("l1", 0)  # what psnr avoids: L1 follows the heavy noise
    with pytest.raises(TrainingError, match="unknown loss 'l3'; choose one of l1, l2, psnr"):
        loss_function("l3")


def test_training_with_psnr_loss_raises_validation_psnr(tmp_path):
    cfg, batches, val = _tiny_setup()
    cfg.loss, cfg.steps, cfg.val_every, cfg.lr = "psnr", 90, 30, 3e-3
    out = tmp_path / "p.safetensors"
    res = train(cfg, out, batches=batches, val_pairs=val)
    hist = res["history"]
    print("validation PSNR", [round(h["val_psnr"], 2) for h in hist])
    assert hist[-1]["val_psnr"] > hist[0]["val_psnr"] + 0.5
    assert load_checkpoint(out).card["loss"] == "psnr"
    assert Image.open(report_paths(out)[0]).size[0] > 300


def test_arch_help_names_the_shipped_unet_arguments():
    """`--arch unet` alone builds the registry's base U-Net; the help must give the arguments the
    shipped `unet` weights were built with, and they must be the ones their metadata records."""
    import json

    from denoise_cli.train import SHIPPED_UNET_ARGS
    shipped = load_checkpoint(REPO / "denoise_core/weights/unet.safetensors")
    assert json.loads(SHIPPED_UNET_ARGS) == shipped.arch_args
    assert create_model("unet", **shipped.arch_args).state_dict().keys() == shipped.state_dict.keys()
    assert create_model("unet").state_dict().keys() != shipped.state_dict.keys()  # not the same network
    r = _invoke(train_main, ["--help"])
    assert r.exit_code == 0
    assert f"--arch-args '{SHIPPED_UNET_ARGS}'" in " ".join(r.output.split())
