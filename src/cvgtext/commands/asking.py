"""One question on the web page: a description typed (perhaps a further one of the same place)
in, an :class:`Answer` out, with what was left out said in notes. Mistakes a person can make
(nothing typed, a very long paste, another script) become messages, never errors."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from cvgtext.reports.answer_html import answer_message
from cvgtext.reports.locations import Location
from cvgtext.utils.errors import ConfigError

if TYPE_CHECKING:
    from cvgtext.commands.locator import Locator

EXAMPLE = "a church on a roundabout, a small park to the north-east and a car park to the south"


@dataclass
class Asked:
    """The place being described: its descriptions so far, their embeddings (``[descriptions,
    embed_dim]``), and the last answer."""

    descriptions: list[str]
    embeddings: torch.Tensor
    location: Location | None = None


@dataclass
class Answer:
    """What the page shows for one description: a status line and, when it could be located,
    the ranking; ``place``: the place described, for further descriptions."""

    message: str
    location: Location | None = None
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    place: Asked | None = None


def tokens_beyond_context(tokenizer: Any, text: str) -> int:
    """How many of ``text``'s tokens the text encoder does not read (0 when unknown)."""
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
    encode, length = getattr(tokenizer, "encode", None), getattr(tokenizer, "context_length", None)
    if encode is None or not isinstance(length, int):
        return 0
    return max(0, len(encode(text)) + 2 - length)  # start and end of text take two places


def read_description(text: Any, max_chars: int) -> tuple[str | None, list[str]]:
    """The description to locate, or None and why not; notes on what was left out."""
    if not isinstance(text, str) or not text.strip():
        return None, [f'Describe the place you see, e.g. "{EXAMPLE}".']
    text = " ".join(text.split())
    notes = []
    if len(text) > max_chars:
        notes.append(
            f"The description was {len(text):,} characters long; the first {max_chars:,} were read "
            "(max_chars in the config)."
        )
        text = text[:max_chars]
    return text, notes


def answer(locator: Locator, text: Any, max_chars: int = 2000, place: Asked | None = None) -> Answer:
    """Locate one description typed on the page, with the earlier descriptions of ``place``
    when it is a further one."""
    started = time.perf_counter()
    description, notes = read_description(text, max_chars)
    if description is None:
        return Answer(notes[0], place=place)
    unread = tokens_beyond_context(locator.module.tokenizer, description)
    if unread:
        notes.append(
            f"The text encoder reads the first {locator.module.tokenizer.context_length} tokens; "
            f"the last {unread} were not read."
        )
    if not any(character.isascii() and character.isalpha() for character in description):
        notes.append("The model was trained on English descriptions; other scripts are read, but rarely well.")
    embedding = locator.embed([description])
    if place is None:
        place = Asked([description], embedding)
    else:
        place = Asked([*place.descriptions, description], torch.cat([place.embeddings, embedding]))
    [location] = locator.locate_embedded([place.descriptions], [place.embeddings])
    place.location = location
    seconds = time.perf_counter() - started
    if not location.candidates:
        return Answer("The gallery has no tiles to rank.", location, notes, seconds, place)
    message = answer_message(location, len(locator.gallery.names), seconds)
    if locator.calibration is None:
        notes.append("No confidence: the answers are not calibrated (calibration.enabled=false).")
    if location.reranking is not None:
        notes.append(f"Re-ranker: {location.reranking}.")
    return Answer(message, location, notes, seconds, place)


def check_page_options(server_name: Any, port: Any, max_chars: Any) -> None:
    """Refuse a server address, port or description length the page cannot use."""
    if not isinstance(server_name, str) or not server_name:
        raise ConfigError(f"server_name={server_name!r}: give a host name or address, e.g. 127.0.0.1")
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ConfigError(f"port={port!r} must be a port number from 1 to 65535")
    if isinstance(max_chars, bool) or not isinstance(max_chars, int) or max_chars < 1:
        raise ConfigError(f"max_chars={max_chars!r} must be a positive number of characters")
