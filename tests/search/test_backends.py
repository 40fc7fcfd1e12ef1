"""Searching a gallery index: exact, and the faiss indexes measured against it."""

from __future__ import annotations

import pytest
import torch

from cvgtext.search.backends import SearchIndex, exact_search
from cvgtext.utils.errors import ConfigError


def unit_vectors(count: int, dim: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(count, dim, generator=generator), dim=1)


def test_exact_search_is_the_top_k_of_the_full_product_whatever_the_chunks(monkeypatch):
    import cvgtext.search.backends

    gallery, queries = unit_vectors(500, 32, 0), unit_vectors(40, 32, 1)
    expected = (queries @ gallery.T).topk(7, dim=1)
    monkeypatch.setattr(cvgtext.search.backends, "_CHUNK_ELEMENTS", 3 * 500)  # chunks of 3 queries
    scores, indices = exact_search(queries, gallery, 7)
    assert torch.equal(indices, expected.indices) and torch.allclose(scores, expected.values)
    assert exact_search(queries, gallery[:4], 10)[1].shape == (40, 4)  # k beyond the gallery


def test_an_unknown_index_is_named():
    with pytest.raises(ConfigError, match="index='annoy' is not one of exact, faiss_flat, faiss_hnsw, faiss_ivfpq"):
        SearchIndex("annoy", unit_vectors(10, 8, 0))


def recall_at(k: int, found: torch.Tensor, expected: torch.Tensor) -> float:
    return sum(len(set(f.tolist()) & set(e.tolist())) for f, e in zip(found, expected)) / expected.numel()


@pytest.mark.parametrize("name, least_recall", [("faiss_flat", 1.0), ("faiss_hnsw", 0.9), ("faiss_ivfpq", 0.9)])
def test_faiss_indexes_find_what_exact_search_finds(name, least_recall):
    pytest.importorskip("faiss")
    # A clustered gallery, as tiles of one city are: queries near some of its tiles.
    generator = torch.Generator().manual_seed(0)
    centres = unit_vectors(50, 64, 1)
    gallery = torch.nn.functional.normalize(
        centres[torch.randint(0, 50, (4000,), generator=generator)]
        + 0.3 * torch.randn(4000, 64, generator=generator) / 8,
        dim=1,
    )
    queries = torch.nn.functional.normalize(gallery[:100] + 0.05 * torch.randn(100, 64, generator=generator), dim=1)
    expected_scores, expected = exact_search(queries, gallery, 10)
    index = SearchIndex(name, gallery)
    scores, found = index.search(queries, 10)
    assert found.shape == (100, 10) and found.dtype == torch.long
    assert recall_at(10, found, expected) >= least_recall
    assert index.approximate == (name != "faiss_flat")
    if name == "faiss_flat":
        assert torch.allclose(scores, expected_scores, atol=1e-5)


@pytest.mark.slow
def test_locate_with_a_faiss_index(release_dir, tmp_path):
    pytest.importorskip("faiss")
    from helpers.city import repaint_tiles
    from helpers.models import tiny_checkpoint
    from helpers.runs import run_locate

    repaint_tiles(release_dir)
    checkpoint = tiny_checkpoint(tmp_path / "model.ckpt", seed=1)
    exact = run_locate(tmp_path, release_dir, f"ckpt_path={checkpoint}", "query=a red roof", "draw=false")
    flat = run_locate(
        tmp_path, release_dir, f"ckpt_path={checkpoint}", "query=a red roof", "draw=false", "index=faiss_flat"
    )
    assert [c.file for c in flat[0].candidates] == [c.file for c in exact[0].candidates]
