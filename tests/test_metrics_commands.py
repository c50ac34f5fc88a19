"""`vqtok eval` end to end with a tiny random tokenizer and random metric networks."""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import write_tar
from vqtok.metrics.commands import add_commands

sys.path.insert(0, str(Path(__file__).parent))
from test_metrics_fid import _published_layout_state, accept_inception_weights
from test_metrics_lpips import _save_random_weights

SIZE = 64


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    add_commands(p.add_subparsers())
    return p


def _run(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    return args.func(args)


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from vqtok import Tokenizer, VQGANConfig

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tok") / "tok"
    cfg = VQGANConfig(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(), z_channels=16, embed_dim=8, n_embed=512, resolution=64)
    Tokenizer.from_config(cfg).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Image.Image]:
    """Five non-square images of different sizes (resized + center-cropped to 64 by eval)."""
    out = []
    for i in range(5):
        m = Image.effect_mandelbrot((80 + 8 * i, 70 + 4 * i), (-2 + 0.2 * i, -1.2, 1, 1.2), 40 + 10 * i)
        rgb = Image.merge("RGB", (m, m.rotate(90 * i, expand=False), Image.linear_gradient("L").resize(m.size)))
        out.append(rgb)
    return out


@pytest.fixture()
def folder_and_shards(tmp_path, images) -> tuple[Path, Path]:
    """The same images as a folder (img0.png ...) and as two WebDataset shards (keys img0 ...)."""
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    members = []
    for i, img in enumerate(images):
        data = _png_bytes(img)
        (folder / ("sub" if i == 4 else "") / f"img{i}.png").write_bytes(data)
        members.append((f"img{i}.png", data))
        members.append((f"img{i}.cls", str(i).encode()))
    shards = tmp_path / "shards"
    shards.mkdir()
    write_tar(shards / "val-000000.tar", members[:6])
    write_tar(shards / "val-000001.tar", members[6:])
    return folder, shards


def _expected_originals(images: list[Image.Image]) -> list[np.ndarray]:
    from vqtok.images import resize_center_crop

    return [np.asarray(resize_center_crop(img, SIZE)) for img in images]


METRICS = ("psnr", "ssim", "image_count", "size", "config_hash", "model")


def test_folder_and_shards_give_same_report(tiny_model, images, folder_and_shards, tmp_path, capsys) -> None:
    folder, shards = folder_and_shards
    common = ["eval", "--model", str(tiny_model), "--size", str(SIZE), "--no-fid", "--no-lpips", "--no-progress"]
    assert _run(common + ["--data", str(folder), "--out", str(tmp_path / "a" / "report.json")]) == 0
    brace = str(shards / "val-{000000..000001}.tar")
    assert _run(common + ["--data", brace, "--out", str(tmp_path / "b" / "report.json")]) == 0
    a = json.loads((tmp_path / "a" / "report.json").read_text())
    b = json.loads((tmp_path / "b" / "report.json").read_text())
    for key in METRICS:
        assert a[key] == b[key], key
    assert a["codebook_usage"] == b["codebook_usage"]
    assert a["image_count"] == 5 and a["size"] == SIZE and a["model"] == str(tiny_model)
    assert a["bad_samples"] == {"count": 0, "first": []} == b["bad_samples"]
    assert "rFID" in capsys.readouterr().out


