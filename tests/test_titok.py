"""TiTok (vqtok.models.titok): parity with ByteDance's code on real photos, layout, conversion, errors.

``tests/fixtures/titok`` was written by TiTok's own ``save_pretrained`` (see
``tests/make_titok_golden.py``, which also documents its reference ids and pixels). The tests
against a live checkout of bytedance/1d-tokenizer run when ``$VQTOK_TITOK_REPO`` or
``/work/ref/1d-tokenizer`` holds one (and omegaconf / einops / huggingface_hub are installed).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from tests.conftest import EVAL_PHOTOS
from vqtok.hub import load_strict
from vqtok.models.registry import family, source_formats
from vqtok.models.titok import TiTok, TiTokConfig, convert_titok, recognise_titok, titok_config

FIXTURE = Path(__file__).parent / "fixtures" / "titok"
_REPO = Path(os.environ.get("VQTOK_TITOK_REPO", "/work/ref/1d-tokenizer"))


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _fixture_model() -> TiTok:
    cfg, state = convert_titok([FIXTURE / "config.json", FIXTURE / "model.safetensors"])
    model = TiTok(cfg).eval()
    load_strict(model, state, source=str(FIXTURE))
    return model


def _fixture_photos() -> torch.Tensor:
    """The fixture's input photos (checked against the sha256 the reference run recorded)."""
    from tests.make_titok_golden import photos

    if not EVAL_PHOTOS.is_dir():
        pytest.skip(f"the eval photos the fixture was made from are not at {EVAL_PHOTOS}")
    x, digests = photos(3, EVAL_PHOTOS)
    recorded = [bytes(r.tolist()).hex() for r in load_file(FIXTURE / "reference.safetensors")["photo_sha256"]]
    assert digests == recorded, "the eval photos or their 256 px crops differ from those the reference ran on"
    return x


def _reference_pixels() -> torch.Tensor:
    """(3, 3, 256, 256) float in 0..255 from the fixture's side-by-side PNG."""
    strip = np.asarray(Image.open(FIXTURE / "reference_pixels.png").convert("RGB"), dtype=np.float32)  # (256, 768, 3)
    return torch.from_numpy(strip.copy()).reshape(256, 3, 256, 3).permute(1, 3, 0, 2)


# ------------------------------------------------------------------ parity with the fixture
def test_fixture_converts_to_the_tiny_config():
    cfg, state = convert_titok([FIXTURE])  # the folder itself works too, and so does one of its files
    assert convert_titok([FIXTURE / "model.safetensors"])[0] == cfg
    with pytest.raises(FileNotFoundError, match="nope.safetensors not found"):
        convert_titok([FIXTURE / "config.json", FIXTURE / "nope.safetensors"])
    assert cfg == TiTokConfig(
        image_size=256, num_latent_tokens=32, codebook_size=1024, token_size=12, use_l2_norm=True,
        encoder_patch_size=16, encoder_width=32, encoder_layers=2, encoder_heads=1,
        decoder_patch_size=16, decoder_width=32, decoder_layers=2, decoder_heads=1, decoder="maskgit",
        pixel_codebook_size=1024, pixel_embed_dim=32, pixel_hidden_channels=32, pixel_channel_mult=(1, 1, 1, 2, 1),
        pixel_num_res_blocks=1,
    )
    assert set(state) == set(TiTok(cfg).state_dict())


def test_fixture_ids_and_pixels_match_titok():
    model, x = _fixture_model(), _fixture_photos()
    ref_ids = load_file(FIXTURE / "reference.safetensors")["ids"]
    with torch.no_grad():
        ids = model.encode_ids(x)
        pixels = model.decode_ids(ref_ids)
    assert ids.dtype == torch.int64 and ids.shape == (3, 32)
    assert len({tuple(r) for r in ref_ids.tolist()}) == 3  # the photos' ids differ: the test can fail
    assert torch.equal(ids, ref_ids)
    ours = pixels.clamp(0, 1) * 255
    rms = (ours - _reference_pixels()).pow(2).mean().sqrt().item()
    assert rms < 1.0, f"decode RMS {rms:.3f} / 255"
    # the images differ between photos by far more than the tolerance
    assert (ours[0] - ours[1]).pow(2).mean().sqrt().item() > 10


def test_ids_are_batch_invariant_and_sensitive():
    model, x = _fixture_model(), _fixture_photos()
    with torch.no_grad():
        both = model.encode_ids(x[:2])
        alone = model.encode_ids(x[1:2])
        flipped = model.encode_ids(x[:1].flip(-1))
    assert torch.equal(both[1:], alone)
    assert (flipped != both[:1]).any()


