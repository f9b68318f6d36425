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
from cli.batch import main
from denoise_core import imageio
from denoise_core.imageio import read_image


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
    r = subprocess.run([sys.executable, "-m", "cli.batch", str(src / "x.png"), str(src / "good.png"), "-o", str(out),
                        "--model", "seed"], cwd=os.path.dirname(os.path.dirname(__file__)), capture_output=True,
                       text=True, timeout=120)
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
    code = ("import sys, denoise_core.imageio as io\n"
            "real = io._WRITERS['TIFF']\n"
            "def slow(tmp, photo, q):\n"
            "    real(tmp, photo, q)\n"
            "    open(sys.argv[1], 'w').close()\n"
            "    import time; time.sleep(60)\n"
            "io._WRITERS['TIFF'] = slow\n"
            "from cli.batch import main\n"
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
    from denoise_core.atomic import atomic_path
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
    code = ("import sys, denoise_core.imageio as io\n"
            "real = io._WRITERS['PNG']\n"
            "def slow(tmp, photo, q):\n"
            "    real(tmp, photo, q)\n"
            "    open(sys.argv[1], 'w').close()\n"
            "    import time; time.sleep(60)\n"
            "io._WRITERS['PNG'] = slow\n"
            "from cli.batch import main\n"
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
    from cli.train import main as train_main
    from denoise_core.train import state_path
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
