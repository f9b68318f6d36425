"""Hostile inputs, each run through denoise-batch beside a good photo: one error line that
names the file and the reason (or a correct output where the file is valid), the batch goes on,
inputs are unchanged, and nothing partial is left in the output folder."""
from typing import Any
import hashlib
import os
import signal

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import hostile_files as hf
from denoise_cli.batch import main
from denoise_core.imaging import imageio
from denoise_core.imaging.imageio import read_image


def digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def batch(tmp_path, name, data, *extra, expect_ok) -> tuple[Any, Any]:
    """Run denoise-batch on `data` saved as `name` plus a good photo; check the rule, return the output."""
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir(parents=True)
    Image.fromarray(hf.RGB).save(src / "good.png")
    (src / name).write_bytes(data)
    before = digest(src)
    r = CliRunner().invoke(main, [str(src / "good.png"), str(src / name), "-o", str(out), "--model", "seed", *extra],
                           catch_exceptions=False)
    assert digest(src) == before
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")], "temp file left"
    assert "Traceback" not in r.output
    lines = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
    assert [p.name for p in out.iterdir() if p.stem == "good"]
    if expect_ok:
        assert r.exit_code == 0 and not lines, r.output
        return r, out
    assert r.exit_code == 1 and len(lines) == 1 and lines[0].startswith(f"error: {src / name}: "), r.output
    assert [p.stem for p in out.iterdir()] == ["good"]
    return r, lines[0]


def test_jpeg_with_quantisation_tables_1_and_2_is_denoised(tmp_path):
    _, out = batch(tmp_path, "qt.jpg", hf.jpeg_qtables_1_2(), expect_ok=True)
    assert read_image(tmp_path / "in" / "qt.jpg").info["jpeg_quality"] == 90
    assert read_image(out / "qt.jpg").pixels.shape == hf.RGB.shape


def test_absurd_tiff_resolution_written_as_png_and_tiff(tmp_path):
    _, out = batch(tmp_path, "res.tif", hf.tiff_resolution_per_cm(), "--format", "png", expect_ok=True)
    assert "dpi" not in read_image(out / "res.png").info
    _, out = batch(tmp_path / "t", "res.tif", hf.tiff_resolution_per_cm(), expect_ok=True)
    assert "dpi" not in read_image(out / "res.tif").info


def test_plausible_per_cm_resolution_still_kept(tmp_path):
    (tmp_path / "r.tif").write_bytes(hf.tiff_resolution_per_cm(118))
    assert read_image(tmp_path / "r.tif").info["dpi"] == pytest.approx((299.72, 299.72))


@pytest.mark.parametrize("links", [300, 5000])
def test_exif_pointer_loop_in_jpeg_written_as_tiff_is_bounded(tmp_path, links):
    _, out = batch(tmp_path, "loop.jpg", hf.jpeg_with_exif(hf.exif_pointer_loop(links)), "--format", "tiff",
                   expect_ok=True)
    assert (out / "loop.tif").stat().st_size < 64 << 10


def test_ifd_loop_inside_a_tiff_is_bounded(tmp_path):
    _, out = batch(tmp_path, "loop.tif", hf.tiff_with_ifd_loop(60), expect_ok=True)
    assert (out / "loop.tif").stat().st_size < 64 << 10
    assert read_image(out / "loop.tif").exif is not None


def test_exif_copy_over_the_cap_is_one_error(tmp_path, monkeypatch):
    data = hf.valid_tiff()
    monkeypatch.setattr(imageio, "MAX_METADATA_BYTES", 300)
    _, line = batch(tmp_path, "x.tif", data, expect_ok=False)
    assert "larger than 300 bytes" in line or "more than 300 bytes" in line


@pytest.mark.parametrize("ctype", [b"iCCP", b"zTXt", b"iTXt"])
def test_png_zlib_bomb_in_metadata_is_refused(tmp_path, ctype):
    import tracemalloc
    data = hf.png_bomb(ctype)
    assert len(data) < 300_000
    (tmp_path / "b.png").write_bytes(data)
    tracemalloc.start()
    with pytest.raises(imageio.ImageReadError, match="larger than 16 MiB"):
        read_image(tmp_path / "b.png")
    assert tracemalloc.get_traced_memory()[1] < 64 << 20
    tracemalloc.stop()
    _, line = batch(tmp_path, "bomb.png", data, expect_ok=False)
    assert ctype.decode() in line and "decompression bomb" in line


@pytest.mark.parametrize("tag,what", [(34675, "ICC profile"), (700, "XMP")])
def test_tiff_blob_tag_stored_as_number_is_refused(tmp_path, tag, what):
    _, line = batch(tmp_path, "n.tif", hf.tiff_blob_tag_as_number(tag), expect_ok=False)
    assert what in line and "not bytes" in line


