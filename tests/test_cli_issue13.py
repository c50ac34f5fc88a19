"""Issue 13 (a new user's CLI session): model folders vs Hub ids, flat ids, traceable outputs,
misleading messages, one progress rule. Every CLI error path: one line on stderr, exit status 2."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import photo_files
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
    return photo_files(tmp_path)


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


# ---------------------------------------------------------------------- item 9: flat ids
def test_flat_ids_need_grid_and_2d_ids_are_one_grid(tiny_tokenizer: Tokenizer, model_dir: Path, tmp_path: Path, capsys) -> None:
    # issue 25: the layout's shape, never guessed: (h, w) is one image, (B, h, w) a batch, flat ids need grid=
    tok = tiny_tokenizer
    grids = np.random.default_rng(0).integers(0, tok.codebook_size, (2, 16, 16))
    flat = grids.reshape(2, 256)
    expected = tok.decode(grids, output="np")  # (2, 64, 64, 3)
    assert np.array_equal(tok.decode(flat, grid=(16, 16), output="np"), expected)
    assert tok.decode(flat, output="np").shape == (8, 1024, 3)  # a 2-D array is one (h, w) grid, whatever its aspect
    with pytest.raises(ValueError, match=r"grid=\(h, w\)"):
        tok.decode(np.zeros(256, np.int64))  # a square length is not guessed either
    assert tok.decode(np.zeros((2, 250), np.int64), grid=(10, 25), output="np").shape == (2, 40, 100, 3)
    assert tok.decode(np.zeros((16, 32), np.int64), output="np").shape == (64, 128, 3)

    np.save(tmp_path / "flat.npy", flat.astype(np.uint16))
    assert main(["decode", str(tmp_path / "flat.npy"), "--model", str(model_dir), "--out", str(tmp_path / "a"), "--grid", "16x16"]) == 0
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["000000.png", "000001.png"]
    np.save(tmp_path / "odd.npy", np.zeros(250, np.uint16))
    line = one_line_error(capsys, ["decode", str(tmp_path / "odd.npy"), "--model", str(model_dir), "--out", str(tmp_path / "b")])
    assert "--grid" in line and not (tmp_path / "b").exists()
    capsys.readouterr()
    assert main(["decode", str(tmp_path / "odd.npy"), "--model", str(model_dir), "--out", str(tmp_path / "b"), "--grid", "10x25"]) == 0
    assert len(list((tmp_path / "b").glob("*.png"))) == 1
    with pytest.raises(SystemExit):
        main(["decode", str(tmp_path / "odd.npy"), "--out", str(tmp_path / "c"), "--grid", "10by25"])


# ---------------------------------------------------------------------- item 10: traceable outputs
def test_encode_records_names_and_decode_uses_them(model_dir: Path, image_files: list[str], tmp_path: Path) -> None:
    sub = tmp_path / "other"
    sub.mkdir()
    twin = sub / Path(image_files[0]).name  # same file name in another folder
    twin.write_bytes(Path(image_files[0]).read_bytes())
    inputs = [*image_files, str(twin)]
    assert main(["encode", *inputs, "--model", str(model_dir), "--out", str(tmp_path / "ids"), "--size", "64"]) == 0
    record = json.loads((tmp_path / "ids.json").read_text())
    assert record["names"] == inputs and record["shape"] == [4, 16, 16] and record["size"] == 64
    from vqtok.pipeline import model_fingerprint

    assert record["model_fingerprint"] == model_fingerprint(Tokenizer.from_pretrained(model_dir))
    assert main(["decode", str(tmp_path / "ids.npy"), "--model", str(model_dir), "--out", str(tmp_path / "dec")]) == 0
    names = sorted(p.name for p in (tmp_path / "dec").iterdir())
    assert names == ["photo0-000003.png", "photo0.png", "photo1.png", "photo2.png"]


# ---------------------------------------------------------------------- item 8: messages
def test_encode_and_decode_messages(model_dir: Path, image_files: list[str], tmp_path: Path, capsys) -> None:
    base = ["--model", str(model_dir), "--out", str(tmp_path / "x.npy")]
    line = one_line_error(capsys, ["encode", image_files[0], "--size", "250", *base])
    assert "--size must be a positive multiple of 4" in line and "250" in line
    line = one_line_error(capsys, ["encode", image_files[0], "--size", "2000000", *base])
    assert "GiB" in line and "smaller --size" in line
    assert not (tmp_path / "x.npy").exists()
    notes = tmp_path / "notes.txt"
    notes.write_text("hello\n")
    line = one_line_error(capsys, ["decode", str(notes), "--model", str(model_dir), "--out", str(tmp_path / "d")])
    assert "is not a .npy file of token ids" in line and "allow_pickle" not in line


# ---------------------------------------------------------------------- item 11: one progress rule
def test_progress_rule(model_dir: Path, image_files: list[str], tmp_path: Path, monkeypatch, caplog, capsys) -> None:
    import io

    from vqtok._progress import Progress, progress_mode

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert progress_mode(True, Tty()) == "bar" and progress_mode(True, io.StringIO()) == "log"
    assert progress_mode(False, Tty()) == "off"
    tty = Tty()
    with Progress("x", total=3, stream=tty) as bar:
        bar.update(3)
    assert "| 0/3 [" in tty.getvalue()  # a tqdm bar

    monkeypatch.setenv("VQTOK_PROGRESS_INTERVAL", "0")  # a line per update
    caplog.set_level("INFO", logger="vqtok.progress")
    argv = ["encode", *image_files, "--model", str(model_dir), "--out", str(tmp_path / "ids.npy"), "--size", "64"]
    assert main(argv) == 0  # stderr is not a terminal under pytest: log lines, no bar
    lines = [r.getMessage() for r in caplog.records if r.name == "vqtok.progress"]
    assert any(line.startswith("encode: 3/3 img (100%)") for line in lines)
    assert "\r" not in capsys.readouterr().err
    caplog.clear()
    assert main(argv + ["--no-progress"]) == 0
    assert not [r for r in caplog.records if r.name == "vqtok.progress"]


def test_misleading_messages_of_other_commands(tmp_path: Path, monkeypatch, no_hub, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    diffusers_folder = tmp_path / "vq-diffusers"
    diffusers_folder.mkdir()
    (diffusers_folder / "config.json").write_text(json.dumps({"_class_name": "VQModel"}))
    line = one_line_error(capsys, ["convert", "taming", str(diffusers_folder), "--out", str(tmp_path / "m")])
    assert "is a folder" in line and "vqtok convert diffusers" in line and "does not exist" not in line
    line = one_line_error(capsys, ["sample", "--prior", "nothere/", "--out", str(tmp_path / "s.png")])
    assert "no such model folder: nothere/" in line and "Repo id" not in line
    assert no_hub == []


# ---------------------------------------------------------------------- item 12: statements the docs make
def test_small_doc_statements_hold(tmp_path: Path, capsys) -> None:
    import torch

    from vqtok.metrics.fid import kernel_inception_distance

    with pytest.raises(SystemExit):
        main(["pretokenize", "--help"])
    help_text = capsys.readouterr().out
    assert "i % WORLD_SIZE == r" in help_text and "%%" not in help_text
    feats = torch.randn(40, 16, generator=torch.Generator().manual_seed(0)) * 3
    kid = kernel_inception_distance(feats, feats + 1, subset_size=1000)  # n < subset size: all subsets = all
    assert kid.subset_size == 40 and kid.std == 0.0  # was 1.3e-16
    line = one_line_error(capsys, ["export", "diffusers", "--out", str(tmp_path / "ex")])  # the default model
    assert "cannot be exported" in line and "l2_norm_codes" in line and not (tmp_path / "ex").exists()


def test_decode_refuses_pickled_arrays(model_dir: Path, tmp_path: Path, capsys) -> None:
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    line = one_line_error(capsys, ["decode", str(tmp_path / "objects.npy"), "--model", str(model_dir), "--out", str(tmp_path / "d")])
    assert "pickled Python objects" in line and "allow_pickle" not in line
