"""The LightningDataModule of one city, gallery type and text version, in the CVG-Text layout.

    {data_dir}/annotation/{version}/{train,test}.json     {file_name: caption}
    {data_dir}/reference/{version}-satellite/{file_name}  (or -OSM; query/{version}-ground for street views)

``versions`` lists the text versions read together: ``[{city}]`` for panorama texts,
``[{city}-photos]`` for single-view texts, both for ``mixed``. The release has no validation
split; ``val`` is carved out of ``train`` by a hash of the file name. ``test`` is only reported.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, DistributedSampler

from cvgtext.data.annotations import Pair, check_test_names_unseen, in_validation, load_pairs
from cvgtext.data.dataset import BAD_IMAGE_POLICIES, PairDataset, collate_pairs, needs_every_image, no_image_decoded
from cvgtext.data.device_decode import DevicePreprocess, check_decode, decode_on_device
from cvgtext.data.sampler import GeoBatchSampler, ResumableLoader, SeededBatchSampler
from cvgtext.data.verify import VERIFY_LEVELS, unreadable_images
from cvgtext.utils.errors import ConfigError, DataError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
SAMPLERS = ("random", "geo")
FORMATS = ("folders", "shards")


class CVGTextDataModule(L.LightningDataModule):
    """Batches of captions and their gallery images for ``train``, ``val`` and ``test``.

    ``batch_size`` is global: each of the ``world_size`` devices loads ``batch_size / world_size``.
    ``synthetic``, when given, is the generator's arguments: the city is generated into
    ``data_dir`` on first use. ``sampler`` chooses the training batches: ``random`` (shuffled)
    or ``geo`` (places near each other, a share ``geo_fraction`` of them; see ``sampler.py``),
    deterministic given ``seed`` and the epoch. ``on_bad_image`` is what an image that cannot be
    decoded does: ``raise`` stops the run, ``skip`` leaves the pair out of its training batch
    (see ``dataset.py``). ``verify_images`` (``off``, ``header`` or ``full``) checks every image
    of every split before training and lists all unreadable ones in one message; with
    ``on_bad_image="skip"`` the training pairs among them are left out up front instead
    (``left_out`` names them).
    """

    def __init__(
        self,
        data_dir: str | Path,
        city: str,
        versions: Sequence[str] = ("{city}", "{city}-photos"),
        image_folder: str = "reference/{version}-satellite",
        annotation_file: str = "annotation/{version}/{split}.json",
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        val_fraction: float = 0.1,
        pin_memory: bool = False,
        synthetic: dict[str, Any] | None = None,
        sampler: str = "random",
        geo_fraction: float = 1.0,
        seed: int | None = None,
        on_bad_image: str = "raise",
        verify_images: str = "off",
        cache: bool = False,
        cache_dir: str | Path | None = None,
        format: str = "folders",
        shards: str | Path | None = None,
        shuffle: bool = True,
        shuffle_window: int = 1000,
        decode: str = "cpu",
        preprocess: Callable | None = None,
        tokenizer: Callable | None = None,
    ):
        super().__init__()
        if not 0.0 < val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction={val_fraction} must lie strictly between 0 and 1")
        if batch_size < 1:
            raise ConfigError(f"data.batch_size={batch_size} must be a positive integer")
        if sampler not in SAMPLERS:
            raise ConfigError(f"data.sampler={sampler!r} is not one of {', '.join(SAMPLERS)}")
        if not 0.0 <= geo_fraction <= 1.0:
            raise ConfigError(f"data.geo_fraction={geo_fraction} must lie in [0, 1]")
        if on_bad_image not in BAD_IMAGE_POLICIES:
            raise ConfigError(f"data.on_bad_image={on_bad_image!r} is not one of {', '.join(BAD_IMAGE_POLICIES)}")
        if verify_images is False:  # YAML reads an unquoted off as false
            verify_images = "off"
        if verify_images not in VERIFY_LEVELS:
            raise ConfigError(f"data.verify_images={verify_images!r} is not one of {', '.join(VERIFY_LEVELS)}")
        self.data_dir = Path(data_dir)
        self.city = city
        self.versions = [template.format(city=city) for template in versions]
        self.image_folder = image_folder
        self.annotation_file = annotation_file
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.val_fraction = val_fraction
        self.pin_memory = pin_memory
        self.synthetic = dict(synthetic) if synthetic else None
        self.sampler = sampler
        self.geo_fraction = geo_fraction
        self.seed = seed or 0
        self.on_bad_image = on_bad_image
        self.verify_images = verify_images
        self.left_out: list[str] = []  # reasons of the training pairs verify_images left out
        if format not in FORMATS:
            raise ConfigError(f"data.format={format!r} is not one of {', '.join(FORMATS)}")
        if format == "shards":
            refused = {
                "data.shards=null": not shards,
                f"data.sampler={sampler}": sampler == "geo",
                f"data.verify_images={verify_images}": verify_images != "off",
            }
            for setting, bad in refused.items():
                if bad:
                    raise ConfigError(
                        f"data.format=shards with {setting}: "
                        + (
                            "give data.shards, the folder or URL holding pack.py's manifest.json"
                            if setting.startswith("data.shards")
                            else "a stream reads shards in order, without random access to the city's images; "
                            "use data.format=folders for it"
                        )
                    )
            if cache:
                log.info("data.cache does not apply to data.format=shards: the stream decodes each tile")
                cache = False
        if check_decode(decode) == "device" and cache:
            log.info("data.cache does not apply with data.decode=device: the device decodes each tile")
            cache = False
        if isinstance(shuffle_window, bool) or not isinstance(shuffle_window, int) or shuffle_window < 1:
            raise ConfigError(f"data.shuffle_window={shuffle_window!r} must be a positive number of samples")
        if cache and not cache_dir:
            raise ConfigError("data.cache=true needs paths.cache_dir: the folder the decoded tiles are stored in")
        self.cache = bool(cache)
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.tiles = None  # the TileCache of every split's images, with data.cache=true
        self.format = format
        self.shards = str(shards) if shards else None
        self.shuffle = bool(shuffle)
        self.shuffle_window = shuffle_window
        self.store = None  # the ShardStore, with data.format=shards
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        # data.decode=device: loaders carry the image files' bytes, decoded once the batch is on the device
        self.decode = decode
        self.device_preprocess = DevicePreprocess(preprocess) if decode == "device" and preprocess else None
        self.pairs: dict[str, list[Pair]] = {}
        # Splits evaluated against a gallery whose embeddings are known: their loaders read no image.
        self.captions_only: set[str] = set()

    def prepare_data(self) -> None:
        if self.synthetic is not None:
            from cvgtext.data.synthetic.city import ensure_city

            ensure_city(self.data_dir, name=self.city, **self.synthetic)

    def setup(self, stage: str | None = None) -> None:
        """Read and check every split at once, so a broken test file stops the run before training."""
        if not self.pairs:
            self.pairs = self.read_splits() if self.format == "shards" else self.verified(self.read_splits())
        if stage == "fit":
            self.check_trainable()
        if self.cache and self.tiles is None:
            self.tiles = self.tile_cache()
        self.per_device_batch_size = self._per_device(self.batch_size, "data.batch_size")
        self.per_device_eval_batch_size = self._per_device(self.eval_batch_size, "data.eval_batch_size")

    def read_splits(self) -> dict[str, list[Pair]]:
        """All pairs of the configured versions, by split; checks files, names and images.

        Also refuses an image annotated for both training and test (``check_test_names_unseen``).
        With ``format="shards"`` they come from the shards' manifest instead.
        """
        if self.format == "shards":
            return self.shard_splits()
        if self.synthetic is None and not self.data_dir.is_dir():
            raise DataError(
                f"data folder {self.data_dir} does not exist; point paths.data_dir at the CVG-Text "
                "download (the folder holding annotation/, reference/ and query/)"
            )
        splits: dict[str, list[Pair]] = {"train": [], "val": [], "test": []}
        annotated_in: dict[str, dict[str, Path]] = {"train": {}, "test": {}}  # source -> name -> annotation file
        for version in self.versions:
            image_dir = self.data_dir / self.image_folder.format(version=version, city=self.city)
            for source in ("train", "test"):
                path = self.data_dir / self.annotation_file.format(version=version, split=source, city=self.city)
                # A missing training image may be skipped; a missing test tile would change the gallery.
                missing = self.on_bad_image if source == "train" else "raise"
                for pair in load_pairs(path, image_dir, missing):
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

    def shard_splits(self) -> dict[str, list[Pair]]:
        """The pairs of every split from the shards of ``data.shards``."""
        from cvgtext.data.streams import ShardStore

        if self.store is None:
            tile_dir = self.cache_dir / "shard-tiles" / self.city if self.cache_dir else None
            self.store = ShardStore(self.shards, tile_dir=tile_dir)
        manifest = self.store.manifest
        if manifest.get("city") != self.city:
            raise ConfigError(f"data.shards={self.shards} holds {manifest.get('city')}, not city {self.city}")
        ours = {"val_fraction": self.val_fraction, "versions": self.versions, "image_folder": self.image_folder}
        for key, value in ours.items():
            if key in manifest and manifest[key] != value:
                raise ConfigError(
                    f"data.shards={self.shards} was packed with {key}={manifest[key]!r}, this run asks for "
                    f"{value!r} (data.{key}, or the img / text choice): pack the city again with these settings"
                )
        splits = {split: self.store.pairs(split) for split in SPLITS}
        log.info(
            "%s from shards %s: %s",
            self.city,
            self.shards,
            ", ".join(f"{split} {len(pairs)}" for split, pairs in splits.items()),
        )
        return splits

    def shard_loader(self, split: str, batch_size: int) -> DataLoader:
        """A stream of ``split``'s shards (training, or an evaluation split read whole)."""
        from cvgtext.data.streams import ShardLoader, ShardStream

        if not self.pairs:
            self.setup()
        rank, world_size = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        training = split == "train"
        stream = ShardStream(
            self.store,
            split,
            self.pairs[split],
            self.preprocess,
            self.tokenizer,
            batch_size,
            rank,
            world_size,
            seed=self.seed,
            shuffle=self.shuffles_training,
            window=self.shuffle_window,
            training=training,
            images=split not in self.captions_only,
            on_bad_image=self.on_bad_image,
            encoded=self.device_preprocess is not None,
        )
        return ShardLoader(
            stream,
            epoch_now=self._training_epoch if training and self.trainer is not None else None,
            batch_size=batch_size,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            collate_fn=collate_pairs if training else None,
        )

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

    def tile_cache(self):
        """Every split's images decoded once (``data.cache=true``); under several processes the
        first builds it while the others wait, then they open it."""
        from cvgtext.data.tile_cache import open_or_build

        if self.preprocess is None:
            raise ConfigError("the datamodule needs the backbone's preprocess to cache the tiles")
        paths = [pair.image_path for pairs in self.pairs.values() for pair in pairs]
        trainer = self.trainer
        if trainer is None or trainer.world_size == 1:
            return open_or_build(self.cache_dir, paths, self.preprocess)
        tiles = open_or_build(self.cache_dir, paths, self.preprocess) if trainer.is_global_zero else None
        trainer.strategy.barrier("tile_cache")
        return tiles or open_or_build(self.cache_dir, paths, self.preprocess, build=False)

    def check_trainable(self) -> None:
        """Refuse a training split that does not fill one global batch: it would train nothing."""
        size = len(self.pairs["train"])
        if size < self.batch_size:
            raise ConfigError(
                f"the train split of {self.city} ({', '.join(self.versions)}) has {size} pairs, fewer than "
                f"data.batch_size={self.batch_size}: there is no whole batch to train on (a padded batch "
                f"would make a pair its own negative); set data.batch_size to at most {size}"
            )

    def _training_epoch(self) -> int:
        """The epoch the training loop is in: the number of epochs it has finished."""
        return self.trainer.fit_loop.epoch_progress.current.processed

    def _per_device(self, batch_size: int, key: str) -> int:
        world_size = self.trainer.world_size if self.trainer is not None else 1
        if batch_size % world_size:
            raise ConfigError(
                f"{key}={batch_size} is the global batch size and must divide by the number of devices ({world_size})"
            )
        return batch_size // world_size

    def dataset(self, split: str, encoded: bool = False) -> PairDataset:
        """The dataset of one split (``train``, ``val`` or ``test``); with ``encoded``, of the
        image files' bytes for :meth:`on_after_batch_transfer` to decode (``data.decode=device``)."""
        if split not in SPLITS:
            raise ConfigError(f"split={split!r} is not one of {', '.join(SPLITS)}")
        if not self.pairs:
            self.setup()
        if self.preprocess is None or self.tokenizer is None:
            raise ConfigError("the datamodule needs the backbone's preprocess and tokenizer")
        if self.format == "shards":
            batch = getattr(self, "per_device_batch_size" if split == "train" else "per_device_eval_batch_size", 1)
            return self.shard_loader(split, batch).dataset
        return PairDataset(
            self.pairs[split],
            self.preprocess,
            self.tokenizer,
            split,
            self.on_bad_image,
            images=split not in self.captions_only,
            tiles=self.tiles,
            encoded=encoded,
        )

    def _loader(self, split: str, batch_size: int) -> DataLoader:
        if self.format == "shards":
            return self.shard_loader(split, batch_size)
        return DataLoader(
            self.dataset(split, encoded=self.device_preprocess is not None),
            batch_size=batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )

    @property
    def shuffles_training(self) -> bool:
        """Whether training batches are shuffled: as ``shuffle`` says, except when overfitting a few
        batches (``trainer.overfit_batches``), which means the same batches every epoch."""
        return bool(self.shuffle and not (self.trainer and self.trainer.overfit_batches))

    def train_dataloader(self) -> DataLoader:
        """Training batches, the same for a given seed and epoch; each rank loads its share.

        The ``DistributedSampler`` only carries rank, world size and epoch to the batch sampler;
        under DDP Lightning swaps in its own (same rank, its ``set_epoch`` called each epoch).
        The loader's position in the epoch goes into checkpoints, so a resumed run continues the
        interrupted epoch where it stopped.
        """
        if self.format == "shards":
            return self.shard_loader("train", self.per_device_batch_size)
        dataset = self.dataset("train", encoded=self.device_preprocess is not None)
        rank, world_size = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        ranks = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=False)
        coordinates = [(pair.lat, pair.lon) for pair in self.pairs["train"]]
        epoch_now = self._training_epoch if self.trainer is not None else None
        if self.sampler == "geo":
            batch_sampler = GeoBatchSampler(
                ranks,
                coordinates,
                self.per_device_batch_size,
                seed=self.seed,
                geo_fraction=self.geo_fraction,
                epoch_now=epoch_now,
            )
        else:
            batch_sampler = SeededBatchSampler(
                ranks,
                coordinates,
                self.per_device_batch_size,
                seed=self.seed,
                shuffle=self.shuffles_training,
                epoch_now=epoch_now,
            )
        return ResumableLoader(
            dataset,
            batch_sampler=batch_sampler,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            collate_fn=collate_pairs,
            # Worker seeds come from this generator, not from the global one: creating the
            # loader's iterator then draws nothing that training would otherwise have drawn.
            generator=torch.Generator().manual_seed(self.seed),
        )

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Count the training batches the loop takes: the position a checkpoint saves."""
        if self.trainer is not None and self.trainer.training:
            loader = self.trainer.train_dataloader
            batch_sampler = getattr(loader, "batch_sampler", None)
            if isinstance(batch_sampler, SeededBatchSampler):
                batch_sampler.taken += 1
            elif hasattr(loader, "taken"):  # a ShardLoader
                loader.taken += 1
        return batch

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """``data.decode=device``: decode the batch's image files and preprocess them where the
        model runs. A file that cannot be decoded stops the run, or with ``data.on_bad_image=skip``
        leaves its training pair out of the batch (and is counted as skipped)."""
        if "image_bytes" not in batch:
            return batch
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        images, kept, failed = decode_on_device(
            batch.pop("image_bytes"), batch.pop("image_file"), self.device_preprocess, device
        )
        if failed:
            training = self.trainer is not None and self.trainer.training
            if self.on_bad_image == "raise":
                raise DataError(failed[0])
            if not training:
                raise needs_every_image(failed[0], "test" if getattr(self.trainer, "testing", False) else "val")
            if images is None:
                raise no_image_decoded(len(failed), failed[0])
            batch = _rows(batch, kept)
            batch["skipped"] = [*batch.get("skipped", []), *failed]
        batch["image"] = images
        return batch

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.per_device_eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.per_device_eval_batch_size)


def _rows(batch: dict[str, Any], rows: list[int]) -> dict[str, Any]:
    """The batch's fields at ``rows`` (tensors and lists of one entry per pair; others as they are)."""
    size = len(batch["tokens"])
    index = torch.tensor(rows, dtype=torch.long)
    kept = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor) and value.ndim and len(value) == size:
            kept[key] = value[index.to(value.device)]
        elif isinstance(value, list) and len(value) == size and key != "skipped":
            kept[key] = [value[i] for i in rows]
        else:
            kept[key] = value
    return kept
