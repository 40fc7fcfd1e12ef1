"""Opening http(s) URLs: chat endpoints (the re-ranker's model) and shards served over the web."""

from __future__ import annotations

import urllib.parse
import urllib.request

LOOPBACK = ("localhost", "127.0.0.1", "::1")


def url_opener(url: str) -> urllib.request.OpenerDirector:
    """An opener for ``url``: a server on this machine is reached directly, whatever proxy the
    environment names (urllib would send 127.0.0.1 through ``http_proxy`` unless ``no_proxy``
    lists it)."""
    local = urllib.parse.urlsplit(url).hostname in LOOPBACK
    return urllib.request.build_opener(*([urllib.request.ProxyHandler({})] if local else []))
