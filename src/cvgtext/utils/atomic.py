"""Atomic file writes: a kill at any moment leaves either the previous file or the new one."""

from __future__ import annotations

import contextlib
import errno
import glob
import io
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from cvgtext.utils.errors import OutputError

# Failures of the file system rather than of the program: reported as one message.
STORAGE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}


def remove_leftovers(path: Path) -> None:
    """Delete the temporary files of earlier writes of ``path`` that a kill interrupted.

    Each output file has one writer at a time, so any such file is a dead one's.
    """
    for leftover in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            leftover.unlink()


def current_umask() -> int:
    """The process's file mode creation mask (reading it means setting it, so set it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "w", **open_kwargs) -> Iterator[IO]:
    """Write to a temporary file beside ``path``, flush it to disk, then rename it over ``path``.

    On any error the temporary file is removed and ``path`` is left as it was. A full disk, a
    file size limit or a folder without write permission raises :class:`OutputError` naming
    ``path``.
    """
    path = Path(path)
    temporary = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_leftovers(path)
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        # mkstemp makes the file private; give it the permissions a plain open() would have.
        os.chmod(temporary, 0o666 & ~current_umask())
        with os.fdopen(handle, mode, **open_kwargs) as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        if temporary is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
        if isinstance(error, OSError) and error.errno in STORAGE_ERRORS:
            kept = "the previous file is unchanged" if path.exists() else "nothing was written"
            raise OutputError(f"cannot write {path}: {error.strerror}; {kept}") from None
        raise


def save_figure(figure, path: str | Path, **savefig_kwargs) -> None:
    """A matplotlib ``figure`` written to ``path`` as PNG whole or not at all: drawn into memory
    first (``savefig_kwargs`` as matplotlib's), then written atomically."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", **savefig_kwargs)
    with atomic_write(path, "wb") as stream:
        stream.write(buffer.getvalue())
