"""Fingerprints for caches: a short digest of everything a cached result depends on.

A cache stores the description it was built from (a JSON-able dict, see :func:`digest`) next
to the result and compares it on every read, so a change in the weights, the settings or the
input files rebuilds the result instead of serving a stale one. File content is hashed where
it must be (weights); large sets of input files are described by name, size and modification
time (:func:`files_signature`), which a rewrite or a ``touch`` changes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

_CHUNK = 1 << 20
# Memory addresses in a repr (``<function f at 0x7f..>``) differ between processes.
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def digest(value: Any) -> str:
    """SHA-256 of the canonical JSON of ``value`` (keys sorted; other objects by ``str``)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's content."""
    sha = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(_CHUNK), b""):
            sha.update(block)
    return sha.hexdigest()


def files_signature(paths: Iterable[str | Path]) -> str:
    """A digest of each file's name, size and modification time (ns), in the order given."""
    sha = hashlib.sha256()
    for path in paths:
        stat = os.stat(path)
        sha.update(f"{os.fspath(path)}\x00{stat.st_size}\x00{stat.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
    return sha.hexdigest()


def stable_repr(value: Any) -> str:
    """``repr(value)`` without memory addresses: the same object configuration gives the same text."""
    return _ADDRESS.sub("", repr(value))


def changed_parts(stored: dict[str, Any], expected: dict[str, Any]) -> list[str]:
    """The top-level keys whose values differ between two descriptions, sorted."""
    return sorted(key for key in set(stored) | set(expected) if stored.get(key) != expected.get(key))
