"""VAR's multi-scale VQVAE (vqtok.models.var): parity with FoundationVision/VAR, layout, converter, recogniser.

The parity fixture (tests/fixtures/var/, made by ``python tests/make_var_golden.py --var-repo VAR``)
holds VAR's own ids and decoded pixels of two real photos for small random weights; the tests
that import VAR's code run when a checkout is found at ``$VQTOK_VAR_REPO`` or /work/ref/VAR::

    git clone https://github.com/FoundationVision/VAR /work/ref/VAR && pytest tests/test_var.py
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.make_var_golden import FIXTURES, read_fixture, to_input, to_uint8
from vqtok.layout import TokenLayout
from vqtok.models.registry import family, model_type_of, source_formats
from vqtok.models.var import VAR_PATCH_NUMS, VARConfig, VARVQVAE, convert_var, phi_indices, recognise_var

VAR_REPO = Path(os.environ.get("VQTOK_VAR_REPO", "/work/ref/VAR"))
HAVE_VAR = (VAR_REPO / "models" / "vqvae.py").is_file()
needs_var = pytest.mark.skipif(not HAVE_VAR, reason="no FoundationVision/VAR checkout at $VQTOK_VAR_REPO or /work/ref/VAR")

# sha256 of "name [shape]" lines (sorted) of VAR's VQVAE(vocab_size=4096, z_channels=32, ch=160) state dict
# without quantize.ema_vocab_hit_SV: the layout of the released vae_ch160v4096z32.pth (323 tensors, 108 948 355 values).
RELEASED_LAYOUT_SHA256 = "abcc35bf35abd5debfa2d8fff73a78f3018b160dd658f6cbba85af369ab03396"
# A small model for the CPU tests: f4, 4 scales 1,2,3,4 (30 ids) of 16 px images.
SMALL = VARConfig(vocab_size=64, z_channels=8, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, patch_nums=(1, 2, 3, 4))


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def layout_lines(state: dict[str, torch.Tensor]) -> str:
    return "\n".join(f"{k} {list(v.shape)}" for k, v in sorted(state.items()))


def small_model(cfg: VARConfig = SMALL, seed: int = 0) -> VARVQVAE:
    torch.manual_seed(seed)
    model = VARVQVAE(cfg).eval()
    with torch.no_grad():
        model.quantize.embedding.weight.normal_(0.0, 0.25)  # spread codes over the random features
    return model


def photos(size: int, n: int = 2) -> torch.Tensor:
    """The fixture's real photos (uint8) resized to size -> model input (n, 3, size, size)."""
    _, images, _, _ = read_fixture()
    x = torch.from_numpy(images[:n]).permute(0, 3, 1, 2).float()
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="area").round().to(torch.uint8)
    return to_input(x.permute(0, 2, 3, 1).numpy())


# ------------------------------------------------------------------ parity with VAR's own outputs
def test_fixture_ids_and_pixels_match_var(tmp_path: Path) -> None:
    """VAR's ids of two photos, 100 % equal, and its decoded pixels within 1/255 RMS, through convert_var."""
    from safetensors.torch import load_file

    meta, images, ref_ids, ref_decoded = read_fixture()
    pth = tmp_path / "vae_fixture.pth"
    torch.save(load_file(str(FIXTURES / "weights.safetensors")), pth)  # VAR's plain state dict, as released
    cfg, state = convert_var([pth])
    assert "quantize.ema_vocab_hit_SV" not in state
    assert cfg.ch_mult == tuple(meta["autoencoder"]["ch_mult"]) and cfg.patch_nums == VAR_PATCH_NUMS
    assert (cfg.vocab_size, cfg.z_channels, cfg.ch, cfg.share_quant_resi) == (512, 8, 32, 4)
    model = VARVQVAE(cfg).eval()
    model.load_state_dict(state)
    with torch.no_grad():
        ids = model.encode_ids(to_input(images))
        assert ids.dtype == torch.int64 and ids.shape == (2, 680)
        assert (ids.numpy() == ref_ids).mean() == 1.0
        pixels = model.decode_ids(torch.from_numpy(ref_ids))
    ours = ((pixels + 1) / 2).clamp(0, 1) * 255  # float, against VAR's uint8-rounded pixels
    rms = (ours - torch.from_numpy(ref_decoded).permute(0, 3, 1, 2).float()).square().mean().sqrt()
    assert rms <= 1.0, f"decode RMS {rms:.3f}/255"
    assert np.abs(to_uint8(pixels).astype(int) - ref_decoded).max() <= 1
    assert float(ours.std()) > 30  # the random decoder's output is not flat: the comparison means something


