"""The LightningDataModule of one city, gallery type and text version.

``versions`` lists the text versions read together: ``[{city}]`` for panorama texts,
``[{city}-photos]`` for single-view texts, both for ``mixed``. The pairs come from one source,
chosen once by ``format``: the release layout's folders (``folders.py``) or ``pack.py``'s shards
(``shards/source.py``). Every split is read and checked when the module is set up, so a broken
test file stops the run before training. ``test`` is only reported.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from cvgtext.data.annotations import Pair
from cvgtext.data.dataset import BAD_IMAGE_POLICIES, needs_every_image, no_image_decoded
from cvgtext.data.device_decode import DevicePreprocess, check_decode, decode_on_device
from cvgtext.data.folders import FolderSource
from cvgtext.data.sampler import SeededBatchSampler
from cvgtext.data.source import SPLITS, PairSource, Reading
from cvgtext.data.verify import VERIFY_LEVELS
from cvgtext.utils.errors import ConfigError, DataError

log = logging.getLogger(__name__)

SAMPLERS = ("random", "geo")
FORMATS = ("folders", "shards")


class CVGTextDataModule(L.LightningDataModule):
    """Batches of captions and their gallery images for ``train``, ``val`` and ``test``.

    ``batch_size`` is global: each of the ``world_size`` devices loads ``batch_size / world_size``.
    ``format`` chooses the source of the pairs (``folders`` or ``shards``, read from ``shards``);
    the folder source's settings (``synthetic``, ``sampler``, ``geo_fraction``, ``verify_images``,
    ``cache``) are described in ``folders.py``. ``on_bad_image`` is what an image that cannot be
    decoded does: ``raise`` stops the run, ``skip`` leaves the pair out of its training batch (see
    ``dataset.py``). ``decode="device"`` has the loaders carry the image files' bytes, decoded and
    preprocessed where the model runs (``device_decode.py``). ``known_gallery`` maps a split to its
    gallery's embeddings computed beforehand (a cached gallery index: ``names`` and
    ``embeddings``): that split's loader reads the captions only, and the module ranks them
    against those embeddings (``None``: the model reads the tiles itself, a pair scorer).
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
        known_gallery: Mapping[str, Any] | None = None,
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
        if format not in FORMATS:
            raise ConfigError(f"data.format={format!r} is not one of {', '.join(FORMATS)}")
        if isinstance(shuffle_window, bool) or not isinstance(shuffle_window, int) or shuffle_window < 1:
            raise ConfigError(f"data.shuffle_window={shuffle_window!r} must be a positive number of samples")
        known_gallery = dict(known_gallery or {})
        unknown = sorted(set(known_gallery) - set(SPLITS))
        if unknown:
            raise ConfigError(f"known_gallery names {unknown}, not splits ({', '.join(SPLITS)})")
        if format == "shards":
            check_streamable(shards, sampler, verify_images)
            if cache:
                log.info("data.cache does not apply to data.format=shards: the stream decodes each tile")
                cache = False
        if check_decode(decode) == "device" and cache:
            log.info("data.cache does not apply with data.decode=device: the device decodes each tile")
            cache = False
        if cache and not cache_dir:
            raise ConfigError("data.cache=true needs paths.cache_dir: the folder the decoded tiles are stored in")
        self.city = city
        self.versions = [template.format(city=city) for template in versions]
        self.image_folder = image_folder
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.seed = seed or 0
        self.on_bad_image = on_bad_image
        self.shuffle = bool(shuffle)
        self.format = format
        self.decode = decode
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        # data.decode=device: loaders carry the image files' bytes, decoded once the batch is on the device
        self.device_preprocess = DevicePreprocess(preprocess) if decode == "device" and preprocess else None
        self.known_gallery = known_gallery
        self.source: PairSource
        if format == "shards":
            from cvgtext.data.shards.source import ShardSource

            self.source = ShardSource(
                str(shards), city, self.versions, image_folder, val_fraction, cache_dir, shuffle_window
            )
        else:
            self.source = FolderSource(
                data_dir,
                city,
                self.versions,
                image_folder,
                annotation_file,
                val_fraction,
                on_bad_image,
                verify_images,
                synthetic,
                bool(cache),
                cache_dir,
                sampler,
                geo_fraction,
            )
        self.pairs: dict[str, list[Pair]] = {}

    @property
    def left_out(self) -> list[str]:
        """The reasons of the training pairs left out before training (``data.verify_images``)."""
        return self.source.left_out

    def prepare_data(self) -> None:
        self.source.prepare()

    def setup(self, stage: str | None = None) -> None:
        """Read and check every split at once, so a broken test file stops the run before training."""
        if not self.pairs:
            self.pairs = self.source.splits()
        if stage == "fit":
            self.check_trainable()
        self.source.setup(self.pairs, self.preprocess, self.trainer)
        self.per_device_batch_size = self._per_device(self.batch_size, "data.batch_size")
        self.per_device_eval_batch_size = self._per_device(self.eval_batch_size, "data.eval_batch_size")

    def check_trainable(self) -> None:
        """Refuse a training split that does not fill one global batch: it would train nothing."""
        size = len(self.pairs["train"])
        if size < self.batch_size:
            raise ConfigError(
                f"the train split of {self.city} ({', '.join(self.versions)}) has {size} pairs, fewer than "
                f"data.batch_size={self.batch_size}: there is no whole batch to train on (a padded batch "
                f"would make a pair its own negative); set data.batch_size to at most {size}"
            )

    def _per_device(self, batch_size: int, key: str) -> int:
        world_size = self.trainer.world_size if self.trainer is not None else 1
        if batch_size % world_size:
            raise ConfigError(
                f"{key}={batch_size} is the global batch size and must divide by the number of devices ({world_size})"
            )
        return batch_size // world_size

    @property
    def shuffles_training(self) -> bool:
        """Whether training batches are shuffled: as ``shuffle`` says, except when overfitting a few
        batches (``trainer.overfit_batches``), which means the same batches every epoch."""
        return bool(self.shuffle and not (self.trainer and self.trainer.overfit_batches))

    def reading(self, split: str, encoded: bool | None = None) -> Reading:
        """How this run reads ``split`` (``encoded``: the files' bytes, for the device to decode;
        by default as ``data.decode`` says)."""
        if self.preprocess is None or self.tokenizer is None:
            raise ConfigError("the datamodule needs the backbone's preprocess and tokenizer")
        trainer = self.trainer
        return Reading(
            preprocess=self.preprocess,
            tokenizer=self.tokenizer,
            on_bad_image=self.on_bad_image,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            seed=self.seed,
            shuffle=self.shuffles_training,
            rank=trainer.global_rank if trainer is not None else 0,
            world_size=trainer.world_size if trainer is not None else 1,
            epoch_now=self._training_epoch if trainer is not None else None,
            images=split not in self.known_gallery,
            encoded=self.device_preprocess is not None if encoded is None else encoded,
        )

    def _training_epoch(self) -> int:
        """The epoch the training loop is in: the number of epochs it has finished."""
        return self.trainer.fit_loop.epoch_progress.current.processed

    def _batch_size(self, split: str) -> int:
        return self.per_device_batch_size if split == "train" else self.per_device_eval_batch_size

    def dataset(self, split: str, encoded: bool = False) -> Dataset:
        """The dataset of one split (``train``, ``val`` or ``test``); with ``encoded``, of the
        image files' bytes for :meth:`on_after_batch_transfer` to decode (``data.decode=device``)."""
        if split not in SPLITS:
            raise ConfigError(f"split={split!r} is not one of {', '.join(SPLITS)}")
        if not self.pairs:
            self.setup()
        return self.source.dataset(split, self.pairs[split], self.reading(split, encoded), self._batch_size(split))

    def loader(self, split: str, batch_size: int | None = None) -> DataLoader:
        """The loader of one split, at this process's share of the configured batch size unless
        ``batch_size`` is given."""
        if not self.pairs:
            self.setup()
        size = batch_size or self._batch_size(split)
        return self.source.loader(split, self.pairs[split], self.reading(split), size)

    def train_dataloader(self) -> DataLoader:
        """Training batches, the same for a given seed and epoch; each rank loads its share. The
        loader's position in the epoch goes into checkpoints, so a resumed run continues the
        interrupted epoch where it stopped."""
        return self.loader("train")

    def val_dataloader(self) -> DataLoader:
        return self.loader("val")

    def test_dataloader(self) -> DataLoader:
        return self.loader("test")

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


def check_streamable(shards: Any, sampler: str, verify_images: str) -> None:
    """Refuse, for ``data.format=shards``, what a stream cannot do (or a missing location)."""
    if not shards:
        raise ConfigError(
            "data.format=shards with data.shards=null: give data.shards, the folder or URL holding pack.py's "
            "manifest.json"
        )
    needs_random_access = {
        f"data.sampler={sampler}": sampler == "geo",
        f"data.verify_images={verify_images}": verify_images != "off",
    }
    for setting, refused in needs_random_access.items():
        if refused:
            raise ConfigError(
                f"data.format=shards with {setting}: a stream reads shards in order, without random access to "
                "the city's images; use data.format=folders for it"
            )


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