def test_multi_page_tiff_is_refused_by_name(tmp_path):
    _, line = batch(tmp_path, "pages.tif", hf.tiff_pages(3), expect_ok=False)
    assert "multi-page TIFF (3 pages)" in line


def test_tiff_with_reduced_resolution_preview_is_denoised(tmp_path):
    _, out = batch(tmp_path, "thumb.tif", hf.tiff_pages(2, reduced=True), expect_ok=True)
    assert read_image(out / "thumb.tif").pixels.shape == hf.RGB.shape


def test_camera_jpeg_with_mpf_preview_is_denoised(tmp_path):
    _, out = batch(tmp_path, "cam.jpg", hf.jpeg_with_mpf_preview(), expect_ok=True)
    photo = read_image(out / "cam.jpg")
    assert photo.pixels.shape == hf.RGB.shape and photo.exif
    with Image.open(out / "cam.jpg") as im:
        assert im.format == "JPEG"          # the stale preview is not carried over


def test_stereo_mpf_jpeg_is_refused(tmp_path):
    _, line = batch(tmp_path, "3d.jpg", hf.jpeg_with_mpf_preview(0x020002), expect_ok=False)
    assert "multi-picture JPEG with 2 images" in line and "Disparity" in line


def test_fifo_is_refused_without_hanging(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    os.mkfifo(src / "x.png")
    Image.fromarray(hf.RGB).save(src / "good.png")
    # in a child process: a regression would block in open(), and the timeout then ends the child
    # and fails this test, instead of an alarm with no handler killing the whole test run
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-m", "denoise_cli.batch", str(src / "x.png"), str(src / "good.png"),
                        "-o", str(out), "--model", "seed"], cwd=os.path.dirname(os.path.dirname(__file__)),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stderr
    assert f"error: {src / 'x.png'}: is a FIFO (named pipe), not a regular file" in r.stderr.splitlines()
    assert (out / "good.png").is_file()


def test_newline_in_file_name_stays_one_line(tmp_path):
    data = hf.valid_png()[:100]
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    (src / "new\nline.png").write_bytes(data)
    r = CliRunner().invoke(main, [str(src / "new\nline.png"), "-o", str(out), "--model", "seed"])
    lines = r.output.splitlines()
    assert len(lines) == 2 and lines[1] == "0 files denoised, 1 failed.", lines
    assert lines[0].startswith(f"error: {src}/new\\nline.png: truncated PNG file"), lines


def test_libpng_warning_names_the_file(tmp_path, capfd, caplog):
    r, out = batch(tmp_path, "extra.png", hf.png_with_extra_image_data(), expect_ok=True)
    warned = [ln for ln in r.output.splitlines() if ln.startswith("warning:")]
    assert len(warned) == 1, r.output
    assert warned[0].startswith(f"warning: {tmp_path / 'in' / 'extra.png'}: libpng warning: "), r.output
    assert "Too much image data" in warned[0]
    assert "Too much image data" not in capfd.readouterr().err + caplog.text    # nothing unnamed logged
    with pytest.warns(imageio.ImageWarning, match="extra.png: libpng warning: IDAT: Too much image data"):
        np.testing.assert_array_equal(read_image(tmp_path / "in" / "extra.png").pixels, hf.RGB)


# ---------------------------------------------------------------------------------- checkpoints

@pytest.mark.parametrize("data,words", [
    (hf.safetensors_raw(b"[]"), "corrupt safetensors header (the JSON is an array, not an object)"),
    (hf.safetensors_raw(b"null"), "corrupt safetensors header (the JSON is null, not an object)"),
    (hf.safetensors_with_args({"width": 6000}), "width=6000 is out of range"),
    (hf.safetensors_with_args({"width": -3}), "width=-3 is out of range"),
    (hf.safetensors_with_args({"mid_blocks": 1000000}, "unet"), "mid_blocks=1000000 is out of range"),
    (hf.safetensors_with_args({"widths": [8]}, "unet"), "widths=[8] is out of range"),
    (hf.safetensors_with_args({"in_channels": 4}), "takes 4 input channels"),
])
def test_bad_checkpoint_is_one_line_naming_it(tmp_path, data, words):
    ck = tmp_path / "m.safetensors"
    ck.write_bytes(data)
    Image.fromarray(hf.RGB).save(tmp_path / "a.png")
    r = CliRunner().invoke(main, [str(tmp_path / "a.png"), "-o", str(tmp_path / "out"), "--model", str(ck)],
                           catch_exceptions=False)
    assert r.exit_code == 2
    assert r.output.splitlines() == [f"error: {ck}: " + r.output.split(f"{ck}: ", 1)[1].rstrip("\n")]
    assert words in r.output


# ---------------------------------------------------------------------------------------- signals

