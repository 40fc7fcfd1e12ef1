"""Backbone families besides CLIP: SigLIP (open_clip) and BLIP (transformers), each trained and
evaluated end to end on tiny random weights, checked against the library's own forward, and
refused where they do not apply."""

from __future__ import annotations

import json
import math

import pytest
import torch

from cvgtext.model.encoder import build_encoder
from cvgtext.model.loss import matching_pool
from cvgtext.utils.errors import ConfigError
from helpers.city import CITY
from helpers.hf_stand_ins import blip_overrides, small_blip, write_bert_like, write_sentencepiece_like
from helpers.runs import CONF_DIR, compose_config

pytest.importorskip("transformers")

TINY_BLIP = small_blip(width=32, layers=2, image_size=32, patch_size=8)
TEXTS = ["A street with 3 trees and a red roof.", "A street with 1 trees and a blue roof.", "green"]


def captions_of(release_dir) -> list[str]:
    return [
        caption
        for path in (release_dir / "annotation").rglob("*.json")
        for caption in json.loads(path.read_text()).values()
    ]


def siglip_overrides(tokenizer) -> list[str]:
    return [
        "backbone=siglip_b16",
        "backbone.model_name=cvg-tiny-siglip",
        "backbone.pretrained=null",
        f"backbone.tokenizer={tokenizer}",
    ]


def common(release_dir) -> list[str]:
    return [
        "city=Brisbane",
        f"city.name={CITY}",
        f"paths.data_dir={release_dir}",
        "trainer=cpu",
        "data.val_fraction=0.3",
        "data.num_workers=0",
        "data.batch_size=8",
        "data.eval_batch_size=8",
    ]


def train_one_epoch(tmp_path, overrides: list[str], epochs: int = 1):
    from cvgtext.commands.train import train

    run = tmp_path / "train"
    train(
        compose_config(
            "train",
            [
                *overrides,
                "optim=fast",
                f"paths.output_dir={run}",
                f"trainer.max_epochs={epochs}",
                "logger=csv",
                "test=false",
                "~callbacks.rich_progress_bar",
                "~callbacks.model_summary",
                "++trainer.enable_progress_bar=false",
            ],
            tmp_path,
        )
    )
    return run / "checkpoints" / "last.ckpt"


@pytest.mark.slow
def test_siglip_trains_with_its_sigmoid_loss_and_evaluates(release_dir, tmp_path):
    from cvgtext.commands.evaluate import evaluate
    from cvgtext.model.build import build_module

    tokenizer = write_sentencepiece_like(tmp_path / "tokenizer", captions_of(release_dir))
    overrides = [*common(release_dir), *siglip_overrides(tokenizer)]
    checkpoint = train_one_epoch(tmp_path, overrides)
    saved = torch.load(checkpoint, weights_only=True, map_location="cpu")
    assert saved["hyper_parameters"]["loss"]["kind"] == "sigmoid"  # the backbone's own loss by default
    bias = float(saved["state_dict"]["model.logit_bias"])  # SigLIP's own bias, learnt from -10
    assert bias != -10.0 and abs(bias + 10) < 1
    eval_cfg = compose_config("eval", [*overrides, f"ckpt_path={checkpoint}"], tmp_path / "eval")
    metrics = evaluate(eval_cfg)
    assert 0 <= metrics["test/R@1"] <= 100
    module, _ = build_module(eval_cfg)
    assert module.tokenizer(["a red roof"]).shape == (1, 64)
    torch.testing.assert_close(module.model.logit_bias.detach(), saved["state_dict"]["model.logit_bias"])


