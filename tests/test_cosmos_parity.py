"""Parity with NVIDIA's own Cosmos-Tokenizer code (optional: runs when ``cosmos_tokenizer`` is importable).

NVIDIA's ``cosmos_tokenizer`` is not on the package registry, so CI skips this. To run it, put a
checkout of https://github.com/NVIDIA/Cosmos-Tokenizer on the path (it needs ``einops`` and
``loguru``)::

    git clone https://github.com/NVIDIA/Cosmos-Tokenizer /tmp/Cosmos-Tokenizer
    PYTHONPATH=$PWD:/tmp/Cosmos-Tokenizer python -m pytest -q tests/test_cosmos_parity.py
    VQTOK_FULL_WIDTH=1 PYTHONPATH=$PWD:/tmp/Cosmos-Tokenizer python -m pytest -q tests/test_cosmos_parity.py  # + published widths

The original ``DiscreteImageTokenizer`` (tiny widths, random weights) is exported the way the
published files are made: ``encoder_jit()`` / ``decoder_jit()`` traced and saved as
``encoder.jit`` / ``decoder.jit`` (its modules cannot be ``torch.jit.script``-ed). ``from_cosmos``
reads those archives without running them; ids, codes and decoded pixels must equal what the
original modules compute.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import real_photos
from vqtok.convert.cosmos import from_cosmos
from vqtok.images import to_model_input, to_uint8_batch

cosmos_networks = pytest.importorskip("cosmos_tokenizer.networks.discrete_image")

pytestmark = pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore:.*torch.jit.load.*:DeprecationWarning")


def _original(spatial_compression: int, seed: int) -> torch.nn.Module:
    config = dict(
        attn_resolutions=[16], channels=32, channels_mult=[1, 1, 1], dropout=0.0, in_channels=3, out_channels=3,
        spatial_compression=spatial_compression, num_res_blocks=1, resolution=256, patch_size=4, patch_method="haar",
        z_channels=32, z_factor=1, quantizer="FSQ", embedding_dim=6, levels=[8, 8, 8, 5, 5, 5], name="DI",
        encoder="Default", decoder="Default",
    )
    torch.manual_seed(seed)
    model = cosmos_networks.DiscreteImageTokenizer(**config).to(dtype=torch.float32).eval()  # its .to sets the FSQ dtype
    with torch.no_grad():
        model.quant_conv.weight.mul_(8.0)  # spread the latent over many FSQ levels
    return model


@pytest.mark.parametrize("spatial_compression", [8, 16], ids=["DI8x8", "DI16x16"])
def test_converted_archives_match_the_original_code(spatial_compression: int, tmp_path: Path) -> None:
    model = _original(spatial_compression, seed=spatial_compression)
    enc, dec = model.encoder_jit().eval(), model.decoder_jit().eval()
    x = to_model_input(to_uint8_batch(real_photos(3), size=128).pixels)  # (3, 3, 128, 128) in [-1, 1]
    h = 128 // spatial_compression
    torch.jit.trace(enc, x).save(str(tmp_path / "encoder.jit"))
    torch.jit.trace(dec, torch.zeros(3, h, h, dtype=torch.int32)).save(str(tmp_path / "decoder.jit"))

    tok = from_cosmos(tmp_path / "encoder.jit", tmp_path / "decoder.jit", resolution=256, attn_resolutions=(16,))
    assert tok.downsample_factor == spatial_compression and tok.codebook_size == 64000
    with torch.no_grad():
        ids, codes = enc(x)[:2]  # the original code, eager
        pixels = dec(ids)
        ours = tok.model.encode(x)
        assert torch.equal(ours.ids, ids.long())
        assert torch.equal(ours.z_q, codes.float())
        assert len(torch.unique(ids)) > 50
        assert torch.equal(tok.model.decode_ids(ours.ids), pixels)
    assert torch.equal(tok.encode(real_photos(3), size=128), ids.long())
    via_tokenizer = tok.decode(ids, output="pt")
    torch.testing.assert_close(via_tokenizer, ((pixels + 1) / 2).clamp(0, 1), atol=1e-6, rtol=0)


@pytest.mark.skipif(not __import__("os").environ.get("VQTOK_FULL_WIDTH"), reason="published widths, ~40 s: set VQTOK_FULL_WIDTH=1")
@pytest.mark.parametrize("spatial_compression", [8, 16], ids=["DI8x8", "DI16x16"])
def test_published_width_archives_convert_to_the_preset(spatial_compression: int, tmp_path: Path) -> None:
    from cosmos_tokenizer.networks.configs import discrete_image

    from vqtok.models.cosmos import CosmosConfig

    torch.manual_seed(0)
    model = cosmos_networks.DiscreteImageTokenizer(**{**discrete_image, "spatial_compression": spatial_compression})
    model = model.to(dtype=torch.float32).eval()
    enc, dec = model.encoder_jit().eval(), model.decoder_jit().eval()
    x = to_model_input(to_uint8_batch(real_photos(1), size=64).pixels)
    h = 64 // spatial_compression
    with torch.no_grad():
        torch.jit.trace(enc, x).save(str(tmp_path / "encoder.jit"))
        torch.jit.trace(dec, torch.zeros(1, h, h, dtype=torch.int32)).save(str(tmp_path / "decoder.jit"))
    tok = from_cosmos(tmp_path / "encoder.jit", tmp_path / "decoder.jit")  # the published attention defaults
    assert tok.config == CosmosConfig.preset(f"DI{spatial_compression}x{spatial_compression}")
    with torch.no_grad():
        ids = enc(x)[0]
        ours = tok.model.encode(x)
        assert torch.equal(ours.ids, ids.long())
        assert torch.equal(tok.model.decode_ids(ours.ids), dec(ids))
