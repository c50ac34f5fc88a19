"""Issue 13 (a new user's CLI session): model folders vs Hub ids, flat ids, traceable outputs,
misleading messages, one progress rule. Every CLI error path: one line on stderr, exit status 2."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import real_photos
from vqtok import Tokenizer, hub
from vqtok.cli import main


def one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str], code: int = 2) -> str:
    """Run the CLI in-process; assert the exit code and a single stderr line; return that line."""
    assert main(argv) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.fixture
def model_dir(tiny_tokenizer: Tokenizer, tmp_path: Path) -> Path:
    return tiny_tokenizer.save_pretrained(tmp_path / "model")


@pytest.fixture
def image_files(tmp_path: Path) -> list[str]:
    paths = []
    for i, img in enumerate(real_photos(3)):
        p = tmp_path / f"photo{i}.jpg"
        img.save(p, quality=95)
        paths.append(str(p))
    return paths


# ---------------------------------------------------------------------- item 3: folders vs Hub ids
@pytest.fixture
def no_hub(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """Record hf_hub_download calls instead of making them (a call that is not offline fails the test)."""
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    calls: list[dict] = []

    def fake(repo_id: str, filename: str, **kw: object) -> str:
        calls.append(dict(kw, repo_id=repo_id, filename=filename))
        if not kw.get("local_files_only"):
            raise AssertionError("a network download was attempted")
        raise LocalEntryNotFoundError("not in cache")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake)
    hub._reachability.clear()
    yield calls
    hub._reachability.clear()


def test_missing_local_folder_is_named_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_hub, capsys) -> None:
    (tmp_path / "models").mkdir()
    monkeypatch.chdir(tmp_path)
    for name in ("models/nope", "./nope", "/no/such/place", "~/nope-vqtok", "a/b/c"):
        t0 = time.monotonic()
        with pytest.raises(FileNotFoundError, match="no such model folder"):
            Tokenizer.from_pretrained(name)
        assert time.monotonic() - t0 < 1.0
    assert no_hub == []  # never asked the Hub
    line = one_line_error(capsys, ["info", "models/nope"])
    assert line == "vqtok info: error: no such model folder: models/nope"


def test_offline_hub_does_not_retry_and_names_hf_download(monkeypatch: pytest.MonkeyPatch, no_hub, capsys) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    line = one_line_error(capsys, ["info", "some-org/some-model"])
    assert "HF_HUB_OFFLINE" in line and "`hf download some-org/some-model`" in line and "huggingface-cli" not in line
    assert no_hub and all(c["local_files_only"] for c in no_hub)


def test_unreachable_hub_reads_the_cache_only(monkeypatch: pytest.MonkeyPatch, no_hub, capsys) -> None:
    import socket

    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)

    def refuse(*args: object, **kw: object) -> None:
        raise OSError(101, "Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", refuse)
    t0 = time.monotonic()
    line = one_line_error(capsys, ["info", "some-org/some-model"])
    assert time.monotonic() - t0 < 5.0
    assert "cannot be reached" in line and "hf download" in line
    assert no_hub and all(c["local_files_only"] for c in no_hub)