@pytest.mark.slow
def test_blip_trains_with_matching_loss_and_reranks_with_its_matching_head(release_dir, tmp_path):
    from cvgtext.commands.evaluate import evaluate
    from cvgtext.model.build import build_module

    tokenizer = write_bert_like(tmp_path / "tokenizer", captions_of(release_dir))
    overrides = [*common(release_dir), *blip_overrides(TINY_BLIP, tokenizer)]
    # A run planned for 2 epochs (the schedule's length), stopped after its first, then resumed.
    overrides.append("optim.scheduler.T_max=2")
    checkpoint = train_one_epoch(tmp_path, [*overrides, "model.loss.itm_weight=1.0", "++trainer.log_every_n_steps=1"])
    saved = torch.load(checkpoint, weights_only=True, map_location="cpu")
    assert saved["hyper_parameters"]["backbone"]["config"]["vision_config"]["hidden_size"] == 32
    logged = list((tmp_path / "train").rglob("metrics.csv"))
    assert logged and any("train/itm_loss" in path.read_text() for path in logged)
    # A second epoch resumed from the first: the configuration the checkpoint recorded rebuilds it.
    resumed = train_one_epoch(tmp_path, [*overrides, "model.loss.itm_weight=1.0", f"ckpt_path={checkpoint}"], epochs=2)
    saved_first, saved = saved, torch.load(resumed, weights_only=True, map_location="cpu")
    assert saved["global_step"] == 2 * saved_first["global_step"] and resumed == checkpoint
    # the second epoch learnt (the schedule's second half, not a learning rate of 0)
    assert not torch.equal(saved["state_dict"]["model.logit_scale"], saved_first["state_dict"]["model.logit_scale"])

    # eval.py rebuilds the model from what the checkpoint recorded, without the training config's
    # architecture overrides, and reports the metrics with and without ITM re-ranking.
    eval_overrides = [
        "backbone=blip_b",
        f"ckpt_path={checkpoint}",
        "reranker=blip_itm",
        "reranker.top_k=4",
        f"paths.output_dir={tmp_path}/eval-run",
    ]
    eval_cfg = compose_config("eval", [*common(release_dir), *eval_overrides], tmp_path / "eval")
    metrics = evaluate(eval_cfg)
    assert 0 <= metrics["test/R@1"] <= 100
    reranking = json.loads((tmp_path / "eval-run" / "metrics.json").read_text())["reranking"]
    assert reranking["reranker"] == "blip_itm" and reranking["reranked"] == reranking["queries"] > 0
    assert set(reranking["with"]) == set(reranking["without"])
    module, _ = build_module(eval_cfg)
    for name, value in module.model.state_dict().items():
        torch.testing.assert_close(value, saved["state_dict"][f"model.{name}"], msg=name)

    # The query tool: ranked by the contrastive embeddings, re-ranked by the matching head.
    from cvgtext.commands.locator import Locator

    locate_cfg = compose_config(
        "locate",
        [
            *common(release_dir),
            "backbone=blip_b",
            f"ckpt_path={checkpoint}",
            "reranker=blip_itm",
            "reranker.top_k=3",
            "top_k=3",
        ],
        tmp_path / "locate",
    )
    location = Locator(locate_cfg).locate(["A street with 2 trees and a red roof."])[0]
    assert len(location.candidates) == 3
    assert location.reranking and all(c.reason.startswith("image-text matching: ") for c in location.candidates)


def test_blip_embeddings_and_matching_equal_transformers_forward(tmp_path):
    """Our ITC embeddings and ITM logits are ``BlipForImageTextRetrieval``'s own, on its weights."""
    encoder = build_encoder(
        "blip-base", family="blip", tokenizer=str(write_bert_like(tmp_path, TEXTS)), config=TINY_BLIP
    )
    model, blip = encoder.model.eval(), encoder.model.blip
    tokens = encoder.tokenizer(TEXTS)
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    mask = (tokens != 0).long()
    with torch.no_grad():
        similarity = blip(input_ids=tokens, pixel_values=images, attention_mask=mask, use_itm_head=False).itm_score
        ours = model.encode_image(images, normalize=True) @ model.encode_text(tokens, normalize=True).T
        torch.testing.assert_close(ours, similarity)
        itm = blip(input_ids=tokens, pixel_values=images, attention_mask=mask, use_itm_head=True).itm_score
        torch.testing.assert_close(model.match_logits(images, tokens), itm)
        torch.testing.assert_close(model.match(images, tokens), itm.softmax(-1)[:, 1])
    assert model.logit_scale.item() == pytest.approx(math.log(1 / 0.07))


