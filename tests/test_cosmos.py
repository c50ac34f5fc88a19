"""NVIDIA Cosmos DI tokenizers: architecture, FSQ numbering, the TorchScript converter, and the pipeline on 64 000-code ids.

No runnable Cosmos reference installs here. The round trip goes through the real file format
instead: our modules, under Cosmos's published names, are wrapped exactly as Cosmos's
``encoder_jit()`` / ``decoder_jit()`` wrap theirs (``Sequential(encoder, quant_conv, quantizer)``,
``Sequential(inv_quant, post_quant_conv, decoder)``), with a quantizer written here from Cosmos's
``FSQuantizer`` formulas (independent of vqtok's FSQ), then saved with ``torch.jit.script`` /
``torch.jit.trace`` as ``encoder.jit`` / ``decoder.jit``. ``from_cosmos`` must give back the ids the
archived modules compute when torch runs them.
"""

from __future__ import annotations

import json
import math
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tests.conftest import ShellPayload, photo_files, pretokenize_photos, real_photos
from vqtok import Tokenizer
from vqtok.convert.cosmos import from_cosmos, read_torchscript_tensors
from vqtok.convert.safe_pickle import UnsafeCheckpointError
from vqtok.images import to_model_input, to_uint8_batch
from vqtok.models.cosmos import CosmosConfig, CosmosDI, Patcher, UnPatcher
from vqtok.models.fsq import FSQ
from vqtok.models.registry import build_model, model_type_of

pytestmark = pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore:.*torch.jit.load.*:DeprecationWarning")

# Tiny widths; resolution 256 / attn_resolutions (16,) puts attention in the decoder's lowest level
# as well as the mid blocks, so the attention-placement logic is exercised.
TINY8 = CosmosConfig(channels=32, channels_mult=(1, 1, 1), num_res_blocks=1, z_channels=32, spatial_compression=8,
                     resolution=256, attn_resolutions=(16,))
TINY16 = CosmosConfig(channels=32, channels_mult=(1, 1, 1), num_res_blocks=1, z_channels=32, spatial_compression=16,
                      resolution=256, attn_resolutions=(16,))