def _sigterm_handler_runs() -> None:
    """What SIGTERM would do to this process now, without sending it: pytest is this process, and
    without the command's handler a real SIGTERM would end the whole test run. The handler the
    command installed runs as the signal would run it; none installed fails the file (the command
    then exits 1, not 143). The real signal is sent to a child process in the test below."""
    handler = signal.getsignal(signal.SIGTERM)
    assert callable(handler), f"no SIGTERM handler installed ({handler!r})"
    handler(signal.SIGTERM, None)


def test_sigterm_during_a_write_leaves_no_part_file(tmp_path, monkeypatch):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for n in ("a.png", "b.png"):
        Image.fromarray(hf.RGB).save(src / n)
    real = imageio._WRITERS["PNG"]
    seen = []

    def write_then_get_killed(tmp, photo, quality):
        real(tmp, photo, quality)
        seen.append(sorted(p.name for p in out.iterdir()))
        _sigterm_handler_runs()

    monkeypatch.setitem(imageio._WRITERS, "PNG", write_then_get_killed)
    before = signal.getsignal(signal.SIGTERM)
    r = CliRunner().invoke(main, [str(src), "-o", str(out), "--model", "seed"], catch_exceptions=False)
    assert r.exit_code == 143
    assert seen and seen[0][0].startswith(".a.png.") and seen[0][0].endswith(".part")   # it was mid-write
    assert list(out.iterdir()) == []
    assert "interrupted (SIGTERM): 0 files denoised." in r.output
    assert signal.getsignal(signal.SIGTERM) is before


