"""Codebook usage: from ids, streams and shard histograms; the `vqtok usage` command."""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest
import torch

from vqtok.metrics import codebook_usage, merge_histograms, read_histograms
from vqtok.metrics.commands import add_commands


def test_uniform_usage_has_full_perplexity() -> None:
    ids = torch.arange(16).repeat(5).view(5, 4, 4)  # every code 5 times
    u = codebook_usage(ids, 16)
    assert u.used_codes == 16 and u.used_fraction == 1.0 and u.dead_codes == []
    assert u.perplexity == pytest.approx(16.0)
    assert u.entropy_bits == pytest.approx(4.0)
    assert u.total_tokens == 80


def test_skewed_usage_numbers() -> None:
    hist = [6, 2, 0, 2, 0, 0, 0, 0]  # p = .6, .2, .2
    u = codebook_usage(hist, 8, top_k=2)
    h = -(0.6 * math.log(0.6) + 2 * 0.2 * math.log(0.2))
    assert u.entropy_bits == pytest.approx(h / math.log(2))
    assert u.perplexity == pytest.approx(math.exp(h))
    assert u.dead_codes == [2, 4, 5, 6, 7]
    assert u.used_fraction == pytest.approx(3 / 8)
    assert u.top_codes == [0, 1] and u.top_k_share == pytest.approx(0.8)


def test_stream_equals_whole_and_histogram() -> None:
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 50, size=(7, 8, 8)) ** 1  # (7, 8, 8)
    whole = codebook_usage(torch.from_numpy(ids), 64)
    stream = codebook_usage((torch.from_numpy(ids[i : i + 2]) for i in range(0, 7, 2)), 64)
    hist = np.bincount(ids.ravel(), minlength=64)
    from_hist = codebook_usage(hist, 64, is_histogram=True)
    assert whole == stream == from_hist
    assert whole.used_codes <= 50 and all(c >= 50 for c in whole.dead_codes[-14:])


def test_bad_ids_are_rejected() -> None:
    with pytest.raises(ValueError, match="outside the codebook"):
        codebook_usage(torch.tensor([0, 3, 9]), 8)
    with pytest.raises(TypeError):
        codebook_usage(torch.tensor([0.5, 1.0]), 8)
    with pytest.raises(ValueError, match="all zeros"):
        codebook_usage([0, 0, 0], 3)
    with pytest.raises(ValueError, match="different lengths"):
        merge_histograms([[1, 2], [1, 2, 3]])


def _write_shards(tmp_path, hists, size):
    for i, h in enumerate(hists):
        (tmp_path / f"shard-{i:05d}.tar.json").write_text(json.dumps({"histogram": h, "codebook_size": size}))
    (tmp_path / "other.json").write_text(json.dumps({"note": "no histogram here"}))


def test_read_histograms_merges_shards(tmp_path) -> None:
    _write_shards(tmp_path, [[1, 0, 3, 0], [0, 0, 1, 4]], 4)
    hist, files = read_histograms(tmp_path)
    assert files == 2 and hist.tolist() == [1, 0, 4, 4]
    (tmp_path / "bad.json").write_text(json.dumps({"histogram": [1, 2, 3], "codebook_size": 3}))
    with pytest.raises(ValueError, match="other shards have"):
        read_histograms(tmp_path)


def test_usage_command(tmp_path, capsys) -> None:
    _write_shards(tmp_path, [[2, 0, 2, 0], [0, 0, 2, 2]], 4)
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers())
    args = parser.parse_args(["usage", str(tmp_path), "--json", "--top-k", "1"])
    assert args.func(args) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["shards"] == 2 and data["total_tokens"] == 8 and data["dead_codes"] == [1]
    assert data["top_codes"] == [2] and data["top_k_share"] == pytest.approx(0.5)
    args = parser.parse_args(["usage", str(tmp_path / "missing")])
    with pytest.raises(NotADirectoryError):
        args.func(args)