class CosmosFSQuantizer(nn.Module):
    """Cosmos's FSQuantizer as published (its buffers and formulas), for images; written for this test."""

    def __init__(self, levels: tuple[int, ...]) -> None:
        super().__init__()
        lv = list(levels)
        self.register_buffer("_levels", torch.tensor(lv, dtype=torch.int32), persistent=False)
        self.register_buffer("_basis", torch.cumprod(torch.tensor([1] + lv[:-1]), dim=0, dtype=torch.int32), persistent=False)
        self.register_buffer("implicit_codebook", self.indices_to_codes(torch.arange(math.prod(lv))), persistent=False)

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:  # (...) -> (..., D)
        half_width = self._levels // 2
        return ((indices.unsqueeze(-1) // self._basis) % self._levels - half_width) / half_width

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # (B, D, h, w) -> ids (B, h, w) int32, codes
        z = z.permute(0, 2, 3, 1)
        half_l = (self._levels - 1) * (1 + 1e-3) / 2
        offset = torch.where(self._levels % 2 == 0, 0.5, 0.0)
        bounded = (z + (offset / half_l).atanh()).tanh() * half_l - offset
        half_width = self._levels // 2
        codes = bounded.round() / half_width
        ids = ((codes * half_width + half_width).float() * self._basis).sum(dim=-1).to(torch.int32)
        return ids, codes.permute(0, 3, 1, 2)


class InvQuantizerJit(nn.Module):
    def __init__(self, quantizer: CosmosFSQuantizer) -> None:
        super().__init__()
        self.quantizer = quantizer

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # (B, h, w) -> (B, D, h, w)
        return self.quantizer.indices_to_codes(ids).permute(0, 3, 1, 2)


def _model(cfg: CosmosConfig = TINY8, seed: int = 0) -> CosmosDI:
    torch.manual_seed(seed)
    model = CosmosDI(cfg).eval()
    with torch.no_grad():  # spread the latent so that many FSQ levels are hit
        model.quant_conv.weight.mul_(8.0)
    return model


def _archives(model: CosmosDI, directory: Path, *, script_encoder: bool = True) -> tuple[Path, Path, nn.Module, nn.Module]:
    """Write encoder.jit / decoder.jit as Cosmos publishes them; return their paths and the torch modules saved."""
    cfg = model.config
    enc = nn.Sequential(OrderedDict(encoder=model.encoder, quant_conv=model.quant_conv,
                                    quantizer=CosmosFSQuantizer(cfg.levels))).eval()
    dec = nn.Sequential(OrderedDict(inv_quant=InvQuantizerJit(CosmosFSQuantizer(cfg.levels)),
                                    post_quant_conv=model.post_quant_conv, decoder=model.decoder)).eval()
    side = 4 * cfg.spatial_compression
    h = side // cfg.spatial_compression
    enc_jit = torch.jit.script(enc) if script_encoder else torch.jit.trace(enc, torch.zeros(1, 3, side, side))
    dec_jit = torch.jit.trace(dec, torch.zeros(1, h, h, dtype=torch.int32))
    directory.mkdir(parents=True, exist_ok=True)
    enc_path, dec_path = directory / "encoder.jit", directory / "decoder.jit"
    enc_jit.save(str(enc_path))
    dec_jit.save(str(dec_path))
    return enc_path, dec_path, torch.jit.load(str(enc_path)), torch.jit.load(str(dec_path))


def _photo_batch(n: int, size: int) -> torch.Tensor:
    return to_model_input(to_uint8_batch(real_photos(n), size=size).pixels)  # (n, 3, size, size) in [-1, 1]


# ------------------------------------------------------------------ architecture


def test_key_layout_is_cosmos() -> None:
    keys = set(CosmosDI(CosmosConfig(channels=32, channels_mult=(1, 2, 2), num_res_blocks=2, z_channels=32)).state_dict())
    for k in ("encoder.conv_in.weight", "encoder.down.0.block.1.conv1.weight", "encoder.down.1.block.0.nin_shortcut.weight",
              "encoder.down.0.downsample.conv.weight", "encoder.down.1.downsample.conv.weight", "encoder.mid.block_1.norm1.bias",
              "encoder.mid.attn_1.q.weight", "encoder.mid.attn_1.proj_out.bias", "encoder.norm_out.weight", "quant_conv.weight",
              "post_quant_conv.bias", "decoder.mid.block_2.conv2.weight", "decoder.up.2.block.2.conv1.weight",
              "decoder.up.2.upsample.conv.weight", "decoder.up.1.upsample.conv.weight", "decoder.conv_out.bias"):
        assert k in keys, k
    # DI16x16 (f16, p4): two downsamplings (levels 0, 1) and two upsamplings (levels 2, 1); no attention outside mid
    assert "encoder.down.2.downsample.conv.weight" not in keys and "decoder.up.0.upsample.conv.weight" not in keys
    assert not any(".attn." in k for k in keys)
    assert not any("patcher" in k or "quantize" in k for k in keys)  # fixed buffers are not saved
    # DI8x8: one resampling
    keys8 = set(CosmosDI(CosmosConfig(channels=32, channels_mult=(1, 2, 2), num_res_blocks=2, z_channels=32,
                                      spatial_compression=8)).state_dict())
    assert "encoder.down.0.downsample.conv.weight" in keys8 and "encoder.down.1.downsample.conv.weight" not in keys8
    assert "decoder.up.2.upsample.conv.weight" in keys8 and "decoder.up.1.upsample.conv.weight" not in keys8
    # the tiny config places attention in the decoder's lowest level (side 16) only
    tiny = set(CosmosDI(TINY8).state_dict())
    assert "decoder.up.2.attn.1.q.weight" in tiny and not any(k.startswith("encoder.down") and ".attn." in k for k in tiny)


def test_published_presets() -> None:
    di8, di16 = CosmosConfig.preset("DI8x8"), CosmosConfig.preset("nvidia/Cosmos-0.1-Tokenizer-DI16x16")
    assert (di8.downsample_factor, di16.downsample_factor) == (8, 16)
    assert di8.n_embed == di16.n_embed == 64000 and di8.embed_dim == 6
    assert (di8.channels, di8.channels_mult, di8.z_channels, di8.patch_size, di8.patch_method) == (128, (2, 4, 4), 256, 4, "haar")
    with pytest.raises(ValueError, match="DI4x4"):
        CosmosConfig.preset("DI4x4")


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="power of 2"):
        CosmosConfig(spatial_compression=12)
    with pytest.raises(ValueError, match="downsamplings"):
        CosmosConfig(spatial_compression=64)  # 64 / 4 = 16 = four halvings, only three levels
    with pytest.raises(ValueError, match="embedding_dim"):
        CosmosConfig(embedding_dim=4)
    with pytest.raises(ValueError, match="patch_method"):
        CosmosConfig(patch_method="db2")
    with pytest.raises(ValueError, match="unknown Cosmos config keys"):
        CosmosConfig.from_dict({"channels": 32, "bogus": 1})
    cfg = CosmosConfig.from_dict(json.loads(json.dumps(TINY8.to_dict())))
    assert cfg == TINY8 and cfg.hash() == TINY8.hash() and cfg.hash() != TINY16.hash()


@pytest.mark.parametrize("method", ["haar", "rearrange"])
def test_patcher_inverts_and_haar_bands(method: str) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 48)
    p, u = Patcher(4, method), UnPatcher(4, method)
    y = p(x)
    assert y.shape == (2, 48, 8, 12)
    torch.testing.assert_close(u(y), x, atol=1e-5, rtol=0)
    if method == "haar":
        # one Haar step with taps 1/√2, halved: LL = (a + b + c + d) / 4, the mean of each 2×2 block
        one = Patcher(2, "haar")(x)
        mean = x.unfold(2, 2, 2).unfold(3, 2, 2).mean(dim=(-1, -2))  # (2, 3, 16, 24)
        torch.testing.assert_close(one[:, :3], mean, atol=1e-6, rtol=0)
        # LH (low along W, high along H): (a + b − c − d) / 4 with a, b the top pair and c, d the bottom pair
        top, bottom = x[:, :, 0::2], x[:, :, 1::2]
        lh = ((top - bottom).unfold(3, 2, 2).sum(-1)) / 4
        torch.testing.assert_close(one[:, 3:6], lh, atol=1e-6, rtol=0)


