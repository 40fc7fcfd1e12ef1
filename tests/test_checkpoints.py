import logging

import open_clip
import pytest
import torch

from cvgtext.checkpoints import model_state_dict, read_checkpoint
from cvgtext.model.weights import load_weights
from cvgtext.errors import CheckpointError
from cvgtext.model.encoder import build_encoder
from cvgtext.model.positional import resize_state_dict_context_length


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_encoder("cvg-tiny")


def text_features(encoder, text="a long street " * 40):
    with torch.no_grad():
        return encoder.model.encode_text(encoder.tokenizer([text]))


def test_missing_file_and_non_checkpoint_are_named(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "nothing.ckpt")
    junk = tmp_path / "notes.ckpt"
    junk.write_text("these are not weights")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint") as error:
        read_checkpoint(junk)
    assert "notes.ckpt" in str(error.value)


class Payload:
    def __reduce__(self):
        return (print, ("this would run on load",))


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {}, "payload": Payload()}, path)
    with pytest.raises(CheckpointError, match="refused"):
        read_checkpoint(path)


def test_lightning_and_ddp_prefixes_are_stripped():
    weight = torch.zeros(2)
    assert set(model_state_dict({"state_dict": {"model.a": weight, "model.b": weight}})) == {"a", "b"}
    assert set(model_state_dict({"state_dict": {"module.a": weight}})) == {"a"}
    assert set(model_state_dict({"a": weight, "epoch": 3})) == {"a"}


def test_a_300_position_state_dict_loads_at_300_and_at_77(tmp_path, tiny):
    state = resize_state_dict_context_length(tiny.model.state_dict(), 300)
    path = tmp_path / "crosstext2loc.pth"
    torch.save(state, path)

    long_model = build_encoder("cvg-tiny", pretrained=str(path), context_length=300)
    assert long_model.model.positional_embedding.shape[0] == 300
    assert torch.equal(long_model.model.positional_embedding, state["positional_embedding"])
    assert text_features(long_model).shape == (1, 128)

    short_model = build_encoder("cvg-tiny", pretrained=str(path))
    assert short_model.model.positional_embedding.shape[0] == 77
    expected = resize_state_dict_context_length(state, 77)["positional_embedding"]
    assert torch.allclose(short_model.model.positional_embedding, expected)


def test_a_checkpoint_of_another_architecture_is_refused(tmp_path):
    other = open_clip.create_model("cvg-tiny", embed_dim=64)
    path = tmp_path / "other.pt"
    torch.save(other.state_dict(), path)
    with pytest.raises(CheckpointError, match="does not fit .* set backbone="):
        build_encoder("cvg-tiny", pretrained=str(path))


def test_keys_present_on_one_side_are_reported(tmp_path, tiny, caplog):
    state = dict(tiny.model.state_dict())
    del state["ln_final.weight"]
    state["extra.head"] = torch.zeros(3)
    path = tmp_path / "partial.pt"
    torch.save({"state_dict": state}, path)
    model = build_encoder("cvg-tiny").model
    with caplog.at_level(logging.WARNING, logger="cvgtext.model.weights"):
        load_weights(model, path)
    assert "lacks 1 weights" in caplog.text and "ln_final.weight" in caplog.text
    assert "does not use" in caplog.text and "extra.head" in caplog.text


def test_unknown_model_name_and_missing_pretrained_file_are_config_errors(tmp_path):
    from cvgtext.errors import ConfigError

    with pytest.raises(ConfigError, match="not an open_clip model"):
        build_encoder("ViT-Z-99")
    with pytest.raises(ConfigError, match="no such checkpoint file"):
        build_encoder("cvg-tiny", pretrained=str(tmp_path / "weights.pt"))
