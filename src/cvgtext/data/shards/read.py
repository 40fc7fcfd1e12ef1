"""Training and evaluation read from shards (``data.format=shards``), as a stream.

The shards of ``pack.py`` (``shards.py``) are read in order, whole tar files at a time, from a
folder or a URL: ``https://`` through the standard library, ``s3://``, ``gs://`` and the other
fsspec file systems when fsspec and its package for that store are installed.

Which samples a process reads is planned from the manifest's counts alone
(:func:`worker_positions`), so every rank and loader worker knows its share without reading
anything:

- the epoch's stream is the split's shards, in an order drawn from the seed and the epoch
  (their packed order with ``shuffle`` off);
- training: each rank takes a contiguous run of ``floor(N / (world * batch)) * batch``
  samples of the stream, the same number on every rank (unequal batch counts would hang DDP);
  the last, incomplete global batch's samples are left out of the epoch, as folder reading
  leaves them out; every other sample is read exactly once per epoch;
- evaluation: each rank takes ``ceil(N / world)`` samples, the last rank's share completed
  from the start of the split; the evaluation keeps each sample once, so the metrics are those
  of the whole split;
- each loader worker takes a contiguous run of its rank's batches;
- training with ``shuffle`` on: each worker's samples are shuffled within windows of
  ``shuffle_window`` consecutive samples (drawn from the seed, the epoch, the rank and the
  worker), so that a worker holds one window of samples in memory.

With ``shuffle`` off, one process and no workers, the batches are those of folder reading with
``data.shuffle=false``. A run resumed mid-epoch skips the batches the checkpoint says were
taken (their samples are read, not decoded) and continues with the same batches.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import tarfile
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from cvgtext.data.annotations import Pair
from cvgtext.data.dataset import SkippedImage, decode_image, pair_fields
from cvgtext.data.shards.write import EXTENSIONS, FORMAT, MANIFEST
from cvgtext.utils.atomic import atomic_write
from cvgtext.utils.errors import ConfigError, DataError
from cvgtext.utils.web import url_opener

log = logging.getLogger(__name__)


def open_url(url: str, timeout: float = 60.0) -> IO[bytes]:
    """A binary stream of ``url``: a local path, ``http(s)://`` or an fsspec URL (``s3://``, ...)."""
    if "://" not in url:
        return open(url, "rb")
    scheme = url.split("://", 1)[0].lower()
    if scheme in ("http", "https"):
        return url_opener(url).open(url, timeout=timeout)
    try:
        import fsspec
    except ImportError:
        raise ConfigError(
            f"reading {scheme}:// needs fsspec and its package for {scheme} "
            f"(pip install fsspec s3fs, or gcsfs for gs://)"
        ) from None
    try:
        return fsspec.open(url, "rb").open()
    except (ImportError, ValueError) as error:
        raise ConfigError(f"cannot read {url}: {error}") from None