def test_autocast_bf16_keeps_most_ids_and_channels_last_changes_nothing():
    model, x = _fixture_model(), _fixture_photos()[:1]
    with torch.no_grad():
        fp32 = model.encode_ids(x)
        bf16 = model.encode_ids(x, autocast_dtype=torch.bfloat16)
        img = model.decode_ids(fp32, autocast_dtype=torch.bfloat16)
        plain, nhwc = model.decode_ids(fp32), model.decode_ids(fp32, channels_last=True)
    assert bf16.dtype == torch.int64 and bf16.shape == fp32.shape
    assert (bf16 == fp32).float().mean() > 0.5
    # (this sharp random model decodes 0.14 apart in bf16, as TiTok's own code does under autocast)
    assert img.shape == (1, 3, 256, 256) and torch.isfinite(img).all()
    assert (nhwc - plain).abs().max() < 1 / 255  # other kernels: equal up to float rounding


# ------------------------------------------------------------------ layout, config, registry
def test_layout_is_a_sequence_of_n_tokens():
    model = _fixture_model()
    layout = model.layout((256, 256))
    assert layout.kind == "sequence" and layout.shape == (32,) and layout.codebook_size == 1024
    assert model.layout() == layout
    assert TiTok.pixel_range == (0.0, 1.0)


def test_other_image_sizes_are_refused():
    model = _fixture_model()
    with pytest.raises(ValueError, match=r"256x256 images only, got 320x224 .*pass size=256"):
        model.layout((224, 320))
    with pytest.raises(ValueError, match="pass size=256"):
        model.encode_ids(torch.rand(1, 3, 128, 128))


def test_repr_names_tokens_codes_and_variant():
    text = repr(_fixture_model())
    assert "32 tokens, 1024 codes, 256px, decoder=maskgit" in text
    assert "TiTokConfig(image_size=256, num_latent_tokens=32" in repr(TiTokConfig(num_latent_tokens=32))


@pytest.mark.parametrize("changes, message", [
    ({"image_size": 250}, "not a multiple of the encoder patch size 16"),
    ({"encoder_heads": 5}, "encoder_width 1024 is not a multiple of encoder_heads 5"),
    ({"decoder": "vae"}, "decoder must be one of maskgit, pixels"),
    ({"pixel_channel_mult": (1, 2, 4)}, "must equal decoder_patch_size 16"),
    ({"pixel_hidden_channels": 48}, "multiples of 32"),
    ({"num_latent_tokens": 0}, "num_latent_tokens must be a positive int"),
    ({"use_l2_norm": 1}, "use_l2_norm must be true or false"),
])
def test_config_validation(changes, message):
    with pytest.raises(ValueError, match=message):
        TiTokConfig(**changes)


def test_config_round_trips_through_json_and_hash_names_the_family():
    cfg = family("titok").tiny_config()
    again = TiTokConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and again.hash() == cfg.hash()
    with pytest.raises(ValueError, match="unknown TiTok config keys: width"):
        TiTokConfig.from_dict({**cfg.to_dict(), "width": 3})


def test_registry_tiny_model_runs_both_variants():
    fam = family("titok")
    assert any(fmt.name == "titok" and fam.name == "titok" for fam, fmt in source_formats())
    for decoder in ("maskgit", "pixels"):
        cfg = TiTokConfig(**{**fam.tiny_config().to_dict(), "decoder": decoder})
        model = TiTok(cfg).eval()
        x = torch.rand(2, 3, fam.test_image_size, fam.test_image_size)
        with torch.no_grad():
            ids = model.encode_ids(x)
            out = model.decode_ids(ids)
        assert ids.shape == (2, cfg.num_latent_tokens) and int(ids.max()) < cfg.codebook_size
        assert out.shape == x.shape
        assert hasattr(model, "pixel_decoder") == (decoder == "maskgit")


def test_save_load_round_trip(tmp_path):
    from vqtok.hub import load_pretrained, save_pretrained
    from vqtok.models.registry import build_model

    model = _fixture_model()
    save_pretrained(tmp_path, state_dict=model.state_dict(), config=model.config.to_dict(), model_type="titok")
    config, state = load_pretrained(tmp_path, model_type="titok")
    again = build_model("titok", config).eval()
    load_strict(again, state, source=str(tmp_path))
    assert again.config == model.config
    x = torch.rand(1, 3, 256, 256)
    with torch.no_grad():
        assert torch.equal(again.encode_ids(x), model.encode_ids(x))


# ------------------------------------------------------------------ recognising and converting
def _reader(config):
    return lambda name: config if name == "config.json" else None


def test_recognise_titok_folders_only():
    titok = json.loads((FIXTURE / "config.json").read_text())
    files = ["config.json", "model.safetensors", "README.md"]
    assert recognise_titok(files, _reader(titok)) == ("config.json", "model.safetensors")
    assert recognise_titok(["config.json"], _reader(titok)) is None  # no weights
    assert recognise_titok(files, _reader({"vqtok_format": 1, "model_type": "titok", **titok})) is None
    assert recognise_titok(files, _reader({"_class_name": "VQModel", "num_vq_embeddings": 256})) is None
    assert recognise_titok(files, _reader({"model": {"vq_model": {"codebook_size": 4}}})) is None
    assert recognise_titok(files, _reader(None)) is None


