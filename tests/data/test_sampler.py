import itertools

import numpy as np
import pytest
import torch
from lightning.fabric.utilities.data import _replace_dunder_methods, _set_sampler_epoch
from lightning.pytorch.trainer.states import RunningStage
from lightning.pytorch.utilities.data import _update_dataloader
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler

from cvgtext.data.sampler import GeoBatchSampler, SeededBatchSampler
from cvgtext.retrieval.geo import haversine_km
from cvgtext.utils.errors import ConfigError
from helpers.city import tiny_datamodule


def city(n=480, seed=0):
    """``n`` places spread over about 5 x 5 km."""
    rng = np.random.default_rng(seed)
    return np.stack([-27.47 + 0.045 * rng.random(n), 153.02 + 0.05 * rng.random(n)], axis=1)


def sampler(coordinates, batch_size=16, rank=0, world_size=1, **kwargs):
    ranks = DistributedSampler(range(len(coordinates)), num_replicas=world_size, rank=rank, shuffle=False)
    return GeoBatchSampler(ranks, coordinates, batch_size, **kwargs)


def mean_pairwise_km(coordinates, batch):
    points = torch.as_tensor(coordinates[batch])
    distance = haversine_km(points[:, None, 0], points[:, None, 1], points[None, :, 0], points[None, :, 1])
    return float(distance.sum() / (len(batch) * (len(batch) - 1)))


def test_every_sample_appears_once_per_epoch():
    coordinates = city(480)
    batches = list(sampler(coordinates, batch_size=16))
    assert len(batches) == 30 and all(len(batch) == 16 for batch in batches)
    assert sorted(itertools.chain(*batches)) == list(range(480))


def test_drop_last_false_keeps_the_remainder_and_drop_last_drops_it():
    coordinates = city(100)
    kept = sampler(coordinates, batch_size=16, drop_last=False)
    assert len(kept) == 7 and set(itertools.chain(*kept)) == set(range(100))
    dropped = list(sampler(coordinates, batch_size=16))
    flat = list(itertools.chain(*dropped))
    assert len(dropped) == 6 and len(flat) == len(set(flat)) == 96


def test_geo_batches_are_tighter_than_random_ones():
    coordinates = city(480)
    geo = [mean_pairwise_km(coordinates, batch) for batch in sampler(coordinates)]
    shuffled = [mean_pairwise_km(coordinates, batch) for batch in sampler(coordinates, geo_fraction=0.0)]
    assert np.mean(geo) < 0.5 * np.mean(shuffled)


def test_geo_fraction_mixes_geographic_and_random_batches():
    coordinates = city(480)
    tight = mean_pairwise_km(coordinates, next(iter(sampler(coordinates))))
    spreads = [mean_pairwise_km(coordinates, batch) for batch in sampler(coordinates, geo_fraction=0.5)]
    assert min(spreads) < 2 * tight < max(spreads)


def test_batches_are_deterministic_per_epoch_and_change_across_epochs_and_seeds():
    coordinates = city(480)
    first, again, other_seed = sampler(coordinates), sampler(coordinates), sampler(coordinates, seed=1)
    assert list(first) == list(again)
    epoch0 = list(first)
    first.set_epoch(1)
    again.set_epoch(1)
    assert list(first) == list(again) != epoch0
    assert list(other_seed) != epoch0


def test_rank_shares_partition_each_global_batch():
    coordinates, world_size = city(480), 4
    ranks = [sampler(coordinates, batch_size=4, rank=rank, world_size=world_size) for rank in range(world_size)]
    global_batches = ranks[0].global_batches()
    assert all(len(rank) == len(global_batches) == 30 for rank in ranks)
    for step, shares in enumerate(zip(*ranks)):
        assert all(len(share) == 4 for share in shares)
        assert list(itertools.chain(*shares)) == global_batches[step].tolist()
    # A rank's share is as local as the global batch it comes from.
    assert list(ranks[0]) == [batch[:4].tolist() for batch in global_batches]


def test_last_global_batch_is_padded_to_equal_rank_shares():
    coordinates = city(50)
    shares = [list(sampler(coordinates, batch_size=4, rank=rank, world_size=3, drop_last=False)) for rank in range(3)]
    last = [rank_batches[-1] for rank_batches in shares]
    assert len({len(share) for share in last}) == 1
    assert set(itertools.chain(*itertools.chain(*shares))) == set(range(50))


def test_invalid_arguments_are_refused():
    with pytest.raises(ValueError, match="geo_fraction"):
        sampler(city(10), geo_fraction=1.5)
    with pytest.raises(ValueError, match="coordinates"):
        GeoBatchSampler(None, [1.0, 2.0], 4)


def test_datamodule_geo_sampler_batches_neighbours(release_dir):
    datamodule = tiny_datamodule(release_dir, batch_size=4, sampler="geo", seed=3)
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    assert isinstance(loader.batch_sampler, GeoBatchSampler)
    assert loader.batch_sampler.seed == 3
    batches = [batch["index"].tolist() for batch in loader]
    assert all(len(batch) == 4 for batch in batches)
    assert len(set(itertools.chain(*batches))) == 4 * len(batches)
    with pytest.raises(ConfigError, match="data.sampler"):
        tiny_datamodule(release_dir, sampler="nearest")


def test_lightning_distributed_sampler_injection_keeps_the_geo_batches():
    """Under DDP Lightning rebuilds the batch sampler around its DistributedSampler: rank and epoch follow it."""
    coordinates = city(96)
    dataset = list(range(96))
    with _replace_dunder_methods(BatchSampler):
        loader = DataLoader(dataset, batch_sampler=sampler(coordinates, batch_size=8))
    injected = DistributedSampler(dataset, num_replicas=2, rank=1, shuffle=True, seed=42)
    rebuilt = _update_dataloader(loader, injected, mode=RunningStage.TRAINING)
    assert isinstance(rebuilt.batch_sampler, GeoBatchSampler)
    reference = sampler(coordinates, batch_size=8, rank=1, world_size=2)
    _set_sampler_epoch(rebuilt, 2)
    reference.set_epoch(2)
    assert [batch.tolist() for batch in rebuilt] == list(reference)


def test_without_shuffling_every_epoch_has_the_same_batches_in_dataset_order():
    sampler = SeededBatchSampler(None, city(10), batch_size=4, shuffle=False)
    assert list(sampler) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    sampler.set_epoch(3)
    assert list(sampler) == [[0, 1, 2, 3], [4, 5, 6, 7]]
