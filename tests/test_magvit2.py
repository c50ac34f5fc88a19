"""Open-MAGVIT2 architecture, model_type registry, the .ckpt converter and the pipeline on 2^18-code ids (no reference needed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import TINY, photo_files, pretokenize_photos, real_photos
from vqtok import Tokenizer
from vqtok.convert.magvit2 import from_magvit2, infer_magvit2_config, magvit2_state_dict
from vqtok.models.magvit2 import MAGVIT2, MAGVIT2Config, depth_to_space
from vqtok.models.registry import MODEL_TYPES, build_model, model_type_of
from vqtok.models.vqgan import VQGAN

SMALL = MAGVIT2Config(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, z_channels=18, resolution=64)


def _model(seed: int = 0, cfg: MAGVIT2Config = SMALL) -> MAGVIT2:
    torch.manual_seed(seed)
    return MAGVIT2(cfg).eval()


def test_key_layout_is_open_magvit2s() -> None:
    keys = set(MAGVIT2(MAGVIT2Config(ch=32, ch_mult=(1, 2), num_res_blocks=2, z_channels=4)).state_dict())
    for k in (
        "encoder.conv_in.weight",  # no bias
        "encoder.down.0.block.1.norm1.weight",
        "encoder.down.0.downsample.weight",
        "encoder.down.0.downsample.bias",
        "encoder.down.1.block.0.nin_shortcut.weight",
        "encoder.mid_block.1.conv2.weight",
        "encoder.norm_out.bias",
        "encoder.conv_out.bias",
        "decoder.conv_in.bias",
        "decoder.mid_block.0.norm2.weight",
        "decoder.adaptive.0.gamma.weight",
        "decoder.adaptive.1.beta.bias",
        "decoder.up.1.upsample.conv1.weight",
        "decoder.up.0.block.0.nin_shortcut.weight",
        "decoder.conv_out.weight",
    ):
        assert k in keys, k
    assert "encoder.conv_in.bias" not in keys and "encoder.down.0.block.0.conv1.bias" not in keys
    assert not any(k.startswith(("quantize.", "quant_conv", "post_quant_conv")) for k in keys)  # LFQ has no tensors
    assert "encoder.down.1.downsample.weight" not in keys and "decoder.up.0.upsample.conv1.weight" not in keys


def test_depth_to_space_is_dcr() -> None:
    x = torch.arange(2 * 8 * 3 * 5, dtype=torch.float32).view(2, 8, 3, 5)  # C=2 out channels, block 2
    y = depth_to_space(x, 2)
    assert y.shape == (2, 2, 6, 10)
    for c in range(2):
        for i in range(2):
            for j in range(2):
                torch.testing.assert_close(y[:, c, i::2, j::2], x[:, (i * 2 + j) * 2 + c])
    # channels_last input gives the same result
    torch.testing.assert_close(depth_to_space(x.contiguous(memory_format=torch.channels_last), 2), y)


def test_shapes_loss_and_gradients() -> None:
    m = MAGVIT2(MAGVIT2Config(ch=32, ch_mult=(1, 2), num_res_blocks=1, z_channels=6)).train()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    out = m(x)
    assert out.reconstruction.shape == x.shape and out.ids.shape == (2, 8, 8) and int(out.ids.max()) < 64
    assert float(out.codebook_loss.detach()) != 0.0
    (out.reconstruction.square().mean() + out.codebook_loss).backward()
    assert m.encoder.conv_in.weight.grad is not None and m.encoder.conv_in.weight.grad.abs().sum() > 0
    assert m.decoder.adaptive[0].gamma.weight.grad is not None


def test_config_validation_and_derived_fields() -> None:
    cfg = MAGVIT2Config()
    assert cfg.n_embed == 2**18 and cfg.embed_dim == 18 and cfg.downsample_factor == 16
    assert MAGVIT2Config.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert cfg.hash() != MAGVIT2Config(z_channels=16).hash()
    with pytest.raises(ValueError, match="unknown MAGVIT2 config keys: n_embed"):
        MAGVIT2Config.from_dict({**cfg.to_dict(), "n_embed": 4})
    with pytest.raises(ValueError, match="quantizer"):
        MAGVIT2Config(quantizer="fsq")
    with pytest.raises(ValueError, match="GroupNorm"):
        MAGVIT2Config(ch=48)


def test_registry() -> None:
    assert set(MODEL_TYPES) >= {"vqgan", "magvit2"}
    assert model_type_of(_model()) == "magvit2" and model_type_of(VQGAN(TINY)) == "vqgan"
    assert isinstance(build_model("magvit2", SMALL.to_dict()), MAGVIT2)
    with pytest.raises(ValueError, match="unknown model_type 'no-such-architecture'"):
        build_model("no-such-architecture", {})
    with pytest.raises(TypeError, match="not a registered vqtok model"):
        Tokenizer(torch.nn.Linear(2, 2))  # type: ignore[arg-type]


def test_tokenizer_folder_round_trip(tmp_path: Path) -> None:
    tok = Tokenizer(_model())
    photos = real_photos(3)
    ids = tok.encode(photos, size=64)
    assert ids.shape == (3, 16, 16) and ids.dtype == torch.long and int(ids.max()) < 2**18
    assert ids.unique().numel() > 100
    # Tokenizer.encode (channels_last, batched) = the model's own encode
    from vqtok.images import to_model_input, to_uint8_batch

    with torch.no_grad():
        direct = tok.model.encode(to_model_input(to_uint8_batch(photos, size=64).pixels)).ids
    assert torch.equal(ids, direct)
    tok.save_pretrained(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["model_type"] == "magvit2" and cfg["quantizer"] == "lfq" and cfg["z_channels"] == 18
    again = Tokenizer.from_pretrained(tmp_path / "m")
    assert isinstance(again.model, MAGVIT2) and again.codebook_size == 2**18
    assert torch.equal(again.encode(photos, size=64), ids)
    pixels = again.decode(ids, output="pt")
    with torch.no_grad():
        expected = ((tok.model.decode_ids(ids) + 1) / 2).clamp(0, 1)
    torch.testing.assert_close(pixels, expected, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match=r"\[0, 262143\]"):
        again.decode(torch.full((4, 4), 2**18))
    # the bf16 fast path (encoder under autocast, the sign lookup in fp32) runs too
    again.precision = "bf16"
    fast = again.encode(photos, size=64)
    assert fast.shape == ids.shape and float((fast == ids).float().mean()) > 0.5


def test_old_vqgan_folder_still_loads_and_unknown_type_is_refused(tmp_path: Path) -> None:
    torch.manual_seed(0)
    tok = Tokenizer.from_config(TINY)
    tok.save_pretrained(tmp_path / "v")
    cfg = json.loads((tmp_path / "v" / "config.json").read_text())
    assert cfg["model_type"] == "vqgan"
    again = Tokenizer.from_pretrained(tmp_path / "v")
    assert isinstance(again.model, VQGAN) and again.config == TINY
    cfg["model_type"] = "no-such-architecture"
    (tmp_path / "v" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="holds a 'no-such-architecture' model, expected 'vqgan' or 'magvit2'"):
        Tokenizer.from_pretrained(tmp_path / "v")


# ------------------------------------------------------------------ converter


def _ckpt(model: MAGVIT2, path: Path, *, ema: dict[str, torch.Tensor] | None) -> Path:
    state = dict(model.state_dict())
    full: dict[str, torch.Tensor] = {**state, "loss.discriminator.main.0.weight": torch.randn(4, 3, 4, 4)}
    if ema is not None:
        full["model_ema.decay"] = torch.tensor(0.999)
        full["model_ema.num_updates"] = torch.tensor(-1, dtype=torch.int)
        full.update({"model_ema." + k.replace(".", ""): v for k, v in ema.items()})
    torch.save({"state_dict": full, "epoch": 3, "hyper_parameters": {"embed_dim": 18}}, path)
    return path


def test_from_magvit2_infers_config_and_picks_weights(tmp_path: Path) -> None:
    model = _model(1)
    ema_model = _model(2)
    path = _ckpt(model, tmp_path / "a.ckpt", ema=ema_model.state_dict())
    photos = real_photos(2)
    tok = from_magvit2(path)  # EMA by default
    assert tok.config == MAGVIT2Config(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, z_channels=18, resolution=256)
    assert torch.equal(tok.encode(photos, size=64), Tokenizer(ema_model).encode(photos, size=64))
    raw = from_magvit2(path, ema=False, resolution=64)
    assert raw.config == SMALL
    assert torch.equal(raw.encode(photos, size=64), Tokenizer(model).encode(photos, size=64))
    no_ema = _ckpt(model, tmp_path / "b.ckpt", ema=None)
    assert torch.equal(from_magvit2(no_ema).encode(photos, size=64), Tokenizer(model).encode(photos, size=64))
    with pytest.raises(ValueError, match="no model_ema"):
        from_magvit2(no_ema, ema=True)


def test_from_magvit2_refuses_other_checkpoints(tmp_path: Path) -> None:
    state = dict(_model().state_dict())
    with pytest.raises(ValueError, match="IBQ"):
        magvit2_state_dict({"state_dict": {**state, "quantize.embedding.weight": torch.zeros(4, 18)}})
    taming = dict(VQGAN(TINY).state_dict())
    with pytest.raises(ValueError, match="from_taming"):
        magvit2_state_dict({"state_dict": taming})
    partial = {**state}
    partial.update({"model_ema." + k.replace(".", ""): v for k, v in state.items() if not k.startswith("decoder.")})
    with pytest.raises(ValueError, match="EMA weights lack decoder"):
        magvit2_state_dict(partial)
    bad = {k: v for k, v in state.items() if not k.startswith("decoder.up.0.block.0.")}
    with pytest.raises(ValueError, match="blocks per level"):
        infer_magvit2_config(bad)


def test_from_magvit2_reads_no_code(tmp_path: Path) -> None:
    import pickle

    from vqtok.convert import UnsafeCheckpointError

    class Evil:
        def __reduce__(self):
            return (eval, ("1",))

    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": dict(_model().state_dict()), "callbacks": Evil()}, path, pickle_module=pickle)
    with pytest.raises(UnsafeCheckpointError):
        from_magvit2(path)


# ------------------------------------------------------------------ pipeline: 2^18 ids in int32 shards


def test_pretokenize_and_usage_with_262144_codes(tmp_path: Path) -> None:
    from vqtok.metrics.usage import read_histograms, usage_from_histogram

    tok = Tokenizer(_model(3), batch_size=2)
    result, arrays, decoded = pretokenize_photos(tok, tmp_path)
    assert result.samples_written == 3
    want = tok.encode(decoded, size=64).numpy()
    for i in range(3):
        a = arrays[f"s{i:03d}"]
        assert a.dtype == np.int32 and a.shape == (16, 16)
        np.testing.assert_array_equal(a, want[i])
    assert int(want.max()) > 65535  # ids that need int32
    stats = json.loads((tmp_path / "tokens" / "train-000000.json").read_text())
    assert stats["codebook_size"] == 2**18 and stats["ids_dtype"] == "int32"
    hist, _ = read_histograms(str(tmp_path / "tokens"))
    usage = usage_from_histogram(hist)
    assert usage.codebook_size == 2**18 and usage.total_tokens == 3 * 256
    assert usage.used_codes == len(np.unique(want))


def test_cli_eval_and_usage_on_a_magvit2_folder(tmp_path: Path, capsys) -> None:
    from vqtok.cli import main

    Tokenizer(_model(4)).save_pretrained(tmp_path / "m")
    photos = tmp_path / "photos"
    photo_files(photos, stem="", suffix=".png")
    report = tmp_path / "report.json"
    argv = ["eval", "--model", str(tmp_path / "m"), "--data", str(photos), "--size", "64", "--no-fid", "--no-lpips",
            "--no-progress", "--out", str(report)]
    assert main(argv) == 0
    r = json.loads(report.read_text())
    assert r["image_count"] == 3 and r["codebook_usage"]["codebook_size"] == 2**18
    assert r["config_hash"] == MAGVIT2Config.from_dict(
        {k: v for k, v in json.loads((tmp_path / "m" / "config.json").read_text()).items() if k not in ("vqtok_format", "model_type")}
    ).hash()
    assert 0 < r["codebook_usage"]["used_codes"] <= 3 * 256


def test_cli_convert_magvit2(tmp_path: Path, capsys) -> None:
    from vqtok.cli import main

    model = _model(1)
    path = _ckpt(model, tmp_path / "a.ckpt", ema=None)
    assert main(["convert", "magvit2", str(path), "--resolution", "64", "--out", str(tmp_path / "m")]) == 0
    assert "(magvit2 -> magvit2: grid HxW/f, " in capsys.readouterr().out
    tok = Tokenizer.from_pretrained(tmp_path / "m")
    assert tok.config == SMALL
    photos = real_photos(1)
    assert torch.equal(tok.encode(photos, size=64), Tokenizer(model).encode(photos, size=64))
    assert main(["convert", "magvit2", str(path), "--ema", "--out", str(tmp_path / "n")]) == 2  # no EMA weights: one line
    assert "no model_ema" in capsys.readouterr().err
