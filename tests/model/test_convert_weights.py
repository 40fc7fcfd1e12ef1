"""Converting trusted files the entry points refuse (OpenAI's TorchScript archives, pickles of
objects) into safetensors state dicts, which every entry point then reads safely."""

from __future__ import annotations

import argparse
import warnings

import open_clip
import pytest
import torch

from cvgtext.model.build import build_module
from cvgtext.model.convert_weights import convert, main
from cvgtext.model.encoder import build_encoder
from cvgtext.utils.checkpoints import read_checkpoint
from cvgtext.utils.errors import CheckpointError, ConfigError
from helpers.runs import compose_config

CAPTION = ["a red roof beside a narrow street"]


@pytest.fixture
def archive(tmp_path):
    """A TorchScript archive of the tiny backbone, as OpenAI's released files are of theirs."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated, but it is what those files are
        scripted = open_clip.create_model("cvg-tiny", jit=True)
    path = tmp_path / "tiny.pt"
    scripted.save(str(path))
    return path, {key: value.clone() for key, value in scripted.state_dict().items()}


def embed_text(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model.eval().encode_text(open_clip.get_tokenizer("cvg-tiny")(CAPTION))


def test_a_torchscript_archive_is_refused_with_the_command_that_converts_it(archive):
    path, _ = archive
    with pytest.raises(CheckpointError, match=r"TorchScript archive .*python -m cvgtext.model.convert_weights"):
        read_checkpoint(path)


@pytest.mark.slow
def test_converted_archive_loads_through_pretrained_and_ckpt_path(archive, tmp_path):
    path, weights = archive
    target = tmp_path / "tiny.safetensors"
    state = convert(path, target)
    assert state.keys() == weights.keys()
    assert all(torch.equal(state[key], weights[key]) for key in weights)

    reference = open_clip.create_model("cvg-tiny")
    reference.load_state_dict({key: value for key, value in weights.items() if key != "attn_mask"})
    expected = embed_text(reference)
    assert torch.equal(embed_text(build_encoder("cvg-tiny", str(target)).model), expected)
    module, _ = build_module(compose_config("eval", [f"ckpt_path={target}"], tmp_path))
    assert torch.equal(embed_text(module.model), expected)


def test_a_pickle_of_objects_converts_without_openai_scalars(tmp_path):
    weights = open_clip.create_model("cvg-tiny").state_dict()
    path = tmp_path / "trained.pt"
    extras = {"input_resolution": torch.tensor(64), "vocab_size": torch.tensor(49408)}
    wrapped = {f"module.{key}": value for key, value in {**weights, **extras}.items()}
    torch.save({"args": argparse.Namespace(lr=1e-5), "state_dict": wrapped}, path)
    with pytest.raises(CheckpointError, match="refused"):
        read_checkpoint(path)
    state = convert(path, tmp_path / "trained.safetensors")
    assert state.keys() == weights.keys()


def test_the_command_line_writes_safetensors_and_reports_mistakes(archive, tmp_path, capsys):
    path, weights = archive
    target = tmp_path / "out" / "tiny.safetensors"
    assert main([str(path), str(target)]) == 0
    assert "wrote" in capsys.readouterr().out
    assert torch.equal(read_checkpoint(target)["logit_scale"], weights["logit_scale"])
    assert main([str(tmp_path / "missing.pt"), str(target)]) == 1
    assert "missing.pt does not exist" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"must end in \.safetensors"):
        convert(path, tmp_path / "tiny.pt2")