def test_report_fields_grid_and_usage_plot(tiny_model, images, folder_and_shards, tmp_path, monkeypatch) -> None:
    folder, _ = folder_and_shards
    monkeypatch.setenv("VQTOK_CACHE", str(tmp_path / "cache"))
    report = tmp_path / "deep" / "er" / "report.json"
    grid, plot = tmp_path / "g" / "recon.png", tmp_path / "usage.png"
    assert _run([
        "eval", "--model", str(tiny_model), "--data", str(folder), "--size", str(SIZE), "--out", str(report),
        "--grid", str(grid), "--grid-columns", "4", "--usage-plot", str(plot), "--no-fid", "--offline", "--no-progress",
    ]) == 0
    data = json.loads(report.read_text())
    from vqtok import Tokenizer

    tok = Tokenizer.from_pretrained(tiny_model)
    assert data["model"] == str(tiny_model) and data["config_hash"] == tok.config.hash()
    assert data["image_count"] == 5 and data["size"] == SIZE
    assert data["psnr"] > 0 and -1 < data["ssim"] < 1
    assert data["rfid"] is None and data["rfid_n"] is None and data["skipped"]["rfid"] == "--no-fid"
    assert data["lpips"] is None and "vgg16-397923af.pth" in data["skipped"]["lpips"]
    u = data["codebook_usage"]
    assert u["codebook_size"] == 512 and u["total_tokens"] == 5 * 16 * 16
    assert u["used_codes"] + u["dead_count"] == 512 and u["used_fraction"] == pytest.approx(u["used_codes"] / 512)
    assert 1 <= u["perplexity"] <= u["used_codes"] and 0 <= u["entropy_bits"] <= 9
    assert data["weights"] == {"inception": None, "fid_preprocess": None, "lpips": None}
    assert data["outputs"] == {"report": str(report), "grid": str(grid), "usage_plot": str(plot)}

    # grid: 4 columns -> two pairs of rows; originals on top, reconstructions directly below
    g = np.asarray(Image.open(grid).convert("RGB"))
    gap, pair_gap = 4, 12
    assert g.shape == (2 * (2 * SIZE + gap) + pair_gap, 4 * SIZE + 3 * gap, 3)
    expected = _expected_originals(images)  # folder order: img0..img3, then sub/img4
    order = [0, 1, 2, 3, 4]
    for cell, i in enumerate(order):
        r, c = divmod(cell, 4)
        top, left = r * (2 * SIZE + gap + pair_gap), c * (SIZE + gap)
        np.testing.assert_array_equal(g[top : top + SIZE, left : left + SIZE], expected[i])
    recon0 = tok.decode(tok.encode(expected[0]), output="np")
    diff = np.abs(g[SIZE + gap : 2 * SIZE + gap, :SIZE].astype(int) - recon0.astype(int))
    assert diff.max() <= 1 and diff.mean() < 0.01  # batch-of-5 vs single-image float rounding
    assert (g[: 2 * SIZE + gap, SIZE : SIZE + gap] == 255).all()  # column gap is white

    with Image.open(plot) as im:
        assert im.size == (720, 420) and im.mode == "RGB"
        assert len(im.getcolors(maxcolors=1 << 20)) > 5  # something was drawn


