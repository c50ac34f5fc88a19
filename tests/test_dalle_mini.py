"""dalle-mini / vqgan-jax Flax VQGAN: a taming model written in the Flax file layout converts back to the same ids and pixels."""

from __future__ import annotations

import json
from pathlib import Path

import msgpack
import numpy as np
import pytest
import torch

from tests.conftest import TINY, real_photos, spread_codebook
from tests.flax_layout import flax_tree, write_flax_folder
from vqtok import Tokenizer
from vqtok.cli import main
from vqtok.convert.dalle_mini import dalle_mini_config, flax_to_vqtok_keys, from_dalle_mini, read_flax_msgpack


@pytest.fixture(scope="module")
def taming() -> Tokenizer:
    torch.manual_seed(3)
    tok = Tokenizer.from_config(TINY)
    spread_codebook(tok.model, seed=3)
    return tok


def test_flax_tree_layout_is_vqgan_jaxs(taming: Tokenizer) -> None:
    tree = flax_tree(taming.model.state_dict())
    assert tree["encoder"]["down_0"]["block_0"]["conv1"]["kernel"].shape == (3, 3, 32, 32)  # HWIO
    assert tree["encoder"]["mid"]["attn_1"]["q"]["kernel"].shape == (1, 1, 64, 64)  # the mid block keeps its names
    assert tree["encoder"]["down_2"]["attn_0"]["q"]["kernel"].shape == (1, 1, 64, 64)
    assert tree["decoder"]["up_1"]["upsample"]["conv"]["kernel"].shape[:2] == (3, 3)
    assert tree["quantize"]["embedding"]["embedding"].shape == (TINY.n_embed, TINY.embed_dim)
    assert "scale" in tree["encoder"]["norm_out"]


def test_round_trip_through_the_flax_file_gives_identical_ids_and_pixels(taming: Tokenizer, tmp_path: Path) -> None:
    folder = write_flax_folder(tmp_path / "dalle", taming.model.state_dict(), TINY)
    tok = from_dalle_mini(folder)
    assert tok.config == TINY
    for k, v in taming.model.state_dict().items():
        assert torch.equal(tok.model.state_dict()[k], v), k
    photos = real_photos(4)
    ids = tok.encode(photos, size=64)
    assert torch.equal(ids, taming.encode(photos, size=64))
    assert len(torch.unique(ids)) > 8
    assert torch.equal(tok.decode(ids, output="pt"), taming.decode(ids, output="pt"))
    # a config.json that lacks fields: the weights fill them in
    raw = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({k: v for k, v in raw.items() if k not in ("n_embed", "embed_dim", "attn_resolutions", "ch")}))
    assert from_dalle_mini(folder).config == TINY
    # the file itself (no config.json beside it): architecture read off the shapes
    (folder / "config.json").unlink()
    again = from_dalle_mini(folder / "flax_model.msgpack")
    assert torch.equal(again.encode(photos[:1], size=64), ids[:1])


def test_reader_handles_bfloat16_and_chunked_arrays(tmp_path: Path) -> None:
    values = torch.tensor([1.5, -2.25, 3.0e-3])
    bf16 = values.to(torch.bfloat16)

    def ext(shape, name, data):
        return msgpack.ExtType(1, msgpack.packb((shape, name, data), use_bin_type=True))

    whole = np.arange(6, dtype=np.float32)
    tree = {
        "a": {"bias": ext([3], "bfloat16", bf16.view(torch.int16).numpy().tobytes())},
        "b": {"bias": {"__msgpack_chunked_array__": True, "shape": {"0": 2, "1": 3},
                       "chunks": {"0": ext([4], "float32", whole[:4].tobytes()), "1": ext([2], "float32", whole[4:].tobytes())}}},
    }
    path = tmp_path / "x.msgpack"
    path.write_bytes(msgpack.packb(tree, use_bin_type=True))
    flat = read_flax_msgpack(path)
    assert torch.equal(torch.from_numpy(flat[("a", "bias")]), bf16.float())
    assert flat[("b", "bias")].shape == (2, 3) and flat[("b", "bias")].ravel().tolist() == list(range(6))


def test_clear_errors(tmp_path: Path, taming: Tokenizer) -> None:
    bad = tmp_path / "bad.msgpack"
    bad.write_bytes(b"\xc1not msgpack")
    with pytest.raises(ValueError, match="not a Flax MessagePack file"):
        read_flax_msgpack(bad)
    odd = tmp_path / "odd.msgpack"
    odd.write_bytes(msgpack.packb({"w": msgpack.ExtType(7, b"xx")}))
    with pytest.raises(ValueError, match="extension type 7"):
        read_flax_msgpack(odd)
    with pytest.raises(ValueError, match="unknown Flax parameter 'mean'"):
        flax_to_vqtok_keys({("encoder", "norm_out", "mean"): np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match="double_z"):
        dalle_mini_config({"double_z": True})
    folder = write_flax_folder(tmp_path / "m", taming.model.state_dict(), TINY)
    raw = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**raw, "n_embed": 1024}))
    with pytest.raises(ValueError, match="quantize.embedding.weight"):
        from_dalle_mini(folder)


def test_cli_convert_dalle_mini(taming: Tokenizer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = write_flax_folder(tmp_path / "dalle", taming.model.state_dict(), TINY)
    assert main(["convert", "dalle-mini", str(folder), "--out", str(tmp_path / "out")]) == 0
    assert "512 codes, f4" in capsys.readouterr().out
    tok = Tokenizer.from_pretrained(tmp_path / "out")
    photos = real_photos(2)
    assert torch.equal(tok.encode(photos, size=64), taming.encode(photos, size=64))
