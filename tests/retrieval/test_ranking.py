"""The retrieval engine: per-query rankings against the plain protocol, chunking, both input kinds."""

from __future__ import annotations

import math
import random

import pytest
import torch

from cvgtext.data.names import is_panorama, parse_coordinates, parse_places
from cvgtext.retrieval import nearest_tiles
from cvgtext.retrieval import ranking as retrieval
from cvgtext.retrieval.ranking import NOT_RANKED, Ranking, summarize
from helpers.city import city_names
from helpers.reference_protocol import QueryOutcome, rank_query, synthetic_names
from helpers.reference_protocol import haversine_km as reference_haversine_km


def rank_similarity(sim, queries, gallery, **options) -> Ranking:
    """The engine with places read from the file names, as the data reader does."""
    return retrieval.rank_similarity(sim, queries, gallery, parse_places(queries), parse_places(gallery), **options)


def rank_gallery(query_emb, gallery_emb, queries, gallery, **options) -> Ranking:
    return retrieval.rank_gallery(
        query_emb, gallery_emb, queries, gallery, parse_places(queries), parse_places(gallery), **options
    )


def views(queries) -> list[bool]:
    return [is_panorama(name) for name in queries]


def embeddings(rows: int, dim: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(rows, dim, generator=generator), dim=1)


def true_name_after_its_equals(
    outcome: QueryOutcome, row: list[float], query: str, gallery: list[str], nearest: int | None
) -> QueryOutcome:
    """The plain protocol's outcome with the engine's one rule on ties: names scoring exactly as
    high as the true name rank above it. (Names stand for their best-scoring candidate copy.)"""
    names = outcome.ranked_names
    own = {row[j] for j, name in enumerate(gallery) if name == query}
    if outcome.true_rank is None or not any(row[j] in own for j, name in enumerate(gallery) if name != query):
        return outcome  # no other tile scores as the true one: nothing to move
    lat, lon = parse_coordinates(query)
    distance_km = [reference_haversine_km(lat, lon, *parse_coordinates(name)) for name in gallery]
    candidates = sorted(range(len(gallery)), key=lambda j: distance_km[j])[:nearest]
    best = {name: max(row[j] for j in candidates if gallery[j] == name) for name in names}
    others = [name for name in names if name != query]
    rank = sum(1 for name in others if best[name] >= best[query]) + 1
    ranked = others[: rank - 1] + [query] + others[rank - 1 :]
    if ranked[0] == query:
        error = 0.0
    else:
        error = reference_haversine_km(*parse_coordinates(query), *parse_coordinates(ranked[0]))
    return QueryOutcome(ranked, rank, error)


def assert_matches_plain_protocol(ranking: Ranking, sim: torch.Tensor, queries, gallery, nearest, k) -> None:
    places = [parse_coordinates(name) for name in gallery]
    for i, (row, name) in enumerate(zip(sim.tolist(), queries)):
        expected = rank_query(row, name, gallery, places, nearest)
        expected = true_name_after_its_equals(expected, row, name, gallery, nearest)
        got = [gallery[j] for j in ranking.indices[i].tolist() if j >= 0]
        assert got == expected.ranked_names[:k], f"query {i}"
        assert all(gallery.index(gallery[j]) == j for j in ranking.indices[i].tolist() if j >= 0)
        assert ranking.true_rank[i].item() == (expected.true_rank or NOT_RANKED), f"query {i}"
        assert ranking.top1_error_km[i].item() == pytest.approx(expected.top1_error_km, rel=1e-12, abs=1e-12)


def assert_same_ranking(a: Ranking, b: Ranking) -> None:
    assert torch.equal(a.indices, b.indices)
    assert torch.equal(a.true_rank, b.true_rank)
    torch.testing.assert_close(a.scores, b.scores)
    torch.testing.assert_close(a.top1_error_km, b.top1_error_km, equal_nan=True)


