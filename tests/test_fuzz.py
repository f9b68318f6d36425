"""Seeded mutations of small valid PNG, JPEG (plain and with a camera's MPF preview), TIFF, WebP
and safetensors files (bit flips, truncations, overwrites, chunk/tag/segment length rewrites, IFD
pointer loops, metadata bombs, header rewrites): every case must end as a valid image or one
clean, named error -- no other exception, no change to the input, no temp file left, and bounded
metadata. The counts are fixed (same cases every run)."""
import hashlib
import json
import random
import signal
import subprocess
import sys
from pathlib import Path

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


def run_cases(kind: str, src: Path, out: Path) -> dict:
    """The mutation cases of one kind: each must end as an image or one named error, leave its
    input as it was and no temp file. Returns the outcome counts and, measured in this process
    (which should be a fresh one, see _in_child), the rise of its peak memory over the cases."""
    imageio.MAX_PIXELS = 1 << 16     # a mutated header may claim any size
    ext = EXT.get(kind, kind)
    rng = random.Random(f"fuzz-{kind}")
    base = BASES[kind]()
    old = signal.signal(signal.SIGALRM, _alarm)
    rss0 = _reset_peak_rss()
    outcomes = {"image": 0, "refused": 0}
    try:
        for i in range(CASES):
            data = hf.mutate(rng, ext, base)
            p = src / f"m{i:03d}.{ext}"
            p.write_bytes(data)
            case = f"{kind} case {i}"
            signal.alarm(30)  # a case that blocks fails by name instead of stalling the run
            try:
                outcomes[_one_case(p, out, case)] += 1
            except _Hang:
                raise AssertionError(f"{case} hung") from None
            finally:
                signal.alarm(0)
            assert p.read_bytes() == data, case
            assert not [q.name for q in out.iterdir() if q.name.startswith(".")], case
    finally:
        signal.signal(signal.SIGALRM, old)
    peak = _status_kib("VmHWM")
    return {**outcomes, "peak_rise_mib": None if rss0 is None or peak is None else (peak - rss0) / 1024}


def _status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            return int(next(ln for ln in f if ln.startswith(key + ":")).split()[1])
    except (OSError, StopIteration, ValueError, IndexError):
        return None


def _reset_peak_rss() -> int | None:
    """Reset this process's peak resident size to its current size (Linux: /proc/self/clear_refs
    "5"), so VmHWM afterwards is the peak of what follows, not of the imports (torch's included);
    returns the size it was reset to (KiB), or None where that cannot be done."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None
    return _status_kib("VmRSS")


def _in_child(kind: str, src: Path, out: Path) -> dict:
    """run_cases in a fresh interpreter, whose peak memory, reset after the imports, is that of the
    cases alone; pytest's own (ru_maxrss is a lifetime peak) holds the peak of every earlier test,
    so a memory bomb could hide under it."""
    tests = Path(__file__).resolve().parent
    code = ("import json, sys\n"
            f"sys.path[:0] = [{str(tests)!r}, {str(tests.parent)!r}]\n"
            "import test_fuzz\n"
            "from pathlib import Path\n"
            "res = test_fuzz.run_cases(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]))\n"
            "print('RESULT', json.dumps(res))\n")
    r = subprocess.run([sys.executable, "-c", code, kind, str(src), str(out)], capture_output=True, text=True,
                       timeout=1200)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
    assert r.returncode == 0 and lines, r.stdout[-2000:] + r.stderr[-4000:]
    return json.loads(lines[-1][len("RESULT "):])


# what a run of 120 small cases may add to a process's peak memory (measured: 1-32 MiB, the most for
# PNG metadata cut at its 16 MiB cap); a metadata bomb read past that cap (77 MiB when it was
# removed), or a pixel bomb past MAX_PIXELS, goes over it
PEAK_RISE_MIB = 64


@pytest.mark.parametrize("kind", sorted(BASES))
def test_mutated_images_end_as_image_or_named_error(tmp_path, monkeypatch, kind):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    out.mkdir()
    res = _in_child(kind, src, out)
    outcomes = {k: res[k] for k in ("image", "refused")}
    assert outcomes["refused"] > CASES // 10, outcomes    # the mutations do reach the error paths
    if res["peak_rise_mib"] is not None:  # Linux; elsewhere the peak cannot be reset after the imports
        assert res["peak_rise_mib"] < PEAK_RISE_MIB, res

    # the same files through the command: the batch goes on, one line per refusal, inputs unchanged
    monkeypatch.setattr(imageio, "MAX_PIXELS", 1 << 16)
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
    rng = random.Random("fuzz-safetensors")
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
