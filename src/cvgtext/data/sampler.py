"""Training batches that are the same for a given seed and epoch, and can resume mid-epoch.

:class:`SeededBatchSampler` shuffles the training pairs with a generator seeded by the seed and
the epoch, so an epoch's batches do not depend on what else drew random numbers before it. A
checkpoint stores the epoch and how many batches the training loop has taken
(:meth:`~SeededBatchSampler.state_dict`); a resumed run then gets the rest of the interrupted
epoch's batches, in the same order, instead of a fresh shuffle.

:class:`GeoBatchSampler` builds geographic hard negatives, as in Sample4Geo. With in-batch
negatives, a random batch from a city holds places kilometres apart that the model tells apart
from the district's style alone. It instead fills each global batch with a random anchor and
its nearest not-yet-used neighbours, so the negatives of every caption are look-alike tiles of
the same streets. Each sample is used at most once per epoch (exactly once when the epoch
divides into whole batches, or with ``drop_last=False``, which the training loader never sets).

Under data parallelism each rank takes its contiguous share of every global batch, so the
negatives gathered across ranks in one step are still neighbours. Rank, world size and epoch
come from the :class:`~torch.utils.data.DistributedSampler` a sampler wraps: the one Lightning
injects under DDP (it passes it as ``sampler`` and calls its ``set_epoch``), or one built
for the trainer's rank. That sampler's own order is not used.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
from torch.utils.data import BatchSampler, DataLoader, Sampler

log = logging.getLogger(__name__)


def unit_vectors(coordinates: np.ndarray) -> np.ndarray:
    """``[n, 3]`` points on the unit sphere for ``[n, 2]`` (lat, lon) in degrees.

    Their straight-line (chord) distances order places exactly as great-circle distances do.
    """
    lat, lon = np.deg2rad(coordinates[:, 0]), np.deg2rad(coordinates[:, 1])
    return np.stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)], axis=1)


class SeededBatchSampler(BatchSampler):
    """Shuffled batches for one rank, the same for a given ``seed`` and epoch; resumable mid-epoch.

    Args:
        sampler: a ``DistributedSampler`` over the dataset, read for its ``rank``,
            ``num_replicas`` and ``epoch`` (any other sampler means one process, and the epoch
            set through :meth:`set_epoch`).
        coordinates: ``[n, 2]`` (lat, lon) in degrees of every sample of the dataset.
        batch_size: samples per rank; a global batch holds ``batch_size * num_replicas``.
        drop_last: drop the last, incomplete global batch; else it is padded by repeating
            its own samples so that every rank gets an equal share.
        seed: with the epoch, decides the order of the batches.
        shuffle: ``False`` keeps the dataset's order in every epoch (to overfit a few batches).
        epoch_now: when given, called as each epoch's iteration starts for the epoch to draw
            (the trainer's count of finished epochs). Lightning creates the loader's iterator,
            and workers load ahead from it, before it sets the samplers' epoch on resume; the
            count it restored from the checkpoint is right at that moment.

    The last incomplete global batch is dropped by default: a padded batch would repeat
    pairs, and a pair repeated in a batch is its own negative. The pairs left out differ from
    epoch to epoch, since every epoch is shuffled anew.

    ``taken`` counts the batches of the current epoch the training loop has taken (the data
    module advances it as the loop takes each batch, not when a worker loads it ahead).
    """

    def __init__(
        self,
        sampler: Sampler[int] | None,
        coordinates: Sequence[Sequence[float]] | np.ndarray,
        batch_size: int,
        drop_last: bool = True,
        seed: int = 0,
        shuffle: bool = True,
        epoch_now: Callable[[], int] | None = None,
    ) -> None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        points = np.asarray(coordinates, dtype=np.float64)
        if points.ndim != 2 or points.shape[1] != 2:
            raise ValueError(f"coordinates must be [n, 2] (lat, lon), got shape {points.shape}")
        self.sampler = sampler
        self.coordinates = points
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.seed = seed
        self.shuffle = shuffle
        self.epoch_now = epoch_now
        self._epoch = 0
        self.taken = 0
        self._iterating = 0  # the epoch whose batches are being taken
        self._resume: tuple[int, int] | None = None  # (epoch, batches taken) of a loaded state

    @property
    def rank(self) -> int:
        return getattr(self.sampler, "rank", 0)

    @property
    def world_size(self) -> int:
        return getattr(self.sampler, "num_replicas", 1)

    @property
    def epoch(self) -> int:
        if self.epoch_now is not None:
            return self.epoch_now()
        return getattr(self.sampler, "epoch", self._epoch)

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.world_size

    def set_epoch(self, epoch: int) -> None:
        self._epoch = epoch
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def global_batches(self, epoch: int | None = None) -> list[np.ndarray]:
        """Every global batch of an epoch (all ranks' samples), as dataset indices."""
        rng = np.random.default_rng([self.seed, self.epoch if epoch is None else epoch])
        order = rng.permutation(len(self.coordinates)) if self.shuffle else np.arange(len(self.coordinates))
        size = self.global_batch_size
        whole = len(order) // size
        batches = [order[i * size : (i + 1) * size] for i in range(whole)]
        return batches + self._last_batch(order[whole * size :])

    def _last_batch(self, remaining: np.ndarray) -> list[np.ndarray]:
        """The incomplete last global batch, padded to a multiple of the world size, or nothing."""
        if not len(remaining) or self.drop_last:
            return []
        padded = math.ceil(len(remaining) / self.world_size) * self.world_size
        return [np.resize(remaining, padded)]

    def state_dict(self) -> dict[str, Any]:
        """Where training is in the epoch: its seed, the epoch and the batches already taken."""
        return {"seed": self.seed, "epoch": self._iterating, "batches": self.taken, "world_size": self.world_size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the saved epoch after its ``batches`` taken batches, when it is iterated next.

        Without ``epoch_now`` that is the next iteration (the epoch is set to the saved one).
        With it, the trainer's epoch decides: an iteration of another epoch starts at its first
        batch, so a state saved once the epoch's batches were all taken skips nothing after.
        """
        if state.get("seed") != self.seed or state.get("world_size") != self.world_size:
            log.warning(
                "The checkpoint's data order (seed %s, %s devices) differs from this run's (seed %s, %s devices): "
                "the interrupted epoch starts over",
                state.get("seed"),
                state.get("world_size"),
                self.seed,
                self.world_size,
            )
            self.set_epoch(int(state["epoch"]))
            return
        epoch, batches = int(state["epoch"]), int(state["batches"])
        if self.epoch_now is None:
            if batches >= len(self):
                # Saved after the epoch's last batch: the next iteration is the next epoch.
                epoch, batches = epoch + 1, 0
            self.set_epoch(epoch)
        self._resume = (epoch, batches)

    def __iter__(self) -> Iterator[list[int]]:
        epoch = self.epoch
        resume, self._resume = self._resume, None
        start = resume[1] if resume is not None and resume[0] == epoch else 0
        self._iterating, self.taken = epoch, start
        for batch in self.global_batches(epoch)[start:]:
            share = len(batch) // self.world_size
            yield batch[self.rank * share : (self.rank + 1) * share].tolist()

    def __len__(self) -> int:
        batches = len(self.coordinates) / self.global_batch_size
        return math.floor(batches) if self.drop_last else math.ceil(batches)


class ResumableLoader(DataLoader):
    """A DataLoader whose place in the epoch goes into Lightning's checkpoints and comes back.

    Lightning saves and restores a training loader's ``state_dict``; this one hands it to its
    :class:`SeededBatchSampler`.
    """

    def state_dict(self) -> dict[str, Any]:
        return self.batch_sampler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.batch_sampler.load_state_dict(state)


class GeoBatchSampler(SeededBatchSampler):
    """Batches of geographic neighbours for one rank; the same for a given ``seed`` and epoch.

    Takes the arguments of :class:`SeededBatchSampler` and

    Args:
        geo_fraction: the share of global batches built around an anchor; the others are
            drawn at random from the unused samples (1.0: all geographic, 0.0: plain shuffling).
    """

    def __init__(
        self,
        sampler: Sampler[int] | None,
        coordinates: Sequence[Sequence[float]] | np.ndarray,
        batch_size: int,
        drop_last: bool = True,
        seed: int = 0,
        geo_fraction: float = 1.0,
        epoch_now: Callable[[], int] | None = None,
    ) -> None:
        super().__init__(sampler, coordinates, batch_size, drop_last=drop_last, seed=seed, epoch_now=epoch_now)
        if not 0.0 <= geo_fraction <= 1.0:
            raise ValueError(f"geo_fraction must lie in [0, 1], got {geo_fraction}")
        self.points = unit_vectors(self.coordinates)  # [n, 3]
        self.geo_fraction = geo_fraction

    def global_batches(self, epoch: int | None = None) -> list[np.ndarray]:
        """Every global batch of an epoch (all ranks' samples), as dataset indices."""
        rng = np.random.default_rng([self.seed, self.epoch if epoch is None else epoch])
        size = self.global_batch_size
        remaining = rng.permutation(len(self.points))  # the unused samples, in random order
        batches = []
        while len(remaining) >= size:
            if rng.random() < self.geo_fraction:
                anchor = self.points[remaining[0]]
                distance = np.sum((self.points[remaining] - anchor) ** 2, axis=1)  # squared chord
                nearest = np.argsort(distance, kind="stable")[:size]
                batches.append(remaining[nearest])
                remaining = np.delete(remaining, nearest)
            else:
                batches.append(remaining[:size])
                remaining = remaining[size:]
        return batches + self._last_batch(remaining)
