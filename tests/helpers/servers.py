"""What the fake servers of the tests share: an HTTP server on 127.0.0.1 (a free port) answering in
a daemon thread while its context is open, and the reply of a chat-completions endpoint."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class QuietHandler(BaseHTTPRequestHandler):
    """A request handler that prints no line per request."""

    def log_message(self, *args):
        pass


class LocalServer:
    r"""Serves ``handler`` on 127.0.0.1 while the context is open; ``root`` is its address.
    ``requests`` holds what the handler :meth:`record`\ s, from any of its threads."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]):
        self.requests: list = []
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def record(self, request) -> None:
        with self.lock:
            self.requests.append(request)

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


def send_chat_reply(handler: BaseHTTPRequestHandler, content: str) -> None:
    """Answer a chat-completions request with ``content`` as the first choice's message; a client
    that gave up waiting is not an error."""
    reply = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
    try:
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(reply)))
        handler.end_headers()
        handler.wfile.write(reply)
    except (BrokenPipeError, ConnectionResetError):
        pass