def test_hub_repo_listing_is_recognised_as_titok():
    """A released repo's files (as the Hub lists them) resolve to the titok format, as from_pretrained sees them."""
    from vqtok.convert.auto import recognise_layout

    titok = json.loads((FIXTURE / "config.json").read_text())
    files = [".gitattributes", "README.md", "config.json", "model.safetensors"]
    found = recognise_layout(files, read_config=_reader(titok), where="yucornetto/tokenizer_titok_l32_imagenet")
    assert (found.layout, found.files) == ("titok", ("config.json", "model.safetensors"))
    ours = {"vqtok_format": 1, "model_type": "titok", **TiTokConfig().to_dict()}
    assert recognise_layout(files, read_config=_reader(ours)).layout == "vqtok"


def _titok_folder(tmp_path: Path, edit=None, drop=(), add=None) -> Path:
    """A copy of the fixture with its config edited / tensors dropped or added."""
    folder = tmp_path / "src"
    shutil.copytree(FIXTURE, folder)
    config = json.loads((folder / "config.json").read_text())
    if edit:
        edit(config)
        (folder / "config.json").write_text(json.dumps(config))
    if drop or add:
        from safetensors.torch import save_file

        state = {k: v for k, v in load_file(folder / "model.safetensors").items() if not k.startswith(tuple(drop) or ("\0",))}
        save_file({**state, **(add or {})}, str(folder / "model.safetensors"))
    return folder


@pytest.mark.parametrize("edit, drop, add, message", [
    (lambda c: c["model"]["vq_model"].update(quantize_mode="vae"), (), None, "continuous latents"),
    (lambda c: c["model"]["vq_model"].update(finetune_decoder=False), (), None, "stage-1 TiTok"),
    (lambda c: c.pop("dataset"), (), None, "dataset.preprocessing.crop_size"),
    (lambda c: c["model"]["vq_model"].update(vit_enc_model_size="small"), (), None, "'small' is 512 wide with 8 layers"),
    (None, ("latent_tokens",), None, "no TiTok tokenizer .* generator"),
    (None, (), {"decoder.text_guidance_proj.weight": torch.zeros(2, 2)}, "TA-TiTok"),
    (None, ("pixel_decoder.",), None, "lack pixel_decoder"),
])
def test_convert_refuses_with_the_reason(tmp_path, edit, drop, add, message):
    folder = _titok_folder(tmp_path, edit, drop, add)
    with pytest.raises(ValueError, match=message):
        convert_titok([folder / "config.json", folder / "model.safetensors"])


def test_released_configs_have_titok_names_and_shapes():
    """Our state dict equals TiTok's (names and shapes) for the released L-32 / B-64 / S-128 / VQ-8k configs."""
    released = json.loads((FIXTURE / "released_shapes.json").read_text())
    assert {"l32", "b64", "s128"} <= set(released)
    for name, entry in released.items():
        cfg = titok_config(entry["config"])
        with torch.device("meta"):
            model = TiTok(cfg)
        lines = sorted(f"{k}:{tuple(v.shape)}" for k, v in model.state_dict().items())
        why = f"{name}: our state dict differs from TiTok's (compare with make_titok_golden.state_shapes)"
        assert len(lines) == entry["tensors"], why
        assert hashlib.sha256("\n".join(lines).encode()).hexdigest() == entry["sha256"], why
    assert titok_config(released["s128"]["config"]).num_latent_tokens == 128
    assert titok_config(released["bl64_vq8k"]["config"]).decoder == "pixels"


# ------------------------------------------------------------------ against a live TiTok checkout
@pytest.fixture(scope="module")
def reference():
    if not (_REPO / "modeling" / "titok.py").is_file():
        pytest.skip(f"no bytedance/1d-tokenizer checkout at {_REPO} (set VQTOK_TITOK_REPO)")
    for module in ("omegaconf", "einops", "huggingface_hub"):
        pytest.importorskip(module)
    from tests.make_titok_golden import import_reference

    return import_reference(_REPO)