@needs_var
@pytest.mark.parametrize(
    "kwargs, autoencoder, size",
    [
        pytest.param({"share_quant_resi": 4}, {"ch_mult": [1, 1, 2, 2, 4], "num_res_blocks": 2}, 128, id="var-autoencoder-128"),
        pytest.param({"share_quant_resi": 1}, None, 32, id="shared-phi"),
        pytest.param({"share_quant_resi": 0}, None, 32, id="one-phi-per-scale"),
        pytest.param({"share_quant_resi": 0, "default_qresi_counts": 3}, None, 32, id="three-phi-non-shared"),
        pytest.param({"share_quant_resi": 3}, None, 32, id="three-phi-partially-shared"),
        pytest.param({"quant_resi": 0.0}, None, 32, id="no-phi"),
        pytest.param({"using_znorm": True}, None, 32, id="znorm"),
    ],
)
def test_matches_var_checkout(tmp_path: Path, kwargs: dict, autoencoder: dict | None, size: int) -> None:
    """Random weights built by VAR's code, converted, give VAR's ids and pixels (VQTOK_VAR_REPO checkout)."""
    from tests.make_var_golden import build_reference, load_reference

    ref = load_reference(VAR_REPO)
    patch_nums = [1, 2, 3, 4, 6, 8] if size == 128 else [1, 2, 3, 5, 8]
    ae = {"ch_mult": [1, 2, 2], "num_res_blocks": 1, **(autoencoder or {})}
    ae.update(using_sa=True, using_mid_sa=True)
    full = {"vocab_size": 256, "z_channels": 8, "ch": 32, "v_patch_nums": patch_nums, **kwargs}
    torch.manual_seed(1)
    vae = build_reference(ref, full, ae)
    with torch.no_grad():
        vae.quantize.embedding.weight.normal_(0.0, 0.25)
    torch.save(vae.state_dict(), tmp_path / "vae_test.pth")
    cfg, state = convert_var([tmp_path / "vae_test.pth"], patch_nums=tuple(patch_nums))
    cfg = dataclasses.replace(cfg, using_znorm=kwargs.get("using_znorm", False))  # not in the weights
    model = VARVQVAE(cfg).eval()
    model.load_state_dict(state)
    x = photos(size, n=1 if size == 128 else 2)
    with torch.no_grad():
        ref_bl = vae.img_to_idxBl(x)
        ref_pixels = vae.idxBl_to_img(ref_bl, same_shape=True, last_one=True)
        ids = model.encode_ids(x)
        pixels = model.decode_ids(torch.cat(ref_bl, 1))
    assert torch.equal(ids, torch.cat(ref_bl, 1))
    assert len(torch.unique(ids)) > 10
    assert (pixels - ref_pixels).abs().max() < 1e-4


@needs_var
def test_released_layout_matches_var_code() -> None:
    """Our default model's state dict = VAR's VQVAE(4096, 32, ch=160) (vae_ch160v4096z32.pth) minus the usage EMA."""
    from tests.make_var_golden import load_reference

    ref = load_reference(VAR_REPO)
    with torch.device("meta"):
        theirs = ref.vqvae.VQVAE(vocab_size=4096, z_channels=32, ch=160, test_mode=False).state_dict()
        ours = VARVQVAE(VARConfig()).state_dict()
    assert set(theirs) - set(ours) == {"quantize.ema_vocab_hit_SV"}
    del theirs["quantize.ema_vocab_hit_SV"]
    assert layout_lines(ours) == layout_lines(theirs)


