"""One lock per key: threads that would write the same cache entry take turns, others do not wait."""

from __future__ import annotations

import threading
from collections.abc import Hashable


class KeyedLocks:
    """``locks(key)`` is the lock of ``key``, the same object for every thread."""

    def __init__(self):
        self._locks: dict[Hashable, threading.Lock] = {}
        self._guard = threading.Lock()

    def __call__(self, key: Hashable) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())
