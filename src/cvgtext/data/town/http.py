"""Polite HTTP GETs for tile and street-view services: a User-Agent naming the application, at
most one request per ``min_interval_s`` (a lock shared by all threads), retries with backoff
for what a server may answer next time, and one clear stop when nothing answers at all.
"""

from __future__ import annotations

import threading
import time
import urllib.request

from cvgtext.data.town.places import LeftOut
from cvgtext.utils.errors import ConfigError, DataError
from cvgtext.utils.web import send_with_retries, url_opener

# Answers worth asking again after a pause.
RETRIED_STATUS = {408, 425, 429, 500, 502, 503, 504}


class SourceUnreachable(DataError):
    """Nothing answers at a service's address: the build stops and can be rerun later."""


class PoliteClient:
    """GETs to one service; ``label`` names it in messages, ``address`` is what they show of its
    URL (a template, never a key). ``sent`` counts requests, retries included."""

    def __init__(
        self,
        address: str,
        label: str,
        user_agent: str,
        min_interval_s: float = 1.0,
        timeout_s: float = 30.0,
        retries: int = 3,
        backoff_s: float = 2.0,
    ):
        if not user_agent or not user_agent.strip():
            raise ConfigError(f"{label} needs a User-Agent naming the application (http.user_agent is empty)")
        self.address, self.label, self.user_agent = address, label, user_agent
        self.min_interval_s, self.timeout_s, self.retries, self.backoff_s = (
            min_interval_s,
            timeout_s,
            retries,
            backoff_s,
        )
        self.opener = url_opener(address)
        self._pace, self._next_request = threading.Lock(), 0.0
        self._count = threading.Lock()
        self.unreachable = threading.Event()
        self.sent = 0

    def _before_request(self) -> None:
        """Wait for this client's turn (one request per ``min_interval_s``), and count the request."""
        with self._pace:
            now = time.monotonic()
            if now < self._next_request:
                time.sleep(self._next_request - now)
            self._next_request = max(now, self._next_request) + self.min_interval_s
        with self._count:
            self.sent += 1

    def get(self, url: str, what: str, missing_reason: str, failed_reason: str) -> bytes:
        """The body at ``url``. HTTP 404/410/204 raises LeftOut(``missing_reason``); other failures,
        after the retries, LeftOut(``failed_reason``); nothing answering, SourceUnreachable."""
        where = f"{what} of {self.label} ({self.address})"
        sent = send_with_retries(
            self.opener,
            lambda: urllib.request.Request(url, headers={"User-Agent": self.user_agent}),
            self.timeout_s,
            self.retries,
            self.backoff_s,
            self.unreachable,
            retried=RETRIED_STATUS.__contains__,
            before_each=self._before_request,
        )
        if sent.body is not None:
            if sent.status == 204:
                raise LeftOut(missing_reason, f"{where}: the service has none (HTTP 204)")
            return sent.body
        if sent.status in (404, 410):
            raise LeftOut(missing_reason, f"{where}: the service has none (HTTP {sent.status})")
        if sent.failure == "http_error" and sent.status not in RETRIED_STATUS:
            raise LeftOut(failed_reason, f"{where}: HTTP {sent.status}")
        if sent.failure == "unreachable":
            self.unreachable.set()
            raise SourceUnreachable(
                f"{self.label} at {self.address} is unreachable (nothing answered {self.retries + 1} tries); "
                "check the URL and the network, then run the build again: it goes on where it stopped"
            )
        failure = f"HTTP {sent.status}" if sent.failure == "http_error" else sent.failure
        raise LeftOut(failed_reason, f"{where}: {failure} after {self.retries + 1} tries")