@pytest.mark.parametrize("duplicates", [0, 15])
@pytest.mark.parametrize("nearest", [100, 9, None])
def test_ranking_matches_plain_protocol_query_by_query(nearest, duplicates):
    queries, gallery = city_names(seed=11, tiles=150, duplicates=duplicates, strangers=1)
    sim = embeddings(len(queries), 16, seed=1) @ embeddings(len(gallery), 16, seed=2).T
    ranking = rank_similarity(sim, queries, gallery, nearest=nearest, k=12)
    assert ranking.indices.shape == (len(queries), 12)
    assert ranking.true_rank[-1].item() == NOT_RANKED  # the query without a tile
    assert_matches_plain_protocol(ranking, sim, queries, gallery, nearest, k=12)


@pytest.mark.parametrize("chunk_size", [1, 4, 33])
@pytest.mark.parametrize("nearest", [9, None])
def test_chunk_size_does_not_change_the_ranking(chunk_size, nearest):
    queries, gallery = city_names(seed=12, tiles=90, duplicates=6, strangers=1)
    sim = embeddings(len(queries), 16, seed=3) @ embeddings(len(gallery), 16, seed=4).T
    whole = rank_similarity(sim, queries, gallery, nearest=nearest, chunk_size=len(queries))
    assert_same_ranking(rank_similarity(sim, queries, gallery, nearest=nearest, chunk_size=chunk_size), whole)


@pytest.mark.parametrize("nearest", [9, None])
def test_embeddings_rank_as_their_similarity_matrix(nearest):
    queries, gallery = city_names(seed=13, tiles=90, duplicates=6, strangers=1)
    query_emb, gallery_emb = embeddings(len(queries), 32, seed=5), embeddings(len(gallery), 32, seed=6)
    from_embeddings = rank_gallery(query_emb, gallery_emb, queries, gallery, nearest=nearest, chunk_size=7)
    from_sim = rank_similarity(query_emb @ gallery_emb.T, queries, gallery, nearest=nearest)
    assert_same_ranking(from_embeddings, from_sim)
    assert summarize(from_embeddings, views(queries)) == summarize(from_sim, views(queries))


def test_nearest_set_is_exact_for_places_centimetres_apart():
    # 40 places on a line within 6 cm of the query, on both sides: their cosines to it all round
    # to 1.0, so only exact haversine distances can find the nearest ones.
    rng = random.Random(14)
    steps = [k if k % 2 else -k for k in range(1, 41)]
    crowd = [f"{-33.86 + 1e-8 * k:.8f},{151.21 + 1e-8 * k:.8f}_{k}.jpg" for k in steps]
    here = "-33.86000000,151.21000000_2022-08_here_d62_z3.jpg"
    gallery = crowd + [here] + synthetic_names(rng, 30, center=(-33.86, 151.21))
    rng.shuffle(gallery)
    queries = [here] + crowd[:6]
    sim = embeddings(len(queries), 8, seed=7) @ embeddings(len(gallery), 8, seed=8).T
    ranking = rank_similarity(sim, queries, gallery, nearest=5)
    assert_matches_plain_protocol(ranking, sim, queries, gallery, nearest=5, k=10)


@pytest.mark.parametrize("with_copies", [False, True])
def test_nearest_set_is_exact_when_distances_differ_below_the_cosine_resolution(with_copies):
    # 40 places 100 m from the query in all directions, 0.05 um apart in distance: float64
    # cosines cannot order them; haversine distances can.
    rng = random.Random(19)
    km_per_degree = 6371.0 * math.pi / 180
    ring = []
    for i in rng.sample(range(40), 40):
        distance_deg, angle = (0.1 + i * 5e-11) / km_per_degree, rng.uniform(0, 2 * math.pi)
        ring.append(f"{distance_deg * math.sin(angle):.16f},{distance_deg * math.cos(angle):.16f}_{i}.jpg")
    here = "0.0,0.0_2022-08_here_d62_z3.jpg"
    gallery = [here] + ring + synthetic_names(rng, 30, center=(0.0, 0.0))
    if with_copies:  # places holding several entries take the general path
        gallery += gallery[-3:]
    sim = embeddings(1, 8, seed=15) @ embeddings(len(gallery), 8, seed=16).T
    ranking = rank_similarity(sim, [here], gallery, nearest=5, k=5)
    assert_matches_plain_protocol(ranking, sim, [here], gallery, nearest=5, k=5)


