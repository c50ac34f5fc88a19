"""The Tokenizer API as the README shows it: inputs, outputs, errors, save/load."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import TINY
from vqtok import Tokenizer


def test_readme_round_trip(tiny_tokenizer, photos):
    ids = tiny_tokenizer.encode(photos, size=64)
    assert ids.dtype == torch.long and ids.shape == (4, 16, 16)
    imgs = tiny_tokenizer.decode(ids)
    assert isinstance(imgs, list) and len(imgs) == 4
    assert imgs[0].size == (64, 64) and imgs[0].mode == "RGB"
    single = tiny_tokenizer.encode(photos[0], size=64)
    assert single.shape == (16, 16)
    assert isinstance(tiny_tokenizer.decode(single), Image.Image)


def test_single_image_equals_its_row_in_a_batch(tiny_tokenizer, photos):
    batch = tiny_tokenizer.encode(photos, size=64)
    for i, img in enumerate(photos):
        assert torch.equal(tiny_tokenizer.encode(img, size=64), batch[i])


def test_batches_larger_than_batch_size_are_chunked(tiny_tokenizer, photos):
    full = tiny_tokenizer.encode(photos, size=64)
    tiny_tokenizer.batch_size = 3
    assert torch.equal(tiny_tokenizer.encode(photos, size=64), full)
    assert len(tiny_tokenizer.decode(full)) == 4


def test_pil_numpy_and_torch_inputs_agree(tiny_tokenizer, photo_array):
    pil = Image.fromarray(photo_array)
    ref = tiny_tokenizer.encode(pil)
    assert torch.equal(tiny_tokenizer.encode(photo_array), ref)  # (H, W, 3) uint8
    assert torch.equal(tiny_tokenizer.encode(photo_array[None])[0], ref)  # (B, H, W, 3)
    chw = torch.from_numpy(photo_array).permute(2, 0, 1)
    assert torch.equal(tiny_tokenizer.encode(chw), ref)  # (3, H, W) uint8
    assert torch.equal(tiny_tokenizer.encode(chw[None])[0], ref)  # (B, 3, H, W) uint8
    as_float = chw[None].float() / 255.0
    assert torch.equal(tiny_tokenizer.encode(as_float)[0], ref)  # float in [0, 1]
    assert torch.equal(tiny_tokenizer.encode([photo_array, photo_array])[1], ref)  # list of arrays


def test_pixels_are_scaled_like_taming(tiny_tokenizer, photo_array):
    from vqtok.images import to_model_input

    x = to_model_input(torch.from_numpy(photo_array).permute(2, 0, 1)[None])
    expected = (photo_array.astype(np.float64) / 127.5 - 1.0).astype(np.float32)  # taming's data pipeline
    assert np.array_equal(x[0].permute(1, 2, 0).numpy(), expected)


@pytest.mark.parametrize("mode", ["RGBA", "L", "LA", "P", "CMYK", "I;16", "1", "I", "F"])
def test_every_pil_mode_is_converted_to_rgb(tiny_tokenizer, photo_array, mode):
    rgb = Image.fromarray(photo_array)
    if mode == "I;16":
        img = Image.fromarray(np.asarray(rgb.convert("L")).astype(np.uint16) * 257)
        assert img.mode == "I;16"
        expected = rgb.convert("L").convert("RGB")
    elif mode == "F":
        img = Image.fromarray(np.asarray(rgb.convert("L")).astype(np.float32) / 255.0)
        expected = rgb.convert("L").convert("RGB")
    elif mode == "I":
        img = Image.fromarray(np.asarray(rgb.convert("L")).astype(np.int32) * 257)
        expected = rgb.convert("L").convert("RGB")
    else:
        img = rgb.convert(mode)
        expected = None
    ids = tiny_tokenizer.encode(img)
    assert ids.shape == (16, 16)
    if expected is not None:  # 16-bit and float grey map back to the same 8-bit grey
        assert torch.equal(ids, tiny_tokenizer.encode(expected))


def test_transparent_pixels_are_composited_on_white(tiny_tokenizer):
    clear = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    white = Image.new("RGB", (64, 64), (255, 255, 255))
    assert torch.equal(tiny_tokenizer.encode(clear), tiny_tokenizer.encode(white))


def test_size_resizes_shorter_side_and_center_crops(tiny_tokenizer, photos):
    from vqtok.images import resize_center_crop

    img = photos[1]  # chelsea, 451x300
    cropped = resize_center_crop(img, 64)
    assert cropped.size == (64, 64)
    assert torch.equal(tiny_tokenizer.encode(img, size=64), tiny_tokenizer.encode(cropped))


def test_side_not_multiple_of_factor_suggests_size(tiny_tokenizer):
    with pytest.raises(ValueError, match=r"multiple of the downsample factor 4.*size="):
        tiny_tokenizer.encode(Image.new("RGB", (30, 64)))


@pytest.mark.parametrize(
    "bad, err, match",
    [
        ("image.jpg", TypeError, "pass image data"),
        (b"\x89PNG", TypeError, "pass image data"),
        (42, TypeError, "unsupported image type"),
        ([], ValueError, "empty list"),
        ([Image.new("RGB", (8, 8)), "x"], TypeError, "unsupported item"),
        (np.zeros((64, 64, 4), np.uint8), ValueError, "4 channels"),
        (np.zeros((64, 64), np.uint8), ValueError, "expected"),
        (np.zeros((64, 64, 3), np.int64), TypeError, "dtype"),
        (torch.zeros(1, 3, 64, 64, dtype=torch.int32), TypeError, "dtype"),
        (torch.full((3, 64, 64), float("nan")), ValueError, "NaN"),
        (torch.full((3, 64, 64), float("inf")), ValueError, "NaN or inf"),
        (torch.full((3, 64, 64), 2.0), ValueError, r"\[0, 1\]"),
        (torch.zeros(0, 3, 64, 64), ValueError, "empty"),
        (Image.new("RGB", (0, 0)), ValueError, "empty image"),
        ([Image.new("RGB", (64, 64)), Image.new("RGB", (32, 32))], ValueError, "share a size"),
    ],
)
def test_bad_input_gets_a_clear_error(tiny_tokenizer, bad, err, match):
    with pytest.raises(err, match=match):
        tiny_tokenizer.encode(bad)


def test_non_image_file_is_a_clear_error(tmp_path):
    from vqtok.images import load_image

    p = tmp_path / "notes.jpg"
    p.write_text("not an image")
    with pytest.raises(ValueError, match="not a readable image"):
        load_image(p)


def test_decode_outputs(tiny_tokenizer, photos):
    ids = tiny_tokenizer.encode(photos[:2], size=64)
    pt = tiny_tokenizer.decode(ids, output="pt")
    assert pt.shape == (2, 3, 64, 64) and pt.dtype == torch.float32
    assert float(pt.min()) >= 0.0 and float(pt.max()) <= 1.0
    arr = tiny_tokenizer.decode(ids, output="np")
    assert arr.shape == (2, 64, 64, 3) and arr.dtype == np.uint8
    assert np.array_equal(arr, np.round(pt.permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8))
    pil = tiny_tokenizer.decode(ids)
    assert np.array_equal(np.asarray(pil[1]), arr[1])


def test_decode_accepts_any_integer_dtype_and_flat_ids(tiny_tokenizer):
    ids = torch.randint(0, 512, (2, 4, 4))
    ref = tiny_tokenizer.decode(ids, output="pt")
    for dt in (torch.int16, torch.int32, torch.uint8):
        small = ids.clamp(max=255) if dt == torch.uint8 else ids
        assert torch.equal(tiny_tokenizer.decode(small.to(dt), output="pt"), tiny_tokenizer.decode(small, output="pt"))
    assert torch.equal(tiny_tokenizer.decode(ids.numpy().astype(np.uint16), output="pt"), ref)
    assert torch.equal(tiny_tokenizer.decode(ids.reshape(2, 16), grid=(4, 4), output="pt"), ref)
    # one image alone vs inside a batch: same pixels up to float rounding of batched convolutions
    assert torch.allclose(tiny_tokenizer.decode(ids[0].reshape(16), grid=(4, 4), output="pt"), ref[0], atol=1e-5)
    for dt in (torch.uint16, torch.uint32, torch.uint64):  # vqtok's own uint16 files, and wider unsigned ids
        assert torch.equal(tiny_tokenizer.decode(ids.to(dt), output="pt"), ref)
    assert torch.equal(tiny_tokenizer.decode(torch.from_numpy(ids.numpy().astype(np.uint16)), output="pt"), ref)


@pytest.mark.parametrize(
    "ids, match",
    [
        (torch.tensor([[0, 512]]), r"\[0, 511\]"),
        (torch.tensor([[-1, 3]]), r"\[0, 511\]"),
        (torch.zeros(2, 2, dtype=torch.float32), "integers"),
        (np.zeros((2, 2), np.float64), "integers"),
        (torch.zeros(15, dtype=torch.long), r"pass grid=\(h, w\)"),
        (torch.zeros(16, dtype=torch.long), r"pass grid=\(h, w\)"),  # a square length is not guessed either
        (torch.zeros(1, 1, 2, 2, dtype=torch.long), "shape"),
        (torch.tensor([[2**63 + 5]], dtype=torch.uint64), "int64"),  # not printed as a wrapped negative
        (torch.zeros(1, 200, 200, dtype=torch.long), "max_decode_positions"),
    ],
)
def test_decode_rejects_bad_ids(tiny_tokenizer, ids, match):
    with pytest.raises(ValueError, match=match):
        tiny_tokenizer.decode(ids)


def test_decode_rejects_bad_output_and_types(tiny_tokenizer):
    with pytest.raises(ValueError, match="output"):
        tiny_tokenizer.decode(torch.zeros(2, 2, dtype=torch.long), output="jpg")
    with pytest.raises(TypeError, match="tensor or numpy"):
        tiny_tokenizer.decode([[1, 2], [3, 4]])
    with pytest.raises(ValueError, match="grid_shape must be two positive ints"):
        tiny_tokenizer.decode(torch.zeros(4, dtype=torch.long), grid=(0, 0))


def test_properties(tiny_tokenizer):
    assert tiny_tokenizer.codebook_size == 512
    assert tiny_tokenizer.downsample_factor == 4
    assert tiny_tokenizer.embed_dim == 8
    assert tiny_tokenizer.grid_shape(64) == (16, 16)
    assert tiny_tokenizer.grid_shape((32, 64)) == (8, 16)
    with pytest.raises(ValueError, match="multiple"):
        tiny_tokenizer.grid_shape(30)


def test_to_dtype_keeps_working(tiny_tokenizer, photo_array):
    tiny_tokenizer.to(dtype=torch.float64)
    ids = tiny_tokenizer.encode(photo_array)
    assert ids.shape == (16, 16)
    assert tiny_tokenizer.decode(ids, output="pt").dtype == torch.float32


def test_bf16_precision_mostly_agrees_with_fp32(photos, tiny_tokenizer):
    tok = tiny_tokenizer
    ref = tok.encode(photos, size=64)
    tok.precision = "bf16"
    fast = tok.encode(photos, size=64)
    assert fast.shape == ref.shape
    assert (fast == ref).float().mean() > 0.8


def test_save_and_load_pretrained_round_trip(tiny_tokenizer, photos, tmp_path):
    tiny_tokenizer.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    loaded = Tokenizer.from_pretrained(tmp_path / "m")
    assert loaded.config == tiny_tokenizer.config
    assert torch.equal(loaded.encode(photos, size=64), tiny_tokenizer.encode(photos, size=64))


def test_loading_is_strict(tiny_tokenizer, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = tiny_tokenizer.save_pretrained(tmp_path / "m")
    state = load_file(str(folder / "model.safetensors"))
    state.pop("decoder.conv_out.bias")
    state["extra.weight"] = torch.zeros(1)
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(ValueError, match=r"missing: decoder.conv_out.bias; unexpected: extra.weight"):
        Tokenizer.from_pretrained(folder)


def test_load_errors_are_clear(tmp_path, tiny_tokenizer):
    with pytest.raises(FileNotFoundError, match="has no config.json and no model.safetensors"):
        Tokenizer.from_pretrained(tmp_path)
    folder = tiny_tokenizer.save_pretrained(tmp_path / "m")
    (folder / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="safetensors"):
        Tokenizer.from_pretrained(folder)
    (folder / "config.json").write_text('{"vqtok_format": 1, "model_type": "gpt-prior"}')
    with pytest.raises(ValueError, match="expected 'vqgan'"):
        Tokenizer.from_pretrained(folder)
    (folder / "config.json").write_text('{"vqtok_format": 99, "model_type": "vqgan"}')
    with pytest.raises(ValueError, match="upgrade vqtok"):
        Tokenizer.from_pretrained(folder)


def test_fake_hub_cache_offline(tiny_tokenizer, photos, tmp_path):
    """A snapshot in huggingface_hub's cache layout loads with local_files_only=True."""
    sha = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--some-org--tiny-vqgan"
    tiny_tokenizer.save_pretrained(repo / "snapshots" / sha)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(sha)
    tok = Tokenizer.from_pretrained("some-org/tiny-vqgan", cache_dir=tmp_path / "hub", local_files_only=True)
    assert torch.equal(tok.encode(photos, size=64), tiny_tokenizer.encode(photos, size=64))
    with pytest.raises(FileNotFoundError, match="not in the local cache"):
        Tokenizer.from_pretrained("some-org/absent", cache_dir=tmp_path / "hub", local_files_only=True)


