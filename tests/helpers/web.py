"""What web-facing tests share: free local ports, and text a person might paste into a page."""

from __future__ import annotations

# Text a person might paste into the web page: markup that must be shown, never run.
HTML_TEXT = '<script>alert("x")</script><img src=x onerror=alert(1)> a <b>red</b> roof'


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
