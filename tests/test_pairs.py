"""Pair matching and checks (denoise_core.training.pairs) on pairs synthesized from scikit-image's photos:
camera noise, a small shift and an exposure difference, as real high/base-ISO pairs have."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from denoise_core.training.metrics import psnr
from denoise_core.noise.synth import apply_noise, linear_to_srgb, srgb_to_linear
from denoise_core.training.pairs import (PairCheck, PairError, align_pair, estimate_shift, load_pairs, match_files,
                                         overlap_slices, to_unit)
from denoise_core.training.train import split_by_image

PHOTOS = {"astronaut": data.astronaut, "coffee": data.coffee, "chelsea": data.chelsea}
CAMERA = 'camera:"Nikon D750"@12800'


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def synth_pair(photo: str, *, shift=(0, 0), gain: float = 1.0, noise: str = CAMERA, size: int = 192,
               seed: int = 0, scale: int = 1):
    """(noisy, clean, truth) uint8: noisy[y, x] shows clean[y - dy, x - dx], exposed `gain` times
    brighter in linear light, with `noise`; truth is the noisy image before noise was added."""
    base = PHOTOS[photo]()
    if scale > 1:
        base = np.array(Image.fromarray(base).resize((base.shape[1] * scale, base.shape[0] * scale)))
    b = torch.from_numpy(base).float().permute(2, 0, 1)[None] / 255
    (dy, dx), off = shift, 24
    clean = b[..., off:off + size, off:off + size]
    truth = linear_to_srgb(srgb_to_linear(b[..., off - dy:off - dy + size, off - dx:off - dx + size]) * gain)
    noisy = apply_noise(truth, noise, torch.Generator().manual_seed(seed))

    def u8(t):
        return (t[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    return u8(noisy), u8(clean), u8(truth)


def write_pairs(root: Path, specs: dict[str, dict]) -> tuple[Path, Path]:
    """Write synthesized pairs as PNGs into root/noisy and root/clean."""
    nd, cd = root / "noisy", root / "clean"
    nd.mkdir(parents=True, exist_ok=True)
    cd.mkdir(parents=True, exist_ok=True)
    for i, (name, kw) in enumerate(specs.items()):
        noisy, clean, _ = synth_pair(kw.pop("photo", name), seed=i, **kw)
        Image.fromarray(noisy).save(nd / f"{name}.png")
        Image.fromarray(clean).save(cd / f"{name}.png")
    return nd, cd


@pytest.mark.parametrize("photo", sorted(PHOTOS))
def test_shift_and_exposure_are_found_and_corrected(photo):
    noisy, clean, truth = synth_pair(photo, shift=(3, -2), gain=1.3)
    pair = align_pair(photo, noisy, clean)
    assert pair.info.shift == (3, -2)
    assert pair.noisy.shape == pair.clean.shape == (189, 190, 3)
    assert all(abs(g - 1.3) < 0.03 for g in pair.info.gain), pair.info.gain
    text = pair.info.describe()
    assert "shifted by (dy=+3, dx=-2)" in text and "exposure corrected" in text
    # the target is the clean scene at the noisy image's exposure, aligned to it
    sn, _ = overlap_slices(noisy.shape[:2], (3, -2))
    assert psnr(pair.clean / 65535.0, truth[sn] / 255.0) > 45
    assert psnr(to_unit(clean)[:189, 2:], truth[sn] / 255.0) < 25  # uncorrected it would be far off


def test_brightened_pair_target_takes_the_noisy_exposure():
    noisy, clean, truth = synth_pair("chelsea", gain=1.6)
    pair = align_pair("chelsea", noisy, clean)
    assert pair.info.shift == (0, 0)
    assert all(1.55 < g < 1.65 for g in pair.info.gain)
    assert abs(float(pair.clean.mean()) / 65535 - float(truth.mean()) / 255) < 0.003
    assert abs(float(clean.mean()) / 255 - float(truth.mean()) / 255) > 0.05


def test_identical_exposure_is_left_alone():
    noisy, clean, _ = synth_pair("coffee")
    pair = align_pair("coffee", noisy, clean)
    assert pair.info.shift == (0, 0)
    assert all(abs(g - 1) < 0.02 for g in pair.info.gain)
    assert "exposure corrected" not in pair.info.describe()


def test_shifted_pair_beyond_the_limit_is_rejected_with_its_shift():
    noisy, clean, _ = synth_pair("astronaut", shift=(12, -5))
    with pytest.raises(PairError, match=r"frame_7: .*shifted by \(dy=\+12, dx=-5\) px, more than the 8 px"):
        align_pair("frame_7", noisy, clean)
    assert align_pair("frame_7", noisy, clean, PairCheck(max_shift=12)).info.shift == (12, -5)


def test_two_different_photos_are_rejected_with_both_names(tmp_path):
    nd, cd = write_pairs(tmp_path, {"shot1": {"photo": "astronaut"}})
    _, other, _ = synth_pair("coffee")
    Image.fromarray(other).save(cd / "shot1.png")
    with pytest.raises(PairError) as e:
        load_pairs(nd, cd)
    msg = str(e.value)
    assert "shot1.png / shot1.png" in msg and "not look like the same scene" in msg


def test_coarse_to_fine_shift_on_a_larger_image():
    noisy, clean, _ = synth_pair("astronaut", shift=(5, -7), size=960, scale=2, noise="gaussian:20")
    assert estimate_shift(to_unit(noisy), to_unit(clean)) == (5, -7)


def test_unmatched_files_are_all_listed(tmp_path):
    nd, cd = write_pairs(tmp_path, {"a": {"photo": "coffee"}, "b": {"photo": "chelsea"}})
    (nd / "b.png").rename(nd / "x.png")
    (cd / "a.png").rename(cd / "a.jpg.png")
    with pytest.raises(PairError) as e:
        match_files(nd, cd)
    msg = str(e.value)
    assert "without a partner" in msg
    for name in ("x.png", "b.png", "a.png", "a.jpg.png"):
        assert name in msg


def test_pairs_match_by_name_across_extensions(tmp_path):
    nd, cd = write_pairs(tmp_path, {"img": {"photo": "coffee"}})
    (cd / "img.png").rename(cd / "IMG.PNG")
    assert [(n, a.name, b.name) for n, a, b in match_files(nd, cd)] == [("img", "img.png", "IMG.PNG")]


def test_empty_and_missing_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(PairError, match="no images in this folder"):
        match_files(tmp_path / "empty", tmp_path / "empty")
    with pytest.raises(PairError, match="no such folder"):
        match_files(tmp_path / "nope", tmp_path / "empty")


def test_size_colour_and_corrupt_file_problems_are_reported_together(tmp_path):
    nd, cd = write_pairs(tmp_path, {"good": {"photo": "coffee"}, "small": {"photo": "chelsea"},
                                    "gray": {"photo": "astronaut"}, "broken": {"photo": "coffee"}})
    Image.open(cd / "small.png").crop((0, 0, 150, 192)).save(cd / "small.png")
    Image.open(cd / "gray.png").convert("L").save(cd / "gray.png")
    (nd / "broken.png").write_bytes((nd / "broken.png").read_bytes()[:300])
    with pytest.raises(PairError) as e:
        load_pairs(nd, cd)
    msg = str(e.value)
    assert "3 of the pairs cannot be used" in msg
    assert "small.png / small.png: sizes differ (noisy 192x192, clean 150x192)" in msg
    assert "gray.png / gray.png: noisy is colour, clean is grayscale" in msg
    assert "broken.png" in msg and "good" not in msg


def test_grayscale_pairs_work(tmp_path):
    noisy, clean, _ = synth_pair("chelsea", shift=(-2, 1), gain=0.8, noise="gaussian:15")
    pair = align_pair("g", noisy.mean(axis=2).astype(np.uint8), clean.mean(axis=2).astype(np.uint8))
    assert pair.info.shift == (-2, 1) and pair.clean.shape[2] == 1
    assert abs(pair.info.gain[0] - 0.8) < 0.05


def test_validation_split_is_by_whole_image_and_deterministic():
    tr, va = split_by_image(10, 0.2, seed=3)
    assert len(va) == 2 and sorted(tr + va) == list(range(10))
    assert split_by_image(10, 0.2, seed=3) == (tr, va)
    assert split_by_image(3, 0.1, seed=0)[1] != []        # at least one image held out
    assert split_by_image(1, 0.5, seed=0) == ([0], [])    # a single image cannot be split