def test_decoded_image_can_be_saved_and_reread(tiny_tokenizer):
    img = tiny_tokenizer.decode(torch.randint(0, 512, (4, 4)))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    assert Image.open(buf).size == (16, 16)


def test_fake_hub_cache_revision(tiny_tokenizer, tmp_path):
    repo = tmp_path / "hub" / "models--org--m"
    torch.manual_seed(1)
    other = Tokenizer.from_config(TINY)
    tiny_tokenizer.save_pretrained(repo / "snapshots" / ("a" * 40))
    other.save_pretrained(repo / "snapshots" / ("b" * 40))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("a" * 40)
    (repo / "refs" / "v2").write_text("b" * 40)
    main = Tokenizer.from_pretrained("org/m", cache_dir=tmp_path / "hub", local_files_only=True)
    v2 = Tokenizer.from_pretrained("org/m", revision="v2", cache_dir=tmp_path / "hub", local_files_only=True)
    w = "quantize.embedding.weight"
    assert torch.equal(main.model.state_dict()[w], tiny_tokenizer.model.state_dict()[w])
    assert torch.equal(v2.model.state_dict()[w], other.model.state_dict()[w])


def test_push_to_hub_uploads_the_saved_folder(tiny_tokenizer, monkeypatch):
    import huggingface_hub

    calls = {}

    class FakeApi:
        def __init__(self, token=None):
            calls["token"] = token

        def create_repo(self, repo_id, private=False, exist_ok=False):
            calls["create"] = (repo_id, private, exist_ok)

        def upload_folder(self, repo_id, folder_path, commit_message):
            from pathlib import Path

            calls["files"] = sorted(p.name for p in Path(folder_path).iterdir())
            calls["config"] = (Path(folder_path) / "config.json").read_text()
            return "https://huggingface.co/org/m/commit/123"

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    url = tiny_tokenizer.push_to_hub("org/m", private=True, token="t")
    assert url.endswith("/commit/123")
    assert calls["create"] == ("org/m", True, True) and calls["token"] == "t"
    assert calls["files"] == ["config.json", "model.safetensors"]
    assert '"model_type": "vqgan"' in calls["config"]
