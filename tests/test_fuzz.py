"""Seeded mutations of small valid PNG, JPEG (plain and with a camera's MPF preview), TIFF, WebP,
DNG and safetensors files (bit flips, truncations, overwrites, chunk/tag/segment length rewrites,
IFD pointer loops, metadata bombs, CFA colours, header rewrites): every case must end as a valid
image or one clean, named error -- no other exception, no change to the input, no temp file left,
and bounded metadata; and of the plug-in worker's requests and job files: one readable answer
each, nothing touched outside the job's folder. The counts are fixed (same cases every run)."""
import hashlib
import json
import random
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import hostile_files as hf
from denoise_cli.batch import main
from denoise_core.imaging import imageio
from denoise_core.inference.checkpoint import CheckpointError, load_checkpoint
from denoise_core.imaging.imageio import ImageReadError, ImageWriteError, Photo, read_image, write_image

CASES = 120
BASES = {"png": hf.valid_png, "png16": hf.valid_png16, "jpg": hf.valid_jpeg, "mpo": hf.jpeg_with_mpf_preview,
         "tif": hf.valid_tiff, "webp": hf.valid_webp}
EXT = {"png16": "png", "mpo": "jpg"}


class _Hang(BaseException):     # not an Exception: no catch-all on the way may swallow it
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


# ------------------------------------------------------------------------------------------- DNG

DNG_CASES = 100


def test_mutated_dngs_end_as_a_dng_or_one_named_error(tmp_path, monkeypatch, capfd, hang_guard):
    """Seeded mutations of a small Bayer DNG (tag types, counts and offsets, IFD links, CFA colours,
    bit flips, truncations) read and written back as the batch does: a DNG or a named error, and
    through denoise-batch every line on stderr names its file (tifffile's and exifread's log lines
    included)."""
    import logging

    from denoise_core.raw.rawfile import RawReadError, RawWriteError, read_raw
    from denoise_core.raw.denoise import RawDenoiser, write_dng
    rng = random.Random("issue21-dng")
    base = hf.valid_dng()
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    out.mkdir()
    outcomes = {"dng": 0, "refused": 0}
    for i in range(DNG_CASES):
        data = hf.mutate(rng, "dng", base)
        p = src / f"m{i:03d}.dng"
        p.write_bytes(data)
        signal.alarm(30)
        try:
            logging.disable(logging.WARNING)        # the command's run below checks where they go
            img = read_raw(p)
            write_dng(p, out / p.name, img.mosaic, img, strength=0.5)
            outcomes["dng"] += 1
        except (RawReadError, RawWriteError) as e:
            assert e.path in (str(p), str(out / p.name)) and e.reason and "\n" not in e.reason, i
            outcomes["refused"] += 1
        except _Hang:
            pytest.fail(f"DNG case {i} hung")
        finally:
            logging.disable(logging.NOTSET)
            signal.alarm(0)
        assert p.read_bytes() == data, i
        assert not [q.name for q in out.iterdir() if q.name.startswith(".")], i
    assert outcomes["refused"] > DNG_CASES // 10 and outcomes["dng"] > DNG_CASES // 10, outcomes

    # the command, with the network left out (the files are what is tested): the same outcomes
    monkeypatch.setattr(RawDenoiser, "denoise", lambda self, img, **kw: img.mosaic.copy())
    capfd.readouterr()
    res = tmp_path / "res"
    r = CliRunner().invoke(main, [str(src), "-o", str(res), "--model", "seed"], catch_exceptions=False)
    lines = r.output.splitlines()
    assert lines[-1] == f"{outcomes['dng']} files denoised, {outcomes['refused']} failed.", r.output
    for ln in lines[:-1]:
        assert ln.startswith((f"error: {src}/m", f"warning: {src}/m")), ln
        assert "unexpected" not in ln, ln
    assert capfd.readouterr().err == ""            # LibRaw's own complaints stay off the terminal
    assert len(list(res.iterdir())) == outcomes["dng"]


# ------------------------------------------------------------------------------- worker requests

WORKER_CASES = 150
_INTERNALS = re.compile(r"object has no attribute|not subscriptable|unhashable|NoneType|^'\w+'$|KeyError|"
                        r"positional argument|object is not iterable|cannot be interpreted|Traceback")


def test_mutated_worker_requests_get_one_readable_answer_each(tmp_path, monkeypatch, hang_guard):
    """Seeded damage to the persistent worker's requests and job files (fields of every JSON kind,
    paths out of the job folder, a FIFO, a folder, invalid JSON and bytes): one answer each, in
    order, an error in words where it fails, nothing read or written outside the job folders and
    no temp file left."""
    import io
    import json
    import threading

    from denoise_core import worker
    rng = random.Random("issue21-worker")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.raw").write_bytes(np.zeros(36, "<f4").tobytes())
    lines = []
    for i in range(WORKER_CASES):
        folder = tmp_path / f"denoise-cnn-{i:03d}"
        hf.job_folder(folder, outside)
        lines.append(hf.worker_request(rng, i, folder, outside))
    before = sorted(p.name for p in outside.iterdir())
    out = io.StringIO()
    monkeypatch.setattr(worker, "_OUT", [out])
    feed, more = iter(lines + [b'{"cmd": "quit"}\n']), threading.Event()

    def read_chunk():
        for line in feed:
            return line
        more.wait()
        return b""
    signal.alarm(120)
    try:
        assert worker._serve_connection(read_chunk, {}, 120) == "quit"
    except _Hang:
        pytest.fail("the worker hung")
    finally:
        signal.alarm(0)
        more.set()
    events = [json.loads(ln) for ln in out.getvalue().splitlines()][1:-1]
    answers = [e for e in events if e["event"] in ("done", "info", "error")]
    assert len(answers) == sum(1 for ln in lines if ln.strip()), answers
    outcomes = {"done": 0, "info": 0, "error": 0}
    for e in answers:
        outcomes[e["event"]] += 1
        if e["event"] == "error":
            msg = e["message"]
            assert msg and "\n" not in msg and not _INTERNALS.search(msg), e
    for i, line in enumerate(lines):          # each intact id is answered once
        try:
            sent = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if isinstance(sent, dict) and sent.get("id") == i:
            assert sum(1 for e in answers if e.get("id") == i) == 1, (i, line)
    assert outcomes["error"] > WORKER_CASES // 4 and outcomes["done"] + outcomes["info"] > WORKER_CASES // 10, outcomes
    assert sorted(p.name for p in outside.iterdir()) == before
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("denoise-cnn-")) == ["outside"]
    assert not [p for p in tmp_path.rglob(".*.part")]
