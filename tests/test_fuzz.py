"""Seeded mutations of small valid PNG, JPEG (plain and with a camera's MPF preview), TIFF, WebP
and safetensors files (bit flips, truncations, overwrites, chunk/tag/segment length rewrites, IFD
pointer loops, metadata bombs, header rewrites): every case must end as a valid image or one
clean, named error -- no other exception, no change to the input, no temp file left, and bounded
metadata. The counts are fixed (same cases every run)."""
import hashlib
import random
import resource
import signal

import numpy as np
import pytest
from click.testing import CliRunner

import hostile_files as hf
from cli.batch import main
from denoise_core import imageio
from denoise_core.checkpoint import CheckpointError, load_checkpoint
from denoise_core.imageio import ImageReadError, ImageWriteError, Photo, read_image, write_image

CASES = 120
BASES = {"png": hf.valid_png, "png16": hf.valid_png16, "jpg": hf.valid_jpeg, "mpo": hf.jpeg_with_mpf_preview,
         "tif": hf.valid_tiff, "webp": hf.valid_webp}
EXT = {"png16": "png", "mpo": "jpg"}


class _Hang(Exception):
    pass


def _alarm(signum, frame):
    raise _Hang


@pytest.fixture
def hang_guard():
    """A case that blocks fails by name instead of stalling the suite (not a speed limit)."""
    old = signal.signal(signal.SIGALRM, _alarm)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def _check_photo(photo: Photo) -> None:
    px = photo.pixels
    assert px.ndim == 3 and px.shape[2] in (1, 3) and px.dtype in (np.uint8, np.uint16, np.float32)
    assert photo.alpha is None or photo.alpha.shape == px.shape[:2]
    meta = (len(photo.icc_profile or b"") + len(photo.exif or b"") + len(photo.info.get("xmp") or b"")
            + sum(len(k) + len(v) for k, v in photo.info.get("text", {}).items()))
    assert meta <= imageio.MAX_METADATA_BYTES


def _one_case(p, out, case) -> str:
    try:
        photo = read_image(p)
    except ImageReadError as e:
        assert e.path == str(p) and e.reason.strip(), case
        return "refused"
    _check_photo(photo)
    for fmt in {photo.format, "TIFF", "PNG"}:
        dst = out / f"{p.stem}.{fmt.lower()}"
        try:
            write_image(dst, photo, format=fmt)
        except ImageWriteError as e:        # e.g. metadata the target format cannot hold
            assert e.path == str(dst) and e.reason, case
            assert not dst.exists(), case
            continue
        assert dst.stat().st_size < photo.pixels.nbytes * 2 + 2 * imageio.MAX_METADATA_BYTES, case
        assert read_image(dst).pixels.shape == photo.pixels.shape, case
    return "image"


@pytest.mark.parametrize("kind", sorted(BASES))
def test_mutated_images_end_as_image_or_named_error(tmp_path, monkeypatch, hang_guard, kind):
    monkeypatch.setattr(imageio, "MAX_PIXELS", 1 << 16)     # a mutated header may claim any size
    ext = EXT.get(kind, kind)
    rng = random.Random(f"issue16-{kind}")
    base = BASES[kind]()
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    out.mkdir()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    outcomes = {"image": 0, "refused": 0}
    for i in range(CASES):
        data = hf.mutate(rng, ext, base)
        p = src / f"m{i:03d}.{ext}"
        p.write_bytes(data)
        case = f"{kind} case {i}"
        signal.alarm(30)
        try:
            outcomes[_one_case(p, out, case)] += 1
        except _Hang:
            pytest.fail(f"{case} hung")
        finally:
            signal.alarm(0)
        assert p.read_bytes() == data, case
        assert not [q.name for q in out.iterdir() if q.name.startswith(".")], case
    assert outcomes["refused"] > CASES // 10, outcomes    # the mutations do reach the error paths
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0 < 1 << 20   # KiB: under 1 GiB

    # the same files through the command: the batch goes on, one line per refusal, inputs unchanged
    before = {q.name: hashlib.sha256(q.read_bytes()).hexdigest() for q in src.iterdir()}
    res = tmp_path / "res"
    r = CliRunner().invoke(main, [str(src), "-o", str(res), "--model", "seed", "--tile", "64"],
                           catch_exceptions=False)
    errors = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
    assert r.exit_code == (1 if errors else 0), r.output
    assert len(errors) == outcomes["refused"], r.output
    assert all(ln.startswith(f"error: {src}/m") for ln in errors)
    assert {q.name: hashlib.sha256(q.read_bytes()).hexdigest() for q in src.iterdir()} == before
    assert len(list(res.iterdir())) == outcomes["image"]
    assert not [q.name for q in res.iterdir() if q.name.startswith(".")]


def test_mutated_checkpoints_load_or_are_refused_by_name(tmp_path, hang_guard):
    rng = random.Random("issue16-safetensors")
    base = hf.valid_safetensors()
    outcomes = {"loaded": 0, "refused": 0}
    for i in range(CASES * 2):
        data = hf.mutate(rng, "safetensors", base)
        p = tmp_path / f"m{i:03d}.safetensors"
        p.write_bytes(data)
        signal.alarm(30)
        try:
            load_checkpoint(p).build()
            outcomes["loaded"] += 1
        except CheckpointError as e:
            assert e.path == str(p) and e.problem and "\n" not in str(e), (i, str(e))
            outcomes["refused"] += 1
        except _Hang:
            pytest.fail(f"checkpoint case {i} hung")
        finally:
            signal.alarm(0)
        assert p.read_bytes() == data
    assert outcomes["refused"] > CASES, outcomes