def test_released_layout_fingerprint() -> None:
    """Without VAR's code: the default model's names and shapes hash to those of VAR's released VQVAE."""
    with torch.device("meta"):
        state = VARVQVAE(VARConfig()).state_dict()
    assert len(state) == 323
    assert sum(v.numel() for v in state.values()) == 108_948_355
    assert state["quantize.quant_resi.qresi_ls.3.weight"].shape == (32, 32, 3, 3)
    assert state["encoder.down.4.attn.1.qkv.weight"].shape == (1920, 640, 1, 1)
    assert hashlib.sha256(layout_lines(state).encode()).hexdigest() == RELEASED_LAYOUT_SHA256


def test_phi_of_each_scale() -> None:
    """VAR's φ ticks: 4 shared φ over 10 scales 0,0,1,1,1,2,2,3,3,3; one φ; one per scale."""
    assert phi_indices(4, 10) == (0, 0, 1, 1, 1, 2, 2, 3, 3, 3)
    assert phi_indices(1, 10) == (0,) * 10
    assert phi_indices(10, 10) == tuple(range(10))
    assert phi_indices(3, 10) == (0, 0, 0, 0, 1, 1, 1, 2, 2, 2)


# ------------------------------------------------------------------ layout and model
def test_layout_default_is_680_scales() -> None:
    with torch.device("meta"):
        model = VARVQVAE()
    layout = model.layout()
    assert layout == model.layout(256) == model.layout((256, 256))
    assert layout.kind == "scales" and layout.codebook_size == 4096
    assert layout.positions == 680 and layout.shape == (680,)
    assert layout.scale_shapes == tuple((p, p) for p in VAR_PATCH_NUMS)
    assert TokenLayout.from_dict(layout.to_dict()) == layout
    parts = layout.split(torch.arange(680).expand(2, 680))
    assert [tuple(p.shape) for p in parts] == [(2, p, p) for p in VAR_PATCH_NUMS]
    assert parts[1][0].tolist() == [[1, 2], [3, 4]] and parts[-1][1, 0, 0] == 680 - 256
    assert model.downsample_factor == 16 and model.image_size == 256


def test_wrong_image_size_is_one_clear_error() -> None:
    with torch.device("meta"):
        model = VARVQVAE()
    with pytest.raises(ValueError, match=r"patch_nums 1,2,3,4,5,6,8,10,13,16 takes 256x256 images, got 512x512.*size=256"):
        model.layout(512)
    with pytest.raises(ValueError, match="takes 256x256 images, got 256x128"):
        model.layout((128, 256))
    small = small_model()
    with pytest.raises(ValueError, match="takes 16x16 images, got 32x32"):
        small.encode_ids(torch.zeros(1, 3, 32, 32))


def test_encode_decode_shapes_autocast_channels_last() -> None:
    model = small_model()
    x = photos(16)
    with torch.no_grad():
        ids = model.encode_ids(x)
        assert ids.shape == (2, 30) and ids.dtype == torch.int64 and int(ids.max()) < 64
        assert torch.equal(model.encode_ids(x[1:]), ids[1:])  # batch-independent
        bf16 = model.encode_ids(x, autocast_dtype=torch.bfloat16)
        assert bf16.shape == ids.shape and bf16.dtype == torch.int64
        y = model.decode_ids(ids)
        assert y.shape == (2, 3, 16, 16) and y.dtype == torch.float32 and y.abs().max() <= 1
        torch.testing.assert_close(model.decode_ids(ids, channels_last=True), y, atol=1e-5, rtol=0)
        assert model.decode_ids(ids, autocast_dtype=torch.bfloat16).shape == (2, 3, 16, 16)
        torch.testing.assert_close(model(x), y)
    with pytest.raises(ValueError, match=r"multi-scale ids must be \(B, 30"):
        model.decode_ids(ids[:, :29])


def test_quantized_features_approach_the_encoders() -> None:
    """f̂ rebuilt from the ids (all scales, φ-refined) is nearer f than zero is (a sign or order slip is not)."""
    model = small_model()
    with torch.no_grad():
        f = model.encode_features(photos(16))  # (2, 8, 4, 4)
        f_hat = model.quantize.ids_to_f_hat(model.quantize.f_to_ids(f))
    assert f_hat.shape == f.shape
    assert float((f_hat - f).square().mean()) < 0.9 * float(f.square().mean())