def test_corrupt_shard_samples_are_skipped_and_reported(tiny_model, images, tmp_path, capsys) -> None:
    good = [(f"ok{i}.jpg", _png_bytes(img)) for i, img in enumerate(images[:3])]  # PNG bytes under .jpg: PIL sniffs
    shard = write_tar(tmp_path / "s-0.tar", [good[0], ("broken.jpg", b"\xff\xd8 not really a jpeg"), good[1], ("meta.json", b"{}"), good[2]])
    # a second shard cut in the middle of its second member
    full = write_tar(tmp_path / "full.tar", [("a.png", _png_bytes(images[3])), ("b.png", _png_bytes(images[4]))]).read_bytes()
    second_data = 512 + -(-len(_png_bytes(images[3])) // 512) * 512 + 512  # header a, data a (padded), header b
    (tmp_path / "s-1.tar").write_bytes(full[: second_data + 100])
    (tmp_path / "full.tar").unlink()
    report = tmp_path / "r.json"
    assert _run([
        "eval", "--model", str(tiny_model), "--data", str(shard), str(tmp_path / "s-1.tar"), "--size", str(SIZE),
        "--out", str(report), "--no-fid", "--no-lpips", "--no-progress",
    ]) == 0
    data = json.loads(report.read_text())
    assert data["image_count"] == 4  # ok0, ok1, ok2 and a
    bad = data["bad_samples"]
    assert bad["count"] == 3
    reasons = {b["key"]: b["reason"] for b in bad["first"]}
    assert "not a readable image" in reasons["s-0.tar:broken"]
    assert reasons["s-0.tar:meta"].startswith("no image field")
    assert "truncated or corrupt tar" in reasons["s-1.tar:<rest of shard>"]
    assert "bad       3 sample(s) skipped" in capsys.readouterr().out


def test_limit_and_clear_errors(tiny_model, folder_and_shards, tmp_path) -> None:
    _, shards = folder_and_shards
    common = ["eval", "--model", str(tiny_model), "--size", str(SIZE), "--no-fid", "--no-lpips", "--no-progress"]
    assert _run(common + ["--data", str(shards), "--limit", "2", "--out", str(tmp_path / "l.json")]) == 0
    assert json.loads((tmp_path / "l.json").read_text())["image_count"] == 2
    with pytest.raises(FileNotFoundError, match="nope"):
        _run(common + ["--data", str(tmp_path / "nope"), "--out", str(tmp_path / "x.json")])
    with pytest.raises(FileNotFoundError, match=r"8 input\(s\) not found .*val-000002.tar"):
        _run(common + ["--data", str(shards / "val-{000000..000009}.tar"), "--out", str(tmp_path / "x.json")])
    with pytest.raises(ValueError, match="--data"):
        _run(common + ["--out", str(tmp_path / "x.json")])
    empty = write_tar(tmp_path / "empty.tar", [("x.txt", b"hello")])
    with pytest.raises(ValueError, match="no readable images"):
        _run(common + ["--data", str(empty), "--out", str(tmp_path / "x.json")])


def test_eval_with_fid_and_lpips_weights(tiny_model, folder_and_shards, tmp_path, capsys, monkeypatch) -> None:
    folder, _ = folder_and_shards
    monkeypatch.setenv("VQTOK_CACHE", str(tmp_path / "cache"))
    torch.save(_published_layout_state(), tmp_path / "incep.pth")
    accept_inception_weights(monkeypatch, tmp_path / "incep.pth")
    vgg, lin = _save_random_weights(tmp_path)
    assert _run([
        "eval", "--data", str(folder), "--model", str(tiny_model), "--size", "32", "--limit", "3", "--out", str(tmp_path / "out"),
        "--inception-weights", str(tmp_path / "incep.pth"), "--vgg-weights", str(vgg), "--lpips-weights", str(lin),
        "--kid-subsets", "3", "--no-progress",
    ]) == 0  # --out FOLDER (older form): FOLDER/eval.json + FOLDER/grid.png
    text = capsys.readouterr().out
    assert "rFID" in text and "n         3" in text
    data = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert data["image_count"] == 3 and data["rfid"] > 0 and data["rfid_n"] == 3 and "n=3 < 2048" in data["rfid_note"]
    assert data["kid_subset_size"] == 3 and data["lpips"] > 0 and data["skipped"] == {}
    assert data["weights"]["inception"]["source"] == "path" and data["weights"]["fid_preprocess"] == "pytorch-fid"
    assert data["weights"]["lpips"] is not None
    with Image.open(tmp_path / "out" / "grid.png") as grid:
        assert grid.size == (3 * 32 + 2 * 4, 2 * 32 + 4)


def test_lpips_required_without_weights_fails_clearly(tiny_model, folder_and_shards, tmp_path, monkeypatch) -> None:
    folder, _ = folder_and_shards
    monkeypatch.setenv("VQTOK_CACHE", str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match="download.pytorch.org"):
        _run(["eval", "--data", str(folder), "--model", str(tiny_model), "--size", str(SIZE), "--out", str(tmp_path / "r.json"),
              "--offline", "--no-fid", "--lpips", "--no-progress"])



def test_fid_required_without_weights_names_the_flag(tiny_model, folder_and_shards, tmp_path, monkeypatch) -> None:
    from vqtok.metrics import inception

    folder, _ = folder_and_shards
    monkeypatch.setenv("VQTOK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(inception, "fid_helper_weights_path", lambda: None)
    with pytest.raises(FileNotFoundError, match=r"pt_inception-2015-12-05.*pass the file as --inception-weights PATH"):
        _run(["eval", "--data", str(folder), "--model", str(tiny_model), "--size", str(SIZE), "--out", str(tmp_path / "r.json"),
              "--offline", "--fid", "--no-lpips", "--no-progress"])
    assert not (tmp_path / "r.json").exists()


def test_usage_plot_edge_cases(tmp_path) -> None:
    from vqtok.metrics.plots import save_usage_plot, usage_plot

    assert usage_plot([5], width=300, height=200).size == (300, 200)  # codebook of one code
    assert save_usage_plot(np.ones(16384, dtype=np.int64), tmp_path / "u" / "p.png").is_file()  # uniform, large K
    with pytest.raises(ValueError, match="no tokens"):
        usage_plot([0, 0, 0])


def test_color_offset_is_the_signed_mean_difference(tmp_path) -> None:
    """A decoder that adds +8 to red and -4 to blue shows exactly that mean colour offset."""
    import numpy as np
    import torch
    from PIL import Image

    from tests.conftest import real_photos
    from vqtok.metrics.evaluate import evaluate_reconstruction

    class Tinted:
        codebook_size, downsample_factor = 4, 8

        def encode(self, x, size=None):
            self.x = x
            return torch.zeros(x.shape[0], 1, 1, dtype=torch.long)

        def decode(self, ids, output="pt"):
            y = self.x.float() + torch.tensor([8.0, 0.0, -4.0]).view(1, 3, 1, 1)
            return y.clamp(0, 255) / 255

    paths = []
    for i, img in enumerate(real_photos(2)):
        arr = np.clip(np.asarray(img.resize((64, 64)).convert("RGB")).astype(int), 10, 240).astype(np.uint8)
        Image.fromarray(arr).save(tmp_path / f"{i}.png")
        paths.append(tmp_path / f"{i}.png")
    result = evaluate_reconstruction(Tinted(), paths, size=64, progress=False)
    assert result.color_offset == pytest.approx([8.0, 0.0, -4.0], abs=1e-6)
    assert result.abs_color_offset == pytest.approx([8.0, 0.0, 4.0], abs=1e-6)
