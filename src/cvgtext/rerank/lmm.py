"""A large multimodal model as re-ranker: the prompts and how its replies become judgements.

Two ways of asking a chat model (through :class:`~cvgtext.utils.chat.ChatEndpoint`, any
OpenAI-compatible endpoint):

- ``pointwise`` (the paper's): one request per candidate with the description and the tile,
  asking for ``{"reason": ..., "confidence": 0..1}``; the confidence is the candidate's value.
- ``pairwise``: one request per pair of candidates (all pairs of the top k), asking which of
  two tiles, A or B, the description was written at: ``{"reason": ..., "better": "A" | "B"}``;
  a candidate's value is its share of wins over its answered comparisons.

Tiles are sent as JPEG data URLs (never their file names, which hold their coordinates), with
their relevance overlay as a second image when ``overlay`` is on. Replies are cached on disk,
keyed by the whole request (model, prompt, description, images, sampling), so a re-run asks
nothing again.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import combinations
from pathlib import Path
from typing import Any

from PIL import Image

from cvgtext.rerank import Judged, Query
from cvgtext.utils.chat import ChatEndpoint, Reply, encode_image, read_json_object, request_key
from cvgtext.utils.errors import ConfigError

log = logging.getLogger(__name__)

MODES = ("pointwise", "pairwise")
# What a candidate tile is called in the prompts, per gallery (img.name).
VIEWS = {"sat": "satellite image", "osm": "OpenStreetMap map tile", "stv": "street-view panorama"}
# Builds the relevance overlays of a description with its tiles: (description, paths) -> images.
Evidence = Callable[[str, Sequence[Path]], Sequence[Image.Image]]


def parse_confidence(content: str) -> tuple[float | None, str, str | None]:
    """``(confidence, reason, failure)`` of a pointwise reply; failure invalid_json or out_of_range."""
    found = read_json_object(content)
    if found is None or "confidence" not in found:
        return None, "", "invalid_json"
    confidence, reason = found["confidence"], str(found.get("reason", ""))
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)):
        return None, reason, "invalid_json"
    if not math.isfinite(confidence) or not 0 <= confidence <= 1:
        return None, reason, "out_of_range"
    return float(confidence), reason, None


def parse_choice(content: str) -> tuple[str | None, str, str | None]:
    """``("A" | "B", reason, failure)`` of a pairwise reply; failure invalid_json or out_of_range."""
    found = read_json_object(content)
    if found is None or "better" not in found:
        return None, "", "invalid_json"
    better, reason = found["better"], str(found.get("reason", ""))
    better = better.strip().upper() if isinstance(better, str) else None
    if better not in ("A", "B"):
        return None, reason, "out_of_range"
    return better, reason, None


class LMMReranker:
    """Judges candidate tiles by asking a multimodal chat model (see the module's docstring)."""

    name = "lmm"

    def __init__(
        self,
        url: str,
        model: str,
        prompt: str,
        pair_prompt: str,
        api_key_env: str | None = "OPENAI_API_KEY",
        mode: str = "pointwise",
        top_k: int = 5,
        weight: float = 0.1,
        max_queries: int | None = None,
        overlay: bool = False,
        overlay_prompt: str = "",
        image_size: int = 512,
        max_tokens: int = 256,
        temperature: float = 0.0,
        json_mode: bool = True,
        timeout_s: float = 60.0,
        retries: int = 2,
        backoff_s: float = 1.0,
        concurrency: int = 4,
        cache_dir: str | Path | None = None,
        view: str = "sat",
        evidence: Evidence | None = None,
        **unused: Any,
    ):
        check_settings(
            url=url,
            model=model,
            mode=mode,
            top_k=top_k,
            weight=weight,
            max_queries=max_queries,
            image_size=image_size,
            timeout_s=timeout_s,
            retries=retries,
            backoff_s=backoff_s,
            concurrency=concurrency,
            api_key_env=api_key_env,
        )
        self.model, self.mode, self.top_k, self.weight = model, mode, top_k, weight
        self.max_queries, self.overlay, self.image_size = max_queries, overlay, image_size
        self.prompt, self.pair_prompt, self.overlay_prompt = prompt, pair_prompt, overlay_prompt
        self.max_tokens, self.temperature, self.json_mode = max_tokens, temperature, json_mode
        self.concurrency = concurrency
        self.view = VIEWS.get(view, view)
        self.evidence = evidence
        replies = Path(cache_dir) / "reranker" if cache_dir else None
        self.endpoint = ChatEndpoint(url, api_key_env, timeout_s, retries, backoff_s, replies)

    def settings(self) -> dict[str, Any]:
        """What the re-ranking was, for metrics.json (never the API key)."""
        return {
            "reranker": self.name,
            "url": self.endpoint.url,
            "model": self.model,
            "mode": self.mode,
            "top_k": self.top_k,
            "weight": self.weight,
            "overlay": self.overlay,
            "image_size": self.image_size,
            "temperature": self.temperature,
            "prompt": self.prompt if self.mode == "pointwise" else self.pair_prompt,
            **({"overlay_prompt": self.overlay_prompt} if self.overlay else {}),
        }

    def _fill(self, template: str, description: str) -> str:
        text = template.replace("{description}", description).replace("{view}", self.view)
        return f"{text}\n\n{self.overlay_prompt}".strip() if self.overlay and self.overlay_prompt else text

    def _images(self, query: Query) -> list[list[str]]:
        """Each candidate's images as data URLs: its tile, and its overlay when asked for."""
        from cvgtext.data.dataset import load_image

        tiles = [load_image(path) for path in query.tiles]
        images = [[encode_image(tile, self.image_size)] for tile in tiles]
        if self.overlay and self.evidence is not None:
            for urls, overlay in zip(images, self.evidence(query.description, query.tiles)):
                urls.append(encode_image(overlay, self.image_size))
        return images

    def _body(self, text: str, images: Sequence[str]) -> dict[str, Any]:
        content = [{"type": "text", "text": text}]
        content += [{"type": "image_url", "image_url": {"url": url}} for url in images]
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
        }
        if self.json_mode:
            body["response_format"] = {"type": "json_object"}
        return body

    def requests(self, query: Query) -> list[tuple[tuple[int, ...], dict[str, Any]]]:
        """``(candidates, body)`` of each request of ``query``: one per candidate, or per pair."""
        images = self._images(query)
        if self.mode == "pointwise":
            text = self._fill(self.prompt, query.description)
            return [((i,), self._body(text, urls)) for i, urls in enumerate(images)]
        text = self._fill(self.pair_prompt, query.description)
        return [((i, j), self._body(text, images[i] + images[j])) for i, j in combinations(range(len(images)), 2)]

    def judge(self, queries: Sequence[Query]) -> list[list[Judged]]:
        """Each query's candidates judged; requests of all queries run ``concurrency`` at a time."""
        asked = [self.requests(query) for query in queries]
        # The same question (a caption repeated, identical tiles) is asked once.
        distinct = {request_key(body): body for requests in asked for _, body in requests}
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            answers = dict(zip(distinct, pool.map(self.endpoint.ask, distinct.values())))
        replies = iter([answers[request_key(body)] for requests in asked for _, body in requests])
        judgements = []
        for query, requests in zip(queries, asked):
            answered = [(candidates, next(replies)) for candidates, _ in requests]
            if self.mode == "pointwise":
                judgements.append(self._pointwise(answered))
            else:
                judgements.append(self._pairwise(len(query.tiles), answered))
        return judgements

    @staticmethod
    def _pointwise(answered: Sequence[tuple[tuple[int, ...], Reply]]) -> list[Judged]:
        judged = []
        for _, reply in answered:
            if reply.content is None:
                judged.append(Judged(None, failures=Counter([reply.failure])))
                continue
            confidence, reason, failure = parse_confidence(reply.content)
            judged.append(Judged(confidence, reason, Counter([failure] if failure else [])))
        return judged

    @staticmethod
    def _pairwise(count: int, answered: Sequence[tuple[tuple[int, ...], Reply]]) -> list[Judged]:
        wins, played = [0] * count, [0] * count
        reasons: list[list[str]] = [[] for _ in range(count)]
        failures: list[Counter] = [Counter() for _ in range(count)]
        for (a, b), reply in answered:
            better, reason, failure = (
                parse_choice(reply.content) if reply.content is not None else (None, "", reply.failure)
            )
            if better is None:
                failures[a][failure] += 1  # one failed request, counted once
                continue
            winner, loser = (a, b) if better == "A" else (b, a)
            wins[winner] += 1
            played[a] += 1
            played[b] += 1
            reasons[winner].append(f"over #{loser + 1}: {reason}" if reason else f"over #{loser + 1}")
        return [
            Judged(wins[i] / played[i] if played[i] else None, "; ".join(reasons[i]), failures[i]) for i in range(count)
        ]