def test_fsq_numbering_matches_cosmos_formulas() -> None:
    levels = (8, 8, 8, 5, 5, 5)
    ours, theirs = FSQ(levels), CosmosFSQuantizer(levels)
    torch.manual_seed(0)
    z = torch.randn(2, 6, 16, 16) * 3
    ids, codes = theirs(z)
    q = ours(z)
    assert torch.equal(q.ids, ids.long()) and torch.equal(q.z_q, codes)
    assert len(torch.unique(ids)) > 300
    table = ours.codes(torch.arange(64000).view(1, -1, 1))[0, :, :, 0].t()  # (64000, 6)
    assert torch.equal(table, theirs.implicit_codebook)
    assert ours._basis.tolist() == theirs._basis.tolist() == [1, 8, 64, 512, 2560, 12800]


def test_shapes_and_registry() -> None:
    for cfg in (TINY8, TINY16):
        m = CosmosDI(cfg).eval()
        x = torch.rand(2, 3, 64, 96) * 2 - 1
        out = m(x)
        f = cfg.spatial_compression
        assert out.ids.shape == (2, 64 // f, 96 // f) and out.reconstruction.shape == x.shape
        assert float(out.codebook_loss) == 0.0
        assert int(out.ids.max()) < 64000
    assert model_type_of(CosmosDI(TINY8)) == "cosmos"
    assert isinstance(build_model("cosmos", TINY16.to_dict()), CosmosDI)


# ------------------------------------------------------------------ converter: the real file format


@pytest.mark.parametrize("cfg", [TINY8, TINY16], ids=["DI8x8", "DI16x16"])
def test_from_cosmos_round_trip_gives_the_archives_ids(cfg: CosmosConfig, tmp_path: Path) -> None:
    model = _model(cfg)
    enc_path, dec_path, enc_jit, dec_jit = _archives(model, tmp_path)
    tok = from_cosmos(enc_path, dec_path, resolution=256, attn_resolutions=(16,))
    assert tok.config == cfg and tok.codebook_size == 64000 and tok.downsample_factor == cfg.spatial_compression

    x = _photo_batch(3, 128)
    with torch.no_grad():
        want_ids, want_codes = enc_jit(x)  # what the archived modules compute, run by torch
        want_pixels = dec_jit(want_ids)
        got = tok.model.encode(x)
        got_pixels = tok.model.decode_ids(got.ids)
    assert torch.equal(got.ids, want_ids.long())
    assert torch.equal(got.z_q, want_codes)
    assert len(torch.unique(want_ids)) > 50  # many distinct codes, not a degenerate latent
    assert torch.equal(got_pixels, want_pixels)  # decode lays the codes out channels-last, as Cosmos does
    assert torch.equal(tok.model.decode(got.z_q), want_pixels)
    # and through the Tokenizer's public API (PIL in, ids out)
    assert torch.equal(tok.encode(real_photos(3), size=128), want_ids.long())


def test_traced_encoder_archive_converts_too(tmp_path: Path) -> None:
    model = _model(TINY16, seed=2)
    enc_path, dec_path, enc_jit, _ = _archives(model, tmp_path, script_encoder=False)
    tok = from_cosmos(enc_path, dec_path, resolution=256, attn_resolutions=(16,))
    x = _photo_batch(2, 64)
    with torch.no_grad():
        assert torch.equal(tok.model.encode(x).ids, enc_jit(x)[0].long())


def test_bfloat16_archive_converts_to_float32(tmp_path: Path, caplog) -> None:
    model = _model(TINY8, seed=3)
    _, dec_path, _, _ = _archives(model, tmp_path)
    enc = nn.Sequential(OrderedDict(encoder=model.encoder, quant_conv=model.quant_conv,
                                    quantizer=CosmosFSQuantizer(TINY8.levels))).to(torch.bfloat16).eval()
    torch.jit.script(enc).save(str(tmp_path / "enc_bf16.jit"))
    assert read_torchscript_tensors(tmp_path / "enc_bf16.jit")["encoder.conv_in.weight"].dtype == torch.bfloat16
    with caplog.at_level("INFO", logger="vqtok.convert.cosmos"):
        tok = from_cosmos(tmp_path / "enc_bf16.jit", dec_path, resolution=256, attn_resolutions=(16,))
    assert "torch.bfloat16" in caplog.text
    w = tok.model.encoder.conv_in.weight
    assert w.dtype == torch.float32 and torch.equal(w, enc.encoder.conv_in.weight.float())


def test_bf16_precision_runs(tmp_path: Path) -> None:
    tok = Tokenizer(_model(TINY16, seed=4), precision="bf16")
    ids = tok.encode(real_photos(2), size=64)
    assert ids.shape == (2, 4, 4) and int(ids.max()) < 64000
    assert tok.decode(ids, output="pt").shape == (2, 3, 64, 64)


def test_read_torchscript_tensors_names_every_tensor(tmp_path: Path) -> None:
    model = _model(TINY8)
    enc_path, dec_path, _, _ = _archives(model, tmp_path)
    enc = read_torchscript_tensors(enc_path)
    dec = read_torchscript_tensors(dec_path)
    state = model.state_dict()
    for k, v in state.items():
        src = enc if k.startswith(("encoder.", "quant_conv.")) else dec
        assert torch.equal(src[k], v), k
    assert enc["quantizer._levels"].tolist() == [8, 8, 8, 5, 5, 5]
    assert dec["inv_quant.quantizer.implicit_codebook"].shape == (64000, 6)
    assert torch.allclose(enc["encoder.patcher.wavelets"], torch.full((2,), 2**-0.5))


def test_from_cosmos_refuses_wrong_inputs(tmp_path: Path) -> None:
    model = _model(TINY8)
    enc_path, dec_path, _, _ = _archives(model, tmp_path)
    with pytest.raises(ValueError, match="looks like decoder.jit"):
        from_cosmos(dec_path, enc_path)
    with pytest.raises(ValueError, match="do not match"):
        from_cosmos(enc_path, dec_path)  # the published attention placement (1024 / [32]) misses decoder.up.2.attn
    with pytest.raises(FileNotFoundError):
        from_cosmos(tmp_path / "nope.jit", dec_path)
    bad = tmp_path / "bad.jit"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a TorchScript archive"):
        from_cosmos(bad, dec_path)
    # an archive whose FSQ numbers ids differently (channel 0 most significant) is refused
    other = tmp_path / "other"
    enc = nn.Sequential(OrderedDict(encoder=model.encoder, quant_conv=model.quant_conv, quantizer=CosmosFSQuantizer((8, 8, 8, 5, 5, 5))))
    enc.quantizer._basis = torch.tensor([12800, 1600, 200, 25, 5, 1], dtype=torch.int32)
    other.mkdir()
    torch.jit.trace(enc.eval(), torch.zeros(1, 3, 32, 32)).save(str(other / "encoder.jit"))
    with pytest.raises(ValueError, match="_basis"):
        from_cosmos(other / "encoder.jit", dec_path, resolution=256, attn_resolutions=(16,))


def _rewrite_data_pkl(src: Path, dst: Path, payload: bytes) -> None:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            data = payload if item.filename.endswith("/data.pkl") else zin.read(item.filename)
            zout.writestr(item, data)


def test_malicious_archive_is_refused_and_nothing_runs(tmp_path: Path) -> None:
    model = _model(TINY8)
    enc_path, dec_path, _, _ = _archives(model, tmp_path)
    marker = tmp_path / "pwned"

    evil = tmp_path / "evil.jit"
    _rewrite_data_pkl(enc_path, evil, pickle.dumps({"encoder": ShellPayload(f"touch {marker}")}, protocol=2))
    assert b"system" in zipfile.ZipFile(evil).read(next(n for n in zipfile.ZipFile(evil).namelist() if n.endswith("data.pkl")))
    with pytest.raises(UnsafeCheckpointError, match="system"):
        from_cosmos(evil, dec_path)
    with pytest.raises(UnsafeCheckpointError):
        read_torchscript_tensors(evil)
    assert not marker.exists()
    # TorchScript's own code (code/*.py) is never compiled: a broken code/ folder does not matter
    broken = tmp_path / "broken.jit"
    with zipfile.ZipFile(enc_path) as zin, zipfile.ZipFile(broken, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            zout.writestr(item, b"raise SystemExit(1)\n" if "/code/" in item.filename and item.filename.endswith(".py") else data)
    with pytest.raises(RuntimeError):
        torch.jit.load(str(broken))  # torch would have to compile it
    tok = from_cosmos(broken, dec_path, resolution=256, attn_resolutions=(16,))
    assert torch.equal(tok.model.encoder.conv_in.weight, model.encoder.conv_in.weight)


# ------------------------------------------------------------------ pipeline on a converted folder


def test_cli_convert_then_pretokenize_usage_eval(tmp_path: Path, capsys) -> None:
    from vqtok.cli import main
    from vqtok.metrics.usage import read_histograms, usage_from_histogram

    model = _model(TINY8, seed=5)
    enc_path, dec_path, enc_jit, _ = _archives(model, tmp_path / "hub")
    out = tmp_path / "m"
    assert main(["convert", "cosmos", str(enc_path), str(dec_path), "--resolution", "256", "--attn-resolutions", "16",
                 "--out", str(out)]) == 0
    assert "(cosmos -> cosmos: grid HxW/f, " in capsys.readouterr().out
    assert json.loads((out / "config.json").read_text())["model_type"] == "cosmos"
    tok = Tokenizer.from_pretrained(out)
    assert tok.config == TINY8

    result, arrays, decoded = pretokenize_photos(tok, tmp_path)
    assert result.samples_written == 3
    x = to_model_input(to_uint8_batch(decoded, size=64).pixels)
    with torch.no_grad():
        want = enc_jit(x)[0].numpy()  # the archive's own ids for the JPEGs the pipeline read
    for i in range(3):
        a = arrays[f"s{i:03d}"]
        assert a.dtype == np.uint16 and a.shape == (8, 8)  # 64 000 codes fit in uint16
        np.testing.assert_array_equal(a, want[i])
    stats = json.loads((tmp_path / "tokens" / "train-000000.json").read_text())
    assert stats["codebook_size"] == 64000 and stats["ids_dtype"] == "uint16"
    hist, _ = read_histograms(str(tmp_path / "tokens"))
    usage = usage_from_histogram(hist)
    assert usage.codebook_size == 64000 and usage.total_tokens == 3 * 64
    assert usage.used_codes == len(np.unique(want))

    photo_dir = tmp_path / "photos"
    photo_files(photo_dir, stem="", suffix=".png")
    report = tmp_path / "report.json"
    assert main(["eval", "--model", str(out), "--data", str(photo_dir), "--size", "64", "--no-fid", "--no-lpips",
                 "--no-progress", "--out", str(report)]) == 0
    r = json.loads(report.read_text())
    assert r["image_count"] == 3 and r["codebook_usage"]["codebook_size"] == 64000
    assert r["config_hash"] == TINY8.hash()
    assert 0 < r["codebook_usage"]["used_codes"] <= 3 * 64
