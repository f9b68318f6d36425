"""Atomic file writes: a temp file in the destination folder, fsync, then rename over the target;
on any exception, Ctrl-C included, the temp file is removed. `signals_as_interrupts` extends that
to SIGTERM and SIGHUP (kill, timeout, job schedulers, a closed terminal), which otherwise end the
process where it stands and leave the temp file behind."""
from __future__ import annotations

import contextlib
import os
import signal
import tempfile
from pathlib import Path
from typing import Callable, Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success it is renamed to `path`, on error removed."""
    dest = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=suffix if suffix is not None else dest.suffix + ".part",
                               dir=dest.parent if str(dest.parent) else ".")
    os.close(fd)
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