class ShardStore:
    """The shards of one packed city: its manifest, each split's pairs, and reading samples."""

    def __init__(self, location: str | Path, tile_dir: str | Path | None = None):
        self.location = str(location).rstrip("/")
        try:
            with open_url(self.url(MANIFEST)) as stream:
                self.manifest = json.loads(stream.read())
        except (OSError, ValueError) as error:
            raise DataError(
                f"data.shards={self.location}: no readable {MANIFEST} ({error}); pack the city with pack.py "
                "and point data.shards at the folder (or URL) it wrote"
            ) from None
        if self.manifest.get("format") != FORMAT:
            raise DataError(f"{self.url(MANIFEST)} is not a manifest of pack.py's shards")
        self.tile_dir = Path(tile_dir) if tile_dir else None

    def url(self, name: str) -> str:
        return f"{self.location}/{name}"

    def split(self, split: str) -> dict[str, Any]:
        entry = self.manifest["splits"].get(split)
        if entry is None:
            raise DataError(
                f"{self.url(MANIFEST)} holds no {split} split (packed: {', '.join(self.manifest['splits'])})"
            )
        return entry

    def counts(self, split: str) -> list[int]:
        return [shard["samples"] for shard in self.split(split)["shards"]]

    def pairs(self, split: str) -> list[Pair]:
        """The split's pairs, in order; each image is a :class:`ShardTile` read on first use."""
        with open_url(self.url(self.split(split)["pairs"])) as stream:
            rows = json.loads(stream.read())
        return [
            Pair(name, caption, ShardTile(self, split, position, name), lat, lon, panorama)
            for position, (name, caption, lat, lon, panorama) in enumerate(rows)
        ]

    def shard_of(self, split: str, positions: np.ndarray) -> np.ndarray:
        """The shard holding each of ``positions`` of ``split``."""
        return np.searchsorted(np.cumsum([0, *self.counts(split)]), positions, side="right") - 1

    def samples(self, split: str, shard: int) -> Iterator[tuple[int, dict[str, bytes]]]:
        """``(position, members)`` of each sample of one shard, in order."""
        url = self.url(self.split(split)["shards"][shard]["file"])
        with open_url(url) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
            key, members = None, {}
            for member in tar:
                if not member.isfile():
                    continue
                stem, _, extension = member.name.partition(".")
                if stem != key and key is not None:
                    yield int(key), members
                    members = {}
                key = stem
                members[extension] = tar.extractfile(member).read()
            if key is not None:
                yield int(key), members

    def tile_path(self, split: str, position: int, name: str) -> Path:
        """A local copy of one sample's tile, extracted from its shard on first use."""
        if self.tile_dir is None:
            self.tile_dir = Path(tempfile.mkdtemp(prefix="cvgtext-shard-tiles-"))
        path = self.tile_dir / split / name
        if path.is_file():
            return path
        shard = int(self.shard_of(split, np.array([position]))[0])
        for found, members in self.samples(split, shard):
            if found == position:
                with atomic_write(path, "wb") as stream:
                    stream.write(image_bytes(members, f"{self.url(MANIFEST)} {split} {position}"))
                return path
        raise DataError(f"sample {position} of {split} is not in {self.split(split)['shards'][shard]['file']}")


class ShardTile(os.PathLike):
    """The image of a packed sample where a file path is expected: extracted to a local file
    when something opens it (the few tiles drawn in reports), never for training."""

    def __init__(self, store: ShardStore, split: str, position: int, name: str):
        self.store, self.split, self.position, self.name = store, split, position, name

    def __fspath__(self) -> str:
        return str(self.store.tile_path(self.split, self.position, self.name))

    def __str__(self) -> str:
        return f"{self.store.location} {self.split} sample {self.position} ({self.name})"

    __repr__ = __str__


def image_bytes(members: dict[str, bytes], where: str) -> bytes:
    for extension in dict.fromkeys(EXTENSIONS.values()):  # the image members pack.py writes
        if extension in members:
            return members[extension]
    raise DataError(f"{where}: the sample holds no image (members: {', '.join(members)})")


def split_runs(count: int, parts: int) -> list[tuple[int, int]]:
    """``count`` items in ``parts`` contiguous runs, the first ones one longer."""
    size, extra = divmod(count, parts)
    runs, start = [], 0
    for part in range(parts):
        stop = start + size + (part < extra)
        runs.append((start, stop))
        start = stop
    return runs


def rank_share(total: int, batch_size: int, world_size: int, training: bool) -> int:
    """Samples each rank reads of a split of ``total``: whole batches of whole global batches when
    training, every sample once between the ranks (the last share completed) when evaluating."""
    return total // (batch_size * world_size) * batch_size if training else math.ceil(total / world_size)


def rank_positions(
    counts: Sequence[int],
    batch_size: int,
    rank: int,
    world_size: int,
    seed: int,
    epoch: int,
    shuffle: bool,
    training: bool,
) -> np.ndarray:
    """The split positions one rank reads in an epoch, in stream order (see the module's docstring)."""
    starts = np.cumsum([0, *counts])
    total = int(starts[-1])
    order = np.random.default_rng([seed, epoch]).permutation(len(counts)) if shuffle else np.arange(len(counts))
    stream = np.concatenate([np.arange(starts[s], starts[s + 1]) for s in order]) if total else np.zeros(0, int)
    share = rank_share(total, batch_size, world_size, training)
    if training:
        return stream[rank * share : (rank + 1) * share]
    return stream[np.arange(rank * share, (rank + 1) * share) % max(total, 1)] if total else stream


