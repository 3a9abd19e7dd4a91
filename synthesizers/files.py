"""Atomic file writes: a killed process never leaves half a file where a whole one was expected.

The one way both packages write what must survive an interruption (synthetic images and their
index here; recipes, reports, weights and checkpoints in ``dfpractise``). It lives in this
package because ``dfpractise`` builds on ``synthesizers`` and never the reverse.
"""

from __future__ import annotations

import errno
import os
import re
import tempfile
from pathlib import Path
from typing import Callable

TEMP_SUFFIX = ".tmp"
"""Temporary files are ``.<name>.<random>.tmp`` beside their target (``is_temporary``)."""


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` on a fresh temporary file beside ``path``, then rename it over ``path``.

    ``write`` may be any saver that takes a file name (``torch.save``, safetensors' ``save_file``,
    ``PIL.Image.save``...). Readers see the old file or the new one, never a part; on any error the
    temporary file is removed and ``path`` is untouched. The file gets the permissions a plain
    ``open(path, "w")`` would give (0o666 less the process umask), not ``mkstemp``'s private 0600.

    A failure of the disk (full, read-only, forbidden) is an ``OSError`` naming ``path``, not the
    temporary file, whatever the saver raised: torch and safetensors report a full disk as their
    own errors.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    except OSError as err:
        raise _naming(err, path) from None
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as err:
        code = _disk_errno(err, path.parent)
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno is not None:
            raise _naming(err, path) from None
        if code is not None:
            raise OSError(code, os.strerror(code), str(path)) from err
        raise
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    """``atomic_write`` for text (UTF-8)."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def is_temporary(name: str) -> bool:
    """True for the name of a temporary file ``atomic_write`` makes (left behind by a killed process)."""
    return name.startswith(".") and name.endswith(TEMP_SUFFIX)


def _naming(err: OSError, path: Path) -> OSError:
    """``err`` as an OSError of the same kind about ``path`` (the file the caller asked for)."""
    return type(err)(err.errno, err.strerror or os.strerror(err.errno or 0), str(path))


def _disk_errno(err: BaseException, folder: Path) -> int | None:
    """The errno behind a saver's own error type: ``os error 28`` in its message, or a full disk."""
    if isinstance(err, OSError):
        return err.errno
    if not isinstance(err, Exception):
        return None  # KeyboardInterrupt and the like
    found = re.search(r"os error (\d+)", str(err))
    if found:
        return int(found.group(1))
    try:
        stats = os.statvfs(folder)
    except (OSError, AttributeError):
        return None
    return errno.ENOSPC if stats.f_bavail == 0 else None


def _umask() -> int:
    """The process umask, read without changing it where the system says it (Linux)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0)  # elsewhere: set and restore (briefly affects other threads)
    os.umask(mask)
    return mask
