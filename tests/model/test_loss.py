"""ContrastiveLoss and SigmoidLoss: equal to open_clip's ClipLoss and SigLipLoss, and exact under
2-process data parallelism."""

import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from cvgtext.model.loss import ContrastiveLoss, SigmoidLoss, build_loss
from cvgtext.utils.errors import ConfigError

# float32 results that differ only in summation order (blocked matmuls, gathered vs whole
# batches, DDP's all-reduce of two gradients) agree to within an ulp or two; the values here are
# of order 1 to 10 (logit scale 1 / 0.07), where a float32 ulp is 1e-7 to 1e-6.
ATOL = 1e-6
RTOL = 1e-5

WORLD_SIZE = 2
INPUT_DIM, EMBED_DIM = 8, 6


def _features(batch: int, dim: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    image = F.normalize(torch.randn(batch, dim, generator=generator), dim=-1)
    text = F.normalize(torch.randn(batch, dim, generator=generator), dim=-1)
    return image, text


def test_single_process_loss_equals_open_clip():
    # Imported here rather than at the top so the spawned workers below need not import open_clip.
    from open_clip.loss import ClipLoss

    image, text = _features(batch=10)
    logit_scale = torch.tensor(math.log(100.0)).exp()

    ours = ContrastiveLoss()(image, text, logit_scale)
    reference = ClipLoss()(image, text, logit_scale)

    torch.testing.assert_close(ours, reference, atol=ATOL, rtol=RTOL)
    # On one process there is nothing to gather: local negatives are the same batch.
    torch.testing.assert_close(ContrastiveLoss("local")(image, text, logit_scale), ours, atol=0, rtol=0)


def _as_rank_one_of_two(
    monkeypatch, mine_image: torch.Tensor, other_image: torch.Tensor, other_text: torch.Tensor
) -> None:
    """Make this process rank 1 of 2 whose rank 0 holds ``other_image`` and ``other_text``: the
    gather returns rank 0's rows, then this rank's own."""
    import cvgtext.model.loss as loss_module

    def gather(features, sizes):
        assert sizes == [other_image.shape[0], features.shape[0]]
        return torch.cat([other_image if features is mine_image else other_text, features])

    monkeypatch.setattr(loss_module, "_world_size", lambda: 2)
    monkeypatch.setattr(loss_module, "_batch_sizes", lambda batch, device: [other_image.shape[0], batch])
    monkeypatch.setattr(loss_module, "_gather_with_grad", gather)
    monkeypatch.setattr(loss_module.dist, "get_rank", lambda: 1)


def test_global_negatives_contrast_with_the_other_ranks_rows_and_local_ones_do_not(monkeypatch):
    image, text = _features(batch=5, seed=3)
    other_image, other_text, mine_image, mine_text = image[:3], text[:3], image[3:], text[3:]
    logit_scale = torch.tensor(10.0)
    _as_rank_one_of_two(monkeypatch, mine_image, other_image, other_text)

    global_output = ContrastiveLoss("global").forward_with_logits(mine_image, mine_text, logit_scale)
    local_output = ContrastiveLoss("local").forward_with_logits(mine_image, mine_text, logit_scale)

    # global: this rank's 2 rows against all 5 texts (images), its positives at columns 3 and 4
    assert global_output.logits_per_image.shape == (2, 5) and global_output.labels.tolist() == [3, 4]
    torch.testing.assert_close(global_output.logits_per_image, logit_scale * mine_image @ text.T)
    torch.testing.assert_close(global_output.logits_per_text, logit_scale * mine_text @ image.T)
    rows_of_the_global_loss = (
        F.cross_entropy(logit_scale * mine_image @ text.T, torch.tensor([3, 4]))
        + F.cross_entropy(logit_scale * mine_text @ image.T, torch.tensor([3, 4]))
    ) / 2
    # weighted by world_size * local batch / global batch = 2 * 2 / 5
    torch.testing.assert_close(global_output.loss, 0.8 * rows_of_the_global_loss, atol=ATOL, rtol=RTOL)

    # local: this rank's rows alone, as on one process
    assert local_output.logits_per_image.shape == (2, 2) and local_output.labels.tolist() == [0, 1]
    monkeypatch.undo()
    torch.testing.assert_close(local_output.loss, ContrastiveLoss()(mine_image, mine_text, logit_scale))
    assert not torch.isclose(local_output.loss, global_output.loss)


def test_label_smoothing_matches_cross_entropy():
    image, text = _features(batch=7)
    logit_scale = torch.tensor(20.0)
    logits = logit_scale * image @ text.T
    labels = torch.arange(7)
    expected = (
        F.cross_entropy(logits, labels, label_smoothing=0.1) + F.cross_entropy(logits.T, labels, label_smoothing=0.1)
    ) / 2

    smoothed = ContrastiveLoss(label_smoothing=0.1)(image, text, logit_scale)

    torch.testing.assert_close(smoothed, expected, atol=ATOL, rtol=RTOL)
    assert not torch.isclose(smoothed, ContrastiveLoss()(image, text, logit_scale))


def test_forward_with_logits_returns_square_logits_and_diagonal_labels():
    image, text = _features(batch=5)
    output = ContrastiveLoss().forward_with_logits(image, text, torch.tensor(10.0))

    assert output.logits_per_image.shape == output.logits_per_text.shape == (5, 5)
    torch.testing.assert_close(output.logits_per_text, output.logits_per_image.T)
    assert output.labels.tolist() == [0, 1, 2, 3, 4]


def test_rejects_unpaired_features_and_unknown_negatives():
    image, text = _features(batch=4)
    with pytest.raises(ValueError, match="paired"):
        ContrastiveLoss()(image, text[:3], torch.tensor(1.0))
    with pytest.raises(ValueError, match="negatives"):
        ContrastiveLoss(negatives="batch")


class PairEncoder(nn.Module):
    """A minimal dual encoder: one linear layer a tower, and a learnable temperature."""

    def __init__(self) -> None:
        super().__init__()
        self.image = nn.Linear(INPUT_DIM, EMBED_DIM)
        self.text = nn.Linear(INPUT_DIM, EMBED_DIM)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def forward(self, images, texts):
        image = F.normalize(self.image(images), dim=-1)
        text = F.normalize(self.text(texts), dim=-1)
        return image, text, self.logit_scale.exp()


class BiasedPairEncoder(PairEncoder):
    """With SigLIP's learnt bias besides the temperature."""

    def __init__(self) -> None:
        super().__init__()
        self.logit_bias = nn.Parameter(torch.tensor(-2.0))

    def forward(self, images, texts):
        return (*super().forward(images, texts), self.logit_bias)


def _sigmoid_step(model: nn.Module, loss_fn: SigmoidLoss, images, texts) -> dict:
    image, text, scale, bias = model(images, texts)
    loss = loss_fn(image, text, scale, bias)
    loss.backward()
    module = getattr(model, "module", model)
    return {"loss": loss.detach(), "param_grads": {name: p.grad.clone() for name, p in module.named_parameters()}}


def _global_batch(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Image and text inputs [size, INPUT_DIM] of the whole batch, the same in every process."""
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(size, INPUT_DIM, generator=generator)
    texts = torch.randn(size, INPUT_DIM, generator=generator)
    return images, texts


def _step(model: nn.Module, loss_fn: ContrastiveLoss, images, texts) -> dict:
    """One forward and backward pass; returns the loss, logits and all gradients."""
    image, text, scale = model(images, texts)
    image.retain_grad()
    text.retain_grad()
    output = loss_fn.forward_with_logits(image, text, scale)
    output.loss.backward()
    module = getattr(model, "module", model)
    return {
        "loss": output.loss.detach(),
        "logits_per_image": output.logits_per_image.detach(),
        "image_grad": image.grad,
        "text_grad": text.grad,
        "param_grads": {name: p.grad.clone() for name, p in module.named_parameters()},
    }


# (rows on rank 0, rows on rank 1): an even split, and an uneven last batch.
SPLITS = [(4, 4), (3, 2)]


def _row_slices(split) -> list[slice]:
    """Rows of the global batch held by each rank."""
    starts = [sum(split[:rank]) for rank in range(len(split))]
    return [slice(start, start + size) for start, size in zip(starts, split)]


def _worker(rank: int, port: int, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE)
    try:
        results = {}
        for split in SPLITS:
            images, texts = _global_batch(sum(split))
            rows = _row_slices(split)[rank]
            for negatives in ("global", "local"):
                torch.manual_seed(0)
                model = DistributedDataParallel(PairEncoder())
                loss_fn = ContrastiveLoss(negatives=negatives)
                results[split, negatives] = _step(model, loss_fn, images[rows], texts[rows])
            torch.manual_seed(0)
            model = DistributedDataParallel(BiasedPairEncoder())
            try:
                results[split, "sigmoid"] = _sigmoid_step(model, SigmoidLoss("global"), images[rows], texts[rows])
            except RuntimeError as error:  # unequal batches: refused on every rank alike
                results[split, "sigmoid"] = str(error)
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    """Results of every rank of a 2-process gloo run of ``_worker``."""
    out_dir = tmp_path_factory.mktemp("ddp")
    from helpers.web import free_port

    mp.spawn(_worker, args=(free_port(), str(out_dir)), nprocs=WORLD_SIZE, join=True)
    return [torch.load(out_dir / f"rank{rank}.pt") for rank in range(WORLD_SIZE)]


def _single_process(split) -> dict:
    """The reference: the whole batch of ``split`` on one process."""
    images, texts = _global_batch(sum(split))
    torch.manual_seed(0)
    return _step(PairEncoder(), ContrastiveLoss(), images, texts)


@pytest.mark.slow
@pytest.mark.parametrize("split", SPLITS)
def test_global_negatives_see_the_whole_batch(ranks, split):
    single = _single_process(split)
    for rank, rows in enumerate(_row_slices(split)):
        torch.testing.assert_close(
            ranks[rank][split, "global"]["logits_per_image"],
            single["logits_per_image"][rows],
            atol=ATOL,
            rtol=RTOL,
        )
    # Each rank's loss is its rows' share of the global mean, so the ranks' mean is the global loss.
    mean_loss = sum(r[split, "global"]["loss"] for r in ranks) / WORLD_SIZE
    torch.testing.assert_close(mean_loss, single["loss"], atol=ATOL, rtol=RTOL)


@pytest.mark.slow
@pytest.mark.parametrize("split", SPLITS)
def test_global_negatives_give_ddp_the_single_process_gradient(ranks, split):
    single = _single_process(split)
    # DDP's averaged parameter gradient is already identical on every rank.
    for rank_result in ranks:
        for name, grad in single["param_grads"].items():
            torch.testing.assert_close(rank_result[split, "global"]["param_grads"][name], grad, atol=ATOL, rtol=RTOL)
    # Through the gather each rank's features receive the gradient of the sum of all ranks'
    # losses, which is world_size times that of the global mean loss.
    for rank, rows in enumerate(_row_slices(split)):
        for grad in ("image_grad", "text_grad"):
            torch.testing.assert_close(
                ranks[rank][split, "global"][grad],
                WORLD_SIZE * single[grad][rows],
                atol=ATOL,
                rtol=RTOL,
            )


@pytest.mark.slow
@pytest.mark.parametrize("split", SPLITS)
def test_local_negatives_equal_each_rank_alone(ranks, split):
    images, texts = _global_batch(sum(split))
    alone = []
    for rank, rows in enumerate(_row_slices(split)):
        torch.manual_seed(0)
        alone.append(_step(PairEncoder(), ContrastiveLoss("local"), images[rows], texts[rows]))
        torch.testing.assert_close(ranks[rank][split, "local"]["loss"], alone[rank]["loss"], atol=ATOL, rtol=RTOL)
        assert ranks[rank][split, "local"]["logits_per_image"].shape == (split[rank], split[rank])
    for name in alone[0]["param_grads"]:
        averaged = sum(a["param_grads"][name] for a in alone) / WORLD_SIZE
        torch.testing.assert_close(ranks[0][split, "local"]["param_grads"][name], averaged, atol=ATOL, rtol=RTOL)


def test_single_process_sigmoid_loss_is_open_clips_siglip_loss():
    from open_clip.loss import SigLipLoss

    image, text = _features(batch=6, seed=5)
    scale, bias = torch.tensor(10.0), torch.tensor(-3.0)
    expected = SigLipLoss()(image, text, scale, bias)
    labels = 2 * torch.eye(6) - 1  # +1 on the pairs, -1 elsewhere
    restated = -F.logsigmoid(labels * (scale * image @ text.T + bias)).sum() / 6
    torch.testing.assert_close(SigmoidLoss()(image, text, scale, bias), expected)
    torch.testing.assert_close(expected, restated, atol=ATOL, rtol=RTOL)
    assert isinstance(build_loss("sigmoid"), SigmoidLoss) and isinstance(build_loss(), ContrastiveLoss)
    with pytest.raises(ConfigError, match=r"^model\.loss\.kind='softmax' is not one of contrastive, sigmoid"):
        build_loss("softmax")
    with pytest.raises(ConfigError, match=r"^model\.loss\.label_smoothing=0\.1 applies to the contrastive loss only"):
        build_loss("sigmoid", label_smoothing=0.1)


@pytest.mark.slow
def test_sigmoid_loss_across_two_processes_is_the_whole_batchs(ranks):
    split = SPLITS[0]
    images, texts = _global_batch(sum(split))
    torch.manual_seed(0)
    single = _sigmoid_step(BiasedPairEncoder(), SigmoidLoss(), images, texts)
    # each rank: its images against all texts over its batch size; their mean is the whole loss
    mean_loss = sum(r[split, "sigmoid"]["loss"] for r in ranks) / WORLD_SIZE
    torch.testing.assert_close(mean_loss, single["loss"], atol=ATOL, rtol=RTOL)
    # the neighbour exchange returns gradients to the sending rank, so DDP's average is the
    # gradient of the whole-batch loss (the bias's too)
    for rank_result in ranks:
        assert set(rank_result[split, "sigmoid"]["param_grads"]) == set(single["param_grads"])
        for name, grad in single["param_grads"].items():
            torch.testing.assert_close(rank_result[split, "sigmoid"]["param_grads"][name], grad, atol=ATOL, rtol=RTOL)
    # unequal batches cannot be exchanged: refused with the way out, on both ranks
    for rank_result in ranks:
        assert "needs equal batches on every device, got [3, 2]" in rank_result[SPLITS[1], "sigmoid"]
