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


FOLLOW_UP = "+"  # a line of a queries file that starts with it describes the place of the line above


def read_places(
    query: str | None, queries: str | None, also: Any = None, stdin: IO[str] | None = None
) -> list[list[str]]:
    """The places to locate, each as its descriptions: ``query`` with the further descriptions
    ``also`` (a string or a list), or the lines of ``queries``, where a line starting with ``+``
    adds a description to the place of the line above."""
    lines = read_queries(query, queries, stdin)
    if also is not None:
        if query is None:
            raise ConfigError('also= adds descriptions to query="..."; in a queries file, start a line with +')
        further = [also] if isinstance(also, str) else list(also)
        texts = [str(text).strip() for text in further]
        if not all(texts):
            raise ConfigError(f"also={further!r} holds an empty description")
        return [[lines[0], *texts]]
    if query is not None:
        return [lines]
    places: list[list[str]] = []
    for number, line in enumerate(lines, start=1):
        if not line.startswith(FOLLOW_UP):
            places.append([line])
            continue
        text = line[len(FOLLOW_UP) :].strip()
        if not places:
            raise ConfigError(
                f"queries={queries}: the first description ({line!r}) starts with '+', which adds to the place above it"
            )
        if not text:
            raise ConfigError(f"queries={queries}: description {number} is a lone '+'; write the description after it")
        places[-1].append(text)
    return places


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
