"""Relevance maps on the stock open_clip models: shapes, tokens, the unchanged model, the rule."""

from __future__ import annotations

import open_clip
import pytest
import torch
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
from torch import nn

from cvgtext.model.module import CrossViewRetrieval
from cvgtext.model.positional import set_context_length, set_image_size
from cvgtext.model.relevance import attention_gradient, explain_pair, explain_pairs
from cvgtext.utils.errors import ConfigError
from helpers.models import two_layer_config

CAPTION = "A red roof beside a narrow street with two trees."
OPTIMIZER = {"_target_": "torch.optim.AdamW", "_partial_": True}


def make_module(model_name: str = "cvg-tiny", **backbone) -> CrossViewRetrieval:
    torch.manual_seed(0)
    return CrossViewRetrieval(backbone={"model_name": model_name, **backbone}, optimizer=OPTIMIZER)


@pytest.fixture(scope="module")
def tiny() -> CrossViewRetrieval:
    return make_module()


def unhooked_similarity(module: CrossViewRetrieval, image: torch.Tensor, tokens: torch.Tensor) -> float:
    with torch.no_grad():
        image_features = module.model.encode_image(image[None], normalize=True)
        text_features = module.model.encode_text(tokens.reshape(1, -1), normalize=True)
    return float((image_features * text_features).sum())


def test_tiny_backbone_maps_cover_the_patch_grid_and_the_caption_tokens(tiny):
    image = torch.randn(3, 64, 64)
    tokens = tiny.tokenizer([CAPTION])[0]
    explanation = explain_pair(tiny, image, tokens)
    assert explanation.image.shape == (8, 8)  # 64 px, 8 px patches
    end = int(tokens.argmax())
    # The caption's own tokens: after the start-of-text token, before the end-of-text token.
    assert torch.equal(explanation.token_ids, tokens[1:end])
    assert explanation.text.shape == (end - 1,)
    assert "".join(explanation.words).replace("</w>", " ").strip() == CAPTION.lower().rstrip(".") + " ."
    for relevance in (explanation.image, explanation.text):
        assert relevance.dtype == torch.float32 and bool((relevance >= 0).all()) and float(relevance.sum()) > 0
    assert explanation.similarity == pytest.approx(unhooked_similarity(tiny, image, tokens), abs=1e-5)


def test_a_compiled_model_is_explained_as_the_plain_one(tiny):
    # aot_eager traces forward and backward as inductor does (the case that failed), without generating code.
    compiled = CrossViewRetrieval(
        backbone={"model_name": "cvg-tiny"}, optimizer=OPTIMIZER, compile={"backend": "aot_eager"}
    )
    compiled.load_state_dict(tiny.state_dict())
    compiled.setup("fit")
    image, tokens = torch.randn(3, 64, 64), tiny.tokenizer([CAPTION])[0]
    compiled.embed({"image": image[None], "tokens": tokens[None]})  # compiled once, as training does
    ours, plain = explain_pair(compiled, image, tokens), explain_pair(tiny, image, tokens)
    torch.testing.assert_close(ours.image, plain.image)
    torch.testing.assert_close(ours.text, plain.text)


def test_explaining_leaves_the_model_as_it_was(tiny):
    image = torch.randn(3, 64, 64)
    tokens = tiny.tokenizer([CAPTION])[0]
    tiny.train()
    tiny.model.set_grad_checkpointing(True)
    try:
        with_checkpointing = explain_pair(tiny, image, tokens)
        assert tiny.training and tiny.model.visual.transformer.grad_checkpointing
        assert tiny.model.transformer.grad_checkpointing
    finally:
        tiny.model.set_grad_checkpointing(False)
        tiny.eval()
    plain = explain_pair(tiny, image, tokens)
    torch.testing.assert_close(with_checkpointing.image, plain.image)
    torch.testing.assert_close(with_checkpointing.text, plain.text)
    assert all(p.grad is None for p in tiny.parameters())
    for block in [*tiny.model.visual.transformer.resblocks, *tiny.model.transformer.resblocks]:
        assert not block.attn._forward_hooks and not block.attn._forward_pre_hooks


def test_frozen_towers_are_explained_too(tiny):
    image = torch.randn(3, 64, 64)
    tokens = tiny.tokenizer([CAPTION])[0]
    trainable = explain_pair(tiny, image, tokens)
    for parameter in tiny.parameters():
        parameter.requires_grad_(False)
    try:
        frozen = explain_pair(tiny, image, tokens)
    finally:
        for parameter in tiny.parameters():
            parameter.requires_grad_(True)
    torch.testing.assert_close(frozen.image, trainable.image)
    torch.testing.assert_close(frozen.text, trainable.text)


