"""An OpenAI-compatible chat-completions endpoint: what vLLM (``vllm serve``), llama.cpp's
``llama-server``, Ollama and hosted APIs serve at ``<url>/chat/completions``.

:class:`ChatEndpoint` sends requests with a timeout, retries what the server may answer next time
(with backoff), stops asking an endpoint that nothing listens at, and caches replies on disk
keyed by the whole request, so that a rerun asks nothing twice. The API key is read from the
environment variable named by ``api_key_env`` at each request and goes into no file. Images go
as JPEG data URLs (:func:`encode_image`); :func:`read_json_object` finds the JSON object of a
reply. The re-ranker (``rerank/lmm.py``) builds its prompts and reads its judgements on top.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import os
import threading
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from cvgtext.utils.atomic import atomic_write
from cvgtext.utils.errors import OutputError
from cvgtext.utils.web import send_with_retries, url_opener

log = logging.getLogger(__name__)

# Failures retried with backoff: the server may answer next time.
RETRIED_STATUS = {408, 409, 429}


def retried(status: int) -> bool:
    """Whether an HTTP error status is asked again: :data:`RETRIED_STATUS` and every 5xx."""
    return status in RETRIED_STATUS or status >= 500


@dataclass
class Reply:
    """The text a request got back, or why there is none."""

    content: str | None
    failure: str | None = None  # timeout, unreachable, http_error, bad_response
    cached: bool = False


def request_key(body: dict) -> str:
    """The digest of a whole request: what the reply cache is keyed by."""
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def encode_image(image: Image.Image, size: int) -> str:
    """A JPEG data URL of ``image``, its longer side at most ``size`` pixels."""
    image = image.convert("RGB")
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def read_json_object(content: str) -> dict | None:
    """The JSON object of a reply, also inside a Markdown code fence or after a sentence; None
    when there is none."""
    text = content.strip()
    start, stop = text.find("{"), text.rfind("}")
    if start < 0 or stop < start:
        return None
    try:
        found = json.loads(text[start : stop + 1])
    except json.JSONDecodeError:
        return None
    return found if isinstance(found, dict) else None


class ChatEndpoint:
    """Requests to one chat-completions endpoint: timeouts, retries with backoff, a reply cache.

    After a request finds nothing listening (all its retries refused), the endpoint is taken as
    unreachable and later requests fail at once instead of each waiting through its retries.
    ``cache_dir`` is the folder of the reply cache (None: no cache); ``user`` names who asks in
    the log's warnings ("the re-ranker"), and ``unreachable_note`` what an unreachable endpoint
    means for it.
    """

    def __init__(
        self,
        url: str,
        api_key_env: str | None,
        timeout_s: float,
        retries: int,
        backoff_s: float,
        cache_dir: str | Path | None,
        user: str = "the re-ranker",
        unreachable_note: str = "no candidate is judged",
    ):
        url = url.rstrip("/")
        self.url = url if url.endswith("/chat/completions") else f"{url}/chat/completions"
        self.api_key_env = api_key_env
        self.timeout_s, self.retries, self.backoff_s = timeout_s, retries, backoff_s
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.user, self.unreachable_note = user, unreachable_note
        self.opener = url_opener(self.url)
        self.unreachable = threading.Event()
        self.sent = 0
        self.cached = 0
        self._count = threading.Lock()

    def _cache_path(self, body: dict) -> Path | None:
        if self.cache_dir is None:
            return None
        key = request_key(body)
        return self.cache_dir / key[:2] / f"{key}.json"

    def ask(self, body: dict) -> Reply:
        """The content of the first choice of ``body``'s completion."""
        path = self._cache_path(body)
        if path is not None and path.is_file():
            try:
                content = json.loads(path.read_text())["content"]
                with self._count:
                    self.cached += 1
                return Reply(content, cached=True)
            except (OSError, ValueError, KeyError, TypeError):
                pass  # a damaged entry is asked again and rewritten
        reply = self._post(body)
        if reply.content is not None and path is not None:
            try:
                with atomic_write(path) as stream:
                    json.dump({"content": reply.content}, stream)
            except (OSError, OutputError) as error:  # the reply is still used; only the cache misses it
                log.warning("The reply cache of %s could not be written: %s", self.user, error)
        return reply

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _post(self, body: dict) -> Reply:
        data = json.dumps(body).encode()
        sent = send_with_retries(
            self.opener,
            lambda: urllib.request.Request(self.url, data=data, headers=self._headers(), method="POST"),
            self.timeout_s,
            self.retries,
            self.backoff_s,
            self.unreachable,
            retried=retried,
            before_each=self._count_request,
        )
        if sent.stopped:
            return Reply(None, "unreachable")
        if sent.body is None:
            if sent.failure == "http_error" and not retried(sent.status):
                log.warning("The endpoint of %s, %s, answered HTTP %d", self.user, self.url, sent.status)
            elif sent.failure == "unreachable" and not self.unreachable.is_set():
                self.unreachable.set()
                log.warning("The endpoint of %s, %s, is unreachable: %s", self.user, self.url, self.unreachable_note)
            return Reply(None, sent.failure)
        try:
            content = json.loads(sent.body)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            return Reply(None, "bad_response")
        if not isinstance(content, str):
            return Reply(None, "bad_response")
        return Reply(content)

    def _count_request(self) -> None:
        with self._count:
            self.sent += 1