@pytest.mark.parametrize(
    "settings",
    [
        # boxes sized for a fifth of the nearest entries: every query searches a second, larger box
        {"_BOX_FILL": 0.2},
        # boxes of about 120 entries against blocks of 64: every row is a block of its own, computed
        # outside the reused buffers
        {"_BOX_FILL": 20.0, "_DISTANCE_BLOCK": 64},
    ],
    ids=["first_boxes_too_small", "boxes_wider_than_a_block"],
)
def test_nearest_set_is_exact_whatever_the_boxes(monkeypatch, settings):
    for name, value in settings.items():
        monkeypatch.setattr(nearest_tiles, name, value)
    queries, gallery = city_names(seed=15, tiles=150, duplicates=8, strangers=1)
    sim = embeddings(len(queries), 8, seed=9) @ embeddings(len(gallery), 8, seed=10).T
    assert_matches_plain_protocol(rank_similarity(sim, queries, gallery, nearest=6), sim, queries, gallery, 6, k=10)


def test_blocks_of_rows_hold_the_block_size_or_one_row(monkeypatch):
    monkeypatch.setattr(nearest_tiles, "_DISTANCE_BLOCK", 100)
    widths = [5] * 30 + [20] * 7 + [150, 300]  # ascending, the last two wider than a block
    blocks = list(nearest_tiles._blocks(widths))
    assert [row for first, stop in blocks for row in range(first, stop)] == list(range(len(widths)))
    assert all(stop - first == 1 or (stop - first) * widths[stop - 1] <= 100 for first, stop in blocks)
    assert blocks[-2:] == [(37, 38), (38, 39)]


@pytest.mark.parametrize("tiles, nearest", [(40, 9), (300, None)])
@pytest.mark.parametrize("k", [1, 3])
def test_scores_tied_at_the_kth_place_keep_the_protocol_order(tiles, nearest, k):
    # Scores on three levels, so that the k-th and (k+1)-th best tie in most rows: both ways of
    # taking the best columns (numpy's partition on narrow rows, topk on wide ones) widen to every tie.
    queries, gallery = city_names(seed=24, tiles=tiles, duplicates=3, strangers=1)
    generator = torch.Generator().manual_seed(25)
    sim = torch.tensor([0.1, 0.2, 0.3])[torch.randint(0, 3, (len(queries), len(gallery)), generator=generator)]
    ranking = rank_similarity(sim, queries, gallery, nearest=nearest, k=k)
    assert_matches_plain_protocol(ranking, sim, queries, gallery, nearest, k=k)


def test_equal_scores_rank_the_true_tile_last_among_them():
    queries, gallery = city_names(seed=16, tiles=20, duplicates=0, strangers=1)
    ranking = rank_similarity(torch.zeros(len(queries), len(gallery)), queries, gallery, nearest=None, k=25)
    ranked = ranking.true_rank != NOT_RANKED
    assert (ranking.true_rank[ranked] == len(gallery)).all()
    assert summarize(ranking, views(queries))["all"]["R@1"] == 0.0
    for i in ranked.nonzero().squeeze(1).tolist():  # the list agrees with the rank
        assert gallery[ranking.indices[i, len(gallery) - 1]] == queries[i]


@pytest.mark.parametrize("true_ties", [False, True])
@pytest.mark.parametrize("nearest", [7, None])
def test_tied_distances_and_tied_scores_keep_the_protocol_order(nearest, true_ties):
    # Around the query at (0, 0): a place holding three tiles, pairs of tiles mirrored east and
    # west (exactly equal distances), and scores on three levels, so that both sorts meet ties.
    # With nearest=7 the cut falls inside a group of equidistant tiles.
    here = "0.0,0.0_2022-08_here_d62_z3.jpg"
    gallery = [
        "0.0,0.002_east2.jpg",
        "0.0,0.001_b.jpg",
        "0.0,-0.002_west2.jpg",
        "0.0,0.001_a.jpg",
        "0.0,0.003_east3.jpg",
        "0.0,-0.001_west1.jpg",
        here,
        "0.0,0.001_c.jpg",
        "0.0,-0.003_west3.jpg",
        "0.002,0.0_north2.jpg",
        "-0.002,0.0_south2.jpg",
    ]
    queries = [here, "0.0,0.001_a.jpg", "0.0,-0.002_west2.jpg"]
    levels = torch.tensor([0.1, 0.2, 0.3])
    generator = torch.Generator().manual_seed(20)
    sim = levels[torch.randint(0, 3, (len(queries), len(gallery)), generator=generator)]
    for i, name in enumerate(queries):  # the true tile on a level of its own, or tied with others
        sim[i, gallery.index(name)] = 0.2 if true_ties else 0.25
    ranking = rank_similarity(sim, queries, gallery, nearest=nearest, k=len(gallery))
    assert_matches_plain_protocol(ranking, sim, queries, gallery, nearest, k=len(gallery))
    assert summarize(ranking, views(queries))["all"]["count"] == len(queries)