def test_matching_loss_draws_negatives_off_the_positives_and_trains_the_head(tmp_path):
    encoder = build_encoder(
        "blip-base", family="blip", tokenizer=str(write_bert_like(tmp_path, TEXTS)), config=TINY_BLIP
    )
    model = encoder.model
    tokens = encoder.tokenizer(TEXTS[:2] * 2)
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    features = model.encode_image(images, True), model.encode_text(tokens, True)
    loss = model.matching_loss(matching_pool(model.image_tokens(images), tokens, *features))
    loss.backward()
    assert loss.item() > 0 and model.blip.itm_head.weight.grad.abs().sum() > 0
    # Pairs of one tile are never each other's negatives: with every pair of one tile there is
    # nothing to draw, and only the 4 positives are scored.
    with torch.no_grad():
        pool = matching_pool(model.image_tokens(images), tokens, *features, tiles=torch.zeros(4, dtype=torch.int64))
        positives = model.match_logits(images, tokens)
        expected = torch.nn.functional.cross_entropy(positives, torch.ones(4, dtype=torch.long))
        torch.testing.assert_close(model.matching_loss(pool), expected)
    # A device whose every image was skipped still returns a loss that backpropagates (to 0).
    empty = model.matching_loss(matching_pool(model.image_tokens(images[:0]), tokens[:0], *(f[:0] for f in features)))
    assert empty.item() == 0 and empty.requires_grad


