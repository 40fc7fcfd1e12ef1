"""Symmetric InfoNCE over matched image-text pairs, with negatives from one device or from all.

Row ``i`` of the image features and row ``i`` of the text features describe the same place; every
other text in the batch is a negative for image ``i`` and vice versa. The loss is the mean of the
image->text and text->image cross-entropies over ``logit_scale * image @ text.T``.

Under data parallelism there are two choices of negatives:

- ``global``: features are gathered from all ranks, so each of a rank's pairs is contrasted with
  the whole global batch. Gradients flow back to each rank's own rows through the gather
  (open_clip's ``ClipLoss(local_loss=True, gather_with_grad=True)``), and the gradient DDP
  averages over ranks equals the gradient of the loss on the concatenated global batch.
- ``local``: each rank contrasts its own batch only. The official CrossText2Loc code trains this
  way in effect (its gather overwrites every gathered slot with the local features), so use it
  to reproduce the paper's numbers.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
import torch.nn.functional as F
from torch import nn

from cvgtext.utils.errors import ConfigError

Negatives = Literal["global", "local"]
NEGATIVES = ("global", "local")


class ContrastiveOutput(NamedTuple):
    """The loss with the logits it was computed from, for logging retrieval accuracy."""

    loss: torch.Tensor  # scalar
    logits_per_image: torch.Tensor  # [local batch, negatives]: this rank's images vs all texts
    logits_per_text: torch.Tensor  # [local batch, negatives]: this rank's texts vs all images
    labels: torch.Tensor  # [local batch]: column of each row's matching pair


class ContrastiveLoss(nn.Module):
    """Symmetric InfoNCE (CLIP loss) over L2-normalised image and text features.

    Args:
        negatives: ``"global"`` gathers features from all ranks when ``torch.distributed`` is
            initialised with more than one process; ``"local"`` uses each rank's batch only.
            Both are the same on a single process.
        label_smoothing: passed to ``F.cross_entropy`` (Sample4Geo uses 0.1).

    With ``global`` negatives and unequal batch sizes across ranks (a last, partial batch), each
    rank's loss is weighted by ``world_size * local_batch / global_batch``. The mean of the
    per-rank losses, and the gradient DDP averages, then equal those of the concatenated global
    batch; with equal batch sizes the weight is 1 and the loss is the plain mean over local rows.
    """

    def __init__(self, negatives: Negatives = "global", label_smoothing: float = 0.0) -> None:
        super().__init__()
        if negatives not in NEGATIVES:
            raise ValueError(f"negatives must be one of {NEGATIVES}, got {negatives!r}")
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
        self.negatives = negatives
        self.label_smoothing = label_smoothing

    def forward(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        logit_scale: torch.Tensor,
    ) -> torch.Tensor:
        """Scalar loss for ``image_features`` and ``text_features`` [batch, dim].

        ``logit_scale`` is the exponentiated temperature, as open_clip's model returns it.
        """
        return self.forward_with_logits(image_features, text_features, logit_scale).loss

    def forward_with_logits(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        logit_scale: torch.Tensor,
    ) -> ContrastiveOutput:
        """Like ``forward``, also returning the logits and the labels of their positive columns."""
        if image_features.shape != text_features.shape or image_features.ndim != 2:
            raise ValueError(
                "image and text features must be paired [batch, dim] tensors, got "
                f"{tuple(image_features.shape)} and {tuple(text_features.shape)}"
            )
        batch = image_features.shape[0]
        if self.negatives == "global" and _world_size() > 1:
            sizes = _batch_sizes(batch, image_features.device)
            rank = dist.get_rank()
            all_images = _gather_with_grad(image_features, sizes)  # [global batch, dim]
            all_texts = _gather_with_grad(text_features, sizes)
            offset = sum(sizes[:rank])
            weight = len(sizes) * batch / sum(sizes)
        else:
            all_images, all_texts, offset, weight = image_features, text_features, 0, 1.0

        logits_per_image = logit_scale * image_features @ all_texts.T
        logits_per_text = logit_scale * text_features @ all_images.T
        labels = torch.arange(batch, device=image_features.device) + offset
        if batch == 0:
            # A zero that still depends on the gathered features, so this rank takes part in the
            # gather's backward collective instead of leaving the other ranks waiting.
            loss = logits_per_image.sum() + logits_per_text.sum()
        else:
            loss = (
                F.cross_entropy(logits_per_image, labels, label_smoothing=self.label_smoothing)
                + F.cross_entropy(logits_per_text, labels, label_smoothing=self.label_smoothing)
            ) / 2
        return ContrastiveOutput(weight * loss, logits_per_image, logits_per_text, labels)


def _world_size() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def _batch_sizes(batch: int, device: torch.device) -> list[int]:
    """Local batch size of every rank."""
    local = torch.tensor([batch], device=device)
    sizes = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, local)
    return [int(size) for size in sizes]


def _gather_with_grad(features: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Concatenate every rank's rows [sum(sizes), ...]; gradients return to each rank's own rows.

    Collectives need equal shapes, so rows are padded to the largest batch and trimmed after.
    """
    gathered = dist_nn.all_gather(_padded(features, max(sizes)))
    return torch.cat([rows[:size] for rows, size in zip(gathered, sizes)])


