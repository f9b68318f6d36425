"""Whether a path can be read as a regular file, and why not, in words: one check for images, raw
files, checkpoints and the worker's job files, so each says the same for the same case."""
from __future__ import annotations

import errno
import os
import stat


def file_problem(path, what: str = "a file", missing: str = "file not found") -> str | None:
    """Why `path` cannot be read as a regular file, in words (None when it can): missing, a broken
    symbolic link or a link loop, a directory, a FIFO or device (never opened: a FIFO would block,
    a device never ends), or no read permission. One check for images, raw files, checkpoints and
    the worker's job files, so each says the same for the same case."""
    if "\0" in os.fspath(path):
        return "not a valid file name (it holds a NUL character)"
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            return f"broken symbolic link (its target {os.readlink(path)} does not exist)"
        return missing
    except PermissionError:
        return "permission denied"
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "symbolic link loop (too many levels of symbolic links)"
        return f"cannot read file: {e.strerror or e}"
    if stat.S_ISDIR(st.st_mode):
        return f"is a directory, not {what}"
    if not stat.S_ISREG(st.st_mode):
        return f"is a {_file_kind(st.st_mode)}, not a regular file"
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK))    # the permission check that counts
    except PermissionError:
        return "permission denied"
    except OSError as e:
        return f"cannot read file: {e.strerror or e}"
    return None


def _file_kind(mode: int) -> str:
    return ("FIFO (named pipe)" if stat.S_ISFIFO(mode) else "socket" if stat.S_ISSOCK(mode) else
            "character device" if stat.S_ISCHR(mode) else "block device" if stat.S_ISBLK(mode) else "special file")