def test_config_validation_and_json() -> None:
    cfg = VARConfig()
    assert VARConfig.from_dict(cfg.to_dict()) == cfg and cfg.to_dict()["patch_nums"] == list(VAR_PATCH_NUMS)
    assert cfg.hash() != dataclasses.replace(cfg, patch_nums=(1, 2, 4, 8, 16)).hash()
    assert cfg.num_phi == 4 and dataclasses.replace(cfg, quant_resi=0.0).num_phi == 0
    for bad, match in [
        ({"vocab_size": 0}, "vocab_size must be a positive int"),
        ({"ch": 48}, "GroupNorm"),
        ({"patch_nums": (1,)}, "at least two increasing"),
        ({"patch_nums": (1, 3, 2)}, "at least two increasing"),
        ({"quant_conv_ks": 2}, "odd"),
        ({"share_quant_resi": -1}, ">= 0"),
    ]:
        with pytest.raises(ValueError, match=match):
            VARConfig(**bad)
    with pytest.raises(ValueError, match="unknown VAR config keys: v_patch_nums"):
        VARConfig.from_dict({"v_patch_nums": [1, 2]})


def test_repr_names_the_parts() -> None:
    text = repr(small_model())
    assert "MultiScaleQuantizer(\n    patch_nums=[1, 2, 3, 4], phi_of_scale=[0, 1, 2, 3], znorm=False" in text
    assert "PhiPartiallyShared" in text and "QKVAttnBlock" in text and "padding=(1, 1), ratio=0.5)" in text
    assert "VARConfig(vocab_size=64" in repr(SMALL)


def test_registered_family() -> None:
    fam = family("var")
    assert fam.model_class is VARVQVAE and fam.config_class is VARConfig
    tiny = fam.model_class(fam.tiny_config()).eval()
    assert model_type_of(tiny) == "var"
    with torch.no_grad():
        ids = tiny.encode_ids(torch.zeros(1, 3, fam.test_image_size, fam.test_image_size))
    assert ids.shape == (1, tiny.layout().positions)
    (fmt,) = [f for fam_, f in source_formats() if fam_.name == "var"]
    assert fmt.recognise is recognise_var and fmt.load_converter() is convert_var
    parser = argparse.ArgumentParser()
    fmt.add_arguments(parser)
    assert parser.parse_args(["--patch-nums", "1,2,4"]).patch_nums == (1, 2, 4)
    assert parser.parse_args([]).patch_nums is None


# ------------------------------------------------------------------ converter and recogniser
def test_converter_infers_config_and_round_trips(tmp_path: Path) -> None:
    model = small_model()
    state = {**model.state_dict(), "quantize.ema_vocab_hit_SV": torch.zeros(4, 64)}
    torch.save(state, tmp_path / "vae_small.pth")
    cfg, out = convert_var([tmp_path / "vae_small.pth"], patch_nums=(1, 2, 3, 4))
    assert cfg == SMALL
    assert out.keys() == model.state_dict().keys()
    assert all(torch.equal(out[k], v) for k, v in model.state_dict().items())
    cfg_default, _ = convert_var([tmp_path / "vae_small.pth"])
    assert cfg_default.patch_nums == VAR_PATCH_NUMS


def test_converter_errors(tmp_path: Path) -> None:
    good = small_model().state_dict()
    cases = {
        "not_var.pth": ({"encoder.conv_in.weight": torch.zeros(32, 3, 3, 3)}, "is not a VAR VQVAE state dict: no quantize.embedding.weight"),
        "list.pth": ([torch.zeros(2)], "plain dict of tensors"),
        "extra.pth": ({**good, "var.head.weight": torch.zeros(2)}, "unexpected keys var.head.weight"),
        "missing.pth": ({k: v for k, v in good.items() if k != "decoder.conv_out.bias"}, "missing: decoder.conv_out.bias"),
        "shape.pth": ({**good, "post_quant_conv.bias": torch.zeros(9)}, r"wrong shape: post_quant_conv.bias: \(9,\) vs \(8,\)"),
    }
    for name, (obj, match) in cases.items():
        torch.save(obj, tmp_path / name)
        with pytest.raises(ValueError, match=match):
            convert_var([tmp_path / name])
    with pytest.raises(ValueError, match="one .pth file, got 2"):
        convert_var([tmp_path / "a.pth", tmp_path / "b.pth"])