@pytest.mark.parametrize("pixels", [False, True], ids=["maskgit", "pixels"])
def test_live_reference_multi_head(reference, tmp_path, pixels):
    """4-head ViTs of both decoder variants, converted from TiTok's save_pretrained, on two photos."""
    from tests.make_titok_golden import build_reference, reference_outputs, tiny_config

    ref = build_reference(reference, tiny_config("tiny_mh", pixels=pixels), seed=3, tiny_pixel=not pixels)
    ref.save_pretrained(tmp_path)
    cfg, state = convert_titok([tmp_path / "config.json", tmp_path / "model.safetensors"])
    cfg = TiTokConfig(**{**cfg.to_dict(), "encoder_heads": 4, "decoder_heads": 4})  # "tiny_mh" is not a TiTok name
    ours = TiTok(cfg).eval()
    load_strict(ours, state, source=str(tmp_path))
    x = _fixture_photos()[:2]
    ref_ids, ref_pixels = reference_outputs(ref, x)
    with torch.no_grad():
        ids = ours.encode_ids(x)
        pixels_out = ours.decode_ids(ref_ids)
    assert torch.equal(ids, ref_ids)
    assert ((pixels_out - ref_pixels) * 255).pow(2).mean().sqrt().item() < 1.0


# ------------------------------------------------------------------ through the Tokenizer and the CLI
@pytest.fixture
def tokenizer(tmp_path_factory, monkeypatch):
    """``Tokenizer.from_pretrained(fixture folder)``: recognised as TiTok's, converted once into a private cache."""
    from vqtok import Tokenizer

    monkeypatch.setenv("VQTOK_CACHE", str(tmp_path_factory.mktemp("vqtok-cache")))
    return Tokenizer.from_pretrained(FIXTURE)


def _photo_files() -> list[Path]:
    if not EVAL_PHOTOS.is_dir():
        pytest.skip(f"the eval photos the fixture was made from are not at {EVAL_PHOTOS}")
    return sorted(EVAL_PHOTOS.glob("*.jpg"))[:3]


def test_tokenizer_from_titok_folder_matches_titok_on_photos(tokenizer):
    photos = [Image.open(p).convert("RGB") for p in _photo_files()]
    assert isinstance(tokenizer.model, TiTok) and tokenizer.model_type == "titok"
    ref_ids = load_file(FIXTURE / "reference.safetensors")["ids"]
    ids = tokenizer.encode(photos, size=256)  # resized + center-cropped as the reference's inputs, x / 255
    assert ids.shape == (3, 32) and ids.dtype == torch.int64
    assert torch.equal(ids, ref_ids)
    assert torch.equal(tokenizer.encode(photos[1], size=256), ref_ids[1])  # one image: (n,)
    images = tokenizer.decode(ids, output="np")  # (3, 256, 256, 3) uint8, clamped as TiTok's demo
    ref = _reference_pixels().permute(0, 2, 3, 1)
    rms = (torch.from_numpy(images).float() - ref).pow(2).mean().sqrt().item()
    assert rms < 1.0, f"decode RMS {rms:.3f} / 255"


def test_tokenizer_layout_repr_and_sizes(tokenizer):
    assert tokenizer.layout(256).shape == (32,) and tokenizer.codebook_size == 1024
    assert tokenizer.downsample_factor == 16 and tokenizer.embed_dim == 12
    text = repr(tokenizer)
    assert text.startswith("Tokenizer(titok, sequence of 32, 1024 codes, TiTokConfig ")
    with pytest.raises(ValueError, match="pass size=256"):
        tokenizer.encode(np.zeros((200, 300, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="layout"):
        tokenizer.decode(torch.zeros(2, 31, dtype=torch.long))


def test_tokenizer_save_load_round_trip(tokenizer, tmp_path):
    from vqtok import Tokenizer

    x = torch.randint(0, 256, (2, 3, 256, 256), dtype=torch.uint8)
    ids = tokenizer.encode(x)
    tokenizer.save_pretrained(tmp_path / "saved")
    config = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert config["model_type"] == "titok" and "vqtok_format" in config
    assert recognise_titok(["config.json", "model.safetensors"], _reader(config)) is None  # ours: never re-converted
    again = Tokenizer.from_pretrained(tmp_path / "saved")
    assert again.config == tokenizer.config
    assert torch.equal(again.encode(x), ids)
    assert torch.equal(again.decode(ids, output="pt"), tokenizer.decode(ids, output="pt"))
    # TiTok's weights file named by itself: its config.json beside it tells the format
    assert torch.equal(Tokenizer.from_pretrained(FIXTURE / "model.safetensors").encode(x), ids)


def test_cli_convert_titok_folder(tmp_path, capsys):
    from vqtok import Tokenizer
    from vqtok.cli import main

    assert main(["convert", "titok", str(FIXTURE), "--out", str(tmp_path / "out")]) == 0
    assert "titok: sequence of 32, 1024 codes" in capsys.readouterr().out
    tok = Tokenizer.from_pretrained(tmp_path / "out")
    x = torch.randint(0, 256, (1, 3, 256, 256), dtype=torch.uint8)
    with torch.no_grad():  # the same ids as the model loaded straight from TiTok's files
        direct = _fixture_model().encode_ids(x.double().div(255).float())
    assert torch.equal(tok.encode(x), direct)
