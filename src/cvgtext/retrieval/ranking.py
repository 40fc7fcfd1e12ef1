"""Rank a gallery of tiles for each text query, and turn rankings into CVG-Text metrics.

One engine serves validation, ``eval.py`` and the query tool. It works chunk by chunk over
the queries, so the full ``[queries, gallery]`` score matrix never exists, and it implements
the CVG-Text protocol:

- with ``nearest=m`` (the paper uses 100) a query competes only against the ``m`` gallery
  entries nearest to its true place (haversine; entries at equal distances keep gallery order);
  ``nearest=None`` ranks the whole gallery, the honest "where am I" setting;
- the ranked entries are de-duplicated by file name keeping the first, so a name scores as
  its best candidate copy;
- the true tile is the gallery entry whose file name is the query's.

Places (``[n, 2]`` latitude and longitude in degrees) and view flags come from the data, read
once where the data is read; this module never parses file names.

Equal scores keep the protocol's candidate order (nearest first, then gallery order), with one
exception: a name that scores exactly as high as the true name ranks above it, so degenerate
scores (a collapsed model) give no recall instead of perfect recall.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy
import torch

from cvgtext.retrieval.geo import haversine_km
from cvgtext.retrieval.nearest_tiles import nearest_entries

PAPER_NEAREST = 100
NOT_RANKED = 0  # true_rank of a query whose true name is not among its candidates
RECALL_AT = (1, 5, 10)
LOCALIZED_WITHIN_M = (50, 100, 150)

# Working memory of one query chunk, about (3 score buffers + one float64 proxy) per pair.
_CHUNK_BYTES = 512 * 2**20
# (start, stop, columns) -> scores [stop - start, candidates] of those queries against the gallery
# entries `columns  # [stop - start, candidates]`, or against the whole gallery when columns is None.
ScoreChunks = Callable[[int, int, "torch.Tensor | None"], torch.Tensor]


@dataclass
class Ranking:
    """What each query retrieved: its top-k distinct names, and where its true name ranked.

    All tensors are on the CPU; rows follow the queries.
    """

    indices: torch.Tensor  # [queries, k] int64 gallery index (first occurrence) of each name; -1 pads
    scores: torch.Tensor  # [queries, k] best candidate score of each name; -inf pads
    true_rank: torch.Tensor  # [queries] int64 1-based rank of the true name; NOT_RANKED when absent
    top1_error_km: torch.Tensor  # [queries] float64 distance from the true place to the top-1 tile
    nearest: int | None  # the protocol: candidates per query, None for the whole gallery

    def hits(self, k: int) -> torch.Tensor:
        """``[queries]`` bool: the true name is within the top ``k``."""
        return (self.true_rank != NOT_RANKED) & (self.true_rank <= k)


def first_of_each_name(names: Sequence[str]) -> dict[str, int]:
    """Each distinct file name and the position of its first occurrence, in order of first occurrence.

    The protocol's de-duplication: a name stands for its first copy.
    """
    first: dict[str, int] = {}
    for position, name in enumerate(names):
        first.setdefault(name, position)
    return first


def default_chunk_size(gallery_size: int, dtype: torch.dtype = torch.float32) -> int:
    """Queries per chunk that keep one chunk's working memory near 512 MiB."""
    bytes_per_pair = 3 * torch.empty((), dtype=dtype).element_size() + 8
    return max(1, _CHUNK_BYTES // (bytes_per_pair * max(1, gallery_size)))


def rank_gallery(
    query_emb: torch.Tensor,
    gallery_emb: torch.Tensor,
    query_names: Sequence[str],
    gallery_names: Sequence[str],
    query_places: torch.Tensor,
    gallery_places: torch.Tensor,
    nearest: int | None = PAPER_NEAREST,
    k: int = 10,
    chunk_size: int | None = None,
) -> Ranking:
    """Rank the gallery for each query by the dot product of the embeddings.

    ``query_emb  # [queries, dim]`` and ``gallery_emb  # [gallery, dim]`` should be
    L2-normalised (cosine similarity); the products run in their dtype and on their device.
    ``query_places  # [queries, 2]`` and ``gallery_places  # [gallery, 2]`` are latitude and
    longitude in degrees: each query's true place and each tile's.
    """
    if query_emb.ndim != 2 or gallery_emb.ndim != 2 or query_emb.shape[1] != gallery_emb.shape[1]:
        raise ValueError(
            f"embeddings must be [queries, dim] and [gallery, dim], got {tuple(query_emb.shape)} "
            f"and {tuple(gallery_emb.shape)}"
        )
    if query_emb.device != gallery_emb.device:
        raise ValueError(f"query embeddings on {query_emb.device}, gallery embeddings on {gallery_emb.device}")
    _check_names(query_emb.shape[0], gallery_emb.shape[0], query_names, gallery_names)
    if chunk_size is None:
        chunk_size = default_chunk_size(gallery_emb.shape[0], query_emb.dtype)
    # Elements of the gathered candidate embeddings per product: the size of a chunk's score rows.
    budget = chunk_size * gallery_emb.shape[0]

    def scores(start: int, stop: int, columns: torch.Tensor | None) -> torch.Tensor:
        if columns is None:
            return query_emb[start:stop] @ gallery_emb.T
        # A batched product with each query's own candidates: far less work than the full row.
        rows = max(1, budget // (columns.shape[1] * gallery_emb.shape[1]))
        return torch.cat(
            [
                (gallery_emb[part] @ queries[:, :, None]).squeeze(2)
                for queries, part in zip(query_emb[start:stop].split(rows), columns.split(rows))
            ]
        )

    return _rank(
        scores, query_names, gallery_names, query_places, gallery_places, nearest, k, chunk_size, query_emb.device
    )


def rank_similarity(
    sim: torch.Tensor,
    query_names: Sequence[str],
    gallery_names: Sequence[str],
    query_places: torch.Tensor,
    gallery_places: torch.Tensor,
    nearest: int | None = PAPER_NEAREST,
    k: int = 10,
    chunk_size: int | None = None,
) -> Ranking:
    """Rank the gallery for each query from a precomputed ``sim  # [queries, gallery]``.

    Places as :func:`rank_gallery`.
    """
    if sim.ndim != 2:
        raise ValueError(f"sim must be [queries, gallery], got shape {tuple(sim.shape)}")
    _check_names(sim.shape[0], sim.shape[1], query_names, gallery_names)
    if chunk_size is None:
        chunk_size = default_chunk_size(sim.shape[1], sim.dtype)

    def scores(start: int, stop: int, columns: torch.Tensor | None) -> torch.Tensor:
        return sim[start:stop] if columns is None else sim[start:stop].gather(1, columns)

    return _rank(scores, query_names, gallery_names, query_places, gallery_places, nearest, k, chunk_size, sim.device)


def summarize(ranking: Ranking, panorama: torch.Tensor | Sequence[bool]) -> dict[str, dict[str, float]]:
    """CVG-Text metrics for all queries and per view, in percent; ``panorama  # [queries]`` flags panorama texts.

    Each group has ``R@1 R@5 R@10`` (true name within the top k), ``L@50 L@100 L@150`` (top-1
    tile within that many metres of the true place), ``mean_error_km`` (mean top-1 error),
    ``MRR`` (mean reciprocal rank of the true name, in percent; 0 for a query whose true name is
    not among its candidates) and ``count``. A view's group (``panorama``, ``single``) is present
    only when it has queries.
    """
    panorama = torch.as_tensor(panorama, dtype=torch.bool).cpu()
    if panorama.shape != ranking.true_rank.shape:
        raise ValueError(f"{panorama.numel()} view flags for a ranking of {ranking.true_rank.shape[0]} queries")
    if not panorama.numel():
        raise ValueError("no queries to summarize")
    groups = {"all": torch.ones_like(panorama), "panorama": panorama, "single": ~panorama}
    error_km = ranking.top1_error_km
    criteria = {f"R@{k}": ranking.hits(k) for k in RECALL_AT}
    criteria |= {f"L@{metres}": error_km <= metres / 1000 for metres in LOCALIZED_WITHIN_M}
    # [groups, criteria] queries of each group meeting each criterion, in one product
    membership, passed = torch.stack(list(groups.values())), torch.stack(list(criteria.values()))
    met = (membership.double() @ passed.double().T).tolist()
    errors = error_km.tolist()
    reciprocals = reciprocal_ranks(ranking).tolist()
    metrics = {}
    for (group, members), counts in zip(groups.items(), met):
        count = int(members.sum())
        if count == 0:
            continue
        values = {name: 100.0 * int(hits) / count for name, hits in zip(criteria, counts)}
        # fsum is exactly rounded, so the means do not depend on summation order.
        member = members.tolist()
        values["mean_error_km"] = math.fsum(e for e, m in zip(errors, member) if m) / count
        values["MRR"] = 100.0 * math.fsum(r for r, m in zip(reciprocals, member) if m) / count
        values["count"] = count
        metrics[group] = values
    return metrics


def reciprocal_ranks(ranking: Ranking) -> torch.Tensor:
    """``[queries]`` float64: 1 / the true name's rank, 0 where it is not among the candidates."""
    rank = ranking.true_rank.double()
    return torch.where(ranking.true_rank == NOT_RANKED, 0.0, 1.0 / rank.clamp(min=1))


def _check_names(queries: int, gallery: int, query_names: Sequence[str], gallery_names: Sequence[str]) -> None:
    if (queries, gallery) != (len(query_names), len(gallery_names)):
        raise ValueError(
            f"scores of shape ({queries}, {gallery}) do not match {len(query_names)} query names "
            f"and {len(gallery_names)} gallery names"
        )


def _check_places(places: torch.Tensor, count: int, what: str) -> torch.Tensor:
    places = torch.as_tensor(places, dtype=torch.float64)
    if places.shape != (count, 2):
        raise ValueError(f"{what} places must be [{count}, 2] (lat, lon in degrees), got shape {tuple(places.shape)}")
    if not places.isfinite().all():
        raise ValueError(f"{what} places contain a non-finite coordinate")
    return places.cpu()


@torch.inference_mode()
def _rank(
    score_chunks: ScoreChunks,
    query_names: Sequence[str],
    gallery_names: Sequence[str],
    query_places: torch.Tensor,
    gallery_places: torch.Tensor,
    nearest: int | None,
    k: int,
    chunk_size: int,
    device: torch.device,
) -> Ranking:
    """The single ranking path; ``score_chunks`` gives the scores of a chunk of queries.

    Each query ranks a row of candidate entries: its ``nearest`` ones, or the whole gallery.
    """
    if not gallery_names:
        raise ValueError("the gallery is empty")
    if nearest is not None and nearest < 1:
        raise ValueError(f"nearest must be a positive number of tiles or None, got {nearest}")
    if k < 1 or chunk_size < 1:
        raise ValueError(f"k and chunk_size must be positive, got k={k}, chunk_size={chunk_size}")
    query_places = _check_places(query_places, len(query_names), "query")
    gallery_places = _check_places(gallery_places, len(gallery_names), "gallery")
    first_of_name = first_of_each_name(gallery_names)
    name_of = torch.tensor([first_of_name[name] for name in gallery_names], dtype=torch.long)
    true_name = torch.tensor([first_of_name.get(name, -1) for name in query_names], dtype=torch.long)
    copies = len(first_of_name) < len(gallery_names)
    if copies and not torch.equal(gallery_places, gallery_places[name_of]):
        bad = int((gallery_places != gallery_places[name_of]).any(1).nonzero()[0])
        raise ValueError(f"gallery entries named {gallery_names[bad]!r} are given different places")

    if nearest is not None and nearest < len(gallery_names):
        candidates, candidate_nearness = nearest_entries(query_places, gallery_places, nearest)
    else:  # every query ranks the whole gallery, in gallery order
        candidates = candidate_nearness = None
    name_of, true_name = name_of.to(device), true_name.to(device)
    whole = torch.arange(len(gallery_names), device=device)[None]

    # Filled chunk by chunk: nothing long-lived is allocated between the chunks' large buffers,
    # which keeps the allocator from fragmenting and the resident memory from creeping up.
    indices = torch.full((len(query_names), k), -1, dtype=torch.long)
    top_scores = torch.full((len(query_names), k), -math.inf)
    true_rank = torch.zeros(len(query_names), dtype=torch.long)
    for start in range(0, len(query_names), chunk_size):
        stop = min(start + chunk_size, len(query_names))
        if candidates is None:
            columns, entry, nearness = None, whole, None
        else:
            columns = entry = candidates[start:stop].to(device)
            nearness = candidate_nearness[start:stop].to(device)
        scores = score_chunks(start, stop, columns)  # [chunk, candidates]
        names = name_of.index_select(0, entry.reshape(-1)).view(entry.shape)
        if copies:
            scores = _best_copy_only(scores, names, entry, len(gallery_names))
        chunk_entries, chunk_scores, chunk_rank = _rank_chunk(
            scores, names, entry, nearness, true_name[start:stop], k, copies
        )
        del scores  # before the next chunk's scores are allocated
        if start == 0:
            top_scores = top_scores.to(chunk_scores.dtype)
        indices[start:stop], top_scores[start:stop], true_rank[start:stop] = chunk_entries, chunk_scores, chunk_rank

    return Ranking(
        indices, top_scores, true_rank, top1_error(indices, true_rank, query_places, gallery_places), nearest
    )


def top1_error(
    indices: torch.Tensor, true_rank: torch.Tensor, query_places: torch.Tensor, gallery_places: torch.Tensor
) -> torch.Tensor:
    """``[queries]`` km from each query's true place to its top-1 tile (``indices[:, 0]``): 0 where
    the true name is first (a copy elsewhere counts as found), NaN where nothing was retrieved."""
    top1 = indices[:, 0]
    place = gallery_places[top1.clamp(min=0)]
    error_km = haversine_km(query_places[:, 0], query_places[:, 1], place[:, 0], place[:, 1])
    error_km[true_rank == 1] = 0.0
    error_km[top1 < 0] = math.nan
    return error_km


def _best_copy_only(scores: torch.Tensor, names: torch.Tensor, entry: torch.Tensor, gallery: int) -> torch.Tensor:
    """Keep each name's best-scoring candidate copy (the earliest among equals); the others get ``-inf``.

    ``names`` and ``entry`` (``[chunk or 1, candidates]``) are the name (first copy) and the entry
    of each column. Copies of a name share its place, so the earliest entry is the earliest candidate.
    """
    rows = scores.shape[0]
    names, entry = names.expand(rows, -1), entry.expand(rows, -1)
    best = scores.new_full((rows, gallery), -math.inf).scatter_reduce(1, names, scores, "amax")
    at_best = scores == best.gather(1, names)
    candidate = entry.masked_fill(~at_best, gallery)
    earliest = entry.new_full((rows, gallery), gallery).scatter_reduce(1, names, candidate, "amin")
    return scores.masked_fill(earliest.gather(1, names) != entry, -math.inf)


def _rank_chunk(
    scores: torch.Tensor,
    names: torch.Tensor,
    entry: torch.Tensor,
    nearness: torch.Tensor | None,
    true_name: torch.Tensor,
    k: int,
    copies: bool,
) -> tuple[torch.Tensor, ...]:
    """Top-k names and the true name's rank, for one chunk of ``scores  # [chunk, candidates]``.

    ``names``, ``entry`` and ``nearness`` (``[chunk or 1, candidates]``; a key ordered as the
    distance to the query's place, none for the whole gallery) describe the columns; extra
    copies of a name already score ``-inf``, and ``copies`` says whether the gallery has any.
    Returns the top-k names as gallery indices of their first copies, their scores, and the
    true name's rank.
    """
    rows = scores.shape[0]
    if nearness is None and not copies:  # the whole gallery, one column per name
        true_score = scores.gather(1, true_name.clamp(min=0)[:, None]).squeeze(1).masked_fill(true_name < 0, -math.inf)
    else:
        true_score = torch.where(names == true_name[:, None], scores, -math.inf).amax(1)
    # Every column scoring at least the (k+1)-th best, in the protocol's order: score, then
    # distance, then gallery order.
    top_scores, top = _best_columns(scores, k + 1)
    if top_scores.isnan().any() or true_score.isnan().any():  # NaN counts as the best score
        raise ValueError("similarity scores contain NaN")
    ranked = true_score > -math.inf
    true_rank = torch.where(ranked, (scores >= true_score[:, None]).sum(1), NOT_RANKED)

    top_entries = entry.expand(rows, -1).gather(1, top)
    order = top_entries.argsort(dim=1, stable=True)
    if nearness is not None:
        order = order.gather(1, nearness.gather(1, top.gather(1, order)).argsort(dim=1, stable=True))
    order = order.gather(1, top_scores.gather(1, order).argsort(dim=1, descending=True, stable=True))
    top, top_scores = top.gather(1, order), top_scores.gather(1, order)

    # The other names in that order, then the true name put back at its rank.
    top_names = names.expand(rows, -1).gather(1, top)
    top_is_true = top_names == true_name[:, None]
    others_first = top_is_true.to(torch.uint8).argsort(dim=1, stable=True)
    top_names = top_names.gather(1, others_first)
    top_scores = top_scores.masked_fill(top_is_true, -math.inf).gather(1, others_first)
    if top_names.shape[1] < k + 1:
        pad = k + 1 - top_names.shape[1]
        top_names = torch.cat([top_names, top_names.new_full((rows, pad), -1)], dim=1)
        top_scores = torch.cat([top_scores, top_scores.new_full((rows, pad), -math.inf)], dim=1)
    top_names, top_scores = top_names[:, : k + 1], top_scores[:, : k + 1]
    slot = torch.arange(k, device=scores.device).expand(rows, k)
    position = torch.where(ranked, true_rank - 1, k)[:, None]  # k: not in the list
    source = slot - (slot > position).long()
    at_true = slot == position
    top_names = top_names.gather(1, source).masked_scatter(at_true, true_name[ranked & (true_rank <= k)])
    top_scores = top_scores.gather(1, source).masked_scatter(at_true, true_score[ranked & (true_rank <= k)])
    return top_names.masked_fill(top_scores == -math.inf, -1).cpu(), top_scores.cpu(), true_rank.cpu()


def _best_columns(scores: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The scores and columns of at least each row's ``n`` best, in no particular order: every
    column scoring as high as the ``n``-th best of its row is among them."""
    take = min(n + 1, scores.shape[1])
    narrow = scores.shape[1] < 64 * take
    if narrow and scores.device.type == "cpu" and scores.dtype in (torch.float32, torch.float64):
        # On rows narrower than 64 times the columns taken (the CVG-Text protocol's 100
        # candidates) torch's CPU topk takes about twice as long as numpy's partition; on wider
        # rows it is much faster.
        negated = -scores.numpy()
        negated[numpy.isnan(negated)] = -numpy.inf  # NaN first, as topk takes it
        columns = torch.from_numpy(numpy.argpartition(negated, take - 1, axis=1)[:, :take])
        best = scores.gather(1, columns)
    else:
        best, columns = scores.topk(take, dim=1, sorted=False)
    if take > n:  # the (n+1)-th best is there too: where it ties with the n-th, take every tie
        ranked = best.sort(dim=1, descending=True).values
        if (ranked[:, n] == ranked[:, n - 1]).any():
            return scores.topk(int((scores >= ranked[:, n - 1 : n]).sum(1).max()), dim=1)
    return best, columns
