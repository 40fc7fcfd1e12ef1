"""What the libraries underneath would tell a user falsely or twice, kept back where cvgtext knows better.

Each filter is narrow (one library's module, one message) and scoped to where cvgtext starts that
library's work, so that the same library's other messages, and everyone else's, still show:

- open_clip logs "No pretrained weights loaded ... Model initialized randomly." whenever a model is
  created without a pretrained tag, also when cvgtext loads a checkpoint into it right after;
- open_clip logs an ERROR line for a pretrained tag it cannot download, which cvgtext reports
  itself in one line (with the known tags) as the run stops;
- Lightning's ``_pytree`` builds a ``LeafSpec``, which torch deprecates with a FutureWarning on
  every run, a matter between the two libraries;
- the ``lightning`` package adds a console handler of its own, so that under Hydra (whose root
  handlers print and file every record) each Lightning message would be printed twice.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

RANDOM_INIT = re.compile(r"No pretrained weights loaded for model '.*'\. Model initialized randomly\.")
DOWNLOAD_FAILED = re.compile(r"Failed to download weights for tag |Pretrained tag or path \(.*\) for '.*' not found")
PYTREE_DEPRECATION = r"`isinstance\(treespec, LeafSpec\)` is deprecated"


class _OpenClipFilter(logging.Filter):
    """Drops open_clip's records (logged on the root logger) whose message matches ``pattern``."""

    def __init__(self, pattern: re.Pattern):
        super().__init__()
        self.pattern = pattern

    def filter(self, record: logging.LogRecord) -> bool:
        from_open_clip = "open_clip" in record.pathname.replace("\\", "/").split("/")
        return not (from_open_clip and self.pattern.match(record.getMessage()))


@contextmanager
def _without(pattern: re.Pattern) -> Iterator[None]:
    root = logging.getLogger()
    kept_back = _OpenClipFilter(pattern)
    root.addFilter(kept_back)
    try:
        yield
    finally:
        root.removeFilter(kept_back)


def weights_loaded_by_cvgtext(loaded: bool = True):
    """Around building an open_clip model whose weights cvgtext loads next (a checkpoint, a weight
    file): open_clip's "initialized randomly" would be untrue. ``loaded=False`` keeps it."""
    return _without(RANDOM_INIT) if loaded else _nothing()


def download_failure_reported_by_cvgtext():
    """Around open_clip's download of a pretrained tag, whose failure cvgtext reports itself."""
    return _without(DOWNLOAD_FAILED)


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def start_lightning() -> None:
    """Where a command starts Lightning: its ``_pytree`` deprecation warning is left out, and with
    handlers on the root logger (Hydra's console and log file) the ``lightning`` package's own
    console handler is taken off, so that each message is printed once and still filed."""
    warnings.filterwarnings(
        "ignore", message=PYTREE_DEPRECATION, category=FutureWarning, module=r"lightning\.pytorch\.utilities\._pytree"
    )
    lightning_logger = logging.getLogger("lightning")
    if logging.getLogger().handlers:
        for handler in list(lightning_logger.handlers):
            if type(handler) is logging.StreamHandler:
                lightning_logger.removeHandler(handler)