def test_blip_preprocessing_is_blips_image_processor():
    from PIL import Image
    from transformers import BlipImageProcessor

    from cvgtext.model.blip import preprocess_for

    image = Image.fromarray(
        torch.randint(0, 256, (97, 131, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(2)).numpy()
    )
    theirs = BlipImageProcessor(size={"height": 64, "width": 64}).preprocess(image, return_tensors="pt")
    torch.testing.assert_close(preprocess_for((64, 64))(image), theirs.pixel_values[0], atol=2e-2, rtol=0)


def test_siglip_tokenizer_from_a_folder_is_open_clips_hf_tokenizer(tmp_path):
    from open_clip.tokenizer import HFTokenizer

    folder = write_sentencepiece_like(tmp_path, TEXTS)
    encoder = build_encoder("cvg-tiny-siglip", tokenizer=str(folder), context_length=64)
    theirs = HFTokenizer(str(folder), context_length=64, clean="canonicalize")
    assert torch.equal(encoder.tokenizer(TEXTS), theirs(TEXTS))
    assert encoder.tokenizer(TEXTS).shape == (3, 64) and (encoder.tokenizer(TEXTS) > 2).any()


def test_refusals_name_the_setting(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    bert = str(write_bert_like(tmp_path / "bert", TEXTS))
    with pytest.raises(
        ConfigError, match=r"^backbone.family='albef' is not a backbone family; choose one of open_clip, blip, vilt"
    ):
        build_encoder("blip-base", family="albef")
    with pytest.raises(ConfigError, match=r"BLIP takes square 32x32 images only .*img=stv.* CLIP and Long-CLIP"):
        build_encoder("blip-base", family="blip", tokenizer=bert, config=TINY_BLIP, image_aspect=2)
    with pytest.raises(ConfigError, match=r"cvg-tiny-siglip \(a TimmModel image tower\) takes only its own image size"):
        build_encoder("cvg-tiny-siglip", tokenizer=bert, image_aspect=2)
    with pytest.raises(
        ConfigError,
        match=r"^backbone.tokenizer: the tokenizer of cvg-tiny-siglip \(timm/ViT-B-16-SigLIP\) "
        r"could not be loaded .*set backbone.tokenizer to a folder",
    ):
        build_encoder("cvg-tiny-siglip")
    with pytest.raises(ConfigError, match=r"backbone.tokenizer='/nowhere': no such folder"):
        build_encoder("cvg-tiny-siglip", tokenizer="/nowhere")
    with pytest.raises(
        ConfigError, match=r"cvg-tiny uses open_clip's own CLIP tokenizer; leave backbone.tokenizer null"
    ):
        build_encoder("cvg-tiny", tokenizer=bert)
    with pytest.raises(
        ConfigError,
        match=r"backbone.pretrained='Salesforce/blip-itm-base-coco' \(model-hub name\) could "
        r"not be loaded .*give a folder saved by save_pretrained",
    ):
        build_encoder("blip-base", family="blip", pretrained="Salesforce/blip-itm-base-coco")
    with pytest.raises(ConfigError, match=r"backbone.model_name='blip-huge' is not a BLIP architecture"):
        build_encoder("blip-huge", family="blip", tokenizer=bert)
    with pytest.raises(ConfigError, match=r"random weights needs a tokenizer; set backbone.tokenizer"):
        build_encoder("blip-base", family="blip", config=TINY_BLIP)


def test_matching_loss_and_reranker_refuse_backbones_without_a_matching_head():
    from cvgtext.model.module import CrossViewRetrieval
    from cvgtext.rerank.itm import ITMReranker

    optimizer = {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1e-3}
    with pytest.raises(ConfigError, match=r"model.loss.itm_weight=0.5 trains a matching head, which only BLIP"):
        CrossViewRetrieval(backbone={"model_name": "cvg-tiny"}, optimizer=optimizer, loss={"itm_weight": 0.5})
    module = CrossViewRetrieval(backbone={"model_name": "cvg-tiny", "name": "tiny"}, optimizer=optimizer)
    with pytest.raises(
        ConfigError,
        match=r"reranker=blip_itm needs a backbone with an image-text matching head "
        r"\(backbone=blip_b or blip_l\); backbone=tiny has none",
    ):
        ITMReranker(module)


def test_matching_reranker_reads_each_tile_once_per_batch_and_scores_as_the_head(tmp_path):
    from PIL import Image

    from cvgtext.model.module import CrossViewRetrieval
    from cvgtext.rerank import Query
    from cvgtext.rerank.itm import ITMReranker

    backbone = {
        "model_name": "blip-base",
        "family": "blip",
        "tokenizer": str(write_bert_like(tmp_path, TEXTS)),
        "config": TINY_BLIP,
    }
    module = CrossViewRetrieval(backbone=backbone, optimizer={"_target_": "torch.optim.AdamW", "_partial_": True})
    generator = torch.Generator().manual_seed(2)
    tiles = []
    for i in range(3):
        pixels = torch.randint(0, 256, (40, 40, 3), generator=generator, dtype=torch.uint8).numpy()
        Image.fromarray(pixels).save(tmp_path / f"t{i}.png")
        tiles.append(tmp_path / f"t{i}.png")
    (tmp_path / "zz_bad.png").write_bytes(b"not an image")
    t0, t1, t2 = tiles
    scores = [0.3, 0.2, 0.1]
    queries = [
        Query(TEXTS[0], [t0, t1, t2], scores),
        Query(TEXTS[1], [t1, t2, t0], scores),
        Query(TEXTS[2], [t2, t0, tmp_path / "zz_bad.png"], scores),
    ]
    encoded = []
    image_tokens = module.model.image_tokens
    module.model.image_tokens = lambda images: encoded.append(len(images)) or image_tokens(images)
    judged = ITMReranker(module, batch_size=16).judge(queries)
    assert encoded == [3]  # nine pairs, three readable tiles, one pass of the image tower
    assert judged[2][2].value is None and judged[2][2].failures == {"unreadable tile": 1}
    with torch.no_grad():
        for query, values in zip(queries, judged):
            for tile, value in zip(query.tiles, values):
                if tile.name == "zz_bad.png":
                    continue
                image = module.preprocess(Image.open(tile).convert("RGB"))[None]
                expected = module.model.match(image, module.tokenizer([query.description]))
                assert value.value == pytest.approx(expected.item(), abs=1e-6)


def test_locking_blips_image_tower(tmp_path):
    from cvgtext.model.module import CrossViewRetrieval

    backbone = {
        "model_name": "blip-base",
        "family": "blip",
        "tokenizer": str(write_bert_like(tmp_path, TEXTS)),
        "config": TINY_BLIP,
    }
    optimizer = {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1e-3}
    module = CrossViewRetrieval(backbone=backbone, optimizer=optimizer, lock_image=True)
    frozen = {name for name, p in module.model.named_parameters() if not p.requires_grad}
    assert frozen and all(name.startswith(("blip.vision_model.", "blip.vision_proj.")) for name in frozen)
    assert module.model.logit_scale.requires_grad and module.model.blip.text_proj.weight.requires_grad


@pytest.mark.heavy
def test_siglip_b16_at_real_shapes_embeds_as_open_clips_own_model(tmp_path):
    """backbone=siglip_b16 as configured (256 px, 64 tokens, random weights) against open_clip's
    ViT-B-16-SigLIP-256 built by open_clip itself with the same weights."""
    import open_clip
    from open_clip.tokenizer import HFTokenizer
    from PIL import Image

    from cvgtext.model.module import CrossViewRetrieval

    folder = write_sentencepiece_like(tmp_path / "tokenizer", TEXTS)
    cfg = compose_config(
        "train", ["backbone=siglip_b16", "backbone.pretrained=null", f"backbone.tokenizer={folder}"], tmp_path
    )
    assert cfg.model.loss.kind == "sigmoid"
    module = CrossViewRetrieval(**{key: cfg.model[key] for key in ("backbone", "optimizer", "loss")})
    ours = module.model.eval()
    theirs, _, preprocess = open_clip.create_model_and_transforms("ViT-B-16-SigLIP-256")
    theirs.load_state_dict(ours.state_dict())
    theirs.eval()
    image = Image.fromarray(
        torch.randint(0, 256, (300, 280, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(3)).numpy()
    )
    pixels = module.preprocess(image)[None]
    assert pixels.shape == (1, 3, 256, 256)
    torch.testing.assert_close(pixels, preprocess(image)[None])
    tokens = module.tokenizer(TEXTS)
    torch.testing.assert_close(tokens, HFTokenizer(str(folder), context_length=64, clean="canonicalize")(TEXTS))
    with torch.no_grad():
        torch.testing.assert_close(
            ours.encode_image(pixels, normalize=True), theirs.encode_image(pixels, normalize=True)
        )
        torch.testing.assert_close(ours.encode_text(tokens, normalize=True), theirs.encode_text(tokens, normalize=True))
    assert ours.logit_bias.item() == -10.0


@pytest.mark.heavy
def test_blip_base_at_real_shapes_from_a_saved_folder_equals_transformers(tmp_path):
    """backbone=blip_b's architecture (ViT-B/16 at 384 px, BERT-base), saved by save_pretrained with
    its tokenizer and loaded as backbone.pretrained=<folder>, embeds and matches as
    ``BlipForImageTextRetrieval`` loaded by transformers from the same folder."""
    from PIL import Image
    from transformers import BlipForImageTextRetrieval, BlipImageProcessor

    from cvgtext.model.blip import blip_config

    folder = tmp_path / "blip"
    torch.manual_seed(0)
    BlipForImageTextRetrieval(blip_config("blip-base")).save_pretrained(folder)
    write_bert_like(folder, TEXTS)
    encoder = build_encoder("blip-base", family="blip", pretrained=str(folder), context_length=77)
    theirs = BlipForImageTextRetrieval.from_pretrained(folder).eval()
    ours = encoder.model.eval()
    image = Image.fromarray(
        torch.randint(0, 256, (400, 420, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(4)).numpy()
    )
    pixels = torch.stack([encoder.preprocess(image)] * 3)
    assert pixels.shape == (3, 3, 384, 384)
    reference = BlipImageProcessor(size={"height": 384, "width": 384})(image, return_tensors="pt").pixel_values
    torch.testing.assert_close(pixels[:1], reference, atol=2e-2, rtol=0)
    tokens = encoder.tokenizer(TEXTS)
    mask = (tokens != 0).long()
    with torch.no_grad():
        similarity = theirs(input_ids=tokens, pixel_values=pixels, attention_mask=mask, use_itm_head=False).itm_score
        torch.testing.assert_close(ours.encode_image(pixels, True) @ ours.encode_text(tokens, True).T, similarity)
        itm = theirs(input_ids=tokens, pixel_values=pixels, attention_mask=mask, use_itm_head=True).itm_score
        torch.testing.assert_close(ours.match_logits(pixels, tokens), itm)
    assert encoder.resolved["tokenizer"] == str(folder)


@pytest.mark.parametrize("option", sorted(path.stem for path in (CONF_DIR / "backbone").glob("*.yaml")))
def test_every_backbone_option_names_a_model_of_its_family(option, tmp_path):
    import open_clip

    from cvgtext.model.blip import ARCHITECTURES
    from cvgtext.model.vilt import MODEL_NAMES

    cfg = compose_config("train", [f"backbone={option}"], tmp_path)
    backbone = cfg.backbone
    assert backbone.name == option and cfg.model.loss.kind == backbone.loss
    if backbone.family == "blip":
        assert backbone.model_name in ARCHITECTURES and backbone.pretrained.startswith("Salesforce/blip-itm-")
        return
    if backbone.family == "vilt":
        assert backbone.model_name in MODEL_NAMES and backbone.pretrained == "dandelin/vilt-b32-finetuned-coco"
        assert backbone.context_length == 40  # ViLT's own text positions, where the official evaluation cuts
        return
    assert backbone.family == "open_clip" and backbone.model_name in open_clip.list_models()
    text_cfg = open_clip.get_model_config(backbone.model_name)["text_cfg"]
    if "SigLIP" in backbone.model_name:  # the official baseline's 64 tokens, the model's own
        assert (backbone.loss, backbone.context_length, backbone.pretrained) == ("sigmoid", 64, "webli")
        assert text_cfg["context_length"] == 64
        assert "webli" in open_clip.list_pretrained_tags_by_model(backbone.model_name)
    else:
        assert backbone.loss == "contrastive"


def _matching_loss_on_rank(rank: int, folder, port: int) -> None:
    """One of two gloo processes: BLIP's matching loss on this rank's rows of ``inputs.pt``."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        inputs = torch.load(folder / "inputs.pt")
        model = build_encoder("blip-base", family="blip", tokenizer=inputs["tokenizer"], config=TINY_BLIP).model
        model.load_state_dict(inputs["model"])
        rows = slice(*inputs["rows"][rank])
        images = inputs["images"][rows].clone().requires_grad_()
        image_tokens = model.image_tokens(images)
        pool = matching_pool(
            image_tokens,
            inputs["tokens"][rows],
            model.image_features(image_tokens, True),
            model.encode_text(inputs["tokens"][rows], True),
            inputs["tiles"][rows],
        )
        torch.manual_seed(100 + rank)
        loss = model.matching_loss(pool)
        loss.backward()
        torch.save({"loss": loss.detach(), "grad": images.grad, "pool": len(pool.tiles)}, folder / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.heavy  # starts 2 processes: make test-slow
def test_matching_negatives_come_from_every_devices_batch_and_send_gradients_back(tmp_path):
    from cvgtext.model.loss import MatchingPool
    from helpers.web import free_port

    encoder = build_encoder(
        "blip-base", family="blip", tokenizer=str(write_bert_like(tmp_path, TEXTS)), config=TINY_BLIP
    )
    model = encoder.model
    # Rank 0 holds two captions of tile A, rank 1 one of tile B (unequal batches): rank 0's only
    # possible negatives are on rank 1, which local negatives would never see.
    rows = [slice(0, 2), slice(2, 3)]
    inputs = {
        "model": model.state_dict(),
        "tokenizer": str(tmp_path),
        "rows": [(0, 2), (2, 3)],
        "images": torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2)),
        "tokens": encoder.tokenizer(TEXTS),
        "tiles": torch.tensor([7, 7, -3]),
    }
    torch.save(inputs, tmp_path / "inputs.pt")
    torch.multiprocessing.spawn(_matching_loss_on_rank, args=(tmp_path, free_port()), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in (0, 1)]
    assert [rank["pool"] for rank in ranks] == [3, 3]

    # The same draws on one process over the whole batch; each rank's images receive the
    # gradient of both ranks' losses, as DDP's sum over ranks of the gathered rows gives.
    images = inputs["images"].clone().requires_grad_()
    tokens = model.image_tokens(images)
    image_features = model.image_features(tokens, True).detach()
    text_features = model.encode_text(inputs["tokens"], True).detach()
    losses = []
    for rank, part in enumerate(rows):
        torch.manual_seed(100 + rank)
        pool = MatchingPool(
            tokens, inputs["tokens"], image_features, text_features, inputs["tiles"], part.start, part.stop - part.start
        )
        losses.append(model.matching_loss(pool))
    (from_rank_0,) = torch.autograd.grad(losses[0], images, retain_graph=True)
    assert from_rank_0[2].abs().max() > 0  # rank 0's loss reaches rank 1's image
    sum(losses).backward()
    for rank, part in enumerate(rows):
        torch.testing.assert_close(ranks[rank]["loss"], losses[rank].detach(), rtol=1e-4, atol=1e-5)
        expected = images.grad[part]
        torch.testing.assert_close(ranks[rank]["grad"], expected, rtol=1e-3, atol=1e-3 * expected.abs().max().item())
    # Rank 0's two pairs each met rank 1's caption and image: 6 rows scored, not its 2 positives.
    with torch.no_grad():
        alone = model.match_logits(images[:2], inputs["tokens"][:2])
        assert not torch.isclose(ranks[0]["loss"], torch.nn.functional.cross_entropy(alone, torch.ones(2).long()))