def worker_positions(
    counts: Sequence[int],
    batch_size: int,
    rank: int,
    world_size: int,
    worker: int,
    workers: int,
    seed: int,
    epoch: int,
    shuffle: bool,
    window: int,
    training: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """``(read, emitted)``: the positions one loader worker reads, in stream order, and the order
    it yields them in (``read`` shuffled within windows when training with ``shuffle``)."""
    mine = rank_positions(counts, batch_size, rank, world_size, seed, epoch, shuffle, training)
    batches = math.ceil(len(mine) / batch_size)
    first, last = split_runs(batches, workers)[worker]
    read = mine[first * batch_size : last * batch_size]
    if not (training and shuffle):
        return read, read
    emitted = read.copy()
    for number, start in enumerate(range(0, len(read), window)):
        rng = np.random.default_rng([seed, epoch, rank, worker, number])
        emitted[start : start + window] = rng.permutation(read[start : start + window])
    return read, emitted


def resume_point(batch_counts: Sequence[int], taken: int) -> tuple[list[int], int]:
    """Where a loader stands after yielding ``taken`` batches of runs of ``batch_counts``
    batches: how many of each run it has yielded, and the run of its next batch. It takes one
    batch from each run in turn, passing over runs that have none left."""
    done = [0] * len(batch_counts)
    order = [
        run
        for round_ in range(max(batch_counts, default=0))
        for run, count in enumerate(batch_counts)
        if round_ < count
    ]
    for run in order[:taken]:
        done[run] += 1
    return done, (order[taken] if taken < len(order) else 0)


class ShardStream(IterableDataset):
    """The samples of one split of a :class:`ShardStore`, as the items of ``PairDataset``.

    ``epoch`` and ``start_batch`` (batches of this rank already taken this epoch) are set by
    :class:`ShardLoader` before each iteration.
    """

    def __init__(
        self,
        store: ShardStore,
        split: str,
        pairs: Sequence[Pair],
        preprocess: Callable,
        tokenizer: Callable,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        window: int = 1000,
        training: bool = True,
        images: bool = True,
        on_bad_image: str = "raise",
        encoded: bool = False,
    ):
        self.store, self.split, self.pairs = store, split, list(pairs)
        self.counts = store.counts(split)
        if sum(self.counts) != len(self.pairs):
            raise DataError(
                f"{store.url(MANIFEST)}: the {split} shards hold {sum(self.counts)} samples, "
                f"its pairs file {len(self.pairs)}"
            )
        self.preprocess, self.tokenizer = preprocess, tokenizer
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.seed, self.shuffle, self.window, self.training = seed, shuffle, window, training
        self.images, self.on_bad_image, self.encoded = images, on_bad_image, encoded
        self.workers = 1
        self.epoch, self.start_batch = 0, 0

    def __len__(self) -> int:
        return rank_share(sum(self.counts), self.batch_size, self.world_size, self.training)

    def plan(self, run: int) -> tuple[np.ndarray, np.ndarray]:
        return worker_positions(
            self.counts,
            self.batch_size,
            self.rank,
            self.world_size,
            run,
            self.workers,
            self.seed,
            self.epoch,
            self.shuffle,
            self.window,
            self.training,
        )

    def assignment(self, worker: int) -> tuple[int, int]:
        """``(run, samples skipped)`` of a loader worker: the run of batches it reads, and how many
        of that run's samples were taken before a resume.

        The loader takes a batch from each worker in turn, starting at worker 0; a resumed
        epoch's next batch may belong to another run, so the runs are rotated to start with it.
        """
        if not self.start_batch:
            return worker, 0
        counts = [math.ceil(len(self.plan(run)[0]) / self.batch_size) for run in range(self.workers)]
        done, following = resume_point(counts, self.start_batch)
        run = (worker + following) % self.workers
        return run, done[run] * self.batch_size

    def __iter__(self) -> Iterator[dict[str, Any] | SkippedImage]:
        info = get_worker_info()
        run, skip = self.assignment(info.id if info is not None else 0)
        read, emitted = self.plan(run)
        wanted = set(emitted[skip:].tolist())
        reader = self._sequential(read, wanted)
        # Without shuffling a window is the whole share: samples go out as they are read.
        window = self.window if self.training and self.shuffle else max(1, len(read))
        for start in range(0, len(read), window):
            needed = sum(1 for position in read[start : start + window].tolist() if position in wanted)
            buffered = dict(next(reader) for _ in range(needed))
            for position in emitted[start : start + window].tolist():
                if position in wanted:
                    yield self._item(position, buffered.pop(position))

    def _sequential(self, read: np.ndarray, wanted: set[int]) -> Iterator[tuple[int, dict[str, bytes]]]:
        """The ``wanted`` samples of ``read``, each of its shards read once, in order."""
        shard_of = self.store.shard_of(self.split, read)
        _, first = np.unique(shard_of, return_index=True)
        for shard in shard_of[np.sort(first)].tolist():
            need = {p for p in read[shard_of == shard].tolist() if p in wanted}
            if not need:
                continue  # all taken before a resume: not even opened
            for position, members in self.store.samples(self.split, shard):
                if position in need:
                    need.discard(position)
                    yield position, members if self.images else {}
                    if not need:
                        break

    def _item(self, position: int, members: dict[str, bytes]) -> dict[str, Any] | SkippedImage:
        pair = self.pairs[position]
        item = pair_fields(pair, position, self.tokenizer([pair.caption])[0])
        if not self.images:
            return item
        where = f"{self.store.location} {self.split} sample {position} ({pair.name})"
        try:
            if self.encoded:  # data.decode=device
                return {"image_bytes": image_bytes(members, where), "image_file": where, **item}
            image = decode_image(io.BytesIO(image_bytes(members, where)), where)
        except DataError as error:
            if self.on_bad_image == "skip" and self.training:
                return SkippedImage(str(error))
            raise
        return {"image": self.preprocess(image), **item}


class ShardLoader(DataLoader):
    """A DataLoader of a :class:`ShardStream` whose place in the epoch goes into checkpoints.

    ``epoch_now`` gives the epoch an iteration reads (the trainer's count of finished epochs).
    """

    def __init__(self, dataset: ShardStream, epoch_now: Callable[[], int] | None = None, **kwargs: Any):
        super().__init__(dataset, **kwargs)
        dataset.workers = max(1, self.num_workers)
        # Lightning warns that an IterableDataset's length may be wrong under several workers;
        # each worker here reads its own run of batches (worker_positions), so the length is exact.
        warnings.filterwarnings("ignore", message=r"Your `IterableDataset` has `__len__` defined")
        self.epoch_now = epoch_now
        self.taken = 0
        self._iterating = 0
        self._resume: tuple[int, int] | None = None

    def __iter__(self):
        epoch = self.epoch_now() if self.epoch_now is not None else self.dataset.epoch
        resume, self._resume = self._resume, None
        start = resume[1] if resume is not None and resume[0] == epoch else 0
        self.dataset.epoch, self.dataset.start_batch = epoch, start
        self._iterating, self.taken = epoch, start
        return super().__iter__()

    def state_dict(self) -> dict[str, Any]:
        stream = self.dataset
        return {
            "format": "shards",
            "seed": stream.seed,
            "epoch": self._iterating,
            "batches": self.taken,
            "world_size": stream.world_size,
            "workers": stream.workers,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        stream = self.dataset
        same = (state.get("format"), state.get("seed"), state.get("world_size"), state.get("workers")) == (
            "shards",
            stream.seed,
            stream.world_size,
            stream.workers,
        )
        if not same:
            log.warning(
                "The checkpoint's data order (%s) differs from this run's (shards, seed %s, %s devices, "
                "%s loader workers): the interrupted epoch starts over",
                state,
                stream.seed,
                stream.world_size,
                stream.workers,
            )
            self._resume = (int(state.get("epoch", 0)), 0)
            return
        epoch, batches = int(state["epoch"]), int(state["batches"])
        if self.epoch_now is None and batches >= len(self):
            # Saved after the epoch's last batch: the next iteration is the next epoch. (With
            # epoch_now the trainer's epoch decides, and another epoch starts at its first batch.)
            epoch, batches = epoch + 1, 0
            self.dataset.epoch = epoch
        elif self.epoch_now is None:
            self.dataset.epoch = epoch
        self._resume = (epoch, batches)
