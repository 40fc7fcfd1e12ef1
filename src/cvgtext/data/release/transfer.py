"""Fetching files of a repository into a folder: resumable across runs, verified, atomic.

huggingface_hub does each transfer (``http_get``: its headers with the token it reads itself,
retries and in-run resumption, progress bar); what it leaves to its callers is done here:

- a file is written to ``.<name>.<digest>.part`` beside its place and resumed from there by
  the next run (an HTTP ``Range`` request); a part file of another version of the file is
  never resumed (its digest is in the name);
- a finished file is checked against the digest the listing gave (sha256 for a large file, the
  git blob id for a small one) before it is renamed into place, so that a file at its final
  path is always whole;
- files already in place are not fetched again; ``.fetched.json`` records the digests already
  checked, so a rerun does not read them again.
"""

from __future__ import annotations

import glob
import hashlib
import json
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cvgtext.data.release.hub import Listing, RemoteFile, hub_errors
from cvgtext.utils.atomic import atomic_write
from cvgtext.utils.errors import DataError

RECORD = ".fetched.json"


def human(size: int) -> str:
    """A byte count as people read it: ``1.2 GB``, ``340 kB``."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:,.1f} {unit}"
    return f"{size} B"


def digest_of(file: RemoteFile) -> str:
    return file.sha256 or file.blob_id


def content_digest(path: Path, file: RemoteFile) -> str:
    """The digest of ``path`` as the listing gives it for ``file``: sha256 of the content for a
    large file, else the git blob id (sha1 of ``blob <size>\\0`` and the content)."""
    if file.sha256:
        hasher = hashlib.sha256()
    else:
        hasher = hashlib.sha1()
        hasher.update(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            hasher.update(chunk)
    return hasher.hexdigest()


def local_path(folder: Path, file: RemoteFile, flat: bool = False) -> Path:
    """Where ``file`` goes under ``folder`` (its repository path, or with ``flat`` its name
    alone); a repository path that would leave ``folder`` is refused."""
    parts = file.path.split("/")
    if file.path.startswith("/") or any(part in ("", ".", "..") for part in parts) or "\\" in file.path:
        raise DataError(f"the repository lists a file {file.path!r} that would leave {folder}; refusing it")
    return folder / parts[-1] if flat else folder.joinpath(*parts)


def part_path(path: Path, file: RemoteFile) -> Path:
    return path.with_name(f".{path.name}.{digest_of(file)[:16]}.part")


class Record:
    """The digests of the files already checked under a folder, written now and then and at the end."""

    def __init__(self, folder: Path):
        self.path = folder / RECORD
        try:
            self.digests: dict[str, str] = json.loads(self.path.read_text())
        except (FileNotFoundError, ValueError):
            self.digests = {}
        self.lock, self.written = threading.Lock(), time.monotonic()

    def checked(self, file: RemoteFile) -> bool:
        return self.digests.get(file.path) == digest_of(file)

    def add(self, file: RemoteFile) -> None:
        with self.lock:
            self.digests[file.path] = digest_of(file)
            if time.monotonic() - self.written > 2.0:
                self.save()

    def save(self) -> None:
        with atomic_write(self.path) as stream:
            json.dump(self.digests, stream, indent=0, sort_keys=True)
        self.written = time.monotonic()


def in_place(path: Path, file: RemoteFile, record: Record) -> bool:
    """Whether ``path`` already holds ``file``: checked before, or its size and digest match now."""
    if not path.is_file() or path.stat().st_size != file.size:
        return False
    if record.checked(file):
        return True
    if content_digest(path, file) == digest_of(file):
        record.add(file)
        return True
    return False


def fetch_one(listing: Listing, file: RemoteFile, path: Path, progress_class: type, endpoint: str | None) -> None:
    """Fetch ``file`` into ``path`` through its part file, resuming what an earlier run left."""
    from huggingface_hub import hf_hub_url
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    part = part_path(path, file)
    path.parent.mkdir(parents=True, exist_ok=True)
    for other in path.parent.glob(f".{glob.escape(path.name)}.*.part"):
        if other != part:  # what a run left of another version of the file: never resumed
            other.unlink(missing_ok=True)
    if part.exists() and part.stat().st_size > file.size:
        part.unlink()
    url = hf_hub_url(
        listing.repo_id, file.path, repo_type=listing.repo_type, revision=listing.commit, endpoint=endpoint
    )
    with open(part, "ab") as handle:
        # huggingface_hub adds the token it reads (HF_TOKEN, hf auth login); the HTTP client drops
        # it when the hub redirects to another host (a CDN).
        http_get(
            url,
            handle,
            resume_size=handle.tell(),
            headers=build_hf_headers(),
            expected_size=file.size,
            displayed_filename=file.name,
            tqdm_class=progress_class,
        )
    found = content_digest(part, file)
    if found != digest_of(file):
        part.unlink()
        raise DataError(
            f"{file.path} of {listing.repo_id} arrived with digest {found}, not the hub's {digest_of(file)}: "
            "it was deleted; run the download again"
        )
    part.replace(path)


def fetch(
    listing: Listing,
    files: Sequence[RemoteFile],
    folder: Path,
    workers: int = 8,
    flat: bool = False,
    endpoint: str | None = None,
) -> list[Path]:
    """Fetch ``files`` of ``listing`` into ``folder`` (their repository paths kept, or with
    ``flat`` their names alone), ``workers`` at a time; returns their local paths."""
    from huggingface_hub.utils import tqdm

    record = Record(folder)
    paths = [local_path(folder, file, flat) for file in files]
    todo = [(file, path) for file, path in zip(files, paths) if not in_place(path, file, record)]
    resumed = sum(part_path(path, file).stat().st_size for file, path in todo if part_path(path, file).exists())
    total = sum(file.size for file, _ in todo)
    print(
        f"{len(files) - len(todo)} of {len(files)} files already here; fetching {len(todo)} "
        f"({human(total)}{f', {human(resumed)} of it resumed' if resumed else ''})",
        flush=True,
    )
    if not todo:
        record.save()
        return paths
    try:
        with tqdm(total=total, initial=resumed, unit="B", unit_scale=True, desc="download") as bar:
            progress_class = shared_progress(bar)
            pool = ThreadPoolExecutor(max_workers=max(1, workers))
            try:
                with hub_errors(listing.repo_id, endpoint):
                    futures = [
                        pool.submit(fetch_one, listing, file, path, progress_class, endpoint) for file, path in todo
                    ]
                    for (file, _), future in zip(todo, futures):
                        future.result()
                        record.add(file)
            finally:
                # a failure (or Ctrl-C) starts no further file; those under way finish their part files
                pool.shutdown(wait=False, cancel_futures=True)
    finally:
        record.save()
    return paths


def shared_progress(bar) -> type:
    """A progress class for ``http_get`` that adds each file's bytes to one bar for all files
    (``bar`` counts the bytes resumed from part files already)."""

    class Shared:
        def __init__(self, *args, **kwargs):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def update(self, n: int | float | None = 1) -> None:
            bar.update(n)

        def close(self) -> None:
            pass

    return Shared
