"""Atomic file writes: a temp file in the destination folder, fsync, then rename over the target;
on any exception, Ctrl-C included, the temp file is removed. `signals_as_interrupts` extends that
to SIGTERM and SIGHUP (kill, timeout, job schedulers, a closed terminal), which otherwise end the
process where it stands and leave the temp file behind. A write killed outright (SIGKILL, power
loss) leaves its temp file; each holds a lock while its write lives, so `remove_stale_parts` can
tell the dead ones from those of a run still going and remove them."""
from __future__ import annotations

import contextlib
import os
import re
import signal
import stat
import tempfile
from pathlib import Path
from typing import Callable, Iterator

try:
    import fcntl
except ImportError:     # Windows: an open file cannot be removed there, which marks a live write
    fcntl = None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success it is renamed to `path`, on error removed."""
    dest = Path(path)
    prefix, suffix = _temp_affixes(dest, suffix)
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=dest.parent if str(dest.parent) else ".")
    if fcntl is None:       # Windows renames no open file; closing it leaves the write unmarked
        os.close(fd)
        fd = -1
    else:
        with contextlib.suppress(OSError):     # held while the write lives: remove_stale_parts leaves it be
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    tmp_path = Path(tmp)
    try:  # mkstemp makes 0600 files; give the result the mode a plain open() would (or the old file's)
        mode = dest.stat().st_mode & 0o7777 if dest.exists() else 0o666 & ~_umask()
        os.chmod(tmp_path, mode)
    except OSError:
        pass
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        raise
    finally:
        if fd >= 0:
            os.close(fd)


def _temp_affixes(dest: Path, suffix: str | None) -> tuple[str, str]:
    """mkstemp's prefix and suffix for a temp file beside `dest`: ".<name>." and "<ext>.part". The name
    part is shortened where the temp name would pass the folder's longest file name (NAME_MAX bytes,
    usually 255) -- keeping its extension, cut on a character -- so the temp name fits whenever the
    final name does (a 240-character name failed with "File name too long")."""
    folder = dest.parent if str(dest.parent) else Path(".")
    try:
        limit = os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        limit = 255
    suffix = suffix if suffix is not None else dest.suffix + ".part"
    name = dest.name
    room = limit - len(os.fsencode(f"..{suffix}")) - 8      # mkstemp adds 8 random characters
    if len(os.fsencode(name)) > room:
        ext = dest.suffix if suffix.startswith(dest.suffix) else ""     # remove_stale_parts matches it
        stem = name[:len(name) - len(ext)]
        while stem and len(os.fsencode(stem + ext)) > room:
            stem = stem[:-1]
        name = stem + ext
    return f".{name}.", suffix


# what atomic_path names its temp files when no suffix is given: ".<name>.<8 random>.<ext>.part"
_PART = re.compile(r"^\.(?P<name>.+)\.[A-Za-z0-9_]{8}(?P<ext>\.[^./]*)?\.part$")


def remove_stale_parts(folder: str | os.PathLike) -> list[Path]:
    """Remove the temp files of writes into `folder` that were killed outright (SIGKILL, power loss,
    the OOM killer), which no handler can clean up: files named as atomic_path names them that no
    live write holds locked. Returns what was removed. (On Windows, where nothing is locked, a
    file some process has open cannot be removed, so only a temp file no writer has open goes.)"""
    removed: list[Path] = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        m = _PART.match(name)
        if not m or not m["name"].endswith(m["ext"] or ""):
            continue
        path = Path(folder) / name
        if fcntl is None:
            with contextlib.suppress(OSError):
                if path.is_file() and not path.is_symlink():
                    path.unlink()
                    removed.append(path)
            continue
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            if stat.S_ISREG(os.fstat(fd).st_mode):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)     # fails while its writer lives
                path.unlink()
                removed.append(path)
        except OSError:
            pass
        finally:
            os.close(fd)
    return removed


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_with(path: str | os.PathLike, writer: Callable[[Path], None], *, suffix: str | None = None) -> None:
    with atomic_path(path, suffix=suffix) as tmp:
        writer(tmp)


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where Ctrl-C would be so the same cleanup runs."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def signals_as_interrupts() -> Iterator[None]:
    """While inside, SIGTERM and SIGHUP raise Terminated (exit status 128 + signum is the caller's)."""
    def handler(signum, frame):
        raise Terminated(signum)

    previous = {}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        try:
            previous[sig] = signal.signal(sig, handler)
        except (ValueError, OSError):   # not the main thread (an embedding host): leave it be
            pass
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