def test_recognise_var() -> None:
    hub = ["README.md", ".gitattributes", "vae_ch160v4096z32.pth", "var_d16.pth", "var_d30.pth"]
    assert recognise_var(hub, lambda _: None) == ("vae_ch160v4096z32.pth",)
    assert recognise_var(["ckpt/vae_ft.pth", "vae_notes.txt"], lambda _: None) == ("ckpt/vae_ft.pth",)
    assert recognise_var(["var_d16.pth", "model.safetensors", "config.json"], lambda _: None) is None
    assert recognise_var(["my_vae_x.pth"], lambda _: None) is None


# ------------------------------------------------------------------ through the Tokenizer and the CLI
@pytest.fixture(scope="module")
def var_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder laid out as the Hub repo FoundationVision/var: the fixture's weights as vae_ch160v4096z32.pth."""
    from safetensors.torch import load_file

    folder = tmp_path_factory.mktemp("var-hub")
    torch.save(load_file(str(FIXTURES / "weights.safetensors")), folder / "vae_ch160v4096z32.pth")
    (folder / "var_d16.pth").write_bytes(b"not the tokenizer")  # the transformer beside it is not claimed
    return folder


def test_tokenizer_from_pretrained_matches_var(var_folder: Path, tmp_path: Path) -> None:
    """from_pretrained on VAR's files -> VAR's ids from uint8 photos and its pixels; save/load keeps both."""
    from vqtok import Tokenizer

    _, images, ref_ids, ref_decoded = read_fixture()
    tok = Tokenizer.from_pretrained(var_folder)
    assert isinstance(tok.model, VARVQVAE) and tok.model_type == "var"
    assert repr(tok).startswith("Tokenizer(var, scales 1,2,3,4,5,6,8,10,13,16 (680 tokens), 512 codes, VARConfig ")
    ids = tok.encode(images)  # uint8 (2, 256, 256, 3)
    assert ids.shape == (2, 680) and ids.dtype == torch.int64
    assert torch.equal(ids, torch.from_numpy(ref_ids))
    assert tok.encode(images[1]).shape == (680,)
    decoded = tok.decode(ids, output="np")  # uint8 (2, 256, 256, 3)
    rms = np.sqrt(np.mean((decoded.astype(np.float64) - ref_decoded) ** 2))
    assert rms <= 1.0, f"decode RMS {rms:.3f}/255"
    out = tok.save_pretrained(tmp_path / "var-vae")
    again = Tokenizer.from_pretrained(out)
    assert again.config == tok.config and again.layout(256) == tok.layout(256)
    assert torch.equal(again.encode(images[:1]), ids[:1])
    with pytest.raises(ValueError, match="takes 256x256 images.*size=256"):
        tok.encode(np.zeros((128, 128, 3), np.uint8))
    assert tok.encode(np.zeros((128, 128, 3), np.uint8), size=256).shape == (680,)
    with pytest.raises(ValueError, match="layout"):
        tok.decode(ids[:, :679])


def test_cli_convert_var(var_folder: Path, tmp_path: Path, capsys) -> None:
    """`vqtok convert var FILE_OR_FOLDER [--patch-nums ...] --out DIR` writes a vqtok folder."""
    from vqtok import Tokenizer
    from vqtok.cli import main

    assert main(["convert", "var", str(var_folder / "vae_ch160v4096z32.pth"), "--out", str(tmp_path / "a")]) == 0
    assert "var: scales 1,2,3,4,5,6,8,10,13,16 (680 tokens), 512 codes" in capsys.readouterr().out
    assert main(["convert", "var", str(var_folder), "--patch-nums", "1,2,4,8", "--out", str(tmp_path / "b")]) == 0
    tok = Tokenizer.from_pretrained(tmp_path / "b")
    assert tok.config.patch_nums == (1, 2, 4, 8) and tok.layout(128).positions == 85
    assert Tokenizer.from_pretrained(tmp_path / "a").config.patch_nums == VAR_PATCH_NUMS
