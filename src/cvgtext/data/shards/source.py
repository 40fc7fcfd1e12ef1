"""Pairs read from ``pack.py``'s WebDataset shards as a stream (``data.format=shards``).

The shards' manifest gives every split's pairs (names, captions, places) before any image is
read; each process then streams whole shards in order and decodes only its own samples (see
``read.py`` for the plan). What a stream cannot do is refused by the datamodule: geographic
batches and image checks need random access to the city's images.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cvgtext.data.annotations import Pair
from cvgtext.data.dataset import collate_pairs
from cvgtext.data.shards.read import ShardLoader, ShardStore, ShardStream
from cvgtext.data.source import SPLITS, Reading
from cvgtext.utils.errors import ConfigError

log = logging.getLogger(__name__)


class ShardSource:
    """The pairs of ``city`` packed under ``location`` (a folder or a URL holding ``manifest.json``).

    The shards must have been packed with the run's ``versions``, ``image_folder`` and
    ``val_fraction``: their splits were fixed when they were packed. Tiles that the reports
    draw are extracted into ``cache_dir/shard-tiles/``. Training samples are shuffled within
    windows of ``shuffle_window`` per loader worker.
    """

    format = "shards"

    def __init__(
        self,
        location: str,
        city: str,
        versions: Sequence[str],
        image_folder: str,
        val_fraction: float,
        cache_dir: str | Path | None = None,
        shuffle_window: int = 1000,
    ):
        self.location, self.city = str(location), city
        self.versions, self.image_folder, self.val_fraction = list(versions), image_folder, val_fraction
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.shuffle_window = shuffle_window
        self.left_out: list[str] = []
        self.store: ShardStore | None = None

    def prepare(self) -> None:
        pass

    def splits(self) -> dict[str, list[Pair]]:
        """The pairs of every split, from the shards' manifest and pairs files."""
        if self.store is None:
            tile_dir = self.cache_dir / "shard-tiles" / self.city if self.cache_dir else None
            self.store = ShardStore(self.location, tile_dir=tile_dir)
        manifest = self.store.manifest
        if manifest.get("city") != self.city:
            raise ConfigError(f"data.shards={self.location} holds {manifest.get('city')}, not city {self.city}")
        ours = {"val_fraction": self.val_fraction, "versions": self.versions, "image_folder": self.image_folder}
        for key, value in ours.items():
            if key in manifest and manifest[key] != value:
                raise ConfigError(
                    f"data.shards={self.location} was packed with {key}={manifest[key]!r}, this run asks for "
                    f"{value!r} (data.{key}, or the img / text choice): pack the city again with these settings"
                )
        splits = {split: self.store.pairs(split) for split in SPLITS}
        log.info(
            "%s from shards %s: %s",
            self.city,
            self.location,
            ", ".join(f"{split} {len(pairs)}" for split, pairs in splits.items()),
        )
        return splits

    def setup(self, splits: dict[str, list[Pair]], preprocess: Callable | None, trainer: Any) -> None:
        pass

    def dataset(self, split: str, pairs: list[Pair], reading: Reading, batch_size: int = 1) -> ShardStream:
        """A stream of ``split``'s shards: this process's share of the training samples, or an
        evaluation split read whole."""
        return ShardStream(
            self.store,
            split,
            pairs,
            reading.preprocess,
            reading.tokenizer,
            batch_size,
            reading.rank,
            reading.world_size,
            seed=reading.seed,
            shuffle=reading.shuffle,
            window=self.shuffle_window,
            training=split == "train",
            images=reading.images,
            on_bad_image=reading.on_bad_image,
            encoded=reading.encoded,
        )

    def loader(self, split: str, pairs: list[Pair], reading: Reading, batch_size: int) -> ShardLoader:
        training = split == "train"
        return ShardLoader(
            self.dataset(split, pairs, reading, batch_size),
            epoch_now=reading.epoch_now if training else None,
            batch_size=batch_size,
            num_workers=reading.num_workers,
            pin_memory=reading.pin_memory,
            collate_fn=collate_pairs if training else None,
        )
