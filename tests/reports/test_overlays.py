"""Relevance drawn on pictures: heat maps over tiles, caption words shaded by relevance."""

from __future__ import annotations

import numpy as np
import torch
from omegaconf import OmegaConf
from PIL import Image, ImageDraw, ImageFont

from cvgtext.model.relevance import refusal
from cvgtext.reports.explanations import report_explanations
from cvgtext.reports.overlays import draw_shaded_words, heat_overlay, plot_shaded_words, word_colour


def test_the_heat_map_is_red_where_relevance_is_high_and_leaves_the_rest():
    tile = Image.new("RGB", (64, 32), "gray")
    relevance = torch.zeros(2, 4)
    relevance[1, 3] = 2.0  # the bottom-right patch
    overlaid = np.asarray(heat_overlay(tile, relevance)).astype(int)
    assert overlaid.shape == (32, 64, 3)
    hot, cold = overlaid[28, 60], overlaid[2, 2]
    assert hot[0] > hot[2] + 40  # red over the relevant patch
    assert (cold == 128).all()  # the tile as it is where there is none
    assert np.array_equal(np.asarray(heat_overlay(tile, torch.zeros(2, 4))), np.asarray(tile))


def test_word_colours_run_from_white_to_orange():
    assert word_colour(0.0, 2.0) == word_colour(0.0, 0.0)
    light, deep = word_colour(0.1, 2.0), word_colour(2.0, 2.0)
    assert min(light) > 0.85 and deep[2] < 0.3 < deep[0]


def test_shaded_words_wrap_within_the_width_and_stop_at_the_line_limit():
    canvas = Image.new("RGB", (200, 120), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    words = [("word", 0.1)] * 30 + [("peak", 1.0)]
    lines = draw_shaded_words(draw, (0, 0), words, 100, font, max_lines=3)
    assert lines == 3
    pixels = np.asarray(canvas).astype(int)
    assert (pixels[:, 110:] == 255).all()  # nothing past the width but the final "..."
    canvas = Image.new("RGB", (200, 40), "white")
    draw_shaded_words(ImageDraw.Draw(canvas), (0, 0), [("calm", 0.0), ("peak", 1.0)], 200, font, max_lines=1)
    pixels = np.asarray(canvas).astype(int)
    orange = (pixels[..., 0] > 200) & (pixels[..., 2] < 120)
    columns = np.nonzero(orange.any(axis=0))[0]
    assert len(columns) and columns.min() > draw.textlength("calm", font=font)  # only the relevant word


def test_plotted_words_wrap_and_report_their_height():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(3, 2))
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    one_line = plot_shaded_words(axes, [("a", 1.0)])
    many = plot_shaded_words(axes, [("skyscraper", 0.5)] * 20)
    assert many > 2 * one_line > 0
    capped = plot_shaded_words(axes, [("skyscraper", 0.5)] * 20, max_lines=2)
    assert capped < 2.5 * one_line and axes.texts[-1].get_text() == "..."


def test_models_without_supported_attention_are_named_and_overlays_can_be_turned_off():
    assert "open_clip CLIP model with a ViT image tower" in refusal(torch.nn.Linear(2, 2))
    cfg = OmegaConf.create({"explain": {"overlays": False, "start_block": 0}})
    assert report_explanations(cfg, module=None, evaluation=None, dataset=None) == {}
