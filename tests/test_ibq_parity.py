"""IBQ parity against TencentARC's own code: identical ids and decoded pixels on real photos.

IBQ's code is not packaged (``open-magvit2==1.1`` holds only Open-MAGVIT2), so this test reads
it from a checkout of TencentARC/SEED-Voken named by ``$SEED_VOKEN_DIR`` and skips without one::

    git clone https://github.com/TencentARC/SEED-Voken && SEED_VOKEN_DIR=$PWD/SEED-Voken pytest tests/test_ibq_parity.py
    VQTOK_FULL_WIDTH=1 ...   # + the published 262144 x 256 width on one 256 px photo (~1 min, ~4 GiB)

It imports ``src/IBQ/modules/vqvae/quantize.py`` (``IndexPropagationQuantize``) and
``src/IBQ/modules/diffusionmodules/model.py`` (``Encoder``/``Decoder``) by file (they need only
torch, numpy, einops) and assembles them as ``src.IBQ.models.ibqgan.IBQ`` does (that module needs
Lightning). Random weights are written as an IBQ Lightning checkpoint with EMA weights, converted
with :func:`vqtok.convert.from_ibq`, and both sides run on the same photos.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType

import pytest
import torch

from tests.conftest import real_photos
from tests.test_ibq import ibq_checkpoint
from vqtok.convert.ibq import from_ibq
from vqtok.images import to_model_input, to_uint8_batch
from vqtok.models.ibq import IBQ, IBQConfig

_ROOT = Path(os.environ.get("SEED_VOKEN_DIR", "/nonexistent"))
_QUANTIZE = _ROOT / "src/IBQ/modules/vqvae/quantize.py"
_MODEL = _ROOT / "src/IBQ/modules/diffusionmodules/model.py"
if not (_QUANTIZE.is_file() and _MODEL.is_file()):
    pytest.skip("IBQ reference code not found: set SEED_VOKEN_DIR to a TencentARC/SEED-Voken checkout", allow_module_level=True)
pytest.importorskip("einops")


def _load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class ReferenceIBQ(torch.nn.Module):
    """``src.IBQ.models.ibqgan.IBQ``'s modules and encode/decode, without Lightning and the loss."""

    def __init__(self, cfg: IBQConfig) -> None:
        super().__init__()
        model, quantize = _load(_MODEL, "ibq_reference_model"), _load(_QUANTIZE, "ibq_reference_quantize")
        dd = dict(double_z=False, z_channels=cfg.z_channels, resolution=cfg.resolution, in_channels=3, out_ch=3,
                  ch=cfg.ch, ch_mult=list(cfg.ch_mult), num_res_blocks=cfg.num_res_blocks,
                  attn_resolutions=list(cfg.attn_resolutions), dropout=0.0)
        self.encoder = model.Encoder(**dd)
        self.decoder = model.Decoder(**dd)
        self.quantize = quantize.IndexPropagationQuantize(cfg.n_embed, cfg.embed_dim, 0.25, False)
        self.quant_conv = torch.nn.Conv2d(cfg.z_channels, cfg.embed_dim, 1)
        self.post_quant_conv = torch.nn.Conv2d(cfg.embed_dim, cfg.z_channels, 1)

    def encode(self, x):
        return self.quantize(self.quant_conv(self.encoder(x)))

    def decode(self, quant):
        return self.decoder(self.post_quant_conv(quant))


SMALL = IBQConfig(ch=64, ch_mult=(1, 1, 2, 2), num_res_blocks=1, attn_resolutions=(8,), z_channels=64, embed_dim=32,
                  n_embed=4096, resolution=64)
FULL = IBQConfig()  # the published 262144-code model: ch 128, ch_mult 1,1,2,2,4, 4 blocks, 256-d codes
CASES = [pytest.param(SMALL, 4, 64, id="small")]
if os.environ.get("VQTOK_FULL_WIDTH"):
    CASES.append(pytest.param(FULL, 1, 256, id="published-262144"))


@pytest.mark.parametrize("cfg, n, size", CASES)
def test_ids_and_pixels_match_ibq(tmp_path: Path, cfg: IBQConfig, n: int, size: int) -> None:
    torch.manual_seed(0)
    ref = ReferenceIBQ(cfg).eval()
    torch.manual_seed(1)
    raw = IBQ(cfg)
    ema = IBQ(cfg)
    ema.load_state_dict(ref.state_dict())  # the EMA weights are the ones IBQ's scripts run
    tok = from_ibq(ibq_checkpoint(tmp_path / "imagenet256.ckpt", raw, ema=ema), resolution=cfg.resolution)
    del raw

    photos = real_photos(n)
    x = to_model_input(to_uint8_batch(photos, size=size).pixels)  # (n, 3, size, size) in [-1, 1]
    g = size // cfg.downsample_factor
    with torch.no_grad():
        quant, _, (_, _, ind) = ref.encode(x)
        ref_ids = ind.view(n, g, g)
        ref_pixels = ref.decode(quant)  # IBQ's reconstruct_image.py path
        ref_from_ids = ref.decode(ref.quantize.get_codebook_entry(ref_ids.reshape(-1), (n, g, g, cfg.embed_dim)))
    ids = tok.encode(photos, size=size)
    assert torch.equal(ids, ref_ids)
    assert len(ids.unique()) > 0.3 * ids.numel()
    with torch.no_grad():
        ours = tok.model.decode_ids(ids)
    print(f"IBQ parity: {ids.numel()} ids identical ({len(ids.unique())} distinct); max |pixel diff| in [-1, 1]: "
          f"{float((ours - ref_from_ids).abs().max()):.2e} (codebook entry), {float((ours - ref_pixels).abs().max()):.2e} (IBQ encode z_q)")
    # float tolerance as for taming (vqtok's attention and GroupNorm kernels round differently)
    assert torch.allclose(ours, ref_from_ids, atol=1e-4), float((ours - ref_from_ids).abs().max())
    assert torch.allclose(ours, ref_pixels, atol=1e-4), float((ours - ref_pixels).abs().max())  # IBQ's z_q ≈ E[id]
