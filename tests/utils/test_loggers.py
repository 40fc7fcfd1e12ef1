"""The W&B logger goes online only for a user who is logged in, or who asks to."""

from __future__ import annotations

import pytest

from cvgtext.utils.loggers import wandb_logged_in, wandb_logger


@pytest.fixture
def nobody(tmp_path, monkeypatch):
    """No API key in the environment and a home folder without a ~/.netrc."""
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("NETRC", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def write_netrc(home, text: str) -> None:
    (home / ".netrc").write_text(text)
    (home / ".netrc").chmod(0o600)


def test_logged_in_by_an_api_key_or_a_netrc_entry_for_wandb(nobody, monkeypatch):
    assert not wandb_logged_in()
    write_netrc(nobody, "machine example.com login me password secret\n")
    assert not wandb_logged_in()
    write_netrc(nobody, "machine api.wandb.ai login user password 0123456789abcdef\n")
    assert wandb_logged_in()
    (nobody / ".netrc").unlink()
    monkeypatch.setenv("WANDB_API_KEY", "0123456789abcdef")
    assert wandb_logged_in()


def test_a_netrc_entry_without_a_key_is_not_a_login(nobody):
    write_netrc(nobody, "machine api.wandb.ai login user\n")
    assert not wandb_logged_in()


def test_an_unreadable_netrc_is_not_a_login(nobody):
    write_netrc(nobody, "machine api.wandb.ai login user password key\nthis is not a netrc\n")
    assert not wandb_logged_in()
    (nobody / ".netrc").unlink()
    (nobody / ".netrc").mkdir()  # a folder where the file should be
    assert not wandb_logged_in()


@pytest.mark.parametrize(
    "logged_in, offline, expected",
    [
        (False, None, True),
        (True, None, False),
        (False, False, False),
        (True, True, True),
    ],
)
def test_the_logger_is_offline_unless_logged_in_or_asked(nobody, monkeypatch, logged_in, offline, expected):
    if logged_in:
        monkeypatch.setenv("WANDB_API_KEY", "0123456789abcdef")
    logger = wandb_logger(offline=offline, project="cvgtext-test", name="run-1", save_dir=str(nobody))
    assert logger._offline is expected
    assert logger._project == "cvgtext-test" and logger._name == "run-1"  # the other settings reach W&B


def test_finish_wandb_closes_the_run_only_when_a_wandb_logger_is_there(monkeypatch):
    import wandb

    from cvgtext.utils.loggers import finish_wandb

    finished = []
    monkeypatch.setattr(wandb, "finish", lambda: finished.append(True))
    WandbLogger = type("WandbLogger", (), {})
    finish_wandb([object()])
    assert finished == []
    finish_wandb([object(), WandbLogger()])
    assert finished == [True]
