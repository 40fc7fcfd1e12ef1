"""Re-ranking by BLIP's image-text matching (ITM) head (``reranker=blip_itm``).

BLIP retrieves with its contrastive embeddings and then re-scores each description's top-k
tiles with the ITM head, which reads the description with cross-attention to each tile's patch
tokens: too slow for a whole city, finer than a dot product. The ITM probability of a match is
each candidate's value, combined with the dual encoder's similarity as every re-ranker's is
(:func:`cvgtext.rerank.reorder`). A description's own top-k are scored against that
description: the similarity matrix is ``[descriptions, tiles]`` and each row's candidates are
taken from that row.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from cvgtext.data.dataset import load_image
from cvgtext.rerank import Judged, Query
from cvgtext.utils.errors import ConfigError, DataError

log = logging.getLogger(__name__)


class ITMReranker:
    """Scores each query's top ``top_k`` tiles by the model's ITM head, ``batch_size`` pairs at a time.

    ``module`` is the loaded LightningModule; its model must have a matching head (BLIP). Pairs
    go in order of their tiles, and a batch runs the image tower once per distinct tile.
    """

    uses_model = True  # built with the run's module rather than an endpoint

    def __init__(
        self,
        module: Any,
        name: str = "blip_itm",
        top_k: int = 16,
        weight: float = 1.0,
        max_queries: int | None = None,
        batch_size: int = 16,
    ):
        model = getattr(module, "model", None)
        if not hasattr(model, "match"):
            backbone = getattr(module, "hparams", {}).get("backbone", {}).get("name")
            raise ConfigError(
                f"reranker={name} needs a backbone with an image-text matching head (backbone=blip_b or blip_l); "
                f"backbone={backbone} has none"
            )
        if top_k < 2 or batch_size < 1:
            raise ConfigError(
                f"reranker.top_k={top_k} must be at least 2 and reranker.batch_size={batch_size} at least 1"
            )
        self.module, self.name, self.top_k, self.weight = module, name, int(top_k), float(weight)
        self.max_queries, self.batch_size = max_queries, int(batch_size)

    def settings(self) -> dict[str, Any]:
        return {
            "reranker": self.name,
            "mode": "itm",
            "top_k": self.top_k,
            "weight": self.weight,
            "batch_size": self.batch_size,
        }

    @torch.no_grad()
    def judge(self, queries: Sequence[Query]) -> list[list[Judged]]:
        # Pairs in order of their tiles, so that descriptions sharing a candidate (neighbours
        # share many) meet in one batch and the image tower reads that tile once.
        pairs = sorted(
            ((q, c) for q, query in enumerate(queries) for c in range(len(query.tiles))),
            key=lambda pair: str(queries[pair[0]].tiles[pair[1]]),
        )
        values: dict[tuple[int, int], Judged] = {}
        model = self.module.model
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        try:
            for start in range(0, len(pairs), self.batch_size):
                chunk = pairs[start : start + self.batch_size]
                tiles: dict[Path, int] = {}  # each readable tile of the batch and its row
                images, kept = [], []
                for q, c in chunk:
                    tile = Path(queries[q].tiles[c])
                    if tile not in tiles:
                        try:
                            images.append(self.module.preprocess(load_image(tile)))
                        except DataError as error:
                            log.warning("The matching head skips a candidate: %s", error)
                            tiles[tile] = -1
                        else:
                            tiles[tile] = len(images) - 1
                    if tiles[tile] < 0:
                        values[q, c] = Judged(None, "", Counter({"unreadable tile": 1}))
                    else:
                        kept.append((q, c, tiles[tile]))
                if not kept:
                    continue
                image_tokens = model.image_tokens(torch.stack(images).to(device))
                rows = torch.tensor([row for _, _, row in kept], device=device)
                tokens = self.module.tokenizer([queries[q].description for q, _, _ in kept]).to(device)
                probability = model.match(None, tokens, image_tokens=image_tokens[rows]).tolist()
                for (q, c, _), p in zip(kept, probability):
                    values[q, c] = Judged(float(p), f"image-text matching: {p:.3f}")
        finally:
            model.train(was_training)
        return [[values[q, c] for c in range(len(query.tiles))] for q, query in enumerate(queries)]