def test_short_lists_are_padded():
    gallery = ["1.0,2.0_a.jpg", "1.0,2.001_b.jpg", "1.0,2.0_a.jpg"]
    ranking = rank_similarity(torch.tensor([[0.1, 0.5, 0.9]]), ["1.0,2.0_a.jpg"], gallery, nearest=None, k=4)
    assert ranking.indices.tolist() == [[0, 1, -1, -1]]
    assert ranking.scores[0, :2].tolist() == pytest.approx([0.9, 0.5])
    assert ranking.scores[0, 2:].tolist() == [-math.inf, -math.inf]
    assert ranking.true_rank.tolist() == [1] and ranking.top1_error_km.tolist() == [0.0]


def test_top1_error_is_the_distance_to_the_top1_tile():
    gallery = ["0.0,0.0_a.jpg", "0.0,1.0_b.jpg"]
    ranking = rank_similarity(torch.tensor([[0.1, 0.9]]), ["0.0,0.0_a.jpg"], gallery, nearest=None)
    assert ranking.true_rank.tolist() == [2]
    assert ranking.top1_error_km.item() == pytest.approx(6371.0 * math.pi / 180, rel=1e-12)


@pytest.mark.parametrize("tiles", [20, 300])  # narrow rows (numpy's partition), then wide (topk)
def test_nan_scores_are_refused(tiles):
    queries, gallery = ["0.0,0.0_a.jpg"], ["0.0,0.0_a.jpg"] + [f"0.0,{i / 1000}_b{i}.jpg" for i in range(1, tiles)]
    sim = torch.linspace(0.1, 0.9, tiles)[None]  # distinct scores: no ties to widen the best
    sim[0, tiles // 2] = math.nan
    with pytest.raises(ValueError, match="NaN"):
        rank_similarity(sim, queries, gallery, nearest=None, k=1)


def test_mismatched_names_are_refused():
    with pytest.raises(ValueError, match="shape"):
        rank_similarity(torch.zeros(2, 3), ["0.0,0.0_a.jpg"], ["0.0,0.0_a.jpg"] * 3)


def test_reduced_precision_embeddings_keep_their_dtype():
    queries, gallery = city_names(seed=17, tiles=30, duplicates=2, strangers=1)
    query_emb, gallery_emb = embeddings(len(queries), 16, seed=11), embeddings(len(gallery), 16, seed=12)
    ranking = rank_gallery(query_emb.bfloat16(), gallery_emb.bfloat16(), queries, gallery, nearest=10)
    assert ranking.scores.dtype == torch.bfloat16
    # ranked by the bfloat16 similarities themselves, as the plain protocol ranks them
    sim = query_emb.bfloat16() @ gallery_emb.bfloat16().T
    assert_matches_plain_protocol(ranking, sim.float(), queries, gallery, 10, k=ranking.indices.shape[1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_ranks_as_cpu():
    queries, gallery = city_names(seed=18, tiles=200, duplicates=10, strangers=1)
    query_emb = embeddings(len(queries), 64, seed=13).double()
    gallery_emb = embeddings(len(gallery), 64, seed=14).double()
    for nearest in (20, None):
        on_cpu = rank_gallery(query_emb, gallery_emb, queries, gallery, nearest=nearest)
        on_cuda = rank_gallery(query_emb.cuda(), gallery_emb.cuda(), queries, gallery, nearest=nearest, chunk_size=16)
        assert_same_ranking(on_cuda, on_cpu)
