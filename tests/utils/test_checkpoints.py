import logging
import pickle

import open_clip
import pytest
import torch

from cvgtext.model.encoder import build_encoder
from cvgtext.model.positional import resize_state_dict_context_length
from cvgtext.model.weights import load_weights
from cvgtext.utils.checkpoints import model_state_dict, read_checkpoint
from cvgtext.utils.errors import CheckpointError
from helpers.models import WritesMarker
from helpers.runs import compose_config


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
    with pytest.raises(CheckpointError) as error:
        read_checkpoint(junk)
    assert str(error.value) == (
        f"checkpoint {junk} is not a PyTorch checkpoint (neither the zip archive torch.save writes nor a pickle)"
    )
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"^checkpoint .*empty.ckpt is an empty file$"):
        read_checkpoint(empty)
    with pytest.raises(CheckpointError, match=r"^checkpoint .* is a folder; expected a checkpoint file"):
        read_checkpoint(tmp_path)
    # A zip archive that is not torch's: one line, not torch's advice on weights_only.
    import zipfile

    archive = tmp_path / "other.ckpt"
    with zipfile.ZipFile(archive, "w") as stream:
        stream.writestr("readme.txt", "hello")
    with pytest.raises(
        CheckpointError, match=r"^checkpoint .*other.ckpt is not a readable PyTorch checkpoint \("
    ) as error:
        read_checkpoint(archive)
    assert "\n" not in str(error.value)


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
    from cvgtext.utils.errors import ConfigError

    with pytest.raises(ConfigError, match="not an open_clip model"):
        build_encoder("ViT-Z-99")
    with pytest.raises(ConfigError, match="no such checkpoint file"):
        build_encoder("cvg-tiny", pretrained=str(tmp_path / "weights.pt"))


def _read_by_eval(path, tmp_path):
    from cvgtext.model.build import build_module

    return build_module(compose_config("eval", [f"ckpt_path={path}"], tmp_path))


def _read_by_resume(path, tmp_path):
    from cvgtext.training.resume import find_resume

    return find_resume(compose_config("train", [f"ckpt_path={path}"], tmp_path))


def _read_as_gallery_index(path, tmp_path):
    from cvgtext.search.gallery import read_index

    assert read_index(path) is None  # a file that cannot be read safely is rebuilt, never trusted


def _read_by_the_trainer(path, tmp_path):
    from cvgtext.utils.checkpoints import AtomicCheckpointIO

    # as the Trainer reads ckpt_path: train.py passes weights_only=True to fit, validate and test
    AtomicCheckpointIO().load_checkpoint(path, weights_only=True)


REFUSED = "was refused: it holds objects other than tensors"
READERS = {
    "read_checkpoint": (lambda path, tmp_path: read_checkpoint(path), CheckpointError, REFUSED),
    "read_checkpoint-mmap": (lambda path, tmp_path: read_checkpoint(path, mmap=True), CheckpointError, REFUSED),
    "load_weights": (lambda path, tmp_path: load_weights(torch.nn.Linear(2, 2), path), CheckpointError, REFUSED),
    "eval-build_module": (_read_by_eval, CheckpointError, REFUSED),
    "resume-find_resume": (_read_by_resume, CheckpointError, REFUSED),
    "trainer-checkpoint_io": (_read_by_the_trainer, pickle.UnpicklingError, "Unsupported global"),
    "gallery-read_index": (_read_as_gallery_index, None, None),
}


@pytest.mark.parametrize("reader", READERS)
def test_a_checkpoint_carrying_code_is_refused_by_every_reader_and_its_code_never_runs(tmp_path, reader):
    marker = tmp_path / "payload-ran"
    path = tmp_path / "downloaded.ckpt"
    torch.save(
        {
            "state_dict": {},
            "optimizer_states": [],
            "loops": {},
            "payload": WritesMarker(marker),
            "names": [],
            "key": {},
        },
        path,
    )
    read, error, match = READERS[reader]
    if error is None:
        read(path, tmp_path)
    else:
        with pytest.raises(error, match=match):
            read(path, tmp_path)
    assert not marker.exists()


def test_the_payload_of_these_checks_does_run_when_loaded_unsafely(tmp_path):
    marker = tmp_path / "payload-ran"
    torch.save({"payload": WritesMarker(marker)}, tmp_path / "downloaded.ckpt")
    torch.load(tmp_path / "downloaded.ckpt", weights_only=False)
    assert marker.read_text() == "ran"
