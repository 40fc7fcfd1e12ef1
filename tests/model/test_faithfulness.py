"""Faithfulness: hiding what the maps call relevant lowers a trained model's similarity most."""

from __future__ import annotations

import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

from cvgtext.model.faithfulness import area, hide_patches, hide_tokens, image_curves, text_curves
from cvgtext.model.relevance import explain_pairs

COLOURS = {  # colour word -> the square's value per channel, in normalised pixel units
    "red": (1.5, -1.5, -1.5),
    "green": (-1.5, 1.5, -1.5),
    "blue": (-1.5, -1.5, 1.5),
    "yellow": (1.5, 1.5, -1.5),
    "white": (1.5, 1.5, 1.5),
    "purple": (1.5, -1.5, 1.5),
}
GRID, PATCH = 4, 8  # 32 px images, a 4x4 grid of 8 px patches


def test_hiding_a_patch_zeroes_exactly_its_pixels():
    images = torch.ones(1, 3, 32, 64)
    hidden = torch.zeros(1, 2, 4, dtype=torch.bool)
    hidden[0, 1, 2] = True
    result = hide_patches(images, hidden, (16, 16))
    assert float(result[0, :, 16:32, 32:48].abs().sum()) == 0
    assert float(result.sum()) == 3 * 32 * 64 - 3 * 16 * 16


def test_hiding_a_token_pads_it():
    tokens = torch.tensor([[49406, 320, 736, 49407, 0]])
    hidden = torch.tensor([[False, False, True, False, False]])
    assert hide_tokens(tokens, hidden).tolist() == [[49406, 320, 0, 49407, 0]]


def test_curve_area_is_the_trapezoid_on_the_unit_interval():
    assert area(torch.tensor([1.0, 0.0])) == pytest.approx(0.5)
    assert area(torch.tensor([1.0, 1.0, 1.0])) == pytest.approx(1.0)


def scenes(generator: torch.Generator, count: int) -> tuple[torch.Tensor, list[str]]:
    """Grey tiles (the normalisation mean) with one coloured square at a random patch, and captions."""
    names = list(COLOURS)
    images = 0.1 * torch.randn(count, 3, GRID * PATCH, GRID * PATCH, generator=generator)
    captions = []
    for i in range(count):
        name = names[i % len(names)]
        row, column = torch.randint(GRID, (2,), generator=generator).tolist()
        colour = torch.tensor(COLOURS[name])[:, None, None]
        images[i, :, row * PATCH : (row + 1) * PATCH, column * PATCH : (column + 1) * PATCH] += colour
        captions.append(f"a photo of a {name} square on a grey tile")
    return images, captions


@pytest.fixture(scope="module")
def trained():
    """A small CLIP trained for a few seconds to match each square's colour to its word."""
    torch.manual_seed(0)
    model = CLIP(
        embed_dim=32,
        vision_cfg=CLIPVisionCfg(image_size=GRID * PATCH, patch_size=PATCH, width=64, layers=2, head_width=32),
        text_cfg=CLIPTextCfg(context_length=12, vocab_size=49408, width=64, heads=2, layers=2),
    )
    model.token_embedding.requires_grad_(False)  # random word vectors are distinct enough; saves most steps' time
    tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=12)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3, weight_decay=0.0)
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(len(COLOURS))
    for _ in range(120):
        images, captions = scenes(generator, len(COLOURS))
        logits = (
            model.logit_scale.exp()
            * model.encode_image(images, normalize=True)
            @ model.encode_text(tokenizer(captions), normalize=True).T
        )
        loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    images, captions = scenes(torch.Generator().manual_seed(1), 4 * len(COLOURS))
    tokens = tokenizer(captions)
    with torch.no_grad():
        similarity = model.encode_image(images, normalize=True) @ model.encode_text(tokens, normalize=True).T
    accuracy = float((similarity.argmax(1) == torch.arange(len(images)) % len(COLOURS)).float().mean())
    assert accuracy > 0.9, f"the model did not learn the colours: {accuracy:.2f} of the tiles matched"
    return model, images, tokens


@pytest.mark.heavy  # trains a small model first, about a minute of CPU: make test-slow
def test_hiding_the_most_relevant_quarter_lowers_the_similarity_more_than_a_random_quarter(trained):
    model, images, tokens = trained
    explanations = explain_pairs(model, images, tokens)
    generator = torch.Generator().manual_seed(2)
    steps = 4  # step 1: a quarter hidden
    relevant_image = image_curves(model, images, tokens, [e.image for e in explanations], steps)
    relevant_text = text_curves(model, images, tokens, [e.text for e in explanations], steps)
    random_image = [
        image_curves(model, images, tokens, [torch.rand(GRID, GRID, generator=generator) for _ in explanations], steps)
        for _ in range(3)
    ]
    random_text = [
        text_curves(model, images, tokens, [torch.rand(e.text.shape, generator=generator) for e in explanations], steps)
        for _ in range(3)
    ]
    random_image_quarter = sum(float(c.deletion[1]) for c in random_image) / 3
    random_text_quarter = sum(float(c.deletion[1]) for c in random_text) / 3
    assert float(relevant_image.deletion[1]) < random_image_quarter - 0.05
    assert float(relevant_text.deletion[1]) < random_text_quarter - 0.05
