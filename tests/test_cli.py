"""The `vqtok` command line: encode / decode / info, and one-line errors."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import photo_files
from vqtok import Tokenizer
from vqtok.cli import main


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vqtok", *args], capture_output=True, text=True)


@pytest.fixture
def model_dir(tiny_tokenizer, tmp_path):
    return tiny_tokenizer.save_pretrained(tmp_path / "model")


@pytest.fixture
def image_files(tmp_path):
    return photo_files(tmp_path, stem="img")


def test_encode_decode_round_trip(model_dir, image_files, tmp_path, capsys):
    out = tmp_path / "ids.npy"
    assert main(["encode", *image_files, "--model", str(model_dir), "--out", str(out), "--size", "64"]) == 0
    ids = np.load(out)
    assert ids.shape == (3, 16, 16) and ids.dtype == np.uint16
    tok = Tokenizer.from_pretrained(model_dir)
    expected = tok.encode([Image.open(p) for p in image_files], size=64)
    assert np.array_equal(ids, expected.numpy())
    assert main(["decode", str(out), "--model", str(model_dir), "--out", str(tmp_path / "dec")]) == 0
    pngs = sorted((tmp_path / "dec").glob("*.png"))
    assert [p.name for p in pngs] == ["img0.png", "img1.png", "img2.png"]  # named after the inputs (ids.json)
    assert np.array_equal(np.asarray(Image.open(pngs[1])), tok.decode(expected, output="np")[1])
    assert "encoded 3 image(s)" in capsys.readouterr().out


def test_info_json(model_dir, capsys):
    import json

    assert main(["info", str(model_dir), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["codebook_size"] == 512 and info["downsample_factor"] == 4
    tok = Tokenizer.from_pretrained(model_dir)
    assert info["parameters"] == sum(p.numel() for p in tok.model.parameters())


def test_errors_are_one_line_without_traceback(model_dir, image_files, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    r = run("encode", str(bad), "--model", str(model_dir), "--out", str(tmp_path / "x.npy"))
    assert r.returncode == 2 and "not a readable image" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.npy").exists()
    r = run("encode", image_files[1], "--model", str(model_dir), "--out", str(tmp_path / "x.npy"))
    assert r.returncode == 2 and "pass --size S" in r.stderr and "size=" not in r.stderr  # the CLI's terms
    r = run("info", str(tmp_path / "nowhere"))
    assert r.returncode == 2 and "no such model folder" in r.stderr
    np.save(tmp_path / "big.npy", np.full((4, 4), 9999, dtype=np.int32))
    r = run("decode", str(tmp_path / "big.npy"), "--model", str(model_dir), "--out", str(tmp_path / "d"))
    assert r.returncode == 2 and "[0, 511]" in r.stderr
    r = run("decode", str(tmp_path / "missing.npy"), "--model", str(model_dir), "--out", str(tmp_path / "d"))
    assert r.returncode == 2 and "does not exist" in r.stderr


def test_version_and_help():
    r = run("--help")
    assert r.returncode == 0 and "encode" in r.stdout and "convert" in r.stdout
    r = run("--version")
    assert r.returncode == 0 and r.stdout.startswith("vqtok ")


def test_stdout_is_clean_when_loading(model_dir, capsys):
    Tokenizer.from_pretrained(model_dir).encode(torch.zeros(1, 3, 64, 64))
    assert capsys.readouterr().out == ""


def test_encode_and_decode_stream_in_chunks(model_dir, image_files, tmp_path, monkeypatch, capsys):
    import vqtok.commands as commands

    monkeypatch.setattr(commands, "_CHUNK", 2)  # 3 images -> two rounds
    whole = tmp_path / "whole.npy"
    assert main(["encode", *image_files, "--model", str(model_dir), "--out", str(whole), "--size", "64", "--batch-size", "1"]) == 0
    tok = Tokenizer.from_pretrained(model_dir)
    expected = tok.encode([Image.open(p) for p in image_files], size=64).numpy()
    assert np.array_equal(np.load(whole), expected)
    assert main(["decode", str(whole), "--model", str(model_dir), "--out", str(tmp_path / "dec"), "--batch-size", "1"]) == 0
    pngs = sorted((tmp_path / "dec").glob("*.png"))
    assert len(pngs) == 3
    diff = np.asarray(Image.open(pngs[2])).astype(int) - tok.decode(expected, output="np")[2]
    assert np.abs(diff).max() <= 1  # batch 1 vs 3: float summation order may move a pixel by one level

    # a later chunk of another size, without --size: skipped and reported by name (exit 1); with
    # --strict nothing is written (exit 2)
    small = tmp_path / "small.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(small)
    same = tmp_path / "same.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(same)
    argv = ["encode", str(same), str(same), str(small), "--model", str(model_dir), "--out", str(tmp_path / "x.npy"), "--batch-size", "1"]
    assert main([*argv, "--strict"]) == 2
    assert "small.png: a 8x8 token grid, the images before it 16x16; pass --size" in capsys.readouterr().err
    assert not (tmp_path / "x.npy").exists()
    assert main(argv) == 1
    assert "skipped" in capsys.readouterr().err and np.load(tmp_path / "x.npy").shape == (1, 16, 16)  # same.png once
    (tmp_path / "x.npy").unlink()

    # an out-of-range id anywhere: nothing is written
    bad = expected.astype(np.int32)
    bad[2, 0, 0] = 512
    np.save(tmp_path / "bad.npy", bad)
    assert main(["decode", str(tmp_path / "bad.npy"), "--model", str(model_dir), "--out", str(tmp_path / "nothing")]) == 2
    assert "[0, 511]" in capsys.readouterr().err
    assert not (tmp_path / "nothing").exists()
    # flat ids: never guessed as a grid; the library says grid=(h, w), the CLI its flag
    np.save(tmp_path / "flat.npy", expected[0].reshape(-1))  # 256 ids of one 16x16 image, flattened
    assert main(["decode", str(tmp_path / "flat.npy"), "--model", str(model_dir), "--out", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert "pass --grid HxW" in err and "grid=(h, w)" not in err and not (tmp_path / "nothing").exists()