def test_sigterm_to_a_real_process_leaves_no_part_file(tmp_path):
    """The real process: SIGTERM arrives while the output of a large photo is being written."""
    import subprocess
    import sys
    import time
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    out.mkdir()
    big = np.random.default_rng(0).integers(0, 65536, (1500, 2000, 3), dtype=np.uint16)
    imageio.write_image(src / "big.tif", imageio.Photo(big), format="TIFF")
    code = ("import sys, denoise_core.imaging.imageio as io\n"
            "real = io._WRITERS['TIFF']\n"
            "def slow(tmp, photo, q):\n"
            "    real(tmp, photo, q)\n"
            "    open(sys.argv[1], 'w').close()\n"
            "    import time; time.sleep(60)\n"
            "io._WRITERS['TIFF'] = slow\n"
            "from denoise_cli.batch import main\n"
            "main(sys.argv[2:])\n")
    flag = tmp_path / "writing"
    p = subprocess.Popen([sys.executable, "-c", code, str(flag), str(src), "-o", str(out), "--model", "seed",
                          "--strength", "0"], cwd=os.path.dirname(os.path.dirname(__file__)),
                         stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(1200):
            if flag.exists() or p.poll() is not None:
                break
            time.sleep(0.1)
        assert flag.exists(), p.stderr.read() if p.poll() is not None else "never reached the write"
        assert [q.name for q in out.iterdir() if q.name.endswith(".part")]
        p.send_signal(signal.SIGTERM)
        err = p.communicate(timeout=120)[1]
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 143, err
    assert list(out.iterdir()) == []
    assert "interrupted (SIGTERM)" in err


def test_rerun_removes_temp_files_of_a_killed_run_but_not_of_a_live_one(tmp_path):
    from denoise_core.imaging.atomic import atomic_path
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    out.mkdir()
    Image.fromarray(hf.RGB).save(src / "a.png")
    stale = out / ".a.png.k3x_9QzT.png.part"          # as atomic_path names it; its writer is gone
    stale.write_bytes(b"half a PNG")
    mine = out / ".notes.part"                       # not a name atomic_path makes
    mine.write_bytes(b"keep")
    with atomic_path(out / "b.png") as live:         # a write still going (another run, say)
        live.write_bytes(b"in progress")
        r = CliRunner().invoke(main, [str(src), "-o", str(out), "--model", "seed"], catch_exceptions=False)
        assert live.exists()
    assert r.exit_code == 0, r.output
    assert f"removed {stale}: the temp file of an earlier run that was killed" in r.output.splitlines()
    assert sorted(p.name for p in out.iterdir()) == [".notes.part", "a.png", "b.png"]


def test_sigkill_mid_write_leaves_a_temp_file_the_next_run_removes(tmp_path):
    import subprocess
    import sys
    import time
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    out.mkdir()
    Image.fromarray(hf.RGB).save(src / "a.png")
    code = ("import sys, denoise_core.imaging.imageio as io\n"
            "real = io._WRITERS['PNG']\n"
            "def slow(tmp, photo, q):\n"
            "    real(tmp, photo, q)\n"
            "    open(sys.argv[1], 'w').close()\n"
            "    import time; time.sleep(60)\n"
            "io._WRITERS['PNG'] = slow\n"
            "from denoise_cli.batch import main\n"
            "main(sys.argv[2:])\n")
    flag = tmp_path / "writing"
    p = subprocess.Popen([sys.executable, "-c", code, str(flag), str(src), "-o", str(out), "--model", "seed"],
                         cwd=os.path.dirname(os.path.dirname(__file__)), stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(1200):
            if flag.exists() or p.poll() is not None:
                break
            time.sleep(0.1)
        assert flag.exists(), p.stderr.read() if p.poll() is not None else "never reached the write"
        p.kill()
        p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    left = [q for q in out.iterdir()]
    assert len(left) == 1 and left[0].name.endswith(".png.part")     # SIGKILL cannot be handled
    r = CliRunner().invoke(main, [str(src), "-o", str(out), "--model", "seed"], catch_exceptions=False)
    assert r.exit_code == 0 and f"removed {left[0]}" in r.output, r.output
    assert sorted(q.name for q in out.iterdir()) == ["a.png"]


# ---------------------------------------------------------------------------------- --resume state

def test_resume_from_an_empty_or_damaged_state_names_it(tmp_path):
    from denoise_cli.train import main as train_main
    from denoise_core.training.train import state_path
    clean = tmp_path / "clean"
    clean.mkdir()
    Image.fromarray(hf.RGB).save(clean / "a.png")
    out = tmp_path / "m.safetensors"
    sp = state_path(out)
    for content, words in [(b"", "is empty"), (b"PK\x03\x04garbage", "is not a readable training state")]:
        sp.write_bytes(content)
        r = CliRunner().invoke(train_main, ["--clean", str(clean), "--noise", "gaussian:25", "--arch", "seed",
                                            "--out", str(out), "--steps", "10", "--resume"])
        assert r.exit_code == 2, r.output
        assert "Aborted" not in r.output
        line = [ln for ln in r.output.splitlines() if "error" in ln]
        assert len(line) == 1 and str(sp) in line[0] and words in line[0], r.output
        assert sp.read_bytes() == content


# ==================================================================================================
# Issue 21: hostile input, second round. Each test fails on the code before the fix.

class _Hang(BaseException):     # not an Exception: nothing on the way may swallow it
    pass


@pytest.fixture
def hang_guard():
    """A call that blocks (a FIFO opened for reading) fails by name instead of stalling the suite."""
    def hung(signum, frame):
        raise _Hang("blocked")
    old = signal.signal(signal.SIGALRM, hung)
    yield lambda seconds: signal.alarm(seconds)
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def run_batch(*args):
    r = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert "Traceback" not in r.output
    return r


def named_lines_only(r, *paths):
    """Every line on stderr is the summary or `error:`/`warning:` naming one of `paths`."""
    prefixes = tuple(f"{kind}: {p}: " for kind in ("error", "warning") for p in paths)
    for ln in r.output.splitlines():
        assert ln.startswith(prefixes) or " denoised" in ln, ln


# ------------------------------------------------------------------------------------- resources

def test_jpeg_whose_scan_is_far_too_short_for_its_frame_is_refused_before_decoding(tmp_path, monkeypatch):
    data = hf.jpeg_frame_size(65000, 2700)          # 634 bytes, 175.5 MP: under the pixel limit
    assert len(data) < 700
    (tmp_path / "x.jpg").write_bytes(data)
    monkeypatch.setattr(Image.Image, "load", lambda self: pytest.fail("decoded"))
    with pytest.raises(imageio.ImageReadError, match=r"truncated or corrupt JPEG file: \d+ bytes of scan data "
                                                     r"cannot hold a 65000x2700 image"):
        read_image(tmp_path / "x.jpg")
    monkeypatch.undo()
    _, line = batch(tmp_path / "b", "x.jpg", data, expect_ok=False)
    assert "65000x2700" in line


def test_png_whose_pixel_data_is_far_too_short_for_its_header_is_refused_before_decoding(tmp_path, monkeypatch):
    data = hf.png_idat_size(60000, 2900)
    (tmp_path / "x.png").write_bytes(data)
    monkeypatch.setattr(imageio.imagecodecs, "png_decode", lambda *a, **k: pytest.fail("decoded"))
    with pytest.raises(imageio.ImageReadError, match=r"truncated or corrupt PNG file: \d+ bytes of compressed "
                                                     r"pixel data cannot hold a 60000x2900 image"):
        read_image(tmp_path / "x.png")


# ---------------------------------------------------------------------------------------- worker

class _Session:
    """The persistent worker's request loop, in this process, fed `chunks`; returns its events.
    The input then stays open (never end-of-file, which would end the process during a job)."""

    def __init__(self, monkeypatch):
        import io
        import threading

        from denoise_core import worker
        self.worker, self.out, self.more = worker, io.StringIO(), threading.Event()
        monkeypatch.setattr(worker, "_OUT", [self.out])

    def __call__(self, *chunks: bytes, cache=None) -> list[dict]:
        import json
        feed = iter(chunks + (b'{"cmd": "quit"}\n',))

        def read_chunk():
            for c in feed:
                return c
            self.more.wait()
            return b""
        try:
            assert self.worker._serve_connection(read_chunk, {} if cache is None else cache, 120) == "quit"
        finally:
            self.more.set()
        return [json.loads(ln) for ln in self.out.getvalue().splitlines()][1:-1]     # less ready, bye


def test_worker_request_without_a_newline_is_capped(monkeypatch):
    from denoise_core.worker import MAX_REQUEST_BYTES
    s = _Session(monkeypatch)
    line = b"x" * (4 << 20)
    events = s(*(line[i:i + 65536] for i in range(0, len(line), 65536)), b"\n", b'{"cmd": "nope", "id": 7}\n')
    assert MAX_REQUEST_BYTES <= 1 << 20
    assert [e["event"] for e in events] == ["error", "error"], events
    assert events[0]["message"] == f"request longer than {MAX_REQUEST_BYTES} bytes without a newline; ignored"
    assert events[1]["id"] == 7                     # the worker reads on after the long line


def _job_folder(tmp_path, w: int = 4, h: int = 3, c: int = 3, pixels=None, **job: Any):
    import json
    d = tmp_path / "denoise-cnn-job"
    d.mkdir()
    px = np.full((h, w, c), 0.5, "<f4") if pixels is None else pixels
    (d / "in.raw").write_bytes(px.astype("<f4").tobytes())
    spec = {"version": 1, "width": w, "height": h, "channels": c, "input": "in.raw", "output": "out.raw",
            "model": "seed", "device": "cpu", "tile": 64, **job}
    (d / "job.json").write_text(json.dumps(spec))
    return d


@pytest.mark.parametrize("key,value", [("output", "../x"), ("output", "ABS"), ("rgba8", "../x"),
                                       ("rgba8_before", "ABS"), ("input", "../../../../../../../etc/hostname"),
                                       ("input", "/etc/hostname"), ("mask", "../x"), ("input", "LINK")])
def test_worker_job_paths_stay_inside_the_job_folder(tmp_path, monkeypatch, key, value):
    outside = tmp_path / "x"
    if key in ("input", "mask") and value == "../x":
        outside.write_bytes(b"\0" * 12)
    if value == "ABS":
        value = str(outside)
    if value == "LINK":
        value = "link.raw"
    fields: dict[str, Any] = {key: value}
    d = _job_folder(tmp_path, **fields)
    (d / "link.raw").symlink_to(tmp_path / "secret.raw")
    (tmp_path / "secret.raw").write_bytes(np.zeros((3, 4, 3), "<f4").tobytes())
    before = sorted(p.name for p in tmp_path.iterdir())
    events = _Session(monkeypatch)(f'{{"cmd": "job", "id": 1, "job": "{d / "job.json"}"}}\n'.encode())
    assert [e["event"] for e in events] == ["error"], events
    assert events[0]["message"] == f'job "{key}": {value!r} is not a file inside the job folder {d}'
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert sorted(p.name for p in d.iterdir()) == ["in.raw", "job.json", "link.raw"]


@pytest.mark.parametrize("which", ["job.json", "in.raw"])
def test_worker_refuses_a_fifo_for_a_job_file_without_blocking(tmp_path, monkeypatch, hang_guard, which):
    d = _job_folder(tmp_path)
    (d / which).unlink()
    os.mkfifo(d / which)
    hang_guard(60)
    events = _Session(monkeypatch)(f'{{"cmd": "job", "id": 1, "job": "{d / "job.json"}"}}\n'.encode())
    assert [e["event"] for e in events] == ["error"], events
    assert events[0]["message"] == f"{d / which}: is a FIFO (named pipe), not a regular file"


@pytest.mark.parametrize("request_line,message", [
    (b"[1, 2, 3]", "a request is a JSON object, not an array"),
    (b"null", "a request is a JSON object, not null"),
    (b'"job"', "a request is a JSON object, not a string"),
    (b"{", "a request is one line of JSON (Expecting property name enclosed in double quotes: line 1 column 2 "
           "(char 1))"),
    (b'{"cmd": "job"}', 'a "job" request needs "job": the path of a job file'),
    (b'{"cmd": "job", "job": 5}', 'a "job" request needs "job": the path of a job file'),
    (b'{"cmd": ["info"]}', "unknown request ['info'] (known: info, job, quit)"),
    (b'{"cmd": "info", "tile": "x"}', '"tile" must be an integer, not \'x\''),
    (b'{"cmd": "info", "noise_level": [1]}', '"noise_level" must be a number or null, not [1]'),
])
def test_worker_malformed_requests_get_readable_errors(monkeypatch, request_line, message):
    events = _Session(monkeypatch)(request_line + b"\n")
    assert [e["event"] for e in events] == ["error"], events
    assert events[0]["message"] == message


@pytest.mark.parametrize("job,message", [
    ([1, 2], "job file: a job is a JSON object, not an array"),
    ({"version": 1}, 'job file: "width" is missing'),
    ({"version": 1, "width": "4", "height": 3, "channels": 3}, "job file: \"width\" must be an integer, not '4'"),
    ({"version": 1, "width": 4, "height": 3, "channels": 3, "input": None}, 'job file: "input" is missing'),
    ({"version": 1, "width": 4, "height": 3, "channels": 3, "input": "in.raw", "output": "o.raw", "crop": 5},
     'job file: "crop" must be [x, y, w, h], not 5'),
])
def test_worker_malformed_job_files_get_readable_errors(tmp_path, monkeypatch, job, message):
    import json
    d = _job_folder(tmp_path)
    (d / "job.json").write_text(json.dumps(job))
    events = _Session(monkeypatch)(f'{{"cmd": "job", "job": "{d / "job.json"}"}}\n'.encode())
    assert [e["event"] for e in events] == ["error"], events
    assert events[0]["message"] == f"{d / 'job.json'}: {message.removeprefix('job file: ')}"


@pytest.mark.parametrize("args,words", [(["--idle", "abc"], "--idle 'abc'"), (["--idle", "-1"], "--idle '-1'"),
                                        (["--idle", "nan"], "--idle 'nan'"), (["--idle", "inf"], "--idle 'inf'"),
                                        (["--socket", "/tmp/s", "--host-pid", "x"], "--host-pid 'x'")])
def test_worker_bad_serve_options_are_usage_errors(args, words):
    import json
    import subprocess
    import sys
    p = subprocess.run([sys.executable, "-m", "denoise_core.worker", "--serve", *args], capture_output=True,
                       text=True, timeout=120, stdin=subprocess.DEVNULL, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    (event,) = [json.loads(ln) for ln in p.stdout.splitlines()]
    assert event["event"] == "error" and event["message"].startswith(words + " is not "), event


# --------------------------------------------------------------------------- usage and checkpoints

def test_checkpoint_dtype_that_is_not_a_string_is_one_line(tmp_path):
    ck = tmp_path / "m.safetensors"
    ck.write_bytes(hf.safetensors_dtype(["F32"]))
    Image.fromarray(hf.RGB).save(tmp_path / "a.png")
    r = run_batch(tmp_path / "a.png", "-o", tmp_path / "out", "--model", ck)
    assert r.exit_code == 2
    assert r.output.splitlines() == [f"error: {ck}: tensor 'body.0.bias' has dtype [\"F32\"]; weights must be "
                                     "floating point (F16, BF16, F32, F64)"]


def test_safetensors_whose_header_length_starts_like_a_pickle_loads(tmp_path):
    data = hf.safetensors_header_padded(640)
    assert data[:2] == b"\x80\x02"                 # pickle protocol 2's first bytes
    ck = tmp_path / "m.safetensors"
    ck.write_bytes(data)
    Image.fromarray(hf.RGB).save(tmp_path / "a.png")
    r = run_batch(tmp_path / "a.png", "-o", tmp_path / "out", "--model", ck)
    assert r.exit_code == 0, r.output
    assert (tmp_path / "out" / "a.png").is_file()


def test_checkpoint_with_absurd_weights_fails_each_file_with_a_reason(tmp_path):
    ck = tmp_path / "big.safetensors"
    ck.write_bytes(hf.safetensors_scaled(1e18))
    src = tmp_path / "in"
    src.mkdir()
    for n in ("a.png", "b.png"):
        Image.fromarray(hf.RGB).save(src / n)
    r = run_batch(src, "-o", tmp_path / "out", "--model", ck)
    assert r.exit_code == 1, r.output
    errors = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 2 and all("the network's output is implausible" in e and str(ck) in e for e in errors)
    assert list((tmp_path / "out").iterdir()) == []


def test_output_check_allows_float_input_beyond_1(tmp_path):
    import io

    import tifffile
    b = io.BytesIO()
    tifffile.imwrite(b, (hf.RGB / 255 * 4).astype(np.float32), photometric="rgb", metadata=None)   # up to 4.0
    _, out = batch(tmp_path, "hdr.tif", b.getvalue(), expect_ok=True)
    assert read_image(out / "hdr.tif").pixels.max() > 2


@pytest.mark.parametrize("args,option", [(["--strength", "nan"], "--strength"),
                                         (["--noise-level", "nan"], "--noise-level"),
                                         (["--model", "raw", "--noise-level", "nan"], "--noise-level")])
def test_nan_strength_or_noise_level_is_a_usage_error(tmp_path, args, option):
    Image.fromarray(hf.RGB).save(tmp_path / "a.png")
    r = CliRunner().invoke(main, [str(tmp_path / "a.png"), "-o", str(tmp_path / "out"), *args])
    assert r.exit_code == 2, r.output
    assert f"Invalid value for '{option}': nan is not a finite number" in r.output
    assert not (tmp_path / "out").exists()


def test_a_240_character_file_name_gets_a_temp_name_that_fits(tmp_path):
    name = "n" * 236 + ".png"
    _, out = batch(tmp_path, name, hf.valid_png(), expect_ok=True)
    assert read_image(out / name).pixels.shape == hf.RGB.shape
    from denoise_core.imaging.atomic import atomic_path, remove_stale_parts
    killed = tmp_path / "killed"
    killed.mkdir()
    for longest in ("m" * 251 + ".png", "\u00e9" * 125 + ".webp"):     # 255 bytes: the longest name there is
        with atomic_path(out / longest) as tmp:
            tmp.write_bytes(b"x")
            assert len(tmp.name.encode()) <= 255 and tmp.name.endswith(os.path.splitext(longest)[1] + ".part")
        assert (out / longest).read_bytes() == b"x"
        (killed / tmp.name).write_bytes(b"half")       # what a killed write leaves: the next run removes it
        assert remove_stale_parts(killed) == [killed / tmp.name]


# ------------------------------------------------------------------------- wrong results as success

def test_float_tiff_with_a_nan_sample_is_refused(tmp_path):
    _, line = batch(tmp_path, "nan.tif", hf.tiff_float(nan_at=(3, 4, 1)), expect_ok=False)
    assert line.endswith("1 of 2304 colour samples is NaN or infinite; replace them before denoising")


def test_worker_input_with_nan_samples_is_refused(tmp_path, monkeypatch):
    px = np.full((3, 4, 3), 0.5, "<f4")
    px[1, 2, 0] = np.nan
    px[0, 0, 2] = np.inf
    d = _job_folder(tmp_path, pixels=px)
    events = _Session(monkeypatch)(f'{{"cmd": "job", "job": "{d / "job.json"}"}}\n'.encode())
    assert events[-1]["event"] == "error", events
    assert events[-1]["message"] == "2 of 36 colour samples are NaN or infinite; replace them before denoising"
    assert not (d / "out.raw").exists()


def test_float16_tiff_keeps_its_bit_depth(tmp_path):
    _, out = batch(tmp_path, "h.tif", hf.tiff_float(np.float16), expect_ok=True)
    with __import__("tifffile").TiffFile(out / "h.tif") as t:
        assert t.pages.first.dtype == np.float16
    assert read_image(out / "h.tif").pixels.dtype == np.float32      # read as float32, as before


# ---------------------------------------------------------------------------------- camera raw

def test_dng_whose_cfa_is_cyan_magenta_yellow_is_refused_by_name(tmp_path):
    _, line = batch(tmp_path, "cmy.dng", hf.dng_with_cfa((3, 4, 4, 5)), expect_ok=False)
    assert line.endswith("colour pattern CMMY (cyan, magenta, yellow): not a Bayer RGGB sensor, not supported")


@pytest.mark.parametrize("data,words", [
    (lambda: hf.valid_dng(model="   "), None),                                        # read_meta's rstrip
    (lambda: hf.dng_tag_rewrite(258, count=1 + (64 << 16)), "BitsPerSample"),        # KeyError: 258
    (lambda: hf.dng_tag_rewrite(273, typ=2), "StripOffsets"),                        # TypeError in seek
    (lambda: hf.dng_tag_rewrite(273, typ=11), "StripOffsets"),
])
def test_damaged_dng_ends_as_a_dng_or_one_named_error(tmp_path, data, words):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    (src / "d.dng").write_bytes(data())
    r = run_batch(src / "d.dng", "-o", out, "--model", "seed")
    named_lines_only(r, src / "d.dng")
    assert "unexpected" not in r.output
    if words is None:
        assert r.exit_code == 0 and (out / "d.dng").is_file(), r.output
    else:
        assert r.exit_code == 1 and words in r.output, r.output
        assert list(out.iterdir()) == []


def test_tifffile_log_lines_name_the_file_once(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for i in range(3):
        (src / f"loop{i}.dng").write_bytes(hf.dng_ifd_loop())
    r = run_batch(src, "-o", out, "--model", "seed")
    named_lines_only(r, *(src / f"loop{i}.dng" for i in range(3)))
    said = [ln for ln in r.output.splitlines() if "circular reference" in ln]
    assert len(said) == 3 and all(ln.startswith("warning: ") and "tifffile: " in ln and "@" not in ln for ln in said)


# --------------------------------------------------------------------------------- clear reasons

def test_unreadable_folder_is_one_named_error(tmp_path, monkeypatch):
    src, locked = tmp_path / "in", tmp_path / "locked"
    src.mkdir()
    locked.mkdir()
    Image.fromarray(hf.RGB).save(src / "a.png")
    Image.fromarray(hf.RGB).save(locked / "b.png")
    if os.geteuid() == 0:       # root reads any folder: simulate what mode 000 gives everyone else
        real_scandir, real_listdir = os.scandir, os.listdir

        def denied(real):
            def call(path="."):
                if os.fspath(path) == str(locked):
                    raise PermissionError(13, "Permission denied", str(locked))
                return real(path)
            return call
        monkeypatch.setattr(os, "scandir", denied(real_scandir))
        monkeypatch.setattr(os, "listdir", denied(real_listdir))
    else:
        locked.chmod(0)
    try:
        r = run_batch(src, locked, "-o", tmp_path / "out", "--model", "seed")
    finally:
        locked.chmod(0o755)
    assert r.exit_code == 1, r.output
    assert f"error: {locked}: cannot list the folder: permission denied" in r.output.splitlines()
    assert (tmp_path / "out" / "a.png").is_file()


def _refuse_open(monkeypatch, target):
    """What mode 000 does to a reader without root's override (tests run as root here)."""
    real = os.open

    def fake(path, flags, *a, **k):
        if os.fspath(path) == str(target):
            raise PermissionError(13, "Permission denied", str(target))
        return real(path, flags, *a, **k)
    monkeypatch.setattr(os, "open", fake)


@pytest.mark.parametrize("kind", ["fifo", "devzero", "unreadable"])
def test_raw_input_that_is_not_a_readable_file_says_why(tmp_path, monkeypatch, hang_guard, kind):
    src = tmp_path / "in"
    src.mkdir()
    p = src / "x.dng"
    if kind == "fifo":
        os.mkfifo(p)
    elif kind == "devzero":
        p.symlink_to("/dev/zero")
    else:
        p.write_bytes(hf.valid_dng())
        if os.geteuid() == 0:
            _refuse_open(monkeypatch, p)
        else:
            p.chmod(0)
    hang_guard(60)
    r = run_batch(p, "-o", tmp_path / "out", "--model", "seed")
    want = {"fifo": "is a FIFO (named pipe), not a regular file",
            "devzero": "is a character device, not a regular file",
            "unreadable": "permission denied"}[kind]
    assert r.exit_code == 1 and r.output.splitlines()[0] == f"error: {p}: {want}", r.output


@pytest.mark.parametrize("kind", ["fifo", "devzero", "folder", "broken"])
def test_model_that_is_not_a_readable_file_says_why(tmp_path, hang_guard, kind):
    m = tmp_path / "m.safetensors"
    if kind == "fifo":
        os.mkfifo(m)
    elif kind == "devzero":
        m.symlink_to("/dev/zero")
    elif kind == "broken":
        m.symlink_to(tmp_path / "gone.safetensors")
    else:
        m.mkdir()
    Image.fromarray(hf.RGB).save(tmp_path / "a.png")
    hang_guard(60)
    r = run_batch(tmp_path / "a.png", "-o", tmp_path / "out", "--model", m)
    want = {"fifo": "is a FIFO (named pipe), not a regular file",
            "devzero": "is a character device, not a regular file",
            "folder": "is a directory, not a checkpoint file",
            "broken": f"broken symbolic link (its target {tmp_path / 'gone.safetensors'} does not exist)"}[kind]
    assert r.exit_code == 2 and r.output.splitlines() == [f"error: {m}: {want}"], r.output


def test_png_with_two_ihdr_chunks_says_so(tmp_path):
    _, line = batch(tmp_path, "two.png", hf.png_two_ihdr(), expect_ok=False)
    assert line.endswith("corrupt PNG file (2 IHDR chunks; a PNG has one, first)")


def test_12_bit_jpeg_is_refused_by_name(tmp_path):
    _, line = batch(tmp_path, "j12.jpg", hf.jpeg_12bit(), expect_ok=False)
    assert line.endswith("12-bit JPEG images are not supported (only 8 bits per sample)")


def test_broken_links_in_an_input_folder_are_named(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    Image.fromarray(hf.RGB).save(src / "a.png")
    (src / "gone.png").symlink_to(src / "nowhere.png")
    (src / "loop.png").symlink_to(src / "loop.png")
    (src / "notes.txt").symlink_to(src / "nowhere.txt")          # not an image name: not an input
    r = run_batch(src, "-o", out, "--model", "seed")
    assert r.exit_code == 1, r.output
    assert r.output.splitlines() == [
        f"error: {src / 'gone.png'}: broken symbolic link (its target {src / 'nowhere.png'} does not exist)",
        f"error: {src / 'loop.png'}: symbolic link loop (too many levels of symbolic links)",
        "1 file denoised, 2 failed."]


def test_tiff_whose_full_image_sits_in_a_subifd_is_refused(tmp_path):
    _, line = batch(tmp_path, "sub.tif", hf.tiff_full_image_in_subifd(), expect_ok=False)
    assert line.endswith("TIFF with a 32x24 image in a SubIFD besides the 8x6 image in IFD0 is not supported: only "
                         "single-image files are denoised, so no image is lost")
