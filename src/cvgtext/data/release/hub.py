"""Listing a hub repository through huggingface_hub, and its errors as one line each.

huggingface_hub reads ``HF_ENDPOINT`` (a mirror) and ``HF_TOKEN`` (or the token of
``hf auth login``) itself; nothing here reads or stores the token. ``endpoint`` is for the
tests, which run a hub on 127.0.0.1 in the same process.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from cvgtext.utils.atomic import STORAGE_ERRORS
from cvgtext.utils.errors import ConfigError, DataError, OutputError


@dataclass(frozen=True)
class RemoteFile:
    """One file of a repository at one commit."""

    path: str  # inside the repository, "/"-separated
    size: int  # bytes
    blob_id: str  # git blob id: sha1 of "blob <size>\0" + content
    sha256: str | None  # content digest of a large (LFS) file; None for a small one

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class Listing:
    """A repository's files at the commit its revision pointed at."""

    repo_id: str
    repo_type: str  # dataset or model
    commit: str
    files: tuple[RemoteFile, ...]

    def top_level(self) -> list[str]:
        """The repository's top-level entries (folders end in /), for messages."""
        return sorted({file.path.split("/", 1)[0] + ("/" if "/" in file.path else "") for file in self.files})


def hub_endpoint(endpoint: str | None = None) -> str:
    """The hub's address: ``endpoint``, else huggingface_hub's (``HF_ENDPOINT`` or huggingface.co)."""
    from huggingface_hub import constants

    return (endpoint or constants.ENDPOINT).rstrip("/")


@contextlib.contextmanager
def hub_errors(repo_id: str, endpoint: str | None = None) -> Iterator[None]:
    """Turn huggingface_hub's errors about ``repo_id`` into one-line :class:`DataError` or
    :class:`ConfigError` messages that say what to do."""
    from huggingface_hub import errors

    where = hub_endpoint(endpoint)
    try:
        yield
    except errors.GatedRepoError:
        raise ConfigError(
            f"{repo_id} on {where} is gated: accept its terms on its page, then log in (hf auth login) or set HF_TOKEN"
        ) from None
    except errors.RepositoryNotFoundError:
        raise ConfigError(
            f"no repository {repo_id} on {where}, or it is private: check the name (repo=, checkpoint_repo=), "
            "or log in (hf auth login) or set HF_TOKEN"
        ) from None
    except errors.RevisionNotFoundError:
        raise ConfigError(f"{repo_id} on {where} has no such revision: check revision=") from None
    except errors.OfflineModeIsEnabled:
        raise ConfigError(f"cannot reach {where} for {repo_id}: HF_HUB_OFFLINE is set; unset it to download") from None
    except errors.HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else "?"
        raise DataError(f"{where} answered HTTP {status} for {repo_id}: {str(error).splitlines()[0]}") from None
    except OSError as error:
        if error.errno in STORAGE_ERRORS:
            raise OutputError(
                f"cannot write {error.filename or 'the download'} ({error.strerror}): free some space, or choose out="
            ) from None
        if isinstance(error, (ConnectionError, TimeoutError)):
            raise DataError(f"cannot reach {where} for {repo_id} ({error}): check the network or HF_ENDPOINT") from None
        # huggingface_hub's size check of a transfer that ended early, among others
        raise DataError(
            f"a transfer from {where} for {repo_id} failed ({str(error).splitlines()[0]}); "
            "run the download again: it resumes where it stopped"
        ) from None
    except Exception as error:
        if type(error).__module__.split(".")[0] in {"httpx2", "httpx", "httpcore"}:
            raise DataError(
                f"cannot reach {where} for {repo_id} ({type(error).__name__}: {error}): check the network, "
                "or set HF_ENDPOINT to a mirror"
            ) from None
        raise


def list_repository(repo_id: str, repo_type: str, revision: str = "main", endpoint: str | None = None) -> Listing:
    """Every file of ``repo_id`` at the commit ``revision`` points at now (one call for the
    commit, then the recursive tree, page by page)."""
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile

    api = HfApi(endpoint=endpoint)
    with hub_errors(repo_id, endpoint):
        commit = api.repo_info(repo_id, repo_type=repo_type, revision=revision).sha
        entries = api.list_repo_tree(repo_id, recursive=True, repo_type=repo_type, revision=commit)
        files = tuple(
            RemoteFile(entry.path, entry.size, entry.blob_id, entry.lfs.sha256 if entry.lfs else None)
            for entry in entries
            if isinstance(entry, RepoFile)
        )
    if commit is None:
        raise DataError(f"{hub_endpoint(endpoint)} gave no commit for {repo_id}@{revision}: is it a hub?")
    return Listing(repo_id, repo_type, commit, files)
