"""`denoise-batch`: denoise files, folders and globs into an output folder.

Reporting follows black's Report: one line per failed or skipped item on stderr, a summary at the
end, exit 0 when every item succeeded (skips included), 1 when any failed, 2 for bad usage (a NaN
--strength or a --model that cannot be loaded included), 130 on Ctrl-C and 143/129 on
SIGTERM/SIGHUP (which take Ctrl-C's path, so no temp file is left). Control characters in a report
(a newline in a file name) are escaped, so each report is one line, and every line about a file
names it, warnings and the libraries' log lines included (`named_messages`). With --json, stdout
carries one JSON object per line (start, progress, warning, result, summary): the machine
interface for scripts and host plugins. Inputs are never modified and every output is written
atomically, so an interrupted or failed item leaves nothing behind; the temp files of a run killed
outright (SIGKILL, power loss) are removed by the next run into the same folder.
"""
from __future__ import annotations

import atexit
import contextlib
import gc
import glob
import json
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import click

from denoise_core.inference.api import DEFAULT_TILE, MAX_NOISE_LEVEL, MAX_SIGMA, RAW_ARCHS, Denoiser, ModelNotFoundError
from denoise_core.imaging.atomic import Terminated, remove_stale_parts, signals_as_interrupts
from denoise_core.inference.checkpoint import CheckpointError
from denoise_core.inference.device import DEVICES, PRECISIONS, use_all_cores
from denoise_core.imaging.imageio import (SUPPORTED_EXTENSIONS, ImageReadError, ImageWarning, ImageWriteError, Photo,
                                          format_for_path, library_log_as_warnings, read_image, write_image)
from denoise_core.raw.rawfile import RAW_EXTENSIONS, is_raw

from .suggest import did_you_mean

_FORMAT_EXT = {"png": ".png", "tiff": ".tif", "jpeg": ".jpg", "webp": ".webp"}


@dataclass
class Report:
    json_mode: bool = False
    ok: int = 0
    skipped: int = 0
    failed: int = 0
    failures: list[str] = field(default_factory=list)

    def emit(self, **event) -> None:
        if self.json_mode:
            sys.stdout.write(json.dumps(event) + "\n")
            sys.stdout.flush()

    def done(self, src: str, dst: Path, seconds: float) -> None:
        self.ok += 1
        self.emit(event="result", file=src, output=str(dst), status="ok", seconds=round(seconds, 3))

    def skip(self, src: str, reason: str) -> None:
        self.skipped += 1
        click.echo(one_line(f"skipped {src}: {reason}"), err=True)
        self.emit(event="result", file=src, status="skipped", message=reason)

    def fail(self, src: str, reason: str) -> None:
        self.failed += 1
        self.failures.append(src)
        click.echo(one_line(f"error: {src}: {reason}"), err=True)
        self.emit(event="result", file=src, status="error", message=reason)

    def warn(self, src: str, reason: str) -> None:
        click.echo(one_line(f"warning: {src}: {reason}"), err=True)
        self.emit(event="warning", file=src, message=reason)

    @property
    def return_code(self) -> int:
        return 1 if self.failed else 0

    def __str__(self) -> str:
        parts = [f"{self.ok} file{'s' if self.ok != 1 else ''} denoised"]
        if self.skipped:
            parts.append(f"{self.skipped} skipped")
        if self.failed:
            parts.append(f"{self.failed} failed")
        return ", ".join(parts) + "."


