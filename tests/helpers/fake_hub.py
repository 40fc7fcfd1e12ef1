"""A model hub on 127.0.0.1 that huggingface_hub talks to through ``HF_ENDPOINT`` (or ``endpoint=``).

It answers what huggingface_hub's client asks of the real hub:
- ``GET /api/{datasets|models}/{owner}/{name}/revision/{rev}``: the repository's commit (``sha``);
- ``GET /api/{datasets|models}/{owner}/{name}/tree/{rev}?recursive=...``: the files, ``page_size``
  at a time, the next page in a ``Link: <...>; rel="next"`` header as the hub does;
- ``HEAD``/``GET /[datasets/]{owner}/{name}/resolve/{rev}/{path}``: a small file itself (``ETag``:
  its git blob id, ``X-Repo-Commit``); a large (LFS) file as a 302 to ``/cdn/{sha256}`` on
  ``localhost`` (another origin, as a CDN is) with ``X-Linked-Etag`` and ``X-Linked-Size``;
- ``Range: bytes=N-`` answered with 206 and ``Content-Range``.
Errors carry the hub's ``X-Error-Code`` (RepoNotFound, EntryNotFound, RevisionNotFound). With
``token`` set, the repositories answer only requests that carry it. Every request is recorded
(method, path, Range, Authorization). ``stall[path] = n`` sends the first n bytes of that file
and then holds the connection open until ``release()``: a transfer to kill mid-file.
``latency_s`` delays every answer, as a far hub's round trip does.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from urllib.parse import parse_qs, unquote, urlsplit

from helpers.servers import LocalServer, QuietHandler

LFS_FROM = 4096  # files of this many bytes or more are stored as large (LFS) files


def blob_id(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


class FakeHub(LocalServer):
    def __init__(self, token: str | None = None, page_size: int = 7, latency_s: float = 0.0):
        self.repos: dict[tuple[str, str], dict[str, bytes]] = {}  # (type, id) -> path -> content
        self.entries: dict[tuple[str, str], dict[str, dict]] = {}  # (type, id) -> path -> tree entry
        self.commits: dict[tuple[str, str], str] = {}
        self.by_sha256: dict[str, tuple[str, bytes]] = {}  # what the CDN serves
        self.token, self.page_size, self.latency_s = token, page_size, latency_s
        self.stall: dict[str, int] = {}
        self.stalled = threading.Event()
        self.released = threading.Event()
        super().__init__(self.handler())

    def add(self, repo_type: str, repo_id: str, files: dict[str, bytes]) -> None:
        key = (repo_type, repo_id)
        self.repos[key] = dict(sorted(files.items()))
        self.entries[key] = {path: self.entry(path, content) for path, content in self.repos[key].items()}
        self.commits[key] = hashlib.sha1(
            json.dumps({path: entry["oid"] for path, entry in self.entries[key].items()}).encode()
        ).hexdigest()
        for path, content in self.repos[key].items():
            self.by_sha256[hashlib.sha256(content).hexdigest()] = (path, content)

    @property
    def url(self) -> str:
        return self.root

    def __exit__(self, *exc) -> None:
        self.release()  # a request held back by stall() must not keep the server from stopping
        super().__exit__(*exc)

    def release(self) -> None:
        self.released.set()

    def commit(self, key: tuple[str, str]) -> str:
        return self.commits[key]

    def entry(self, path: str, content: bytes) -> dict:
        entry = {"type": "file", "path": path, "size": len(content), "oid": blob_id(content)}
        if len(content) >= LFS_FROM:
            entry["lfs"] = {"oid": hashlib.sha256(content).hexdigest(), "size": len(content), "pointerSize": 130}
        return entry

    def fetched(self, path_end: str) -> list[dict]:
        """The GET requests whose path ends with ``path_end`` (a repository path or a sha256)."""
        return [
            request for request in self.requests if request["method"] == "GET" and request["path"].endswith(path_end)
        ]

    def handler(self) -> type:
        hub = self

        class Handler(QuietHandler):
            def do_HEAD(self):
                self.answer(body=False)

            def do_GET(self):
                self.answer(body=True)

            def answer(self, body: bool) -> None:
                path = unquote(urlsplit(self.path).path)
                hub.record(
                    {
                        "method": self.command,
                        "path": path,
                        "range": self.headers.get("Range"),
                        "authorization": self.headers.get("Authorization"),
                    }
                )
                time.sleep(hub.latency_s)  # a far hub's round trip
                try:
                    self.route(path, body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client went away (killed mid-file)

            def route(self, path: str, body: bool) -> None:
                cdn = re.fullmatch(r"/cdn/([0-9a-f]{64})", path)
                if cdn:
                    if cdn[1] not in hub.by_sha256:
                        return self.error(404, "EntryNotFound")
                    return self.send_content(*hub.by_sha256[cdn[1]], body)
                api = re.fullmatch(r"/api/(datasets|models)/([^/]+/[^/]+)/(revision|tree)/([^/]+)(/.*)?", path)
                resolve = re.fullmatch(r"/(datasets/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
                if api:
                    key = (api[1][:-1], api[2])
                elif resolve:
                    key = ("dataset" if resolve[1] else "model", resolve[2])
                else:
                    return self.error(404, None)
                if key not in hub.repos:
                    return self.error(404, "RepoNotFound")
                if hub.token and self.headers.get("Authorization") != f"Bearer {hub.token}":
                    return self.error(401, "RepoNotFound")
                revision = api[4] if api else resolve[3]
                if revision not in ("main", hub.commit(key)):
                    return self.error(404, "RevisionNotFound")
                if api and api[3] == "revision":
                    return self.send_json({"id": key[1], "sha": hub.commit(key), "siblings": []})
                if api:
                    return self.send_tree(key)
                files = hub.repos[key]
                if resolve[4] not in files:
                    return self.error(404, "EntryNotFound")
                self.send_file(key, resolve[4], files[resolve[4]], body)

            def send_tree(self, key: tuple[str, str]) -> None:
                query = parse_qs(urlsplit(self.path).query)
                start = int(query.get("cursor", ["0"])[0])
                files = hub.repos[key]
                folders = sorted(
                    {path.rsplit("/", depth)[0] for path in files for depth in range(1, path.count("/") + 1)}
                )
                entries = [{"type": "directory", "path": folder, "oid": blob_id(folder.encode())} for folder in folders]
                entries += list(hub.entries[key].values())
                page = entries[start : start + hub.page_size]
                headers = {}
                if start + hub.page_size < len(entries):
                    following = f"{hub.url}{urlsplit(self.path).path}?recursive=True&cursor={start + hub.page_size}"
                    headers["Link"] = f'<{following}>; rel="next"'
                self.send_json(page, headers)

            def send_file(self, key: tuple[str, str], path: str, content: bytes, body: bool) -> None:
                entry = hub.entries[key][path]
                if "lfs" in entry:
                    self.send_response(302)
                    self.send_header(
                        "Location", f"http://localhost:{hub.httpd.server_address[1]}/cdn/{entry['lfs']['oid']}"
                    )
                    self.send_header("X-Repo-Commit", hub.commit(key))
                    self.send_header("X-Linked-Etag", f'"{entry["lfs"]["oid"]}"')
                    self.send_header("X-Linked-Size", str(len(content)))
                    self.send_header("ETag", f'"{entry["oid"]}"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_content(path, content, body, {"X-Repo-Commit": hub.commit(key), "ETag": f'"{entry["oid"]}"'})

            def send_content(self, path: str, content: bytes, body: bool, headers: dict | None = None) -> None:
                start = 0
                asked = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
                if asked:
                    start = int(asked[1])
                self.send_response(206 if asked else 200)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                if asked:
                    self.send_header("Content-Range", f"bytes {start}-{len(content) - 1}/{len(content)}")
                self.send_header("Content-Length", str(len(content) - start))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                if not body:
                    return
                stall = hub.stall.get(path)
                if stall is not None and start < stall:
                    self.wfile.write(content[start:stall])
                    self.wfile.flush()
                    hub.stalled.set()
                    hub.released.wait(timeout=60)
                    return
                self.wfile.write(content[start:])

            def send_json(self, data, headers: dict | None = None) -> None:
                text = json.dumps(data).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(text)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(text)

            def error(self, status: int, code: str | None) -> None:
                text = json.dumps({"error": code or "not found"}).encode()
                self.send_response(status)
                if code:
                    self.send_header("X-Error-Code", code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(text)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(text)

        return Handler
