"""Statistics of captions, checked on texts whose figures are known by hand."""

from __future__ import annotations

import math

import pytest

from cvgtext.data.town.statistics import caption_statistics, entropy_bits, report


def test_figures_of_two_captions():
    captions = ["the red shop the red door", "A wide road runs north past BAKERY ROSSI"]
    stats = caption_statistics(
        captions, [[], ["BAKERY ROSSI", "OPEN 24"]], {"inspected": 4, "accepted": 3, "rejected": 1}
    )
    assert stats["captions"] == 2
    assert stats["type_token_ratio"] == pytest.approx((4 / 6 + 1.0) / 2)
    # the, red: 2 each of 6 words; shop, door: 1 each; the second caption's 8 words all differ
    first = -(2 * (2 / 6) * math.log2(2 / 6) + 2 * (1 / 6) * math.log2(1 / 6))
    assert stats["entropy_bits"] == pytest.approx((first + math.log2(8)) / 2)
    assert stats["ocr_words_read"] == 3 and stats["ocr_words_used"] == pytest.approx(2 / 3)  # bakery, rossi; not open
    assert stats["tokens_mean"] == pytest.approx((6 + 9) / 2, abs=1.5)
    assert (stats["inspector_pass_rate"], stats["inspector_rejected"]) == (0.75, 0.25)


def test_tokens_are_clips():
    from open_clip.tokenizer import SimpleTokenizer

    caption = "Turn left at the roundabout; the Rossi bakery's green awning faces north-east."
    stats = caption_statistics([caption], [[]], {})
    assert stats["tokens_mean"] == len(SimpleTokenizer().encode(caption))
    assert stats["inspector_pass_rate"] is None


def test_the_report_puts_the_paper_beside():
    text = report(
        {"captions": 3, "tokens_mean": 120.5, "type_token_ratio": 0.8, "inspector_pass_rate": 0.5}, "Harbourside"
    )
    assert "| statistic | Harbourside | CVG-Text (paper) |" in text
    assert "| CLIP tokens per caption, mean | 120.5 | 126.0 |" in text
    assert "| inspector: accepted at once | 50.0 % | 77.6 % |" in text
    assert entropy_bits([]) == 0.0
