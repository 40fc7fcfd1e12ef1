"""Memory, speed and fine-tuning options of the module: gradient checkpointing, channels-last,
compiled encoders, locked towers."""

from __future__ import annotations

import pytest
import torch

from cvgtext.model.module import CrossViewRetrieval

OPTIMIZER = {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1e-3}


def tiny_module(**options) -> CrossViewRetrieval:
    torch.manual_seed(0)
    return CrossViewRetrieval(backbone={"model_name": "cvg-tiny"}, optimizer=OPTIMIZER, **options)


def batch(size: int = 4) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return {
        "image": torch.randn(size, 3, 64, 64, generator=generator),
        "tokens": torch.randint(1, 49407, (size, 77), generator=generator),
        "index": torch.arange(size),
    }


def loss_and_gradients(module: CrossViewRetrieval) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    module.train()
    module.zero_grad()
    image_features, text_features = module.embed(batch())
    loss = module.criterion(image_features, text_features, module.model.logit_scale.exp())
    loss.backward()
    gradients = {name: p.grad.clone() for name, p in module.named_parameters() if p.grad is not None}
    return loss.detach(), gradients


def test_grad_checkpointing_gives_the_same_loss_and_gradients():
    plain = tiny_module()
    checkpointed = tiny_module(grad_checkpointing=True)
    assert (
        checkpointed.model.transformer.grad_checkpointing and checkpointed.model.visual.transformer.grad_checkpointing
    )
    assert not plain.model.transformer.grad_checkpointing
    checkpointed.load_state_dict(plain.state_dict())

    loss, gradients = loss_and_gradients(plain)
    checkpointed_loss, checkpointed_gradients = loss_and_gradients(checkpointed)
    assert checkpointed_loss == pytest.approx(loss.item(), abs=1e-6)
    assert gradients.keys() == checkpointed_gradients.keys() and len(gradients) > 10
    for name, gradient in gradients.items():
        torch.testing.assert_close(checkpointed_gradients[name], gradient, atol=1e-6, rtol=1e-5, msg=name)


def test_channels_last_and_compiled_encoders_give_the_same_loss_and_gradients():
    plain = tiny_module()
    loss, gradients = loss_and_gradients(plain)
    # The eager backend traces the encoders as inductor would, without generating code: seconds, not minutes.
    for options in ({"channels_last": True}, {"compile": {"backend": "eager"}}):
        other = tiny_module(**options)
        other.setup("fit")
        other_loss, other_gradients = loss_and_gradients(other)
        assert other_loss == pytest.approx(loss.item(), abs=1e-5), options
        for name, gradient in gradients.items():
            torch.testing.assert_close(other_gradients[name], gradient, atol=1e-5, rtol=1e-4, msg=name)
        assert other.state_dict().keys() == plain.state_dict().keys()  # checkpoints read as before
    assert tiny_module(channels_last=True).model.visual.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    compiled = tiny_module(compile=True)
    compiled.setup("fit")
    assert type(compiled.model.encode_image).__name__ != "method"  # a compiled wrapper, made once
    wrapper = compiled.model.encode_image
    compiled.setup("test")
    assert compiled.model.encode_image is wrapper


@pytest.mark.parametrize("lock_image, lock_text", [(True, False), (False, True), (True, True)])
def test_locking_a_tower_freezes_exactly_its_parameters(lock_image, lock_text):
    module = tiny_module(lock_image=lock_image, lock_text=lock_text)
    for name, parameter in module.model.named_parameters():
        if name == "logit_scale":
            expected_frozen = False  # the temperature is shared and always learnt
        elif name.startswith("visual."):
            expected_frozen = lock_image
        else:
            expected_frozen = lock_text
        assert parameter.requires_grad is not expected_frozen, name

    # Only what is learnt reaches the optimizer, and receives gradients.
    optimizer = module.configure_optimizers()["optimizer"]
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert in_optimizer == {id(p) for p in module.parameters() if p.requires_grad}
    _, gradients = loss_and_gradients(module)
    assert all(module.get_parameter(name).requires_grad for name in gradients)
    assert "model.logit_scale" in gradients


@pytest.mark.slow
def test_long_clip_trains_and_evaluates_at_248_tokens(release_dir, tmp_path, test_backbone):
    """backbone=longclip_b16 end to end on random weights: train one epoch, evaluate its checkpoint."""
    from cvgtext.commands.evaluate import evaluate
    from cvgtext.commands.train import train
    from cvgtext.model.build import build_module
    from helpers.city import CITY
    from helpers.runs import compose_config

    common = [
        "city=Brisbane",
        f"city.name={CITY}",
        f"paths.data_dir={release_dir}",
        "trainer=cpu",
        "data.val_fraction=0.3",
        "data.num_workers=0",
        "data.batch_size=8",
        "data.eval_batch_size=8",
        "backbone=longclip_b16",
        f"backbone.model_name={test_backbone}",
    ]
    run = tmp_path / "train"
    train(
        compose_config(
            "train",
            [
                *common,
                "backbone.pretrained=null",
                "optim=fast",
                f"paths.output_dir={run}",
                "trainer.max_epochs=1",
                "logger=csv",
                "test=false",
                "~callbacks.rich_progress_bar",
                "~callbacks.model_summary",
                "++trainer.enable_progress_bar=false",
            ],
            tmp_path,
        )
    )
    eval_cfg = compose_config("eval", [*common, f"ckpt_path={run}/checkpoints/last.ckpt"], tmp_path / "eval")
    metrics = evaluate(eval_cfg)
    assert 0 <= metrics["test/R@1"] <= 100
    module, backbone = build_module(eval_cfg)
    assert (backbone["context_length"], backbone["context_resize"]) == (248, "keep_first")
    assert module.model.positional_embedding.shape[0] == 248
    assert module.tokenizer(["a red roof"]).shape == (1, 248)


@pytest.mark.slow
def test_the_sigmoid_loss_trains_its_bias_and_the_checkpoint_evaluates(release_dir, tmp_path, test_backbone):
    from cvgtext.commands.evaluate import evaluate
    from cvgtext.commands.train import train
    from helpers.city import CITY
    from helpers.runs import compose_config

    common = [
        "city=Brisbane",
        f"city.name={CITY}",
        f"paths.data_dir={release_dir}",
        "trainer=cpu",
        "data.val_fraction=0.3",
        "data.num_workers=0",
        "data.batch_size=8",
        "data.eval_batch_size=8",
        f"backbone.model_name={test_backbone}",
    ]
    run = tmp_path / "train"
    train(
        compose_config(
            "train",
            [
                *common,
                "model.loss.kind=sigmoid",
                f"paths.output_dir={run}",
                "trainer.max_epochs=1",
                "logger=csv",
                "test=false",
                "~callbacks.rich_progress_bar",
                "~callbacks.model_summary",
                "++trainer.enable_progress_bar=false",
            ],
            tmp_path,
        )
    )
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert checkpoint["hyper_parameters"]["loss"]["kind"] == "sigmoid"
    bias = float(checkpoint["state_dict"]["logit_bias"])
    assert bias != -10.0 and abs(bias + 10) < 1  # learnt, from its start
    metrics = evaluate(compose_config("eval", [*common, f"ckpt_path={run}/checkpoints/last.ckpt"], tmp_path / "eval"))
    assert 0 <= metrics["test/R@1"] <= 100
