"""Nearest tiles for text queries in a gallery index: exact search, or a faiss index.

Embeddings are L2-normalised, so the inner product is the cosine similarity and every index
here searches by inner product. ``exact`` is a chunked matrix product and the reference the
approximate ones are measured against.
"""

from __future__ import annotations

import math

import torch

from cvgtext.commands.queries import INDEXES, check_index_name
from cvgtext.utils.errors import ConfigError

_CHUNK_ELEMENTS = 1 << 26  # scores per query chunk: 256 MiB of float32


@torch.inference_mode()
def exact_search(query_emb: torch.Tensor, gallery_emb: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scores, indices)``, each ``[queries, min(k, gallery)]``, best first."""
    k = min(k, gallery_emb.shape[0])
    rows = max(1, _CHUNK_ELEMENTS // max(1, gallery_emb.shape[0]))
    parts = [(chunk @ gallery_emb.T).topk(k, dim=1) for chunk in query_emb.split(rows)]
    return torch.cat([p.values for p in parts]), torch.cat([p.indices for p in parts])


class SearchIndex:
    """A searchable gallery: :meth:`search` returns ``(scores, indices)`` as :func:`exact_search` does."""

    def __init__(self, name: str, gallery_emb: torch.Tensor, **options):
        check_index_name(name)
        self.name = name
        self.size = gallery_emb.shape[0]
        self.gallery = gallery_emb.float().contiguous()
        self.faiss_index = None if name == "exact" else build_faiss_index(name, self.gallery, **options)

    @property
    def approximate(self) -> bool:
        return self.name in ("faiss_hnsw", "faiss_ivfpq")

    def search(self, query_emb: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.faiss_index is None:
            return exact_search(query_emb.float(), self.gallery, k)
        k = min(k, self.size)
        scores, indices = self.faiss_index.search(query_emb.float().contiguous().numpy(), k)
        scores = torch.from_numpy(scores)
        if self.name == "faiss_hnsw":  # squared L2 of unit vectors -> inner product
            scores = 1 - scores / 2
        return scores, torch.from_numpy(indices).long()


def import_faiss():
    try:
        import faiss
    except ImportError:
        raise ConfigError(
            "the faiss indexes need faiss-cpu: pip install 'cvgtext[faiss]' (or faiss-cpu), or use index=exact"
        ) from None
    return faiss


def build_faiss_index(
    name: str,
    gallery_emb: torch.Tensor,
    hnsw_m: int = 32,
    ef_construction: int = 64,
    ef_search: int = 256,
    nlist: int | None = None,
    nprobe: int = 32,
    pq_bytes: int | None = None,
    refine: int = 100,
    train_size: int = 25_000,
):
    """A trained faiss index of ``gallery_emb  # [tiles, dim]`` searched by inner product.

    - ``faiss_flat``: exhaustive, exact up to float rounding.
    - ``faiss_hnsw``: a graph of ``hnsw_m`` links a node, built with ``ef_construction`` and
      searched with ``ef_search`` candidates.
    - ``faiss_ivfpq``: ``nlist`` inverted lists (default about sqrt(tiles)), ``nprobe`` of them
      searched, vectors compressed to ``pq_bytes`` bytes (default dim / 8), trained on
      ``train_size`` tiles drawn at random; a shortlist of ``refine`` times k is re-ranked with
      the exact vectors (``IndexRefineFlat``).
    """
    faiss = import_faiss()
    vectors = gallery_emb.float().contiguous().numpy()
    tiles, dim = vectors.shape
    if name == "faiss_flat":
        index = faiss.IndexFlatIP(dim)
    elif name == "faiss_hnsw":
        # On unit vectors L2 ranks as the inner product does, and faiss's graph search is built
        # for L2: with METRIC_INNER_PRODUCT it finds far fewer of the true neighbours.
        index = faiss.IndexHNSWFlat(dim, hnsw_m)
        index.hnsw.efConstruction = ef_construction
        index.hnsw.efSearch = ef_search
    elif name == "faiss_ivfpq":
        nlist = nlist or max(1, min(tiles // 39, int(math.sqrt(tiles))))
        pq_bytes = pq_bytes or _largest_divisor(dim, max(1, dim // 8))
        quantizer = faiss.IndexFlatIP(dim)
        bits = 8 if tiles >= 256 * 39 else 4  # k-means wants about 39 tiles per centroid
        ivf = faiss.IndexIVFPQ(quantizer, dim, nlist, pq_bytes, bits, faiss.METRIC_INNER_PRODUCT)
        ivf.pq.cp.niter = 10  # the refine step repairs what more k-means rounds would gain
        sample = torch.randperm(tiles, generator=torch.Generator().manual_seed(0))[:train_size].sort().values
        ivf.train(vectors[sample.numpy()])
        ivf.nprobe = min(nprobe, nlist)
        index = faiss.IndexRefineFlat(ivf)
        index.k_factor = refine
        index.add(vectors)
        return index
    else:
        raise ConfigError(f"index={name!r} is not one of {', '.join(INDEXES[1:])}")
    index.add(vectors)
    return index


def _largest_divisor(dim: int, at_most: int) -> int:
    """The largest divisor of ``dim`` not above ``at_most`` (product quantizers split dim evenly)."""
    return max(d for d in range(1, at_most + 1) if dim % d == 0)
