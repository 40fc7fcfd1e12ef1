"""CVG-Text metrics of a similarity matrix: recall of the true tile and top-1 localisation error.

The protocol itself (``nearest`` candidates, de-duplication, ties) is the retrieval engine's;
see :mod:`cvgtext.retrieval.ranking`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from cvgtext.data.names import is_panorama, parse_places
from cvgtext.retrieval.ranking import PAPER_NEAREST, rank_similarity, summarize


def geo_retrieval_metrics(
    sim: torch.Tensor,
    query_names: Sequence[str],
    gallery_names: Sequence[str],
    nearest: int | None = PAPER_NEAREST,
    chunk_size: int | None = None,
) -> dict[str, dict[str, float]]:
    """Metrics of ``sim  # [queries, gallery]`` under the CVG-Text protocol.

    Names are file names starting with ``lat,lon``; a query's true tile is the gallery entry
    with the query's file name. ``nearest=100`` is the paper's protocol (each query ranks the
    100 tiles nearest to its true place); ``nearest=None`` ranks the whole gallery. Returns
    ``{"all": {...}, "panorama": {...}, "single": {...}}`` as :func:`cvgtext.retrieval.ranking.summarize`.
    """
    # The names are this function's data: places and views are read from them here, once.
    places = parse_places([*query_names, *gallery_names])
    ranking = rank_similarity(
        sim,
        query_names,
        gallery_names,
        places[: len(query_names)],
        places[len(query_names) :],
        nearest=nearest,
        k=1,
        chunk_size=chunk_size,
    )
    return summarize(ranking, [is_panorama(name) for name in query_names])
