"""Relevance maps: which image patches and which caption words made an image and a caption match.

The method is Chefer et al.'s gradient-weighted attention relevance ("Generic
Attention-model Explainability", 2021), the one CrossText2Loc's explainable retrieval module
uses. For each tower, start from ``R = I`` (tokens x tokens); for every residual attention block
from ``start_block`` on, ``A_bar = mean over heads of max(0, dS/dA * A)``, where ``A`` is the
block's attention map and ``S`` the pair's score (the model's logit: the learnt scale times the
cosine of the two embeddings), and ``R <- R + A_bar R``. The image's relevance is the class
token's row of ``R`` over the patches; the caption's is the end-of-text token's row (the token
open_clip pools) over the caption's own tokens, those between the start- and end-of-text tokens.

Everything runs on the stock open_clip model through hooks: a forward pre-hook asks each
block's ``nn.MultiheadAttention`` for its per-head weights (open_clip calls it with
``need_weights=False``) and a forward hook keeps them, the attention's output and its value
input. ``dS/dA`` follows exactly from the gradient of the attention's output: the output is
``out_proj(A V)``, so ``dS/dA = (dS/d out · W_out) V^T`` per head. The embeddings are those of
the unhooked model (within float tolerance: the weights come from the explicit softmax path);
parameters' ``.grad`` are left untouched; gradient checkpointing is switched off while
explaining and restored after.

Supported: open_clip ``CLIP`` models with a ViT image tower pooled by its class token and the
CLIP text transformer pooled at the end-of-text token (``cvg-tiny``, ViT-B/16, ViT-L/14@336,
any input size or aspect, any text length). Other families are refused with a message.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from open_clip.model import CLIP
from open_clip.transformer import ResidualAttentionBlock, VisionTransformer
from torch import nn

from cvgtext.utils.errors import ConfigError

METHODS = ("relevance", "attention")


@dataclass
class Explanation:
    """The relevance of one image-caption pair.

    ``image``: ``[grid_h, grid_w]`` non-negative relevance of each image patch (row-major, the
    image's top-left patch first). ``text``: non-negative relevance of each caption token, the
    tokens strictly between the start-of-text and end-of-text tokens (so neither of them, nor the
    padding); ``token_ids`` are those tokens and ``words`` their text (a ``</w>``-ended BPE piece
    ends a word). ``similarity`` is the cosine of the pair's embeddings, ``start_block`` the first
    block whose attention was propagated.
    """

    image: torch.Tensor
    text: torch.Tensor
    token_ids: torch.Tensor
    words: list[str] = field(default_factory=list)
    similarity: float = 0.0
    start_block: int = 0
    method: str = "relevance"


@dataclass
class _Record:
    """One attention block's forward: per-head weights ``[B, H, L, L]``, output and value input."""

    weights: torch.Tensor
    output: torch.Tensor
    value: torch.Tensor


def _towers(model: nn.Module) -> tuple[VisionTransformer, nn.Module]:
    """The image and text transformers to hook, or a ConfigError saying why the model is refused."""
    visual = getattr(model, "visual", None)
    if not isinstance(model, CLIP) or not isinstance(visual, VisionTransformer):
        raise ConfigError(
            f"relevance maps need an open_clip CLIP model with a ViT image tower "
            f"(backbone.model_name: cvg-tiny, ViT-B-16, ViT-L-14-336, ...); got {type(model).__name__} "
            f"with a {type(visual).__name__} image tower"
        )
    if visual.attn_pool is not None or visual.pool_type != "tok":
        raise ConfigError("relevance maps need an image tower pooled by its class token; this backbone pools otherwise")
    if getattr(model, "text_pool_type", "argmax") != "argmax":
        raise ConfigError(
            f"relevance maps need a text tower pooled at the end-of-text token; this backbone pools "
            f"by {model.text_pool_type!r}"
        )
    for transformer in (visual.transformer, model.transformer):
        blocks = transformer.resblocks
        if not all(isinstance(block, ResidualAttentionBlock) and block.attn.batch_first for block in blocks):
            raise ConfigError("relevance maps need open_clip's standard (batch-first) residual attention blocks")
    return visual, model


def refusal(module: nn.Module) -> str | None:
    """Why relevance maps cannot be drawn for ``module``'s model, or None when they can."""
    try:
        _towers(getattr(module, "model", module))
    except ConfigError as error:
        return str(error)
    return None


def _needs_weights(module: nn.MultiheadAttention, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    return args, {**kwargs, "need_weights": True, "average_attn_weights": False}


def _requires_grad(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
    """Make a tower's input carry a graph even when the tower's parameters are frozen."""
    x = args[0]
    if x.requires_grad:
        return None
    return (x.detach().requires_grad_(True), *args[1:]), kwargs


@contextlib.contextmanager
def _recording(transformer: nn.Module, records: list[_Record]) -> Iterator[None]:
    """Record each block's attention while the context is open, without changing the model.

    The hooks act in this thread only: the web page answers other descriptions with the same
    model while it explains one, and their forward passes must neither be recorded nor changed.
    """
    owner = threading.get_ident()

    def here_only(hook: Callable) -> Callable:
        return lambda *args: hook(*args) if threading.get_ident() == owner else None

    handles = [transformer.register_forward_pre_hook(here_only(_requires_grad), with_kwargs=True)]

    def keep(module: nn.MultiheadAttention, args: tuple, kwargs: dict, output: tuple) -> None:
        value = args[2] if len(args) > 2 else kwargs["value"]
        records.append(_Record(weights=output[1], output=output[0], value=value))

    for block in transformer.resblocks:
        handles.append(block.attn.register_forward_pre_hook(here_only(_needs_weights), with_kwargs=True))
        handles.append(block.attn.register_forward_hook(here_only(keep), with_kwargs=True))
    checkpointing = transformer.grad_checkpointing
    transformer.grad_checkpointing = False  # a recomputed forward would record every block twice
    try:
        yield
    finally:
        transformer.grad_checkpointing = checkpointing
        for handle in handles:
            handle.remove()


def attention_gradient(
    attention: nn.MultiheadAttention, value: torch.Tensor, output_grad: torch.Tensor
) -> torch.Tensor:
    """``dS/dA`` ``[B, H, L, L]`` from ``dS/d output`` ``[B, L, D]`` and the value input ``[B, L, D]``.

    The attention's output is ``out_proj(concat_h(A_h V_h))``, so the gradient reaching each
    head's weights is that of its slice of the context, ``dS/d output · W_out``, times ``V_h^T``.
    """
    heads = attention.num_heads
    batch, length, width = value.shape
    if attention._qkv_same_embed_dim:
        weight = attention.in_proj_weight[2 * width :]
    else:
        weight = attention.v_proj_weight
    bias = attention.in_proj_bias[2 * width :] if attention.in_proj_bias is not None else None
    v = F.linear(value.float(), weight.float(), None if bias is None else bias.float())
    context_grad = output_grad.float() @ attention.out_proj.weight.float()
    v = v.view(batch, -1, heads, width // heads)
    context_grad = context_grad.view(batch, -1, heads, width // heads)
    return torch.einsum("bihd,bjhd->bhij", context_grad, v)


def _propagate(
    records: Sequence[_Record], grads: Sequence[torch.Tensor], attentions: Sequence[nn.Module], start_block: int
) -> torch.Tensor:
    """``R`` ``[B, L, L]`` after the relevance rule over the blocks from ``start_block`` on."""
    first = records[0].weights
    batch, _, length, _ = first.shape
    relevance = torch.eye(length, device=first.device).expand(batch, length, length).clone()
    for index in range(start_block, len(records)):
        record = records[index]
        weights = record.weights.detach().float()
        gradient = attention_gradient(attentions[index], record.value.detach(), grads[index])
        cam = (gradient * weights).clamp(min=0).mean(dim=1)  # [B, L, L]
        relevance = relevance + torch.bmm(cam, relevance)
    return relevance


def _start_index(start_block: int, depth: int, tower: str) -> int:
    index = start_block + depth if start_block < 0 else start_block
    if not 0 <= index < depth:
        raise ConfigError(
            f"explain.start_block={start_block} is outside the {tower} tower's {depth} blocks "
            f"(0 is the first block, -1 the last)"
        )
    return index


def _words(tokenizer: Any, token_ids: Sequence[int]) -> list[str]:
    decoder = getattr(tokenizer, "decoder", None)
    if decoder is None:
        return [str(token) for token in token_ids]
    return [decoder.get(int(token), "?") for token in token_ids]


def explain_pairs(
    module: nn.Module,
    images: torch.Tensor,
    tokens: torch.Tensor,
    start_block: int = 0,
    method: str = "relevance",
) -> list[Explanation]:
    """Relevance maps of each pair ``(images[i], tokens[i])``: ``images`` ``[B, 3, H, W]``
    preprocessed, ``tokens`` ``[B, context_length]`` tokenized.

    ``module`` is the project's LightningModule (or an open_clip model). ``start_block``: the
    first block propagated in each tower (0: all, Chefer et al.; -1: the last only, as the
    official CrossText2Loc script). ``method="attention"`` gives the raw last-block attention
    of the pooled token, averaged over heads, without gradients: a baseline, not an explanation.
    """
    if method not in METHODS:
        raise ConfigError(f"explain.method={method!r} is not one of {', '.join(METHODS)}")
    model = getattr(module, "model", module)
    visual, text_model = _towers(model)
    if images.ndim != 4 or tokens.ndim != 2 or len(images) != len(tokens):
        raise ValueError(
            f"explain_pairs needs images [B, 3, H, W] and tokens [B, L]; got {list(images.shape)} "
            f"and {list(tokens.shape)}"
        )
    image_depth, text_depth = len(visual.transformer.resblocks), len(text_model.transformer.resblocks)
    image_start = _start_index(start_block, image_depth, "image")
    text_start = _start_index(start_block, text_depth, "text")
    parameter = next(model.parameters())
    images = images.to(parameter.device, parameter.dtype)
    tokens = tokens.to(parameter.device)
    image_records: list[_Record] = []
    text_records: list[_Record] = []
    was_training = model.training
    model.eval()
    try:
        # Compiled encoders (model.compile) run eagerly here: the hooks must see each block's tensors.
        with (
            torch.enable_grad(),
            torch.compiler.set_stance("force_eager"),
            _recording(visual.transformer, image_records),
            _recording(text_model.transformer, text_records),
        ):
            image_features = model.encode_image(images, normalize=True)
            text_features = model.encode_text(tokens, normalize=True)
            similarity = (image_features * text_features).sum(dim=-1).float()  # [B]
            if method == "relevance":
                # Pairs do not interact, so the sum's gradient is each pair's own.
                score = (model.logit_scale.exp().float() * similarity).sum()
                outputs = [record.output for record in image_records + text_records]
                grads = torch.autograd.grad(score, outputs)
    finally:
        model.train(was_training)

    batch = len(images)
    grid_h, grid_w = images.shape[-2] // visual.patch_size[0], images.shape[-1] // visual.patch_size[1]
    end = tokens.argmax(dim=-1)  # open_clip pools the end-of-text token, the highest id
    if method == "relevance":
        image_relevance = _propagate(
            image_records, grads[:image_depth], [b.attn for b in visual.transformer.resblocks], image_start
        )[:, 0, 1:]
        text_relevance = _propagate(
            text_records, grads[image_depth:], [b.attn for b in text_model.transformer.resblocks], text_start
        )[torch.arange(batch), end]
    else:
        image_relevance = image_records[-1].weights.detach().float().mean(dim=1)[:, 0, 1:]
        text_relevance = text_records[-1].weights.detach().float().mean(dim=1)[torch.arange(batch), end]
    tokenizer = getattr(module, "tokenizer", None)
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
    explanations = []
    for i in range(batch):
        position = int(end[i])
        token_ids = tokens[i, 1:position].detach().cpu()
        explanations.append(
            Explanation(
                image=image_relevance[i].reshape(grid_h, grid_w).detach().cpu(),
                text=text_relevance[i, 1:position].detach().cpu(),
                token_ids=token_ids,
                words=_words(tokenizer, token_ids.tolist()),
                similarity=float(similarity[i].detach()),
                start_block=start_block,
                method=method,
            )
        )
    return explanations


def explain_pair(
    module: nn.Module, image: torch.Tensor, tokens: torch.Tensor, start_block: int = 0, method: str = "relevance"
) -> Explanation:
    """The relevance of one pair: ``image`` ``[3, H, W]`` preprocessed, ``tokens`` ``[L]`` or
    ``[1, L]`` tokenized. See :func:`explain_pairs`."""
    if image.ndim != 3:
        raise ValueError(f"explain_pair needs one preprocessed image [3, H, W]; got {list(image.shape)}")
    tokens = tokens.reshape(1, -1)
    return explain_pairs(module, image[None], tokens, start_block=start_block, method=method)[0]
