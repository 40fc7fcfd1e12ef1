"""Text encoding on the positions a batch uses: the same features as the full context, at the
real text tower of ViT-B/16 (77 positions, and EPE's 300), where it is exact; untouched elsewhere."""

from __future__ import annotations

import copy
import json

import open_clip
import pytest
import torch

from cvgtext.model.encoder import CONFIG_DIR
from cvgtext.model.positional import set_context_length
from cvgtext.model.text_context import encode_text, trims_exactly, used_positions

DESCRIPTIONS = [
    "a church on a roundabout",
    "A red-brick church stands on a roundabout; a small park with trees lies to the north-east and a car park "
    "to the south. The road is wide and busy, with several cars and a bus stop near the camera.",
    "a bakery",
]


@pytest.fixture(scope="module")
def vit_b16_text(tmp_path_factory) -> torch.nn.Module:
    """open_clip's ViT-B-16 with its own text tower (width 512, 12 layers, 8 heads, 77
    positions; random weights) and a small image tower, which plays no part here."""
    config = open_clip.get_model_config("ViT-B-16")
    config["vision_cfg"] = {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16}
    path = tmp_path_factory.mktemp("configs") / "vit-b16-text-only.json"
    path.write_text(json.dumps(config))
    open_clip.add_model_config(path)
    torch.manual_seed(0)
    return open_clip.create_model("vit-b16-text-only").eval()


def tokens_for(length: int, texts=DESCRIPTIONS) -> torch.Tensor:
    return open_clip.get_tokenizer("ViT-B-16", context_length=length)(texts)


@pytest.mark.parametrize("context", [77, 300])
def test_the_used_positions_give_the_full_contexts_features(vit_b16_text, context):
    model = vit_b16_text
    if context != 77:
        model = set_context_length(copy.deepcopy(model), context)  # CrossText2Loc's EPE
    assert trims_exactly(model)
    tokens = tokens_for(context)
    seen = []
    hook = model.transformer.register_forward_hook(lambda module, args, output: seen.append(args[0].shape[1]))
    with torch.no_grad():
        full = model.encode_text(tokens, normalize=True)
        trimmed = encode_text(model, tokens, normalize=True)
        alone = torch.cat([encode_text(model, tokens[i : i + 1], normalize=True) for i in range(len(tokens))])
    hook.remove()
    longest = int((tokens != 0).sum(1).max())
    assert seen[:2] == [context, longest] and seen[2:] == [int((row != 0).sum()) for row in tokens]
    assert (trimmed - full).abs().max() < 2e-5 and (alone - full).abs().max() < 2e-5
    # not normalised, the same too (the projection's output)
    with torch.no_grad():
        raw_full, raw = model.encode_text(tokens), encode_text(model, tokens)
    assert (raw - raw_full).abs().max() < 1e-4 * raw_full.abs().max()


def test_a_caption_that_fills_the_context_is_encoded_at_the_full_context(vit_b16_text):
    tokens = tokens_for(77, ["a red roof " * 60, "a church"])
    assert used_positions(tokens, "argmax") == 77
    with torch.no_grad():
        assert torch.equal(encode_text(vit_b16_text, tokens), vit_b16_text.encode_text(tokens))


def test_training_gradients_through_the_used_positions_are_the_full_contexts(vit_b16_text):
    model = vit_b16_text
    tokens = tokens_for(77)
    gradients = []
    for encode in (lambda t: model.encode_text(t, normalize=True), lambda t: encode_text(model, t, normalize=True)):
        model.zero_grad()
        (encode(tokens) * torch.linspace(-1, 1, 512)).sum().backward()
        gradients.append(
            (
                model.token_embedding.weight.grad.clone(),
                model.positional_embedding.grad.clone(),
                model.text_projection.grad.clone(),
            )
        )
    model.zero_grad()
    for full, trimmed in zip(*gradients):
        assert (trimmed - full).abs().max() <= 1e-4 * full.abs().max()
    # positions after the longest caption get no gradient in either
    longest = int((tokens != 0).sum(1).max())
    assert gradients[0][1][longest:].abs().max() == 0 and gradients[1][1][longest:].abs().max() == 0


def test_bidirectional_and_compiled_towers_are_encoded_at_the_full_context(vit_b16_text):
    config = open_clip.get_model_config("ViT-B-16-SigLIP")  # its text tower's kind, two narrow layers
    config["vision_cfg"] = {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16}
    config["text_cfg"].update(width=64, heads=2, layers=2)
    siglip = open_clip.model.CustomTextCLIP(config["embed_dim"], config["vision_cfg"], config["text_cfg"]).eval()
    assert siglip.text.attn_mask is None and not trims_exactly(siglip)  # bidirectional: every position counts
    tokens = torch.zeros(2, siglip.text.context_length, dtype=torch.long)
    tokens[:, :5] = torch.tensor([10, 20, 30, 40, 1])
    with torch.no_grad():
        assert torch.equal(encode_text(siglip, tokens), siglip.encode_text(tokens))
    open_clip.add_model_config(CONFIG_DIR)
    compiled = open_clip.create_model("cvg-tiny")
    compiled.encode_text = lambda text, normalize=False: torch.full((len(text), 3), 7.0)  # as torch.compile sets it
    assert not trims_exactly(compiled)
    assert encode_text(compiled, tokens_for(77)).eq(7).all()
    assert trims_exactly(open_clip.create_model("cvg-tiny"))


def test_used_positions_follow_the_pooled_token():
    tokens = torch.tensor([[49406, 320, 49407, 0, 0], [49406, 320, 321, 322, 49407]])
    assert used_positions(tokens, "argmax") == 5
    assert used_positions(tokens[:1], "argmax") == 3
    assert used_positions(torch.tensor([[5, 6, 2, 0, 2]]), "eos", eos_id=2) == 3
