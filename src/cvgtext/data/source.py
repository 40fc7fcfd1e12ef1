"""Where a run's pairs come from: one interface for the two sources, chosen once by ``data.format``.

- :class:`~cvgtext.data.folders.FolderSource` (``folders``): the release layout's annotation files
  and image folders, with random or geographic batches, image checks and the decoded-tile cache.
- :class:`~cvgtext.data.shards.source.ShardSource` (``shards``): ``pack.py``'s WebDataset shards,
  read as a stream from a folder or a URL.

The datamodule asks a source for the checked pairs of every split once (:meth:`PairSource.splits`),
then for the dataset and the loader of a split (:meth:`PairSource.dataset`,
:meth:`PairSource.loader`), telling it how this run reads (:class:`Reading`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from torch.utils.data import DataLoader, Dataset

from cvgtext.data.annotations import Pair

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Reading:
    """How this run reads a split: the model's preprocessing and tokenizer, the loader settings,
    and where the trainer stands (rank, world size, the epoch the training loop is in)."""

    preprocess: Callable
    tokenizer: Callable
    on_bad_image: str = "raise"
    num_workers: int = 0
    pin_memory: bool = False
    seed: int = 0
    shuffle: bool = True  # shuffle the training pairs (from the seed and the epoch)
    rank: int = 0
    world_size: int = 1
    epoch_now: Callable[[], int] | None = None  # the training loop's epoch; None without a trainer
    images: bool = True  # False: captions only (the gallery's embeddings are known)
    encoded: bool = False  # items carry the image files' bytes, decoded on the device


class PairSource(Protocol):
    """The pairs of a city's splits, and the datasets and loaders that read them."""

    format: str
    # the reasons of the training pairs left out before training (data.verify_images with skip)
    left_out: list[str]

    def prepare(self) -> None:
        """What must exist before the pairs are read (the synthetic city is generated here)."""

    def splits(self) -> dict[str, list[Pair]]:
        """Every split's pairs (``train``, ``val``, ``test``), read and checked."""

    def setup(self, splits: dict[str, list[Pair]], preprocess: Callable | None, trainer: Any) -> None:
        """Prepare reading ``splits`` (the decoded-tile cache), once every process has them."""

    def dataset(self, split: str, pairs: list[Pair], reading: Reading, batch_size: int) -> Dataset:
        """The items of ``split``, as ``PairDataset`` gives them."""

    def loader(self, split: str, pairs: list[Pair], reading: Reading, batch_size: int) -> DataLoader:
        """Batches of ``split`` for this process: training batches, or an evaluation split whole."""
