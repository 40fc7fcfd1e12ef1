"""What a query run asks for: its descriptions and options, checked before the model is loaded,
so that a mistake is reported at once."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import IO, Any

from cvgtext.utils.errors import ConfigError

GALLERY_SPLITS = ("all", "train", "val", "test")
INDEXES = ("exact", "faiss_flat", "faiss_hnsw", "faiss_ivfpq")


def read_queries(query: str | None, queries: str | None, stdin: IO[str] | None = None) -> list[str]:
    """The descriptions to locate: ``query``, or one a line from the file ``queries`` (``-``: stdin).

    Blank lines are skipped; no description at all is an error naming what was given.
    """
    if query is not None and queries is not None:
        raise ConfigError("give either query=... or queries=FILE, not both")
    if query is not None:
        text = str(query).strip()
        if not text:
            raise ConfigError('query= is empty; describe the place, e.g. query="a church on a roundabout"')
        return [text]
    if queries is None:
        raise ConfigError(
            'nothing to locate: give query="a description", queries=FILE (one description a line) '
            "or queries=- (read from stdin)"
        )
    source = str(queries)
    if source == "-":
        lines = (stdin or sys.stdin).read().removeprefix("\ufeff").splitlines()
        where = "stdin (queries=-)"
    else:
        path = Path(source)
        if path.is_dir():
            raise ConfigError(f"queries={source} is a folder; expected a file with one description a line")
        if not path.is_file():
            raise ConfigError(f"queries={source}: no such file (expected one description a line)")
        try:
            lines = path.read_text(encoding="utf-8-sig").splitlines()  # without a byte-order mark
        except UnicodeDecodeError as error:
            raise ConfigError(f"queries file {path} is not UTF-8 text ({error})") from None
        where = f"queries file {path}"
    descriptions = [line.strip() for line in lines if line.strip()]
    if not descriptions:
        raise ConfigError(f"{where} holds no description; expected one description a line")
    return descriptions


def check_options(split: str, top_k: Any, index: str) -> int:
    if split not in GALLERY_SPLITS:
        raise ConfigError(f"split={split!r} is not one of {', '.join(GALLERY_SPLITS)}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ConfigError(f"top_k={top_k!r} must be a positive number of candidates")
    check_index_name(index)
    return top_k


def check_index_name(name: str) -> None:
    if name not in INDEXES:
        raise ConfigError(f"index={name!r} is not one of {', '.join(INDEXES)}")