def _is_whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_settings(**settings: Any) -> None:
    """Stop with one message naming the ``reranker.*`` key of a bad value."""

    def bad(key: str, expected: str) -> ConfigError:
        return ConfigError(f"reranker.{key}={settings[key]!r}: expected {expected}")

    url = settings["url"]
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise bad("url", "the http:// or https:// address of an OpenAI-compatible API, e.g. http://127.0.0.1:8000/v1")
    if not settings["model"]:
        raise bad("model", "the name of the model the endpoint serves")
    if settings["mode"] not in MODES:
        raise bad("mode", " or ".join(MODES))
    top_k, max_queries = settings["top_k"], settings["max_queries"]
    if not _is_whole(top_k) or not 2 <= top_k <= 10:
        raise bad("top_k", "a number of candidates from 2 to 10")
    if max_queries is not None and (not _is_whole(max_queries) or max_queries < 1):
        raise bad("max_queries", "a positive number of queries, or null for all")
    for key in ("weight", "backoff_s"):
        if not _is_number(settings[key]) or settings[key] < 0:
            raise bad(key, "a number >= 0")
    if not _is_number(settings["timeout_s"]) or settings["timeout_s"] <= 0:
        raise bad("timeout_s", "a positive number")
    for key, low in (("retries", 0), ("concurrency", 1), ("image_size", 32)):
        if not _is_whole(settings[key]) or settings[key] < low:
            raise bad(key, f"a whole number >= {low}")
    name = settings["api_key_env"]
    if name is not None and (not isinstance(name, str) or not name.replace("_", "").isalnum()):
        # Not echoed: it may be the key itself.
        raise ConfigError(
            "reranker.api_key_env: expected the NAME of an environment variable holding the API key "
            "(e.g. OPENAI_API_KEY), never the key itself"
        )
