"""`vqtok eval` end to end with a tiny random tokenizer and random metric networks."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from vqtok.metrics.commands import add_commands

sys.path.insert(0, str(Path(__file__).parent))
from test_metrics_fid import _published_layout_state
from test_metrics_lpips import _save_random_weights


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    add_commands(p.add_subparsers())
    return p


@pytest.fixture()
def setup(tmp_path):
    from vqtok import Tokenizer, VQGANConfig

    torch.manual_seed(0)
    cfg = VQGANConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), z_channels=32, embed_dim=8, n_embed=16, resolution=32)
    Tokenizer.from_config(cfg).save_pretrained(tmp_path / "tok")
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i in range(3):
        Image.effect_mandelbrot((40 + 8 * i, 36), (-2 + 0.3 * i, -1.2, 1, 1.2), 60).convert("RGB").save(imgs / f"{i}.png")
    torch.save(_published_layout_state(), tmp_path / "incep.pth")
    return tmp_path


def test_eval_writes_json_and_grid(setup, capsys, monkeypatch) -> None:
    tmp = setup
    monkeypatch.setenv("VQTOK_CACHE", str(tmp / "cache"))
    vgg, lin = _save_random_weights(tmp)
    args = _parser().parse_args([
        "eval", str(tmp / "imgs"), "--model", str(tmp / "tok"), "--size", "32", "--out", str(tmp / "out"),
        "--inception-weights", str(tmp / "incep.pth"), "--vgg-weights", str(vgg), "--lpips-weights", str(lin),
        "--kid-subsets", "3", "--no-progress",
    ])
    assert args.func(args) == 0
    text = capsys.readouterr().out
    assert "rFID" in text and "n         3" in text
    data = json.loads((tmp / "out" / "eval.json").read_text())
    assert data["n"] == 3 and data["rfid"] > 0 and data["kid_subset_size"] == 3
    assert data["lpips"] > 0 and 0 < data["ssim"] < 1 and data["psnr"] > 0
    assert data["usage"]["total_tokens"] == 3 * 16 * 16 and data["usage"]["codebook_size"] == 16
    assert data["inception_weights"]["source"] == "path"
    grid = Image.open(tmp / "out" / "grid.png")
    assert grid.size == (32 + 4 + 32, 3 * 32 + 2 * 4)


def test_eval_skips_or_fails_clearly_without_weights(setup, capsys, monkeypatch) -> None:
    tmp = setup
    monkeypatch.setenv("VQTOK_CACHE", str(tmp / "cache"))
    common = ["eval", str(tmp / "imgs"), "--model", str(tmp / "tok"), "--size", "32", "--out", str(tmp / "out2"), "--offline", "--no-fid"]
    args = _parser().parse_args(common)
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "LPIPS     skipped (weights file vgg16-397923af.pth is not available" in out
    data = json.loads((tmp / "out2" / "eval.json").read_text())
    assert data["lpips"] is None and "vgg16-397923af.pth" in data["skipped"]["lpips"] and data["rfid"] is None
    args = _parser().parse_args(common + ["--lpips"])
    with pytest.raises(FileNotFoundError, match="download.pytorch.org"):
        args.func(args)
