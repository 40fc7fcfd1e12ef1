"""What every backbone family gives a run: :class:`Encoder`, whose ``model`` is a :class:`DualEncoder`
or, for a single-stream model (ViLT), a :class:`PairScorer`.

Training, evaluation, the query tool and the re-rankers use a backbone only through these, so
``train.py`` and ``eval.py`` are the same for every family (``model/encoder.py`` builds them).
A pair scorer has no embeddings: evaluation scores the (description, tile) pairs a ranking needs
(:mod:`cvgtext.retrieval.pairs`); training, the query tool and the web page need a dual encoder.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

FAMILIES = ("open_clip", "blip", "vilt")


class DualEncoder(Protocol):
    """What every family's model offers (open_clip's CLIP and CustomTextCLIP already do)."""

    logit_scale: nn.Parameter  # log of the learnt temperature

    def encode_image(self, image: torch.Tensor, normalize: bool = False) -> torch.Tensor: ...

    def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor: ...

    def set_grad_checkpointing(self, enable: bool = True) -> None: ...


class PairScorer(Protocol):
    """A model that scores (image, text) pairs together (``scores_pairs = True``)."""

    scores_pairs: bool

    def score(self, images: torch.Tensor, tokens: torch.Tensor, pixel_mask: torch.Tensor | None = None):
        """``[B]`` scores of the rows' pairs, higher for a better match."""


def scores_pairs(model: nn.Module) -> bool:
    """Whether ``model`` ranks by scoring pairs (:class:`PairScorer`) rather than by embeddings."""
    return bool(getattr(model, "scores_pairs", False))


@dataclass
class Encoder:
    """What a run needs from a backbone: the model, how to prepare images, how to tokenize text.

    ``image_size`` (``(height, width)``) is what the model was built with; ``resolved`` the
    backbone settings the configuration left to the weights (the activation, the model's
    configuration, the tokenizer), which checkpoints record so that they rebuild the same model
    without the pretrained weights. ``image_tower``: the parameter-name prefixes of the image
    tower (``model.lock_image``).
    """

    model: nn.Module
    preprocess: Callable[[Any], torch.Tensor]
    tokenizer: Callable[..., torch.Tensor]
    context_length: int
    image_size: tuple[int, int] | None = None
    resolved: dict[str, Any] | None = None
    image_tower: tuple[str, ...] = ("visual.",)