def one_line(text: str) -> str:
    """`text` with control characters (a newline in a file name, a terminal escape) and undecodable
    bytes of a file name written as Python escapes, so one report is one line and prints anywhere."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


_IMAGE_EXTENSIONS = SUPPORTED_EXTENSIONS + RAW_EXTENSIONS


def _is_image_name(p: Path) -> bool:
    return p.suffix.lower() in _IMAGE_EXTENSIONS


def _folder_images(folder: Path, recursive: bool, skip: str | None) -> list[tuple[Path, Path]]:
    """(file, output name relative to the output folder): the folder's images, sorted; with
    `recursive` those of its subfolders too, at the same relative path. Files under `skip` (the
    output folder, when it lies inside an input folder) are left out."""
    found = []
    for root, dirs, names in os.walk(folder) if recursive else [(str(folder), [], os.listdir(folder))]:
        if skip is not None and os.path.realpath(root) == skip:
            dirs[:] = []
            continue
        dirs.sort()
        for name in sorted(names):
            q = Path(root) / name
            if _is_image_name(q) and not q.is_dir():  # a broken link or a FIFO fails by name later
                found.append((q, q.relative_to(folder)))
    return found


def _has_images_below(folder: Path) -> int:
    return sum(1 for q in folder.rglob("*") if _is_image_name(q) and q.is_file())


def expand_inputs(inputs: tuple[str, ...], report: Report, *, recursive: bool = False,
                  outdir: Path | None = None) -> list[tuple[Path, Path]]:
    """(file, output name relative to the output folder) for every input: files as given, folders'
    images (sorted; their subfolders' too with `recursive`, keeping the relative path), globs
    expanded. An input that yields no image is one error line: a missing file or folder, a folder
    without images (naming --recursive when its subfolders have some), a folder that cannot be
    listed, a pattern that matches none. An entry with an image name that is not a readable file (a
    broken symbolic link, a link loop, a FIFO) is kept, so that reading it fails by name instead of
    the file being skipped in silence."""
    skip = os.path.realpath(outdir) if outdir is not None else None
    found: list[tuple[Path, Path]] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            try:
                images = _folder_images(p, recursive, skip)
            except OSError as e:
                report.fail(item, f"cannot list the folder: {_os_reason(e)}")
                continue
            if not images:
                below = 0 if recursive else _has_images_below(p)
                report.fail(item, f"no photos in this folder, {below} in its subfolders: add --recursive" if below
                            else f"no photos in this folder{' or its subfolders' if recursive else ''} (PNG, "
                                 f"TIFF, JPEG, WebP or camera raw files)")
            found += images
        elif os.path.lexists(p) or not glob.has_magic(item):
            if not os.path.lexists(p):
                report.fail(item, "file not found" if _is_image_name(p) else "no such file or folder")
                continue
            found.append((p, Path(p.name)))
        else:
            matches = sorted(Path(m) for m in glob.glob(item))
            if not any(not m.is_dir() for m in matches):
                report.fail(item, "pattern matches no files")
            found += [(m, Path(m.name)) for m in matches if not m.is_dir()]
    seen, unique = set(), []
    for p, name in found:
        key = os.path.realpath(p)
        if key not in seen:
            seen.add(key)
            unique.append((p, name))
    return unique


def _os_reason(e: OSError) -> str:
    return "permission denied" if isinstance(e, PermissionError) else (e.strerror or str(e)).lower()


class FiniteFloatRange(click.FloatRange):
    """click.FloatRange that also refuses nan (which compares false with both bounds, so passes it)."""

    def convert(self, value, param, ctx):
        rv = super().convert(value, param, ctx)
        if rv != rv:
            self.fail(f"{value} is not a finite number", param, ctx)
        return rv


def parse_shard(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        k, n = (int(v) for v in value.split("/"))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not K/N (e.g. 0/4)") from None
    if n < 1 or not 0 <= k < n:
        raise click.BadParameter(f"{value!r}: need N >= 1 and 0 <= K < N")
    return k, n


def usage_error(message: str) -> NoReturn:
    """A usage error: one line, exit status 2, nothing created."""
    click.echo(one_line(f"error: {message}"), err=True)
    sys.exit(2)


_FORMAT_NAMES = {"PNG": "png", "TIFF": "tiff", "JPEG": "jpeg", "WEBP": "webp"}


def output_file(outdir: Path, files: list[tuple[Path, Path]], out_format: str | None) -> tuple[bool, str | None]:
    """Whether -o names one output file rather than a folder, and the format to write it in.

    An existing folder is a folder. A name with an image extension (out.png) that is not a folder
    is one output file: allowed for one photo, written in the format its extension names; refused
    (a usage error) for several photos, and for a --format it contradicts. An existing file without
    an image extension is refused: it is neither."""
    if outdir.is_dir():
        return False, out_format
    if not _is_image_name(outdir):
        if outdir.exists():
            usage_error(f"-o {outdir} is a file, not a folder: give an output folder (or, for one photo, "
                        f"an image file name such as out.png)")
        return False, out_format
    if len(files) > 1:
        usage_error(f"-o {outdir} names an image file, but {len(files)} photos were given: give an output "
                    f"folder for several photos")
    src = files[0][0] if files else None
    ext = outdir.suffix.lower()
    if ext in RAW_EXTENSIONS:
        if ext == ".dng" and out_format is None and (src is None or src.suffix.lower() == ".dng"):
            return True, None
        usage_error(f"-o {outdir}: a DNG is written only from a DNG input and other camera raw formats never; "
                    f"name a .tif, .png, .jpg or .webp file for a developed result")
    fmt = _FORMAT_NAMES[format_for_path(outdir)]
    if out_format is not None and out_format != fmt:
        usage_error(f"--format {out_format} contradicts -o {outdir}: drop one of them")
    return True, fmt


# The interpreter's last collection at exit walks every object torch's modules made (about 0.35 s
# of a one-photo run, bench/io.py); frozen at exit, it skips them: the process is ending anyway.
atexit.register(gc.freeze)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT...")
@click.option("-o", "--output", "outdir", required=True, type=click.Path(path_type=Path),
              help="Output folder (created if missing); each result keeps its input's file name. For one "
                   "input, an image file name (out.png) writes that file instead.")
@click.option("-r", "--recursive", is_flag=True,
              help="Also denoise the photos in the subfolders of input folders (the output keeps the "
                   "subfolders).")
@click.option("--model", default="default", show_default=True,
              help="Shipped model name (default, unet, fast, seed) or a checkpoint file.")
@click.option("--strength", type=FiniteFloatRange(0.0, 1.0), default=1.0, show_default=True,
              help="0 leaves the input untouched, 1 is full denoising.")
@click.option("--noise-level", type=FiniteFloatRange(0.0, MAX_NOISE_LEVEL), default=None,
              help="How much noise to remove, relative to what the model finds by itself "
                   "[default: automatic, one pass]. 1 is about automatic, 2 assumes twice the "
                   "noise (removes what automatic leaves), 0.5 half; costs a second pass. Models "
                   "with a noise-level input only (the default has one).")
@click.option("--sigma", type=click.FloatRange(0.0, MAX_SIGMA), default=None,
              help="The noise as an absolute standard deviation on the 0-255 scale, as FFDNet and "
                   "G'MIC take it (mild camera noise is about 3-8, strong 15-50) [default: "
                   "automatic]. One pass; excludes --noise-level. Images only: raw files use their "
                   "camera's noise profile.")
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True)
@click.option("--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True,
              help="Arithmetic of the convolutions: auto is fp16 on CUDA, bf16 on CPUs with native "
                   "bfloat16 (about 2.5x faster), else fp32.")
@click.option("--tile", type=click.IntRange(16, None), default=DEFAULT_TILE, show_default=True,
              help="Tile size in pixels; memory grows with it, not with the image.")
@click.option("--overlap", type=click.IntRange(0, None), default=None,
              help="Context around each tile [default: the model's receptive field, exact].")
@click.option("--format", "out_format", type=click.Choice(sorted(_FORMAT_EXT)), default=None,
              help="Write this format instead of the input's.")
@click.option("--quality", type=click.IntRange(1, 100), default=None, help="JPEG/WebP quality.")
@click.option("--overwrite", is_flag=True, help="Replace existing outputs (otherwise they are skipped).")
@click.option("--shard", default=None, metavar="K/N", help="Take every N-th file starting at K (0-based).")
@click.option("--json", "json_mode", is_flag=True, help="One JSON object per line on stdout.")
def main(inputs, outdir: Path, recursive, model, strength, noise_level, sigma, device, precision, tile, overlap,
         out_format, quality, overwrite, shard, json_mode) -> None:
    """Denoise photos (files, folders or globs) into OUTPUT."""
    report = Report(json_mode=json_mode)
    shard_kn = parse_shard(shard)
    use_all_cores()  # this command owns its process: every core (a Denoiser leaves the count alone)
    # Usage errors come first and leave nothing behind (no output folder is created before them).
    try:
        # a raw-domain --model serves the raw files (see _process_raw); image files then fail by name
        dn = Denoiser(model, device=device, tile=tile, overlap=overlap, precision=precision, allow_raw=True)
        if dn.arch not in RAW_ARCHS:  # raw files scale their camera profile instead
            dn.check_noise_level(noise_level, sigma)
        elif sigma is not None:
            raise ValueError("--sigma is for images; a raw model takes --noise-level")
    except ModelNotFoundError as e:
        usage_error(f"{e}{did_you_mean(model)}")
    except (CheckpointError, ValueError) as e:
        usage_error(str(e))
    files = expand_inputs(inputs, report, recursive=recursive, outdir=outdir)
    if shard_kn:
        k, n = shard_kn
        files = files[k::n]
    single, single_format = output_file(outdir, files, out_format)
    if not files:  # every input was reported as yielding no photo (or the shard is empty)
        report.emit(event="summary", ok=0, skipped=0, failed=report.failed)
        click.echo(str(report), err=True)
        sys.exit(report.return_code)
    folder = outdir.parent if single else outdir
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        click.echo(one_line(f"error: cannot create output folder {folder}: {e.strerror or e}"), err=True)
        sys.exit(1)
    if not os.access(folder, os.W_OK | os.X_OK):
        click.echo(one_line(f"error: output folder {folder} is not writable"), err=True)
        sys.exit(1)
    for stale in remove_stale_parts(folder):
        click.echo(one_line(f"removed {stale}: the temp file of an earlier run that was killed"), err=True)
    report.emit(event="start", total=len(files), model=str(dn.path), arch=dn.arch, device=str(dn.device),
                precision=dn.precision)
    bar = None
    if not json_mode and sys.stderr.isatty() and files:
        from tqdm import tqdm
        bar = tqdm(total=len(files), unit="photo", file=sys.stderr, dynamic_ncols=True)
    claimed: dict[str, str] = {}
    inputs_real = {os.path.realpath(f) for f, _ in files}
    if single:
        out_format = single_format
    try:
        with signals_as_interrupts():
            for src, rel in files:
                name = rel.name if out_format is None else rel.stem + _FORMAT_EXT[out_format]
                if is_raw(src):  # a DNG gives a DNG, other raw files a developed TIFF (or --format)
                    from denoise_core.raw.denoise import output_name
                    name = output_name(rel, out_format)
                dst = outdir if single else outdir / rel.parent / name
                if bar:
                    bar.set_postfix_str(one_line(src.name))
                _process(dn, src, dst, report, claimed, inputs_real, strength=strength,
                         noise_level=noise_level, sigma=sigma, out_format=out_format,
                         quality=quality, overwrite=overwrite)
                if bar:
                    bar.update(1)
    except KeyboardInterrupt as e:
        if bar:
            bar.close()
        click.echo(f"interrupted{f' ({e.args[0]})' if isinstance(e, Terminated) else ''}: {report}", err=True)
        sys.exit(128 + e.signum if isinstance(e, Terminated) else 130)
    if bar:
        bar.close()
    report.emit(event="summary", ok=report.ok, skipped=report.skipped, failed=report.failed)
    click.echo(str(report), err=True)
    sys.exit(report.return_code)


def _process(dn: Denoiser, src: Path, dst: Path, report: Report, claimed: dict[str, str],
             inputs_real: set[str], *, strength: float, noise_level: float | None, sigma: float | None,
             out_format: str | None, quality: int | None, overwrite: bool) -> None:
    s = str(src)
    real_dst = os.path.realpath(dst)
    if real_dst in inputs_real:
        report.fail(s, f"output {dst} is an input file; choose another output folder")
        return
    if real_dst in claimed:
        report.fail(s, f"output {dst} is also the output of {claimed[real_dst]} (same file name)")
        return
    claimed[real_dst] = s
    if dst.exists() and not overwrite:
        report.skip(s, f"output {dst} exists (use --overwrite to replace it)")
        return
    if is_raw(src):
        if sigma is not None:
            report.fail(s, "--sigma is for developed images; for a raw file use --noise-level (relative to "
                           "its camera's noise profile)")
            return
        _process_raw(dn, src, dst, report, strength=strength, noise_level=noise_level, out_format=out_format,
                     quality=quality)
        return
    if dn.arch in RAW_ARCHS:
        report.fail(s, f"{dn.path.name} is a model for camera raw files; pick an image model for this file")
        return
    t0 = time.perf_counter()
    try:
        with named_messages(report, s):
            photo = read_image(src)
            pixels = dn.denoise(photo.pixels, strength=strength, noise_level=noise_level, sigma=sigma,
                                progress=lambda done, total: report.emit(event="progress", file=s, done=done,
                                                                         total=total))
            result = Photo(pixels=pixels, alpha=photo.alpha, format=photo.format, icc_profile=photo.icc_profile,
                           exif=photo.exif, info=photo.info)
            _make_parent(dst)
            write_image(dst, result, format=out_format, quality=quality)  # EXIF it cannot hold: a warning
    except Exception as e:      # a bug must cost this file, not the rest of the batch
        report.fail(s, failure_reason(e))
    else:
        report.done(s, dst, time.perf_counter() - t0)


def failure_reason(e: Exception) -> str:
    """The reason a file failed, as its error line gives it: the reader's or writer's own words, the
    message of a refused value or exhausted memory, and for anything else (a bug) the exception's type."""
    if isinstance(e, ImageReadError):
        return e.reason
    if isinstance(e, ImageWriteError):
        return f"cannot write {e.path}: {e.reason}"
    if isinstance(e, (ValueError, MemoryError, RuntimeError)):
        return str(e) or type(e).__name__
    return f"unexpected {type(e).__name__}: {e}"


def _make_parent(dst: Path) -> None:
    """The output's subfolder (--recursive keeps the inputs' subfolders); OSError fails the file."""
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ImageWriteError(dst, f"cannot create its folder: {e.strerror or e}") from None


@contextlib.contextmanager
def named_messages(report: Report, src: str):
    """What reading or writing `src` says besides its result -- ImageWarning (libpng's warnings,
    EXIF not copied), other Python warnings, and the libraries' log lines (tifffile, exifread;
    imageio.library_log_as_warnings) -- as `warning: <src>: ...` lines, once the step succeeded. So
    every line on stderr names its file."""
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        with library_log_as_warnings(src):
            yield
    seen = set()
    for w in said:
        reason = (w.message.reason if isinstance(w.message, ImageWarning)
                  else f"{w.category.__name__}: {w.message}")
        if reason not in seen:
            seen.add(reason)
            report.warn(src, reason)


_RAW_DENOISERS: dict = {}


def _process_raw(dn: Denoiser, src: Path, dst: Path, report: Report, *, strength: float,
                 noise_level: float | None, out_format: str | None, quality: int | None) -> None:
    """A camera raw file: the `raw` model on the mosaic (denoise_core.raw.denoise), on --model's
    weights when they are a raw model, else the shipped `raw` weights; --noise-level scales the
    camera profile's noise level."""
    from denoise_core.raw.denoise import RawDenoiser, process_raw
    s = str(src)
    try:
        key = (str(dn.path) if dn.arch == "raw" else "raw", str(dn.device), dn.precision)
        if key not in _RAW_DENOISERS:
            _RAW_DENOISERS[key] = RawDenoiser(key[0], device=key[1], precision=key[2])
        _make_parent(dst)
        with named_messages(report, s):  # e.g. EXIF that could not be copied, tifffile's damage reports
            info = process_raw(_RAW_DENOISERS[key], src, dst, strength=strength, noise_level=noise_level,
                               out_format=out_format, quality=quality,
                               progress=lambda done, total: report.emit(event="progress", file=s, done=done,
                                                                        total=total))
    except (ModelNotFoundError, CheckpointError) as e:
        report.fail(s, f"no raw-domain model: {e}")
    except Exception as e:
        report.fail(s, failure_reason(e))
    else:
        if info["noise"].startswith("estimated"):
            report.warn(s, f"noise level {info['noise']}")
        report.done(s, dst, info["seconds"])


if __name__ == "__main__":
    main()
