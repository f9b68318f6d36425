"""The camera-pipeline simulator (mix-v3): each stage does what a camera does, the target is the
noise-free development, and held-out settings stay out of training."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from skimage import data

from denoise_core.noise import pipeline as P
from denoise_core.training.metrics import psnr
from denoise_core.noise.camera import CameraProfile, NoiseSpecError, find_camera
from denoise_core.noise.synth import apply_noise, noisy_pair, parse_noise


def _photo(size: int = 96) -> torch.Tensor:
    a = data.astronaut()[100:100 + size, 150:150 + size].astype(np.float32) / 255
    return torch.from_numpy(a).permute(2, 0, 1)[None]


def _dev(**kw) -> P.Development:
    d = P.draw_development(torch.Generator().manual_seed(3))
    return replace(d, **{"sharpen": "none", "chroma_nr": 0.0, "downscale": 1.0, "output": "png16", **kw})


@pytest.mark.parametrize("name", sorted(P.DEMOSAICS))
def test_demosaic_reproduces_a_flat_colour_exactly(name):
    colour = torch.tensor([0.3, 0.55, 0.2]).reshape(1, 3, 1, 1)
    flat = colour.expand(1, 3, 24, 30)
    masks = torch.zeros(1, 3, 24, 30)
    masks[:, 0, 0::2, 0::2] = 1
    masks[:, 1, 0::2, 1::2] = 1
    masks[:, 1, 1::2, 0::2] = 1
    masks[:, 2, 1::2, 1::2] = 1
    mosaic = (flat * masks).sum(1, keepdim=True)
    out = P.DEMOSAICS[name](mosaic)
    torch.testing.assert_close(out, flat.expand_as(out), atol=1e-5, rtol=0)
    # and it keeps the measured photosites: demosaicing only fills in the missing colours
    torch.testing.assert_close((out * masks).sum(1, keepdim=True), mosaic, atol=1e-6, rtol=0)


def test_edge_aware_demosaics_beat_bilinear_on_a_photo():
    x = _photo(128)
    lin = x ** 2.2
    masks = torch.zeros(1, 3, 128, 128)
    masks[:, 0, 0::2, 0::2] = masks[:, 2, 1::2, 1::2] = 1
    masks[:, 1, 0::2, 1::2] = masks[:, 1, 1::2, 0::2] = 1
    m = (lin * masks).sum(1, keepdim=True)
    score = {k: psnr(f(m)[..., 8:-8, 8:-8].clamp(0, 1), lin[..., 8:-8, 8:-8]) for k, f in P.DEMOSAICS.items()}
    for k in ("malvar", "hamilton-adams", "weighted"):
        assert score[k] > score["bilinear"] + 1.0, score


@pytest.mark.parametrize("curve,param", [("srgb", 0.0), ("srgb-s", 0.4), ("base", 2.0)])
def test_tone_curves_invert(curve, param):
    y = torch.linspace(0, 1, 1001)
    torch.testing.assert_close(P.tone(P.inverse_tone(y, curve, param), curve, param), y, atol=2e-4, rtol=0)
    assert bool((torch.diff(P.tone(y, curve, param)) > 0).all())  # monotone: no two inputs look alike


def test_noise_free_development_is_the_target():
    silent = CameraProfile("test", "silent", 100.0, (0.0, 0.0, 0.0), (0.0, 0.0, 0.0))
    d = _dev(camera=silent, clip_black=False)
    noisy, target = P.simulate(_photo(), d, torch.Generator().manual_seed(0))
    torch.testing.assert_close(noisy, target, atol=0.5 / 65535 + 1e-6, rtol=0)


def test_target_does_not_depend_on_the_noise_and_the_noise_is_there():
    d = _dev(camera=find_camera("Nikon D750", 12800), ev_push=1.0)
    n1, t1 = P.simulate(_photo(), d, torch.Generator().manual_seed(1))
    n2, t2 = P.simulate(_photo(), d, torch.Generator().manual_seed(2))
    torch.testing.assert_close(t1, t2, atol=0, rtol=0)
    assert psnr(n1, t1) < 35 and psnr(n2, t2) < 35
    assert not torch.equal(n1, n2)


def test_sensor_noise_has_the_profile_variance():
    cam = find_camera("Nikon D750", 6400)
    flat = torch.full((1, 1, 256, 256), 0.2)
    noisy = P.add_sensor_noise(flat, cam, torch.Generator().manual_seed(0))
    diff = noisy - flat
    for ch, (yy, xx) in ((0, (0, 0)), (2, (1, 1))):
        var = float(diff[..., yy::2, xx::2].var())
        want = 4 * (cam.a[ch] * 0.2 + cam.b[ch])
        assert abs(var / want - 1) < 0.05, (ch, var, want)


def test_sharpening_adds_detail_and_chroma_nr_touches_chroma_only():
    x = _photo()
    sharp = P.sharpen(x, "usm", 1.0, 1.0, luma_only=False)
    assert float((sharp - x).abs().mean()) > 0.005
    ycc = P.to_ycc(x)
    nr = P.to_ycc(P.chroma_nr(x, 2.0))
    torch.testing.assert_close(nr[:, 0], ycc[:, 0], atol=1e-5, rtol=0)
    assert float((nr[:, 1:] - ycc[:, 1:]).abs().mean()) > 1e-3


def test_jpeg_round_trip_depends_on_quality_and_subsampling():
    x = _photo()
    q95 = P.jpeg(x, 95, "4:4:4")
    assert psnr(q95, x) > 38
    assert psnr(P.jpeg(x, 60, "4:2:0"), x) < psnr(q95, x) - 3
    assert not torch.equal(P.jpeg(x, 90, "4:2:2"), P.jpeg(x, 90, "4:2:0"))


def test_training_never_draws_held_out_cameras_or_settings():
    gen = torch.Generator().manual_seed(0)
    held = {m.lower() for m in P.HELDOUT_MAKERS}
    seen = [P.draw_development(gen) for _ in range(400)]
    assert not any(d.camera.maker.lower() in held for d in seen)
    assert {d.demosaic for d in seen} == set(P.TRAIN_SETTINGS.demosaics)
    assert all(d.jpeg_subsampling in ("4:2:0", "4:4:4") for d in seen)
    assert all(d.sharpen in ("none", "usm") for d in seen)
    heldout = {P.draw_camera(gen, "heldout", (3200, 12800)).maker.lower() for _ in range(50)}
    assert heldout and heldout <= held


def test_noisy_pair_crops_and_replays():
    x = _photo(112).expand(6, -1, -1, -1).contiguous()
    a = noisy_pair(x, "mix", torch.Generator().manual_seed(5), out_size=96)
    b = noisy_pair(x, "mix", torch.Generator().manual_seed(5), out_size=96)
    assert a[0].shape == a[1].shape == (6, 3, 96, 96)
    torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_noise_free_camera_files_are_their_own_target():
    x = _photo(112).expand(3, -1, -1, -1).contiguous()
    inp, tgt = P.clean_development_pair(x, torch.Generator().manual_seed(2), out_size=96)
    assert inp.shape == (3, 3, 96, 96)
    torch.testing.assert_close(inp, tgt, atol=0, rtol=0)


def test_mix_versions_are_named_and_pipeline_needs_pairs():
    assert str(parse_noise("mix")) == "mix-v6"
    assert str(parse_noise("mix-v5")) == "mix-v5"
    assert str(parse_noise("mix-v4")) == "mix-v4"
    assert str(parse_noise("mix-v3")) == "mix-v3"
    assert str(parse_noise("mix-v2")) == "mix-v2"
    with pytest.raises(NoiseSpecError, match="noisy_pair"):
        apply_noise(_photo(), "pipeline", torch.Generator())
    y, t = noisy_pair(_photo(), "mix-v2", torch.Generator().manual_seed(0))
    assert torch.equal(t, _photo())


def test_pipeline_spec_for_one_camera():
    spec = parse_noise('pipeline:"nikon d750"@12800')
    assert str(spec) == 'pipeline:"nikon d750"@12800'
    x = _photo(64).expand(2, -1, -1, -1).contiguous()
    a = noisy_pair(x, spec, torch.Generator().manual_seed(0))
    b = noisy_pair(x, spec, torch.Generator().manual_seed(0))
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert psnr(a[0], a[1]) < 40
    with pytest.raises(NoiseSpecError, match="did you mean"):
        parse_noise('pipeline:"Nikn D75"@12800')


@pytest.mark.parametrize("mix", ["mix-v4", "mix-v5", "mix-v6"])
def test_later_mixes_give_each_part_its_declared_share(mix):
    from denoise_core.noise.synth import _AS_V3, _V3_PARTS, _as_v3
    shares = _AS_V3[mix]
    n = 100_000
    parts = [0] * len(_V3_PARTS)
    for k in range(n):
        v = _as_v3((k + 0.5) / n, shares)
        # which mix-v3 interval the draw lands in (u = 1 is a noise-free camera file, u = 2 mild noise)
        parts[max(i for i, (lo, _) in enumerate(_V3_PARTS) if v >= lo)] += 1
    shares = tuple(shares) + (0.0,) * (len(_V3_PARTS) - len(shares))
    assert [round(c / n, 3) for c in parts] == [round(s, 3) for s in shares]


def test_mild_camera_noise_is_mild_correlated_and_colour():
    """What cameras write at moderate ISO: a few levels on 0-255, neighbouring pixels correlated
    (white noise has ~0 correlation at 1 px), chroma present; measured on flat grey, no JPEG draw."""
    from denoise_core.noise.synth import mild_camera_noise
    x = torch.full((1, 3, 256, 256), 0.5)
    sig, corr, chroma = [], [], []
    for seed in range(40):
        r = (mild_camera_noise(x, torch.Generator().manual_seed(seed)) - x)[0] * 255
        y = 0.299 * r[0] + 0.587 * r[1] + 0.114 * r[2]
        y = y - y.mean()
        sig.append(float(r.std()))
        corr.append(float((y[:, 1:] * y[:, :-1]).mean() / y.var()))
        chroma.append(float((r[0] - r[1]).std()))
    assert 0.7 < min(sig) and max(sig) < 16
    assert 0.3 < float(np.median(corr)) < 0.8
    assert min(chroma) > 0.2
