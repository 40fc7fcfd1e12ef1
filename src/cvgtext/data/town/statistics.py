"""Statistics of a town's captions, beside the paper's for CVG-Text.

- tokens per caption: CLIP's byte-pair tokens (open_clip's tokenizer, start and end marks not
  counted), the unit of the paper's "126 tokens on average";
- type-token ratio: distinct words over words, per caption, averaged;
- entropy: Shannon entropy in bits of each caption's word distribution, averaged;
- OCR words used: of the words OCR read (three letters or more), the share its caption uses;
- inspector: the share of inspected captions it accepted, and the share it rejected.

The paper gives 126 tokens, a ratio of 0.756 and an entropy of 5.74 without saying how the last
two were computed; the definitions above are this project's.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

from cvgtext.reports.tables import markdown_table

PAPER = {"tokens_mean": 126.0, "type_token_ratio": 0.756, "entropy_bits": 5.74, "inspector_pass_rate": 0.776}
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def clip_tokens(texts: Sequence[str]) -> list[int]:
    """CLIP byte-pair tokens of each text."""
    from open_clip.tokenizer import SimpleTokenizer

    tokenizer = SimpleTokenizer()
    return [len(tokenizer.encode(text)) for text in texts]


def entropy_bits(tokens: Sequence[str]) -> float:
    counts = Counter(tokens)
    total = sum(counts.values())
    return -sum(n / total * math.log2(n / total) for n in counts.values()) if total else 0.0


def caption_statistics(captions: Sequence[str], scene_text: Sequence[Sequence[str]], inspector: dict[str, int]) -> dict:
    """The statistics of ``captions`` (see the module's docstring).

    ``scene_text`` holds each caption's OCR lines; ``inspector`` counts ``inspected``,
    ``accepted`` (first time), ``rewritten`` (accepted after one rewrite) and ``rejected``.
    """
    if not captions:
        return {"captions": 0}
    tokens = clip_tokens(captions)
    split = [words(caption) for caption in captions]
    ratios = [len(set(w)) / len(w) for w in split if w]
    read = used = 0
    for caption_words, lines in zip(split, scene_text):
        ocr = [w for line in lines for w in words(line) if len(w) >= 3 and not w.isdigit()]
        present = set(caption_words)
        read, used = read + len(ocr), used + sum(w in present for w in ocr)
    inspected = inspector.get("inspected", 0)
    ordered = sorted(tokens)
    return {
        "captions": len(captions),
        "tokens_mean": sum(tokens) / len(tokens),
        "tokens_median": ordered[len(ordered) // 2],
        "tokens_min": ordered[0],
        "tokens_max": ordered[-1],
        "over_77_tokens": sum(t > 75 for t in tokens) / len(tokens),  # 77 with CLIP's start and end marks
        "words_mean": sum(map(len, split)) / len(split),
        "type_token_ratio": sum(ratios) / len(ratios) if ratios else 0.0,
        "entropy_bits": sum(entropy_bits(w) for w in split) / len(split),
        "ocr_words_read": read,
        "ocr_words_used": used / read if read else None,
        "inspected": inspected,
        "inspector_pass_rate": inspector.get("accepted", 0) / inspected if inspected else None,
        "inspector_rejected": inspector.get("rejected", 0) / inspected if inspected else None,
    }


def _cell(value, percent: bool = False) -> str:
    if value is None:
        return "-"
    if percent:
        return f"{100 * value:.1f} %"
    return (
        f"{value:.3f}"
        if isinstance(value, float) and value < 10
        else f"{value:.1f}"
        if isinstance(value, float)
        else str(value)
    )


def report(statistics: dict, town: str) -> str:
    """A Markdown table of the statistics beside the paper's figures."""
    rows = [
        ("captions", "captions", False),
        ("CLIP tokens per caption, mean", "tokens_mean", False),
        ("CLIP tokens per caption, median (min-max)", "tokens_median", False),
        ("captions over CLIP's 77 tokens", "over_77_tokens", True),
        ("type-token ratio (per caption)", "type_token_ratio", False),
        ("word entropy, bits (per caption)", "entropy_bits", False),
        ("OCR words used in the caption", "ocr_words_used", True),
        ("inspector: accepted at once", "inspector_pass_rate", True),
        ("inspector: rejected", "inspector_rejected", True),
    ]
    cells = []
    for label, key, percent in rows:
        value = _cell(statistics.get(key), percent)
        if key == "tokens_median" and "tokens_min" in statistics:
            value += f" ({statistics['tokens_min']}-{statistics['tokens_max']})"
        if key == "ocr_words_used" and statistics.get("ocr_words_read"):
            value += f" of {statistics['ocr_words_read']}"
        paper = _cell(PAPER.get(key), percent) if key in PAPER else "-"
        cells.append([label, value, paper])
    return markdown_table(["statistic", town, "CVG-Text (paper)"], cells) + "\n"