def test_pairs_in_a_batch_are_explained_as_alone(tiny):
    images = torch.randn(2, 3, 64, 64)
    tokens = tiny.tokenizer([CAPTION, "Water to the north of a wide road"])
    batched = explain_pairs(tiny, images, tokens)
    for image, caption_tokens, together in zip(images, tokens, batched):
        alone = explain_pair(tiny, image, caption_tokens)
        torch.testing.assert_close(together.image, alone.image, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(together.text, alone.text, rtol=1e-4, atol=1e-6)


def test_start_block_and_raw_attention(tiny):
    image = torch.randn(3, 64, 64)
    tokens = tiny.tokenizer([CAPTION])[0]
    all_blocks = explain_pair(tiny, image, tokens, start_block=0)
    last = explain_pair(tiny, image, tokens, start_block=-1)
    assert explain_pair(tiny, image, tokens, start_block=2).image.equal(last.image)  # 3 blocks
    assert not torch.allclose(all_blocks.image, last.image)
    attention = explain_pair(tiny, image, tokens, method="attention")
    # The class token's last-block attention over the patches: a distribution less its own share.
    assert 0 < float(attention.image.sum()) <= 1 + 1e-5
    with pytest.raises(ConfigError, match="explain.start_block=3"):
        explain_pair(tiny, image, tokens, start_block=3)
    with pytest.raises(ConfigError, match="explain.method"):
        explain_pair(tiny, image, tokens, method="gradcam")


def test_attention_gradient_equals_autograd_through_the_weights():
    """dS/dA from the output's gradient equals autograd's through an explicit attention."""
    torch.manual_seed(1)
    attention = nn.MultiheadAttention(16, 4, batch_first=True)
    x = torch.randn(2, 5, 16)
    q, k, v = nn.functional.linear(x, attention.in_proj_weight, attention.in_proj_bias).chunk(3, dim=-1)
    split = lambda t: t.view(2, 5, 4, 4).transpose(1, 2)  # noqa: E731 [B, H, L, head width]
    weights = torch.softmax(split(q) @ split(k).transpose(-1, -2) / 2.0, dim=-1).detach().requires_grad_(True)
    context = (weights @ split(v)).transpose(1, 2).reshape(2, 5, 16)
    output = attention.out_proj(context)
    target = torch.randn(2, 5, 16)
    (output * target).sum().backward()
    torch.testing.assert_close(attention_gradient(attention, x, target), weights.grad)
    # And the module's own output, for the same weights.
    reference, _ = attention(x, x, x, need_weights=False)
    torch.testing.assert_close(reference, output, rtol=1e-5, atol=1e-6)


def explicit_block(block: nn.Module, x: torch.Tensor, mask: torch.Tensor | None = None):
    """One residual attention block with its attention written out: ``(output, A)``, ``A`` the
    per-head weights ``[B, H, L, L]`` in the autograd graph."""
    attention = block.attn
    batch, length, width = x.shape
    heads = attention.num_heads
    q, k, v = nn.functional.linear(block.ln_1(x), attention.in_proj_weight, attention.in_proj_bias).chunk(3, dim=-1)
    split = lambda t: t.view(batch, length, heads, width // heads).transpose(1, 2)  # noqa: E731
    logits = split(q) @ split(k).transpose(-1, -2) / (width // heads) ** 0.5
    weights = (logits if mask is None else logits + mask).softmax(dim=-1)
    context = (weights @ split(v)).transpose(1, 2).reshape(batch, length, width)
    x = x + block.ls_1(attention.out_proj(context))
    return x + block.ls_2(block.mlp(block.ln_2(x))), weights


def relevance_by_hand(model: CLIP, image: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Chefer et al.'s rule computed directly: the towers' forward with explicit attention maps,
    ``dS/dA`` from autograd, ``R <- R + mean_heads(max(0, dS/dA * A)) R`` over every block."""
    visual = model.visual
    x, image_maps = visual._embeds(image[None]), []
    for block in visual.transformer.resblocks:
        x, weights = explicit_block(block, x)
        image_maps.append(weights)
    image_features = nn.functional.normalize(visual._pool(x)[0] @ visual.proj, dim=-1)
    t, text_maps = model.token_embedding(tokens[None]) + model.positional_embedding, []
    for block in model.transformer.resblocks:
        t, weights = explicit_block(block, t, model.attn_mask)
        text_maps.append(weights)
    end = int(tokens.argmax())
    text_features = nn.functional.normalize(model.ln_final(t)[:, end] @ model.text_projection, dim=-1)
    score = model.logit_scale.exp() * (image_features * text_features).sum()
    gradients = torch.autograd.grad(score, image_maps + text_maps)

    def rule(maps, grads):
        relevance = torch.eye(maps[0].shape[-1])
        for weights, grad in zip(maps, grads):
            relevance = relevance + (grad * weights).clamp(min=0).mean(dim=1)[0] @ relevance
        return relevance

    image_relevance = rule(image_maps, gradients[: len(image_maps)])[0, 1:]
    return image_relevance, rule(text_maps, gradients[len(image_maps) :])[end, 1:end]


def test_the_maps_follow_the_rule_computed_by_hand_through_autograd(tmp_path):
    module = make_module(two_layer_config(tmp_path, "cvg-tiny"))
    image, tokens = torch.randn(3, 64, 64), module.tokenizer([CAPTION])[0]
    explained = explain_pair(module, image, tokens)
    with torch.enable_grad():
        image_relevance, text_relevance = relevance_by_hand(module.model.eval(), image, tokens)
    torch.testing.assert_close(explained.image.flatten(), image_relevance, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(explained.text, text_relevance, rtol=1e-4, atol=1e-6)
    # the gradient factor matters: the same image explained for another caption is shaded otherwise
    other = explain_pair(module, image, module.tokenizer(["A wide river and a green park to the north."])[0])
    assert not torch.allclose(other.image, explained.image, rtol=1e-3, atol=1e-6)


def test_other_families_are_refused():
    text = CLIPTextCfg(context_length=77, vocab_size=49408, width=32, heads=2, layers=1)
    resnet = CLIP(embed_dim=16, vision_cfg=CLIPVisionCfg(layers=(1, 1, 1, 1), width=8, image_size=32), text_cfg=text)
    with pytest.raises(ConfigError, match="ViT image tower"):
        explain_pair(resnet, torch.randn(3, 32, 32), torch.zeros(77, dtype=torch.long))
    vision = CLIPVisionCfg(layers=1, width=32, head_width=16, patch_size=16, image_size=32, pool_type="avg")
    averaged = CLIP(embed_dim=16, vision_cfg=vision, text_cfg=text)
    with pytest.raises(ConfigError, match="class token"):
        explain_pair(averaged, torch.randn(3, 32, 32), torch.zeros(77, dtype=torch.long))


def check_square_map(model_name: str, size: int, grid: int, tmp_path) -> CrossViewRetrieval:
    """A two-layer ``model_name`` explains a square image on its ``grid`` x ``grid`` patches and
    the caption's tokens, with the unhooked model's similarity; returns the module."""
    module = make_module(two_layer_config(tmp_path, model_name), quick_gelu=True)
    image = torch.randn(3, size, size)
    tokens = module.tokenizer([CAPTION])[0]
    square = explain_pair(module, image, tokens)
    assert square.image.shape == (grid, grid) and (square.image >= 0).all()
    assert square.text.shape == (int(tokens.argmax()) - 1,) and (square.text >= 0).all()
    assert square.similarity == pytest.approx(unhooked_similarity(module, image, tokens), abs=1e-5)
    return module


@pytest.mark.slow
def test_vit_b16_maps_square_and_at_2_to_1_with_300_tokens(tmp_path):
    """Real ViT-B/16 widths, heads, patch grid and context, two layers per tower."""
    module = check_square_map("ViT-B-16", 224, 14, tmp_path)

    # Street views: 2:1 images on a 14x28 grid, and the paper's 300-token texts.
    set_image_size(module.model, (224, 448))
    set_context_length(module.model, 300)
    image = torch.randn(3, 224, 448)
    caption = " ".join(["a building with a striped awning and a shop beside a wide street"] * 30)
    tokens = open_clip.get_tokenizer("ViT-B-16", context_length=300)([caption])[0]
    assert int(tokens.argmax()) == 299  # truncated: every position is used
    street = explain_pair(module, image, tokens)
    assert street.image.shape == (14, 28)  # grid_h != grid_w
    assert street.text.shape == (298,)
    assert street.similarity == pytest.approx(unhooked_similarity(module, image, tokens), abs=1e-5)


@pytest.mark.heavy  # about 20 s: make test-slow
def test_vit_l14_336_maps_square_and_at_2_to_1(tmp_path):
    """Real ViT-L/14@336 widths (1024 / 768), heads, 14 px patches, two layers per tower."""
    module = check_square_map("ViT-L-14-336", 336, 24, tmp_path)
    set_image_size(module.model, (336, 672))
    image = torch.randn(3, 336, 672)
    tokens = module.tokenizer([CAPTION])[0]
    street = explain_pair(module, image, tokens, start_block=-1)
    assert street.image.shape == (24, 48) and (street.image >= 0).all()
    assert street.similarity == pytest.approx(unhooked_similarity(module, image, tokens), abs=1e-5)


def test_forward_passes_of_other_threads_are_neither_recorded_nor_changed(tiny):
    """The page answers descriptions with the model while it explains another in a second thread."""
    import threading

    from cvgtext.model.relevance import _recording

    tokens = tiny.tokenizer([CAPTION, "a blue pool"])
    with torch.inference_mode():
        expected = tiny.model.encode_text(tokens, normalize=True)
    records, seen = [], {}

    def answer_elsewhere():
        with torch.inference_mode():  # as the page's answers run: a hook that asked for a graph would fail here
            seen["features"] = tiny.model.encode_text(tokens, normalize=True)

    with _recording(tiny.model.transformer, records):
        other = threading.Thread(target=answer_elsewhere)
        other.start()
        other.join()
        assert records == []
        with torch.enable_grad():
            tiny.model.encode_text(tokens, normalize=True)
        assert len(records) == len(tiny.model.transformer.resblocks)  # this thread's pass, each block once
    assert torch.equal(seen["features"], expected)
