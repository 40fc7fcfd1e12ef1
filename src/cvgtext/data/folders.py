"""Pairs read from the release layout's folders (``data.format=folders``, the default).

    {data_dir}/annotation/{version}/{train,test}.json     {file_name: caption}
    {data_dir}/reference/{version}-satellite/{file_name}  (or -OSM; query/{version}-ground for street views)

Each version's annotation files are read and checked, and each caption linked to its image; the
release has no validation split, so ``val`` is carved out of ``train`` by a hash of the file name.
``verify_images`` checks every image up front; ``cache`` decodes every image once into the
decoded-tile cache. Training batches are random or geographic (``sampler``), the same for a
given seed and epoch, and resumable mid-epoch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, DistributedSampler

from cvgtext.data.annotations import Pair, check_test_names_unseen, in_validation, load_pairs
from cvgtext.data.dataset import PairDataset, collate_pairs
from cvgtext.data.release.facts import KNOWN_ORPHANS
from cvgtext.data.sampler import GeoBatchSampler, ResumableLoader, SeededBatchSampler
from cvgtext.data.source import Reading
from cvgtext.data.verify import unreadable_images
from cvgtext.utils.errors import ConfigError, DataError

log = logging.getLogger(__name__)


class FolderSource:
    """The pairs of ``versions`` of ``city`` under ``data_dir``, in the release layout.

    ``synthetic``, when given, is the generator's arguments: the city is generated into
    ``data_dir`` on first use. ``on_bad_image="skip"`` lets a missing training image leave its
    pair out; ``verify_images`` (``off``, ``header``, ``full``) lists every unreadable image of
    every split in one message, or with ``skip`` leaves the training pairs among them out up
    front (``left_out`` names them). ``sampler`` (``random`` or ``geo``, a share
    ``geo_fraction`` of geographic batches) chooses the training batches.
    """

    format = "folders"

    def __init__(
        self,
        data_dir: str | Path,
        city: str,
        versions: Sequence[str],
        image_folder: str,
        annotation_file: str,
        val_fraction: float,
        on_bad_image: str = "raise",
        verify_images: str = "off",
        synthetic: dict[str, Any] | None = None,
        cache: bool = False,
        cache_dir: str | Path | None = None,
        sampler: str = "random",
        geo_fraction: float = 1.0,
    ):
        self.data_dir = Path(data_dir)
        self.city, self.versions = city, list(versions)
        self.image_folder, self.annotation_file = image_folder, annotation_file
        self.val_fraction = val_fraction
        self.on_bad_image, self.verify_images = on_bad_image, verify_images
        self.synthetic = dict(synthetic) if synthetic else None
        self.cache, self.cache_dir = cache, Path(cache_dir) if cache_dir else None
        self.sampler, self.geo_fraction = sampler, geo_fraction
        self.left_out: list[str] = []
        self.tiles = None  # the TileCache of every split's images, with cache=True

    def prepare(self) -> None:
        if self.synthetic is not None:
            from cvgtext.data.synthetic.city import ensure_city

            ensure_city(self.data_dir, name=self.city, **self.synthetic)

    def image_dir(self, version: str) -> Path:
        """The gallery folder of one text version."""
        return self.data_dir / self.image_folder.format(version=version, city=self.city)

    def splits(self) -> dict[str, list[Pair]]:
        return self.verified(self.read_splits())

    def read_splits(self) -> dict[str, list[Pair]]:
        """All pairs of the configured versions, by split; checks files, names and images' presence.

        Also refuses an image annotated for both training and test (``check_test_names_unseen``).
        """
        if self.synthetic is None and not self.data_dir.is_dir():
            raise DataError(
                f"data folder {self.data_dir} does not exist; point paths.data_dir at the CVG-Text "
                "download (the folder holding annotation/, reference/ and query/)"
            )
        splits: dict[str, list[Pair]] = {"train": [], "val": [], "test": []}
        annotated_in: dict[str, dict[str, Path]] = {"train": {}, "test": {}}  # source -> name -> annotation file
        for version in self.versions:
            for source in ("train", "test"):
                path = self.data_dir / self.annotation_file.format(version=version, split=source, city=self.city)
                # A missing training image may be skipped; a missing test tile would change the gallery.
                missing = self.on_bad_image if source == "train" else "raise"
                known = KNOWN_ORPHANS.get(self.city, ()) if source == "train" else ()
                for pair in load_pairs(path, self.image_dir(version), missing, known):
                    annotated_in[source].setdefault(pair.name, path)
                    if source == "test":
                        splits["test"].append(pair)
                    else:
                        splits["val" if in_validation(pair.name, self.val_fraction) else "train"].append(pair)
        check_test_names_unseen(annotated_in["train"], annotated_in["test"])
        for split, pairs in splits.items():
            if not pairs:
                carved = ""
                if split == "val":
                    carved = (
                        f": validation is carved out of train by a hash of each file name "
                        f"(data.val_fraction={self.val_fraction} of {len(splits['train'])} training pairs "
                        "took none); raise data.val_fraction"
                    )
                raise DataError(
                    f"the {split} split of {self.city} ({', '.join(self.versions)}) in {self.data_dir} is empty{carved}"
                )
        log.info(
            "%s %s: %s",
            self.city,
            "+".join(self.versions),
            ", ".join(f"{split} {len(pairs)}" for split, pairs in splits.items()),
        )
        return splits

    def verified(self, splits: dict[str, list[Pair]]) -> dict[str, list[Pair]]:
        """``splits`` after ``verify_images``: raises listing every unreadable image, or leaves
        the training pairs among them out with ``on_bad_image="skip"``."""
        bad = unreadable_images((pair.image_path for pairs in splits.values() for pair in pairs), self.verify_images)
        if not bad:
            return splits
        in_training = {pair.image_path for pair in splits["train"]}
        needed = {path: reason for path, reason in bad.items() if path not in in_training}
        if self.on_bad_image == "raise" or needed:
            listed = bad if self.on_bad_image == "raise" else needed
            advice = (
                "; replace them, or set data.on_bad_image=skip to leave training pairs out"
                if self.on_bad_image == "raise"
                else "; validation and test need every image"
            )
            raise DataError(
                f"{len(listed)} images of {self.city} cannot be used (data.verify_images={self.verify_images}): "
                + "; ".join(listed.values())
                + advice
            )
        self.left_out = sorted(bad.values())
        log.warning(
            "data.verify_images=%s: left %d training pairs out (data.on_bad_image=skip): %s",
            self.verify_images,
            len(self.left_out),
            "; ".join(self.left_out),
        )
        return {**splits, "train": [pair for pair in splits["train"] if pair.image_path not in bad]}

    def setup(self, splits: dict[str, list[Pair]], preprocess: Callable | None, trainer: Any) -> None:
        """With ``cache``: every split's images decoded once; under several processes the first
        builds the cache while the others wait, then they open it."""
        if not self.cache or self.tiles is not None:
            return
        from cvgtext.data.tile_cache import open_or_build

        if preprocess is None:
            raise ConfigError("the datamodule needs the backbone's preprocess to cache the tiles")
        paths = [pair.image_path for pairs in splits.values() for pair in pairs]
        if trainer is None or trainer.world_size == 1:
            self.tiles = open_or_build(self.cache_dir, paths, preprocess)
            return
        tiles = open_or_build(self.cache_dir, paths, preprocess) if trainer.is_global_zero else None
        trainer.strategy.barrier("tile_cache")
        self.tiles = tiles or open_or_build(self.cache_dir, paths, preprocess, build=False)

    def dataset(self, split: str, pairs: list[Pair], reading: Reading, batch_size: int = 1) -> PairDataset:
        return PairDataset(
            pairs,
            reading.preprocess,
            reading.tokenizer,
            split,
            reading.on_bad_image,
            images=reading.images,
            tiles=self.tiles,
            encoded=reading.encoded,
        )

    def loader(self, split: str, pairs: list[Pair], reading: Reading, batch_size: int) -> DataLoader:
        dataset = self.dataset(split, pairs, reading)
        if split != "train":
            return DataLoader(
                dataset,
                batch_size=batch_size,
                shuffle=False,
                num_workers=reading.num_workers,
                pin_memory=reading.pin_memory,
                persistent_workers=reading.num_workers > 0,
            )
        # The DistributedSampler only carries rank, world size and epoch to the batch sampler;
        # under DDP Lightning swaps in its own (same rank, its set_epoch called each epoch).
        ranks = DistributedSampler(dataset, num_replicas=reading.world_size, rank=reading.rank, shuffle=False)
        coordinates = [(pair.lat, pair.lon) for pair in pairs]
        if self.sampler == "geo":
            batch_sampler = GeoBatchSampler(
                ranks,
                coordinates,
                batch_size,
                seed=reading.seed,
                geo_fraction=self.geo_fraction,
                epoch_now=reading.epoch_now,
            )
        else:
            batch_sampler = SeededBatchSampler(
                ranks, coordinates, batch_size, seed=reading.seed, shuffle=reading.shuffle, epoch_now=reading.epoch_now
            )
        return ResumableLoader(
            dataset,
            batch_sampler=batch_sampler,
            num_workers=reading.num_workers,
            pin_memory=reading.pin_memory,
            persistent_workers=reading.num_workers > 0,
            collate_fn=collate_pairs,
            # Worker seeds come from this generator, not from the global one: creating the
            # loader's iterator then draws nothing that training would otherwise have drawn.
            generator=torch.Generator().manual_seed(reading.seed),
        )
