"""Whether relevance maps are faithful: hide what they call relevant and watch the similarity.

Hiding a patch sets its pixels to the normalisation mean (zero after normalisation); hiding a
caption token replaces it by the padding token. A deletion curve hides the most relevant
patches (or tokens) first, in steps, and follows the pair's cosine similarity down; an insertion
curve starts from everything hidden and reveals the most relevant first. A faithful map makes
the deletion curve fall fast (small area) and the insertion curve rise fast (large area);
a random order is the baseline.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

PAD_TOKEN = 0  # open_clip's tokenizer pads with 0


@dataclass
class Curves:
    """Mean cosine similarity over the pairs after each step, ``[steps + 1]`` each, fraction
    ``step / steps`` of the patches or tokens hidden (deletion) or shown (insertion)."""

    deletion: torch.Tensor
    insertion: torch.Tensor

    @property
    def deletion_area(self) -> float:
        return area(self.deletion)

    @property
    def insertion_area(self) -> float:
        return area(self.insertion)


def area(curve: torch.Tensor) -> float:
    """Trapezoid area under a curve sampled evenly on ``[0, 1]``."""
    return float(torch.trapezoid(curve, dx=1 / (len(curve) - 1)))


def hide_patches(images: torch.Tensor, hidden: torch.Tensor, patch: tuple[int, int]) -> torch.Tensor:
    """``images`` ``[B, 3, H, W]`` with the patches where ``hidden`` ``[B, grid_h, grid_w]`` is
    true set to zero (the normalisation mean)."""
    mask = hidden.repeat_interleave(patch[0], dim=1).repeat_interleave(patch[1], dim=2)
    return images * (~mask)[:, None].to(images.dtype)


def hide_tokens(tokens: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """``tokens`` ``[B, L]`` with the caption tokens where ``hidden`` ``[B, L]`` is true padded."""
    return tokens.masked_fill(hidden, PAD_TOKEN)


def _ranks(scores: torch.Tensor) -> torch.Tensor:
    """Each element's place in descending order of ``scores`` ``[n]`` (0: the most relevant)."""
    order = torch.argsort(scores, descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks[order] = torch.arange(len(order))
    return ranks


@torch.no_grad()
def _image_features(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    return model.encode_image(images, normalize=True).float()


@torch.no_grad()
def _text_features(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    return model.encode_text(tokens, normalize=True).float()


def image_curves(
    module: nn.Module, images: torch.Tensor, tokens: torch.Tensor, relevance: Sequence[torch.Tensor], steps: int = 8
) -> Curves:
    """Deletion and insertion curves over image patches, most relevant first by ``relevance``
    (one ``[grid_h, grid_w]`` map per pair)."""
    model = getattr(module, "model", module)
    patch = tuple(model.visual.patch_size)
    ranks = torch.stack([_ranks(r.flatten()).reshape(r.shape) for r in relevance])  # [B, gh, gw]
    count = ranks[0].numel()
    text = _text_features(model, tokens)  # the caption is left whole
    deletion, insertion = [], []
    for step in range(steps + 1):
        k = round(step / steps * count)
        top = ranks < k
        deletion.append((_image_features(model, hide_patches(images, top, patch)) * text).sum(-1).mean())
        insertion.append((_image_features(model, hide_patches(images, ~top, patch)) * text).sum(-1).mean())
    return Curves(torch.stack(deletion), torch.stack(insertion))


def text_curves(
    module: nn.Module, images: torch.Tensor, tokens: torch.Tensor, relevance: Sequence[torch.Tensor], steps: int = 8
) -> Curves:
    """Deletion and insertion curves over the caption tokens (those between the start- and
    end-of-text tokens), most relevant first by ``relevance`` (one per caption token)."""
    model = getattr(module, "model", module)
    ranks = torch.full(tokens.shape, -1, dtype=torch.long)  # -1: not a caption token
    lengths = []
    for i, scores in enumerate(relevance):
        ranks[i, 1 : 1 + len(scores)] = _ranks(scores)
        lengths.append(len(scores))
    lengths = torch.tensor(lengths)[:, None]
    caption = ranks >= 0
    image = _image_features(model, images)  # the tile is left whole
    deletion, insertion = [], []
    for step in range(steps + 1):
        k = torch.round(step / steps * lengths)  # per pair: its captions differ in length
        top = caption & (ranks < k)
        deletion.append((image * _text_features(model, hide_tokens(tokens, top))).sum(-1).mean())
        insertion.append((image * _text_features(model, hide_tokens(tokens, caption & ~top))).sum(-1).mean())
    return Curves(torch.stack(deletion), torch.stack(insertion))