def _gather(rows: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Like :func:`_gather_with_grad`, for rows no gradient flows through (token ids, tile ids)."""
    padded = _padded(rows, max(sizes))
    gathered = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(gathered, padded)
    return torch.cat([part[:size] for part, size in zip(gathered, sizes)])


def _padded(rows: torch.Tensor, length: int) -> torch.Tensor:
    return torch.cat([rows, rows.new_zeros((length - rows.shape[0], *rows.shape[1:]))])


class MatchingPool(NamedTuple):
    """The pairs an image-text matching loss draws its hard negatives from, this rank's among them.

    Row ``i`` of every field is one (image, caption) pair; this rank's own pairs are rows
    ``offset`` to ``offset + batch``. Features are detached (they only weigh the draw); the image
    tokens keep their gradient, which returns to the rank that computed them.
    """

    image_tokens: torch.Tensor  # [N, tokens, width]
    text: torch.Tensor  # [N, context] token ids
    image_features: torch.Tensor  # [N, dim], L2-normalised
    text_features: torch.Tensor  # [N, dim], L2-normalised
    tiles: torch.Tensor  # [N]: pairs with equal values show the same tile (never each other's negative)
    offset: int
    batch: int

    @property
    def local(self) -> slice:
        return slice(self.offset, self.offset + self.batch)


def matching_pool(
    image_tokens: torch.Tensor,
    text: torch.Tensor,
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    tiles: torch.Tensor | None = None,
    negatives: Negatives = "global",
) -> MatchingPool:
    """This rank's pairs, with every rank's when ``negatives="global"`` and several processes
    train (BLIP draws its matching negatives from the whole global batch so). ``tiles``: an id
    of each pair's tile (default: every pair its own)."""
    batch = image_tokens.shape[0]
    if negatives != "global" or _world_size() == 1:
        if tiles is None:
            tiles = torch.arange(batch, device=text.device)
        return MatchingPool(image_tokens, text, image_features.detach(), text_features.detach(), tiles, 0, batch)
    sizes = _batch_sizes(batch, text.device)
    offset = sum(sizes[: dist.get_rank()])
    if tiles is None:
        tiles = torch.arange(offset, offset + batch, device=text.device)
    return MatchingPool(
        _gather_with_grad(image_tokens, sizes),
        _gather(text, sizes),
        _gather(image_features.detach(), sizes),
        _gather(text_features.detach(), sizes),
        _gather(tiles, sizes),
        offset,
        batch,
    )


LOSS_KINDS = ("contrastive", "sigmoid")


class SigmoidLoss(nn.Module):
    """SigLIP's pairwise sigmoid loss: open_clip's ``SigLipLoss``, with this module's negatives.

    Every image-text pair of the (global) batch is a binary decision: the matching pair a
    positive, every other pair a negative, on ``logit_scale * image @ text.T + logit_bias``.
    With ``global`` negatives and several processes, each rank's images meet every rank's texts
    through open_clip's neighbour exchange (gradients flow back to the sending rank); the mean of
    the ranks' losses equals the loss of the whole batch on one process. That exchange needs
    equal local batches; a rank whose batch is smaller (an image skipped) stops the step with
    a message. ``local`` contrasts each rank's own batch only.
    """

    def __init__(self, negatives: Negatives = "global") -> None:
        super().__init__()
        if negatives not in NEGATIVES:
            raise ValueError(f"negatives must be one of {NEGATIVES}, got {negatives!r}")
        self.negatives = negatives

    def forward(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        logit_scale: torch.Tensor,
        logit_bias: torch.Tensor,
    ) -> torch.Tensor:
        from open_clip.loss import SigLipLoss

        if image_features.shape != text_features.shape or image_features.ndim != 2:
            raise ValueError(
                "image and text features must be paired [batch, dim] tensors, got "
                f"{tuple(image_features.shape)} and {tuple(text_features.shape)}"
            )
        world = _world_size() if self.negatives == "global" else 1
        rank = dist.get_rank() if world > 1 else 0
        if world > 1:
            sizes = _batch_sizes(image_features.shape[0], image_features.device)
            if len(set(sizes)) > 1:
                raise RuntimeError(
                    f"the sigmoid loss with global negatives needs equal batches on every device, got {sizes} "
                    "(an image was skipped): use data.on_bad_image=raise or model.loss.negatives=local"
                )
        return SigLipLoss(rank=rank, world_size=world)(image_features, text_features, logit_scale, logit_bias)


def build_loss(
    kind: str = "contrastive",
    negatives: Negatives = "global",
    label_smoothing: float = 0.0,
    init_logit_bias: float = -10.0,
    itm_weight: float = 0.0,
) -> nn.Module:
    """The training loss ``model.loss`` names: ``contrastive`` (InfoNCE) or ``sigmoid`` (SigLIP).
    ``init_logit_bias`` and ``itm_weight`` are the module's (the sigmoid loss's bias, BLIP's
    matching loss)."""
    if kind not in LOSS_KINDS:
        raise ConfigError(f"model.loss.kind={kind!r} is not one of {', '.join(LOSS_KINDS)}")
    if negatives not in NEGATIVES:
        raise ConfigError(f"model.loss.negatives={negatives!r} is not one of {', '.join(NEGATIVES)}")
    if kind == "sigmoid":
        if label_smoothing:
            raise ConfigError(
                f"model.loss.label_smoothing={label_smoothing} applies to the contrastive loss only; "
                "set it to 0 with model.loss.kind=sigmoid"
            )
        return SigmoidLoss(negatives)
    return ContrastiveLoss(negatives, label_smoothing)
