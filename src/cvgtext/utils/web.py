"""Opening http(s) URLs: chat endpoints (the re-ranker's and the captioner's models), tile and
street-view services, and shards served over the web."""

from __future__ import annotations

import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

LOOPBACK = ("localhost", "127.0.0.1", "::1")


def url_opener(url: str) -> urllib.request.OpenerDirector:
    """An opener for ``url``: a server on this machine is reached directly, whatever proxy the
    environment names (urllib would send 127.0.0.1 through ``http_proxy`` unless ``no_proxy``
    lists it)."""
    local = urllib.parse.urlsplit(url).hostname in LOOPBACK
    return urllib.request.build_opener(*([urllib.request.ProxyHandler({})] if local else []))


@dataclass
class Sent:
    """What :func:`send_with_retries` got: a body, or the last failure (``timeout``,
    ``unreachable``, ``http_error`` with its ``status``)."""

    body: bytes | None
    status: int | None = None  # the response's HTTP status, or the error's
    failure: str | None = None
    stopped: bool = False  # given up before trying again: the service was marked unreachable meanwhile


def send_with_retries(
    opener: urllib.request.OpenerDirector,
    request: Callable[[], urllib.request.Request],
    timeout_s: float,
    retries: int,
    backoff_s: float,
    unreachable: threading.Event,
    retried: Callable[[int], bool],
    before_each: Callable[[], None] = lambda: None,
) -> Sent:
    """Send ``request()`` up to ``retries + 1`` times, ``backoff_s`` doubling between tries, while
    the answer is a timeout, nothing listening, or an HTTP status that ``retried`` accepts; an
    HTTP status it refuses ends at once. ``unreachable`` set (by any thread) stops the tries;
    marking it is the caller's. ``before_each`` runs before each request (pacing, counting)."""
    failure, status = "unreachable", None
    for attempt in range(retries + 1):
        if unreachable.is_set():
            return Sent(None, status, failure, stopped=True)
        if attempt:
            time.sleep(backoff_s * 2 ** (attempt - 1))
        before_each()
        try:
            with opener.open(request(), timeout=timeout_s) as response:
                return Sent(response.read(), response.status)
        except urllib.error.HTTPError as error:
            failure, status = "http_error", error.code
            if not retried(error.code):
                break
        except TimeoutError:
            failure = "timeout"
        except (urllib.error.URLError, ConnectionError, OSError) as error:
            reason = getattr(error, "reason", error)
            failure = "timeout" if isinstance(reason, (TimeoutError, socket.timeout)) else "unreachable"
    return Sent(None, status, failure)
