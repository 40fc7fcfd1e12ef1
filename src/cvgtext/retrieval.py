"""Rank a gallery of tiles for each text query, and turn rankings into CVG-Text metrics.

One engine serves validation, ``eval.py`` and the query tool. It works chunk by chunk over
the queries, so the full ``[queries, gallery]`` score matrix never exists, and it implements
the CVG-Text protocol:

- with ``nearest=m`` (the paper uses 100) a query competes only against the ``m`` gallery
  entries nearest to its true place (haversine; entries at one place keep gallery order);
  ``nearest=None`` ranks the whole gallery, the honest "where am I" setting;
- the ranked entries are de-duplicated by file name keeping the first, so a name scores as
  its best candidate copy;
- the true tile is the gallery entry whose file name is the query's.

A name that scores exactly as high as the true name ranks above it, so degenerate scores
(a collapsed model) give no recall instead of perfect recall.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from cvgtext.data.names import is_panorama, parse_coordinates
from cvgtext.geo import EARTH_RADIUS_KM, haversine_km

PAPER_NEAREST = 100
NOT_RANKED = 0  # true_rank of a query whose true name is not among its candidates
RECALL_AT = (1, 5, 10)
LOCALIZED_WITHIN_M = (50, 100, 150)

# Working memory of one query chunk, about (3 score buffers + one float64 proxy) per pair.
_CHUNK_BYTES = 512 * 2**20
# Locations beyond the `nearest` ones that the coarse cosine shortlist keeps, so that the
# exact distances of the shortlist almost always settle the nearest set on their own.
_SHORTLIST_MARGIN = 16
# Bound on the float64 error of a dot product of two unit vectors (a few ulps in practice).
_COSINE_ERROR = 1e-13
# Distances closer than this (km) are treated as possibly equal when checking the shortlist.
_DISTANCE_SLACK_KM = 1e-6
# The cosine shortlist looks at a window of places sorted by latitude, of about this many
# times sqrt(nearest * places): about the band a uniform city needs to hold each query's nearest.
_LATITUDE_WINDOW = 1.5
# Elements per block when counting the scores above the true one: a block stays in cache.
_COUNT_BLOCK_ELEMENTS = 1 << 20

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


def default_chunk_size(gallery_size: int, dtype: torch.dtype = torch.float32) -> int:
    """Queries per chunk that keep one chunk's working memory near 512 MiB."""
    bytes_per_pair = 3 * torch.empty((), dtype=dtype).element_size() + 8
    return max(1, _CHUNK_BYTES // (bytes_per_pair * max(1, gallery_size)))


def rank_gallery(
    query_emb: torch.Tensor,
    gallery_emb: torch.Tensor,
    query_names: Sequence[str],
    gallery_names: Sequence[str],
    nearest: int | None = PAPER_NEAREST,
    k: int = 10,
    chunk_size: int | None = None,
) -> Ranking:
    """Rank the gallery for each query by the dot product of the embeddings.

    ``query_emb  # [queries, dim]`` and ``gallery_emb  # [gallery, dim]`` should be
    L2-normalised (cosine similarity); the products run in their dtype and on their device.
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
        return torch.cat([
            (gallery_emb[part] @ queries[:, :, None]).squeeze(2)
            for queries, part in zip(query_emb[start:stop].split(rows), columns.split(rows))
        ])

    return _rank(scores, query_names, gallery_names, nearest, k, chunk_size, query_emb.device)


def rank_similarity(
    sim: torch.Tensor,
    query_names: Sequence[str],
    gallery_names: Sequence[str],
    nearest: int | None = PAPER_NEAREST,
    k: int = 10,
    chunk_size: int | None = None,
) -> Ranking:
    """Rank the gallery for each query from a precomputed ``sim  # [queries, gallery]``."""
    if sim.ndim != 2:
        raise ValueError(f"sim must be [queries, gallery], got shape {tuple(sim.shape)}")
    _check_names(sim.shape[0], sim.shape[1], query_names, gallery_names)
    if chunk_size is None:
        chunk_size = default_chunk_size(sim.shape[1], sim.dtype)

    def scores(start: int, stop: int, columns: torch.Tensor | None) -> torch.Tensor:
        return sim[start:stop] if columns is None else sim[start:stop].gather(1, columns)

    return _rank(scores, query_names, gallery_names, nearest, k, chunk_size, sim.device)


def summarize(ranking: Ranking, query_names: Sequence[str]) -> dict[str, dict[str, float]]:
    """CVG-Text metrics for all queries and per view (panorama / single), in percent.

    Each group has ``R@1 R@5 R@10`` (true name within the top k), ``L@50 L@100 L@150`` (top-1
    tile within that many metres of the true place), ``mean_error_km`` (mean top-1 error) and
    ``count``. A view's group is present only when it has queries.
    """
    if len(query_names) != ranking.true_rank.shape[0]:
        raise ValueError(f"{len(query_names)} query names for a ranking of {ranking.true_rank.shape[0]} queries")
    if not query_names:
        raise ValueError("no queries to summarize")
    panorama = torch.tensor([is_panorama(name) for name in query_names], dtype=torch.bool)
    groups = {"all": torch.ones_like(panorama), "panorama": panorama, "single": ~panorama}
    metrics = {}
    for group, members in groups.items():
        count = int(members.sum())
        if count == 0:
            continue
        values: dict[str, float] = {}
        for k in RECALL_AT:
            values[f"R@{k}"] = 100.0 * int(ranking.hits(k)[members].sum()) / count
        error_km = ranking.top1_error_km[members]
        for metres in LOCALIZED_WITHIN_M:
            values[f"L@{metres}"] = 100.0 * int((error_km <= metres / 1000).sum()) / count
        # fsum is exactly rounded, so the mean does not depend on summation order.
        values["mean_error_km"] = math.fsum(error_km.tolist()) / count
        values["count"] = count
        metrics[group] = values
    return metrics


def _check_names(queries: int, gallery: int, query_names: Sequence[str], gallery_names: Sequence[str]) -> None:
    if (queries, gallery) != (len(query_names), len(gallery_names)):
        raise ValueError(
            f"scores of shape ({queries}, {gallery}) do not match {len(query_names)} query names "
            f"and {len(gallery_names)} gallery names"
        )


@dataclass
class _Places:
    """The gallery's distinct locations, with the gallery entries found at each."""

    lat: torch.Tensor  # [locations] degrees, float64
    lon: torch.Tensor  # [locations]
    xyz: torch.Tensor  # [locations, 3] unit vectors, float64
    count: torch.Tensor  # [locations] entries at the location
    start: torch.Tensor  # [locations] offset of the location's first entry in `entries`
    entries: torch.Tensor  # [gallery] entry indices grouped by location, ascending within one
    one_entry_each: bool  # every location holds a single entry, so `entries` maps location -> entry


def _unit_vectors(lat: torch.Tensor, lon: torch.Tensor) -> torch.Tensor:
    """``[n, 3]`` points on the unit sphere; their dot product is the cosine of the central angle."""
    lat, lon = torch.deg2rad(lat), torch.deg2rad(lon)
    return torch.stack([lat.cos() * lon.cos(), lat.cos() * lon.sin(), lat.sin()], dim=1)


def _places(lat: torch.Tensor, lon: torch.Tensor) -> _Places:
    """Group gallery entries ``lat, lon  # [gallery]`` by location."""
    # Entries at one location share every distance, so distances are computed per location:
    # equal places then tie exactly and are ordered by gallery index, as a stable sort would.
    coords, location, count = torch.unique(
        torch.stack([lat, lon], dim=1), dim=0, return_inverse=True, return_counts=True
    )
    entries = torch.argsort(location, stable=True)
    return _Places(
        lat=coords[:, 0].contiguous(),
        lon=coords[:, 1].contiguous(),
        xyz=_unit_vectors(coords[:, 0], coords[:, 1]),
        count=count,
        start=count.cumsum(0) - count,
        entries=entries,
        one_entry_each=bool((count == 1).all()),
    )


def _nearest_entries(
    lat: torch.Tensor, lon: torch.Tensor, xyz: torch.Tensor, places: _Places, m: int
) -> torch.Tensor:
    """``[queries, m]`` gallery entries nearest to each query place, as a stable sort by distance picks them.

    A window of places sorted by latitude, then a cosine proxy within it, shortlist places
    cheaply; exact haversine distances order the shortlist. Rows whose shortlist cannot be
    proven to hold the nearest set are redone over all locations.
    """
    locations = places.lat.shape[0]
    width = min(locations, m + _SHORTLIST_MARGIN)
    window = min(locations, max(2 * width, math.ceil(_LATITUDE_WINDOW * math.sqrt(m * locations))))
    # Places are sorted by latitude (torch.unique sorts), so a window of them is a band of latitude.
    first = (torch.searchsorted(places.lat, lat) - window // 2).clamp(0, locations - window)
    columns = first[:, None] + torch.arange(window, device=lat.device)  # [queries, window]
    # Windows are rows of an unfolded view, so taking them copies contiguous memory.
    cosine = sum(
        xyz[:, i, None] * places.xyz[:, i].contiguous().unfold(0, window, 1).index_select(0, first) for i in range(3)
    )
    # Unsorted: the exact distances order the shortlist anyway.
    cosine, shortlist = cosine.topk(width, dim=1, sorted=False)  # [queries, width]
    entries, boundary_km = _take_nearest(lat, lon, columns.gather(1, shortlist), places, m)
    # Places left out of the shortlist have cosine <= the least one kept, hence lie at least this
    # far away; those outside the window lie at least their difference in latitude away.
    least = cosine.min(dim=1).values if width < window else torch.full_like(lat, -math.inf)
    beyond_km = EARTH_RADIUS_KM * torch.acos((least + _COSINE_ERROR).clamp(-1.0, 1.0))
    south = places.lat[(first - 1).clamp(min=0)].masked_fill(first == 0, -math.inf)
    north = places.lat[(first + window).clamp(max=locations - 1)].masked_fill(first + window == locations, math.inf)
    band_km = EARTH_RADIUS_KM * torch.deg2rad(torch.minimum(lat - south, north - lat)) * (1 - 1e-12)
    beyond_km = torch.minimum(beyond_km, band_km)
    unsure = (beyond_km <= boundary_km + _DISTANCE_SLACK_KM).nonzero().squeeze(1)
    if unsure.numel():
        every = torch.arange(locations, device=lat.device).expand(unsure.numel(), locations)
        entries[unsure] = _take_nearest(lat[unsure], lon[unsure], every, places, m)[0]
    return entries


def _take_nearest(
    lat: torch.Tensor, lon: torch.Tensor, locations: torch.Tensor, places: _Places, m: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``m`` nearest entries among ``locations  # [queries, width]``, and the distance of the farthest."""
    distance_km = haversine_km(lat[:, None], lon[:, None], places.lat[locations], places.lon[locations])
    if places.one_entry_each:  # the usual gallery: the nearest places are the nearest entries
        distance_km, nearest = distance_km.topk(m, dim=1, largest=False, sorted=False)
        return places.entries[locations.gather(1, nearest)], distance_km.max(dim=1).values
    distance_km, order = distance_km.sort(dim=1, stable=True)
    locations = locations.gather(1, order)
    through = places.count[locations].cumsum(1)  # [queries, width] entries up to each location
    slot = torch.arange(m, device=lat.device).expand(locations.shape[0], m)
    which = torch.searchsorted(through, slot.contiguous(), right=True)  # [queries, m] location of each slot
    location = locations.gather(1, which)
    offset = slot - (through.gather(1, which) - places.count[location])
    return places.entries[places.start[location] + offset], distance_km.gather(1, which[:, -1:]).squeeze(1)


@torch.inference_mode()
def _rank(
    score_chunks: ScoreChunks,
    query_names: Sequence[str],
    gallery_names: Sequence[str],
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
    first_of_name: dict[str, int] = {}
    for index, name in enumerate(gallery_names):
        first_of_name.setdefault(name, index)
    first_copy = torch.tensor([first_of_name[name] for name in gallery_names], dtype=torch.long, device=device)
    true_entry = torch.tensor([first_of_name.get(name, -1) for name in query_names], dtype=torch.long, device=device)

    place_of_name = {name: parse_coordinates(name) for name in first_of_name}

    def coordinates(names: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        places = [place_of_name.get(name) or parse_coordinates(name) for name in names]
        lat_lon = torch.tensor(places, dtype=torch.float64).reshape(-1, 2)
        return lat_lon[:, 0].to(device), lat_lon[:, 1].to(device)

    query_lat, query_lon = coordinates(query_names)
    gallery_lat, gallery_lon = coordinates(gallery_names)
    if nearest is not None and nearest < len(gallery_names):
        candidates, at_place, copy_offset = _candidates(
            query_lat, query_lon, gallery_lat, gallery_lon, first_copy, nearest, chunk_size
        )
    else:  # every query ranks the whole gallery, in gallery order
        candidates, copy_offset = None, torch.arange(len(gallery_names), device=device) - first_copy

    # Filled chunk by chunk: nothing long-lived is allocated between the chunks' large buffers,
    # which keeps the allocator from fragmenting and the resident memory from creeping up.
    indices = torch.full((len(query_names), k), -1, dtype=torch.long)
    top_scores = torch.full((len(query_names), k), -math.inf)
    true_rank = torch.zeros(len(query_names), dtype=torch.long)
    for start in range(0, len(query_names), chunk_size):
        stop = min(start + chunk_size, len(query_names))
        true_column = true_entry[start:stop]
        columns = None if candidates is None else candidates[at_place[start:stop]]  # [chunk, nearest] entries
        scores = score_chunks(start, stop, columns)  # [chunk, candidates]
        if columns is None:
            offset = copy_offset[None, :]
        else:
            offset = copy_offset[columns]
            found = columns == true_column[:, None]
            true_column = torch.where(found.any(1), found.to(torch.uint8).argmax(1), -1)
        scores = _merge_copies(scores, offset)
        chunk_indices, chunk_scores, chunk_rank = _rank_chunk(scores, true_column, k)
        del scores  # before the next chunk's scores are allocated
        if columns is not None:
            chunk_indices = columns.gather(1, chunk_indices.clamp(min=0)).masked_fill(chunk_indices < 0, -1)
        if start == 0:
            top_scores = top_scores.to(chunk_scores.dtype)
        indices[start:stop], top_scores[start:stop], true_rank[start:stop] = chunk_indices, chunk_scores, chunk_rank

    top1 = indices[:, 0]
    top1_error_km = haversine_km(
        query_lat.cpu(), query_lon.cpu(), gallery_lat.cpu()[top1.clamp(min=0)], gallery_lon.cpu()[top1.clamp(min=0)]
    )
    top1_error_km[true_rank == 1] = 0.0
    top1_error_km[top1 < 0] = math.nan
    return Ranking(indices, top_scores, true_rank, top1_error_km, nearest)


def _candidates(
    query_lat: torch.Tensor,
    query_lon: torch.Tensor,
    gallery_lat: torch.Tensor,
    gallery_lon: torch.Tensor,
    first_copy: torch.Tensor,
    nearest: int,
    chunk_size: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``nearest`` entries of each query place, the place of each query, and each entry's offset from its name's first copy.

    Returns ``[query places, nearest]`` entries, ``[queries]`` place indices and ``[gallery]`` offsets.

    Candidates depend only on the query's place, so they are found once per distinct place.
    Copies of a name share its place, and a place's entries are candidates in gallery order
    and as a prefix, so a candidate's first copy sits ``offset`` columns before it in the row.
    """
    places = _places(gallery_lat, gallery_lon)
    query_place, at_place = torch.unique(torch.stack([query_lat, query_lon], dim=1), dim=0, return_inverse=True)
    lat, lon = query_place[:, 0], query_place[:, 1]
    xyz = _unit_vectors(lat, lon)
    rows = max(1, chunk_size // 4)  # the shortlist's buffers are a few times a score row's
    nearest_entries = torch.cat([
        _nearest_entries(lat[part], lon[part], xyz[part], places, nearest)
        for part in torch.arange(lat.shape[0], device=lat.device).split(rows)
    ])
    # Position of each entry within its place's entries.
    position = torch.empty_like(places.entries)
    position[places.entries] = torch.arange(places.entries.shape[0], device=lat.device) - places.start.repeat_interleave(places.count)
    return nearest_entries, at_place, position - position[first_copy]


def _merge_copies(scores: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """Give a name's first candidate copy the best score of its copies; the others get ``-inf``.

    ``offset  # [chunk or 1, candidates]`` is how many columns before each column its name's
    first copy sits (0 for a first copy).
    """
    is_copy = offset != 0
    columns = is_copy.any(0).nonzero().squeeze(1)  # columns holding a copy in some row
    if not columns.numel():
        return scores
    targets = (columns - offset[:, columns]).expand(scores.shape[0], -1)
    scores = scores.scatter_reduce(1, targets, scores[:, columns], "amax")
    return scores.masked_fill(is_copy, -math.inf)


def _rank_chunk(scores: torch.Tensor, true_column: torch.Tensor, k: int) -> tuple[torch.Tensor, ...]:
    """Top-k names and the true name's rank, for one chunk of ``scores  # [chunk, gallery]``.

    Non-candidates and extra copies of a name are already ``-inf``; a column is a name.
    """
    present = true_column >= 0
    true_score = scores.gather(1, true_column.clamp(min=0)[:, None]).squeeze(1)
    true_score = true_score.masked_fill(~present, -math.inf)
    # One more than k, so that k other names remain once the true one is taken out.
    top_scores, top = scores.topk(min(k + 1, scores.shape[1]), dim=1)
    if top_scores[:, 0].isnan().any() or true_score.isnan().any():
        raise ValueError("similarity scores contain NaN")

    rows = max(1, _COUNT_BLOCK_ELEMENTS // scores.shape[1])
    at_least_true = torch.cat(
        [(block >= bound[:, None]).sum(1) for block, bound in zip(scores.split(rows), true_score.split(rows))]
    )
    ranked = present & (true_score > -math.inf)
    true_rank = torch.where(ranked, at_least_true, NOT_RANKED)

    # The other names in score order, then the true name put back at its rank.
    is_true = top == true_column[:, None]
    others_first = is_true.to(torch.uint8).argsort(dim=1, stable=True)
    top_scores = top_scores.masked_fill(is_true, -math.inf)
    top, top_scores = top.gather(1, others_first), top_scores.gather(1, others_first)
    if top.shape[1] < k + 1:
        pad = k + 1 - top.shape[1]
        top = torch.cat([top, top.new_full((top.shape[0], pad), -1)], dim=1)
        top_scores = torch.cat([top_scores, top_scores.new_full((top.shape[0], pad), -math.inf)], dim=1)
    slot = torch.arange(k, device=scores.device).expand(scores.shape[0], k)
    position = torch.where(ranked, true_rank - 1, k)[:, None]  # k: not in the list
    source = slot - (slot > position).long()
    top = top.gather(1, source).masked_scatter(slot == position, true_column[ranked & (true_rank <= k)])
    top_scores = top_scores.gather(1, source).masked_scatter(slot == position, true_score[ranked & (true_rank <= k)])
    top = top.masked_fill(top_scores == -math.inf, -1)
    return top, top_scores, true_rank

