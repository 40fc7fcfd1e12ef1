"""Captions by the paper's progressive method, through any OpenAI-compatible multimodal model.

A producer sees the street view, the scene text OCR read and (optionally) a summary of what the
scene shows, with a prompt that asks for the road first, then the text of shops and signs, then
the buildings' colours and positions, then the overall environment, with directions, skipping
what is absent; panoramas and single views have their own prompts (a panorama's text opens with
the road's direction and goes round sector by sector; a photo's describes one frontage). Every
reply passes format filtering (markdown undone; refusals, code, coordinates and lengths outside
``[min_words, max_words]`` refused, with one follow-up request saying what was wrong). An
inspector (the same or another model) then accepts the caption, asks for one rewrite, or
rejects it, with a reason.

Prompts are config values (``{scene_text}``, ``{objects}``, ``{caption}``, ``{feedback}`` and
``{problem}`` are filled in) and are recorded in the town's manifest. Replies are cached on disk
keyed by the whole request (:class:`~cvgtext.utils.chat.ChatEndpoint`), so a rerun asks nothing
twice; a retry after a bad reply is a follow-up turn, a new request.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from cvgtext.data.town.http import SourceUnreachable
from cvgtext.utils.chat import ChatEndpoint, encode_image, read_json_object
from cvgtext.utils.errors import ConfigError

VERDICTS = ("accept", "rewrite", "reject")
_REFUSAL = re.compile(
    r"\b(i'?m sorry|i am sorry|i cannot|i can'?t|i can not|i am unable|i'?m unable|as an ai|can'?t help)\b",
    re.IGNORECASE,
)
_COORDINATES = re.compile(r"-?\d{1,3}\.\d{3,}\s*,\s*-?\d{1,3}\.\d{3,}")
_MARKUP = re.compile(r"^\s*(#+\s*|[-*\u2022]\s+|\d+[.)]\s+)", re.MULTILINE)
# What a follow-up request tells the model about its previous reply.
PROBLEMS = {
    "empty": "it was empty",
    "refusal": "it declined to describe the image",
    "code": "it held code or JSON instead of prose",
    "coordinates": "it gave coordinates",
    "too_short": "it was too short",
    "too_long": "it was too long",
}


def clean(text: str) -> str:
    """A reply as one paragraph: markdown headings, bullets, numbering and emphasis undone."""
    text = _MARKUP.sub("", text.strip().strip('"').strip())
    text = text.replace("**", "").replace("__", "")
    return " ".join(text.split())


def format_problem(text: str, min_words: int, max_words: int) -> str | None:
    """What makes a (cleaned) caption unusable, one of :data:`PROBLEMS`, or None."""
    words = len(text.split())
    if not words:
        return "empty"
    if _REFUSAL.search(text[:200]):
        return "refusal"
    if "```" in text or text.lstrip().startswith(("{", "[")):
        return "code"
    if _COORDINATES.search(text):
        return "coordinates"
    if words < min_words:
        return "too_short"
    if words > max_words:
        return "too_long"
    return None


@dataclass
class Caption:
    """A place's caption, or why it has none; the inspector's verdicts and reasons in order."""

    text: str | None
    left_out: str | None = None  # format:<problem>, inspector:<verdict>, model:<failure>
    verdicts: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _message(role: str, text: str, image_url: str | None = None) -> dict:
    if image_url is None:
        return {"role": role, "content": text}
    return {
        "role": role,
        "content": [{"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": image_url}}],
    }


def fill(template: str, **fields: str) -> str:
    """``template`` with each ``{name}`` of ``fields`` replaced (other braces are left alone)."""
    for name, value in fields.items():
        template = template.replace(f"{{{name}}}", value)
    return template


class Captioner:
    """Writes and inspects captions (see the module's docstring); ``describe()`` is what the
    manifest records: the method, the models and every prompt."""

    def __init__(
        self,
        method: str,
        url: str,
        model: str,
        producer: dict[str, str],
        follow_up: str,
        no_scene_text: str,
        no_objects: str,
        inspector: dict | None = None,
        api_key_env: str | None = None,
        min_words: int = 25,
        max_words: int = 250,
        image_size: int = 1024,
        max_tokens: int = 512,
        temperature: float = 0.0,
        timeout_s: float = 120.0,
        retries: int = 2,
        backoff_s: float = 1.0,
        cache_dir: str | Path | None = None,
    ):
        missing = [view for view in ("panorama", "single") if not (producer or {}).get(view)]
        if missing:
            raise ConfigError(f"captioner.producer needs a prompt for {' and '.join(missing)} street views")
        if not 0 < min_words <= max_words:
            raise ConfigError(f"captioner.min_words={min_words} and max_words={max_words}: expected 0 < min <= max")
        inspector = dict(inspector or {})
        if inspector.get("enabled") and not (inspector.get("prompt") and inspector.get("rewrite")):
            raise ConfigError("captioner.inspector needs a prompt and a rewrite prompt when enabled")
        self.method, self.model, self.url = method, model, url
        self.producer, self.follow_up = dict(producer), follow_up
        self.no_scene_text, self.no_objects = no_scene_text, no_objects
        self.inspector = inspector if inspector.get("enabled") else None
        self.min_words, self.max_words, self.image_size = min_words, max_words, image_size
        self.max_tokens, self.temperature = max_tokens, temperature
        self.endpoint = ChatEndpoint(
            url,
            api_key_env,
            timeout_s,
            retries,
            backoff_s,
            cache_dir,
            user="the caption model",
            unreachable_note="the build stops",
        )
        self.inspector_endpoint = self.endpoint
        if self.inspector and (self.inspector.get("url") or self.inspector.get("model")):
            self.inspector_endpoint = ChatEndpoint(
                self.inspector.get("url") or url, api_key_env, timeout_s, retries, backoff_s, cache_dir,
                user="the inspector model", unreachable_note="the build stops",
            )  # fmt: skip

    @property
    def _lengths(self) -> dict[str, str]:
        return {"min_words": str(self.min_words), "max_words": str(self.max_words)}

    @property
    def reads_scene_text(self) -> bool:
        """Whether the producer is shown OCR results (the plain method is not)."""
        return any("{scene_text}" in prompt for prompt in self.producer.values())

    def _ask(self, endpoint: ChatEndpoint, model: str, messages: list[dict], json_mode: bool = False):
        body = {"model": model, "messages": messages, "max_tokens": self.max_tokens, "temperature": self.temperature}
        if json_mode:
            body["response_format"] = {"type": "json_object"}
        reply = endpoint.ask(body)
        if reply.failure == "unreachable":
            raise SourceUnreachable(
                f"the caption model at {endpoint.url} is unreachable; start it or point captioner.url at it, "
                "then run the build again: it goes on where it stopped"
            )
        return reply

    def _produce(self, messages: list[dict]) -> tuple[str | None, str | None]:
        """A caption that passes format filtering, or why there is none (one follow-up allowed)."""
        for attempt in range(2):
            reply = self._ask(self.endpoint, self.model, messages)
            if reply.content is None:
                return None, f"model:{reply.failure}"
            text = clean(reply.content)
            problem = format_problem(text, self.min_words, self.max_words)
            if problem is None:
                return text, None
            if attempt == 0:
                follow_up = fill(self.follow_up, problem=PROBLEMS[problem], **self._lengths)
                messages = [*messages, _message("assistant", reply.content), _message("user", follow_up)]
        return None, f"format:{problem}"

    def _inspect(self, image_url: str, caption: str, scene_text: str) -> tuple[str | None, str]:
        """The inspector's verdict and reason; verdict None when it gave none usable (one follow-up)."""
        model = self.inspector.get("model") or self.model
        messages = [_message("user", fill(self.inspector["prompt"], caption=caption, scene_text=scene_text), image_url)]
        for attempt in range(2):
            reply = self._ask(self.inspector_endpoint, model, messages, json_mode=bool(self.inspector.get("json_mode")))
            if reply.content is None:
                return None, f"model:{reply.failure}"
            found = read_json_object(reply.content) or {}
            verdict = str(found.get("verdict", "")).strip().lower()
            if verdict in VERDICTS:
                return verdict, " ".join(str(found.get("reason", "")).split())
            if attempt == 0:
                messages = [
                    *messages,
                    _message("assistant", reply.content),
                    _message("user", self.inspector["follow_up"]),
                ]
        return None, "invalid_reply"

    def caption(self, image: Image.Image, view: str, scene_text: Sequence[str], objects: str | None = None) -> Caption:
        """The caption of a street view (``view``: panorama or single) given its OCR lines and scene summary."""
        image_url = encode_image(image, self.image_size)
        scene = "; ".join(f'"{line}"' for line in scene_text) if scene_text else self.no_scene_text
        prompt = fill(self.producer[view], scene_text=scene, objects=objects or self.no_objects, **self._lengths)
        text, why = self._produce([_message("user", prompt, image_url)])
        result = Caption(text, why)
        if text is None or self.inspector is None:
            return result
        for round_ in range(2):
            verdict, note = self._inspect(image_url, result.text, scene)
            if verdict is None:
                return Caption(
                    None,
                    note if note.startswith("model:") else "inspector:invalid_reply",
                    result.verdicts,
                    result.notes,
                )
            result.verdicts.append(verdict)
            result.notes.append(note)
            if verdict == "accept":
                return result
            if verdict == "reject" or round_ == 1:
                result.text, result.left_out = (
                    None,
                    f"inspector:{'rejected' if verdict == 'reject' else 'no_accept_after_rewrite'}",
                )
                return result
            rewrite = fill(self.inspector["rewrite"], caption=result.text, feedback=note or "(no reason given)")
            text, why = self._produce(
                [_message("user", prompt, image_url), _message("assistant", result.text), _message("user", rewrite)]
            )
            if text is None:
                result.text, result.left_out = None, why
                return result
            result.text = text
        return result

    def describe(self) -> dict:
        """The method, the models, the settings and the prompts, as the manifest records them."""
        return {
            "method": self.method,
            "url": self.url,
            "model": self.model,
            "producer_prompts": self.producer,
            "follow_up_prompt": self.follow_up,
            "inspector": {k: v for k, v in (self.inspector or {}).items()} or None,
            "min_words": self.min_words,
            "max_words": self.max_words,
            "image_size": self.image_size,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
        }
