"""The pictures the web page shows, handed to Gradio as files written once each.

Given a picture (a PIL image), Gradio encodes it and writes it to its cache under a name made
from its content, in place, every time; a browser fetching the same picture for another person
at that moment (the same tile in two answers) can read it half-written. Given a file, Gradio
copies it once, under a temporary name that it then renames. So each picture is written here
under a name made from its content, the same way, and handed over by path. Files older than
:data:`KEPT_S` are removed (Gradio has its own copy by then).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from PIL import Image

log = logging.getLogger(__name__)

KEPT_S = 600
PRUNE_EVERY = 256  # pictures written between two clean-ups


class ShownFiles:
    """A folder of the page's pictures under the system's temporary folder (which Gradio serves from)."""

    def __init__(self, folder: str | Path | None = None):
        self.folder = Path(folder) if folder is not None else Path(tempfile.mkdtemp(prefix="cvgtext-page-"))
        self.folder.mkdir(parents=True, exist_ok=True)
        self.written = 0
        self.lock = threading.Lock()

    def path(self, image: Image.Image | None) -> str | None:
        """The file of ``image`` (PNG), written if it is not there yet."""
        if image is None:
            return None
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        data = buffer.getvalue()
        path = self.folder / f"{hashlib.sha256(data).hexdigest()[:40]}.png"
        if path.exists():
            return str(path)
        # A temporary file of its own, renamed into place: two answers writing the same picture
        # at once each rename a whole copy, and a reader sees one or the other, never a part.
        staging = None
        try:
            handle, staging = tempfile.mkstemp(dir=self.folder, prefix=f".{path.name}.")
            with os.fdopen(handle, "wb") as stream:
                stream.write(data)
            os.replace(staging, path)
        except OSError as error:  # a full disk: the answer is shown without this picture
            log.warning("A picture of the page could not be written to %s (%s)", self.folder, error)
            if staging is not None:
                Path(staging).unlink(missing_ok=True)
            return None
        self.prune()
        return str(path)

    def gallery(self, items: Any) -> Any:
        """A gallery's ``[(image, caption)]`` as ``[(path, caption)]``; anything else as it is."""
        if not isinstance(items, list):
            return items
        return [(self.path(image), caption) for image, caption in items]

    def prune(self) -> None:
        with self.lock:
            self.written += 1
            if self.written % PRUNE_EVERY:
                return
        cutoff = time.time() - KEPT_S
        for old in self.folder.glob("*.png"):
            try:
                if old.stat().st_mtime < cutoff:
                    old.unlink()
            except OSError:  # removed by another thread meanwhile
                pass
