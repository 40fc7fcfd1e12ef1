"""The LightningModule: a CLIP dual encoder trained with symmetric InfoNCE, evaluated by retrieval.

Batches become embeddings in :meth:`embed`; embeddings become a loss in :meth:`training_step`
(``model/loss.py``) and a ranking plus metrics at the end of each validation or test epoch
(``retrieval/split.py``, ``retrieval/ranking.py``).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from cvgtext.model.encoder import build_encoder
from cvgtext.model.family import scores_pairs
from cvgtext.model.loss import SigmoidLoss, build_loss, matching_pool
from cvgtext.model.text_context import encode_text
from cvgtext.model.vilt import pad_images
from cvgtext.retrieval.pairs import evaluate_pairs, tile_loader
from cvgtext.retrieval.split import EmbeddedSplit, Evaluation, evaluate_split, flatten_metrics
from cvgtext.utils.errors import ConfigError

log = logging.getLogger(__name__)

MAX_LOGIT_SCALE = math.log(100)  # open_clip clamps the learnt temperature here


def _plain(config: Any) -> Any:
    return OmegaConf.to_container(config, resolve=True) if isinstance(config, DictConfig) else config


class CrossViewRetrieval(L.LightningModule):
    """Text -> gallery-image retrieval with an open_clip dual encoder.

    ``optimizer`` and ``scheduler`` are Hydra configs (``_target_`` + arguments) completed with the
    parameters and the optimizer here; the scheduler steps once per epoch, as in the paper. Only
    training needs them (``train.yaml`` sets them from the ``optim`` group); a module built to
    evaluate or search has none.
    ``nearest`` is the evaluation protocol: rank the ``nearest`` tiles closest to the query's true
    place (the paper's 100), or the whole gallery when ``None``. ``grad_checkpointing``
    recomputes each transformer block's activations in the backward pass instead of keeping them:
    less memory for about a third more compute, the same loss and gradients. ``channels_last``
    keeps images and convolution weights in the channels-last layout (faster convolutions on
    GPUs with tensor cores). ``compile`` (``True`` or ``torch.compile``'s keyword arguments)
    compiles the model's image and text encoders in each process when it is set up; weights and
    checkpoints are unchanged.
    """

    def __init__(
        self,
        backbone: dict,
        optimizer: dict | None = None,
        scheduler: dict | None = None,
        loss: dict | None = None,
        nearest: int | None = 100,
        lock_image: bool = False,
        lock_text: bool = False,
        grad_checkpointing: bool = False,
        channels_last: bool = False,
        compile: bool | dict = False,
    ):
        super().__init__()
        self.save_hyperparameters(
            {
                "backbone": _plain(backbone),
                "optimizer": _plain(optimizer),
                "scheduler": _plain(scheduler),
                "loss": _plain(loss) or {},
                "nearest": nearest,
                "lock_image": lock_image,
                "lock_text": lock_text,
                "grad_checkpointing": grad_checkpointing,
                "channels_last": channels_last,
                "compile": _plain(compile),
            }
        )
        encoder = build_encoder(**self.hparams.backbone)
        # Checkpoints record what the model was built with where the config left it to the
        # pretrained weights (the activation, the model's configuration, the tokenizer), so
        # that they rebuild the same model without them.
        self.hparams.backbone.update(encoder.resolved or {})
        self.model = encoder.model
        self.preprocess = encoder.preprocess
        self.tokenizer = encoder.tokenizer
        self.criterion = build_loss(**self.hparams.loss)
        # The sigmoid loss learns a bias besides the temperature: the model's own (SigLIP models
        # have one) or, for models without, one held here (in checkpoints, not in the model).
        self.logit_bias = None
        if isinstance(self.criterion, SigmoidLoss) and getattr(self.model, "logit_bias", None) is None:
            self.logit_bias = nn.Parameter(torch.tensor(float(self.hparams.loss.get("init_logit_bias", -10.0))))
        # BLIP's image-text matching loss on hard negatives, weighted against the retrieval loss.
        self.itm_weight = float(self.hparams.loss.get("itm_weight", 0.0))
        if self.itm_weight and not hasattr(self.model, "matching_loss"):
            raise ConfigError(
                f"model.loss.itm_weight={self.itm_weight:g} trains a matching head, which only BLIP backbones have "
                f"(backbone={self.hparams.backbone.get('name')}); set it to 0"
            )
        if scores_pairs(self.model) and optimizer:
            raise ConfigError(
                f"backbone={self.hparams.backbone.get('name')} scores (description, tile) pairs and is evaluated, not "
                "trained: transformers' ViLT retrieval head has no training loss; evaluate it with eval.py"
            )
        self._lock_towers(encoder.image_tower, lock_image, lock_text)
        if grad_checkpointing:
            self.model.set_grad_checkpointing(True)
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        self._compiled = False
        self._embedded: list[dict[str, torch.Tensor]] = []
        self.best_metrics: dict[str, float] = {}
        self.last_evaluation: dict[str, Any] = {}

    def _lock_towers(self, image_tower: tuple[str, ...], lock_image: bool, lock_text: bool) -> None:
        """Freeze a tower's parameters (``image_tower``: the image tower's name prefixes; the
        text tower is the rest); the learnt temperature and bias always stay trainable."""
        for name, parameter in self.model.named_parameters():
            in_image_tower = name.startswith(image_tower)
            text_locked = lock_text and not in_image_tower and name not in ("logit_scale", "logit_bias")
            if (lock_image and in_image_tower) or text_locked:
                parameter.requires_grad_(False)

    def setup(self, stage: str) -> None:
        if scores_pairs(self.model) and self.trainer is not None and self.trainer.world_size > 1:
            raise ConfigError("a pair scorer (backbone=vilt) evaluates on one device: set trainer.devices=1")
        compile_options = self.hparams.get("compile") or False
        if compile_options and not self._compiled:  # here, not in __init__: spawned processes compile their own
            options = {} if compile_options is True else dict(compile_options)
            for name in ("encode_image", "encode_text"):
                setattr(self.model, name, torch.compile(getattr(self.model, name), **options))
            self._compiled = True

    def _images(self, batch: dict[str, Any]) -> torch.Tensor:
        images = batch["image"]
        return images.contiguous(memory_format=torch.channels_last) if self.hparams.get("channels_last") else images

    def embed(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """L2-normalised ``(image_features, text_features)``, each ``[batch, embed_dim]``;
        ``image_features`` is None for a batch of captions only. Captions are encoded on the
        positions the batch's longest one uses, where that is exact (``model/text_context.py``)."""
        image_features = self.model.encode_image(self._images(batch), normalize=True) if "image" in batch else None
        text_features = encode_text(self.model, batch["tokens"], normalize=True)
        return image_features, text_features

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        if self.itm_weight:  # the matching loss reads the image tower's tokens: one pass for both losses
            image_tokens = self.model.image_tokens(self._images(batch))
            image_features = self.model.image_features(image_tokens, normalize=True)
            text_features = encode_text(self.model, batch["tokens"], normalize=True)
        else:
            image_features, text_features = self.embed(batch)
        if isinstance(self.criterion, SigmoidLoss):
            bias = self.logit_bias if self.logit_bias is not None else self.model.logit_bias
            loss = self.criterion(image_features, text_features, self.model.logit_scale.exp(), bias)
            self.log("train/logit_bias", bias.detach(), batch_size=len(batch["index"]))
        else:
            loss = self.criterion(image_features, text_features, self.model.logit_scale.exp())
        batch_size = len(batch["index"])
        if self.itm_weight:
            pool = matching_pool(
                image_tokens, batch["tokens"], image_features, text_features, _tile_ids(batch), self.criterion.negatives
            )
            matching = self.model.matching_loss(pool)
            self.log("train/itm_loss", matching, batch_size=batch_size)
            loss = loss + self.itm_weight * matching
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        self.log("train/logit_scale", self.model.logit_scale.exp(), batch_size=batch_size)
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        with torch.no_grad():
            self.model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)

    # Evaluation: collect embeddings over the epoch, rank once at its end.
    def on_validation_epoch_start(self) -> None:
        self._embedded = []

    on_test_epoch_start = on_validation_epoch_start

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        if scores_pairs(self.model):  # its pairs are scored at the epoch's end, tile by tile
            self._embedded.append({"tokens": batch["tokens"], "index": batch["index"]})
            return
        image_features, text_features = self.embed(batch)
        self._embedded.append({"image": image_features, "text": text_features, "index": batch["index"]})

    test_step = validation_step

    def _gather_embeddings(self, dataset: Any, stage: str) -> EmbeddedSplit:
        text = torch.cat([part["text"] for part in self._embedded]).float()
        index = torch.cat([part["index"] for part in self._embedded])
        known = self._embedded[0]["image"] is None
        image = text if known else torch.cat([part["image"] for part in self._embedded]).float()
        if self.trainer.world_size > 1:
            # Samplers pad the last batches with repeated samples: gather, then keep each index once.
            image, text, index = (self.all_gather(t).flatten(0, 1) for t in (image, text, index))
        index, keep = _first_occurrence(index)
        if known:
            # A split of captions only: its gallery's embeddings were known beforehand (a cached
            # gallery index), and the datamodule was given them (data known_gallery).
            gallery = getattr(self.trainer.datamodule, "known_gallery", {}).get(stage)
            if gallery is None:
                raise RuntimeError(f"the {stage} split was read without images, and no gallery of it is known")
            row_of_name = {name: row for row, name in enumerate(gallery.names)}
            rows = torch.tensor([row_of_name[dataset.pairs[i].name] for i in index.tolist()], dtype=torch.long)
            return EmbeddedSplit(image=gallery.embeddings[rows].to(text.device), text=text[keep], index=index)
        return EmbeddedSplit(image=image[keep], text=text[keep], index=index)

    def _evaluate(self, stage: str) -> None:
        dataset = getattr(self.trainer, f"{stage}_dataloaders").dataset
        if scores_pairs(self.model):
            evaluation = self._score_pairs(dataset)
        else:
            evaluation = evaluate_split(self._gather_embeddings(dataset, stage), dataset, nearest=self.hparams.nearest)
        self._embedded = []
        # Validation logs the overall figures; the test also breaks them down by text view.
        groups = None if stage == "test" else ("all",)
        metrics = flatten_metrics(evaluation.metrics, stage, groups)
        metrics.update(flatten_metrics(evaluation.full_city_metrics, f"{stage}/full", groups))
        if stage == "val" and not self.trainer.sanity_checking:
            for key in (f"{stage}/R@1", f"{stage}/L@50"):
                self.best_metrics[key] = max(self.best_metrics.get(key, -math.inf), metrics[key])
                metrics[f"{key}_best"] = self.best_metrics[key]
        # Every rank ranked the embeddings of all ranks, so every rank holds the same figures:
        # synchronising them changes nothing and is what Lightning asks of epoch-level values.
        self.log_dict(metrics, sync_dist=True)
        self.last_evaluation[stage] = evaluation

    def _score_pairs(self, dataset: Any) -> Evaluation:
        """A pair scorer's evaluation: the (description, tile) pairs scored by the model itself."""
        tokens = torch.cat([part["tokens"] for part in self._embedded])
        index = torch.cat([part["index"] for part in self._embedded]).tolist()
        datamodule = getattr(self.trainer, "datamodule", None)
        return evaluate_pairs(
            self.model.score,
            tile_loader(self.preprocess, pad_images),
            tokens,
            index,
            dataset,
            self.hparams.nearest,
            whole_gallery=self.hparams.backbone.get("whole_gallery", False),
            batch_size=getattr(datamodule, "per_device_eval_batch_size", 128),
        )

    def on_validation_epoch_end(self) -> None:
        self._evaluate("val")

    def on_test_epoch_end(self) -> None:
        self._evaluate("test")

    def configure_optimizers(self) -> dict[str, Any]:
        decay, no_decay = [], []
        for name, parameter in self.named_parameters():
            if not parameter.requires_grad:
                continue
            # As open_clip: no weight decay on gains, biases, embeddings' scale and temperature.
            (no_decay if parameter.ndim < 2 or "logit_scale" in name else decay).append(parameter)
        if not self.hparams.optimizer:
            raise ConfigError("model.optimizer is not set: train.py composes it from the optim group (fast or paper)")
        make_optimizer = instantiate(self.hparams.optimizer)
        if not isinstance(make_optimizer, functools.partial):
            raise ConfigError(
                "optim.optimizer must be a partial (_partial_: true): the module completes it with its parameter groups"
            )
        weight_decay = make_optimizer.keywords.get("weight_decay", 0.0)
        optimizer = make_optimizer(
            [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        )
        if not self.hparams.scheduler:
            return {"optimizer": optimizer}
        scheduler = instantiate(self.hparams.scheduler, optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["best_metrics"] = dict(self.best_metrics)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.best_metrics = dict(checkpoint.get("best_metrics", {}))


def _tile_ids(batch: dict[str, Any]) -> torch.Tensor | None:
    """``[B]`` int64: an id of each pair's tile, equal on every process for the same file name
    (None: the batch does not name its tiles)."""
    names = batch.get("name")
    if names is None:
        return None
    ids = [
        int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little", signed=True) for name in names
    ]
    return torch.tensor(ids, dtype=torch.int64, device=batch["tokens"].device)


def _first_occurrence(index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted unique ``index`` values and, for each, the position of its first occurrence."""
    unique, inverse = torch.unique(index, return_inverse=True)
    positions = torch.arange(len(index), device=index.device)
    first = torch.full_like(unique, len(index)).scatter_reduce(0, inverse, positions, reduce="amin")
    return unique, first
