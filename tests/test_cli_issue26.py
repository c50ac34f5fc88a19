"""Issue 26: encode/decode on bad and odd inputs (items 7, 8, 10, 15, 16, 20, 21), in-process through
vqtok.cli.main (one line on stderr, exit 2, or skip and report)."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import photo_files
from vqtok import Tokenizer
from vqtok.cli import main
from vqtok.images import FULL_RESIZE_PIXELS, prepare_image, resize_center_crop, to_uint8_batch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def model_dir(tiny_tokenizer, tmp_path):
    return tiny_tokenizer.save_pretrained(tmp_path / "model")


def _last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


# ---------------------------------------------------------------------- item 7: extreme aspect ratios
def test_extreme_aspect_ratio_is_cropped_before_the_resize(tmp_path: Path) -> None:
    # 1 x 100000: a whole-image resize to 256 wide is 256 x 25.6 M pixels (20 GB); run under a 1.5 GB
    # address-space limit, so the old code fails with MemoryError
    Image.new("RGB", (1, 100000), (200, 10, 10)).save(tmp_path / "wide.png")
    Image.new("RGB", (100000, 1), (10, 200, 10)).save(tmp_path / "tall.png")
    code = (
        "import resource, sys, numpy as np\n"
        "resource.setrlimit(resource.RLIMIT_AS, (1536 << 20, 1536 << 20))\n"
        "from vqtok.images import prepare_image\n"
        "for name, rgb in (('wide.png', (200, 10, 10)), ('tall.png', (10, 200, 10))):\n"
        "    a = prepare_image(sys.argv[1] + '/' + name, size=256)\n"
        "    assert a.shape == (256, 256, 3) and (a == rgb).all(), (name, a.shape)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path)], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]


def test_ordinary_images_are_resized_whole_as_before() -> None:
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (300, 451, 3), dtype=np.uint8))
    w, h = img.size
    nw, nh = round(w * 64 / h), 64
    expect = img.resize((nw, nh), resample=Image.Resampling.BICUBIC, reducing_gap=None)
    left = (nw - 64) // 2
    assert np.array_equal(np.asarray(resize_center_crop(img, 64)), np.asarray(expect.crop((left, 0, left + 64, 64))))
    assert 451 * 300 < FULL_RESIZE_PIXELS


def test_pretokenize_bounds_size_like_encode(tmp_path: Path, model_dir: Path, capsys) -> None:
    from tests.test_pipeline import good_samples, write_tar

    write_tar(tmp_path / "train-000000.tar", good_samples(0, n=1))
    argv = ["pretokenize", "--model", str(model_dir), "--input", str(tmp_path / "train-000000.tar"), "--out",
            str(tmp_path / "out"), "--size", "400000", "--device", "cpu", "--no-progress"]
    assert main(argv) == 2
    assert "activations per image" in _last_line(capsys.readouterr().err)


# ---------------------------------------------------------------------- items 8, 21: skip and report, folders
def test_encode_skips_and_reports_bad_files_and_takes_folders(tmp_path: Path, model_dir: Path, capsys) -> None:
    photos = tmp_path / "photos"
    good = photo_files(photos, n=2)
    (photos / "bad.jpg").write_bytes(b"not a jpeg")
    (photos / "sub").mkdir()
    Image.new("1", (20000, 20000)).save(photos / "sub" / "bomb.png")  # 400 M pixels: over PIL's bomb limit
    # the bomb alone: one line, exit 2 (was a DecompressionBombError traceback)
    assert main(["encode", str(photos / "sub" / "bomb.png"), "--model", str(model_dir), "--size", "64",
                 "--out", str(tmp_path / "b.npy"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "decompression bomb" in err and not (tmp_path / "b.npy").exists()
    # a folder with good and bad files: the good ones are written, the bad ones named, exit 1
    work = tmp_path / "work"
    work.mkdir()
    assert main(["encode", str(photos), "--model", str(model_dir), "--size", "64", "--out", f"{work}/", "--no-progress"]) == 1
    out, err = capsys.readouterr()
    assert "bad.jpg" in err and "bomb.png" in err and "Traceback" not in err
    record = json.loads((work / "ids.json").read_text())  # --out FOLDER/ writes into the folder
    assert record["names"] == good and sorted(Path(f["name"]).name for f in record["failed"]) == ["bad.jpg", "bomb.png"]
    tok = Tokenizer.from_pretrained(model_dir)
    assert np.array_equal(np.load(work / "ids.npy"), tok.encode([Image.open(p) for p in good], size=64).numpy())
    # --strict: nothing is written, exit 2, every bad file named
    assert main(["encode", str(photos), "--model", str(model_dir), "--size", "64", "--out", str(tmp_path / "s.npy"),
                 "--strict", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "--strict" in _last_line(err) and "bad.jpg" in err and "bomb.png" in err and not (tmp_path / "s.npy").exists()
    # an empty folder is named
    (tmp_path / "empty").mkdir()
    assert main(["encode", str(tmp_path / "empty"), "--model", str(model_dir), "--out", str(tmp_path / "e.npy")]) == 2
    assert "folder without images" in capsys.readouterr().err


# ---------------------------------------------------------------------- item 10: the recorded model
def test_decode_uses_the_recorded_model_and_refuses_another(tmp_path: Path, model_dir: Path, capsys) -> None:
    other = Tokenizer.from_pretrained(model_dir)
    other.model.quantize.embedding.weight.data.mul_(2)
    other_dir = other.save_pretrained(tmp_path / "other")
    files = photo_files(tmp_path / "in", n=2)
    ids = tmp_path / "ids.npy"
    assert main(["encode", *files, "--model", str(model_dir), "--size", "64", "--out", str(ids), "--no-progress"]) == 0
    capsys.readouterr()
    # no --model: the recorded one decodes (not the default model)
    assert main(["decode", str(ids), "--out", str(tmp_path / "dec"), "--no-progress"]) == 0
    tok = Tokenizer.from_pretrained(model_dir)
    want = tok.decode(np.load(ids), output="np")[0]
    assert np.abs(np.asarray(Image.open(tmp_path / "dec" / "photo0.png")).astype(int) - want).max() <= 1
    # another model: refused in one line, nothing written; --force decodes with it
    assert main(["decode", str(ids), "--model", str(other_dir), "--out", str(tmp_path / "dec2"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--force" in err and not (tmp_path / "dec2").exists()
    assert main(["decode", str(ids), "--model", str(other_dir), "--out", str(tmp_path / "dec2"), "--force", "--no-progress"]) == 0
    # a recorded model that does not load here: named as the recorded one
    record = json.loads(ids.with_suffix(".json").read_text())
    ids.with_suffix(".json").write_text(json.dumps({**record, "model": str(tmp_path / "gone")}))
    assert main(["decode", str(ids), "--out", str(tmp_path / "dec3"), "--no-progress"]) == 2
    assert "the model recorded in" in capsys.readouterr().err


# ---------------------------------------------------------------------- item 15: output names
def test_decode_names_are_distinct_and_short(tmp_path: Path, model_dir: Path, capsys) -> None:
    ids = tmp_path / "ids.npy"
    np.save(ids, np.zeros((4, 16, 16), np.uint16))
    names = ["x/a.jpg", "y/a.png", "a-000001.jpg", "z/" + "n" * 300 + ".jpg"]
    ids.with_suffix(".json").write_text(json.dumps({"names": names}))
    assert main(["decode", str(ids), "--model", str(model_dir), "--out", str(tmp_path / "dec"), "--no-progress"]) == 0
    files = sorted(p.name for p in (tmp_path / "dec").iterdir())
    assert len(files) == 4 and "a.png" in files and "a-000001.png" in files
    assert all(len(f.encode()) <= 255 for f in files)


def test_encode_out_with_a_slash_or_an_existing_folder_writes_into_it(tmp_path: Path, model_dir: Path, capsys) -> None:
    files = photo_files(tmp_path / "in", n=1)
    (tmp_path / "there").mkdir()
    os.chdir(tmp_path)
    assert main(["encode", *files, "--model", str(model_dir), "--size", "64", "--out", "work/", "--no-progress"]) == 0
    assert main(["encode", *files, "--model", str(model_dir), "--size", "64", "--out", "there", "--no-progress"]) == 0
    assert (tmp_path / "work" / "ids.npy").is_file() and (tmp_path / "there" / "ids.npy").is_file()
    assert not (tmp_path / "work.npy").exists() and not (tmp_path / "there.npy").exists()


# ---------------------------------------------------------------------- items 16, 20: messages
def test_mixed_image_list_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="one kind"):
        to_uint8_batch([Image.new("RGB", (8, 8)), np.zeros((8, 8, 3), np.uint8)])


def test_missing_local_folder_is_named(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    assert main(["info", "models/nope"]) == 2
    err = capsys.readouterr().err
    assert "no local folder models/nope" in err and len(err.strip().splitlines()) == 1


def test_disk_full_is_one_line(tmp_path: Path, model_dir: Path, capsys, monkeypatch) -> None:
    files = photo_files(tmp_path / "in", n=1)

    def full(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "ids.npy"))

    monkeypatch.setattr(np, "save", full)
    assert main(["encode", *files, "--model", str(model_dir), "--size", "64", "--out", str(tmp_path / "ids.npy"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"vqtok encode: error: No space left on device ({tmp_path / 'ids.npy'})"
    assert not list(tmp_path.glob("ids*"))  # the temporary files are removed


# ---------------------------------------------------------------------- item 19: train without data
@pytest.mark.parametrize("with_config", [False, True])
def test_train_without_images_says_so_first(tmp_path: Path, capsys, with_config: bool) -> None:
    (tmp_path / "nophotos").mkdir()
    argv = ["train", "--data", str(tmp_path / "nophotos"), "--out", str(tmp_path / "run"), "--no-progress"]
    if with_config:
        from vqtok.training.config import TrainConfig

        argv += ["--config", str(TrainConfig().to_yaml(tmp_path / "c.yaml"))]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "no images" in err and "VGG" not in err
    assert not (tmp_path / "run").exists()  # no train_config.yaml left behind


# ---------------------------------------------------------------------- item 22: train-prior says it resumes
def test_train_prior_says_it_resumes(tmp_path: Path, capsys) -> None:
    from tests.test_prior_train import TINY_MODEL, write_corpus

    spec = write_corpus(tmp_path / "tokens", np.random.default_rng(0).integers(0, 16, size=(4, 4, 4)), [0, 1, 2, 3])
    (tmp_path / "prior.json").write_text(json.dumps({"model": TINY_MODEL, "batch_size": 4, "warmup_steps": 1}))
    argv = ["train-prior", "--tokens", spec, "--out", str(tmp_path / "run"), "--config", str(tmp_path / "prior.json"),
            "--no-progress", "--device", "cpu"]
    assert main([*argv, "--steps", "2"]) == 0
    assert "resuming" not in capsys.readouterr().err
    assert main([*argv, "--steps", "3"]) == 0
    assert f"vqtok train-prior: resuming from step 2 of {tmp_path / 'run'}" in capsys.readouterr().err


@pytest.mark.parametrize("k,dead", [(16384, 127), (1024, 127), (1024, 900)])
def test_usage_plot_dead_label_is_inside_the_plot(k: int, dead: int) -> None:
    from vqtok.metrics.plots import usage_plot

    hist = np.random.default_rng(0).integers(1, 1000, k)
    hist[-dead:] = 0
    img = np.asarray(usage_plot(hist, width=720)).astype(int)
    label = np.abs(img - np.array([170, 40, 40])).sum(-1) < 60  # the label's colour
    cols = np.nonzero(label.any(0))[0]
    assert cols.size > 10 and cols.max() < 720 - 16 - 2  # drawn whole, left of the plot's right edge


# ---------------------------------------------------------------------- item 16: EXIF orientation
def test_exif_orientation_is_ignored_unless_asked_for(tmp_path: Path, model_dir: Path, capsys) -> None:
    from tests.test_pipeline import write_tar
    from vqtok.pipeline import pretokenize

    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (64, 96, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    img.save(tmp_path / "r.jpg", exif=exif, quality=95)
    plain = prepare_image(tmp_path / "r.jpg")
    upright = prepare_image(tmp_path / "r.jpg", exif_transpose=True)
    assert plain.shape == (64, 96, 3) and upright.shape == (96, 64, 3)  # ignored by default: ids stay as they were
    # encode: the option and its record
    assert main(["encode", str(tmp_path / "r.jpg"), "--model", str(model_dir), "--out", str(tmp_path / "a.npy"),
                 "--exif-transpose", "--no-progress"]) == 0
    assert np.load(tmp_path / "a.npy").shape == (1, 24, 16)
    assert json.loads((tmp_path / "a.json").read_text())["exif_transpose"] is True
    # pretokenize: recorded in the manifest; the other setting on the same folder is refused
    write_tar(tmp_path / "train-000000.tar", [("r", {"jpg": (tmp_path / "r.jpg").read_bytes()})])
    tok = Tokenizer.from_pretrained(model_dir)
    r = pretokenize(str(tmp_path / "train-000000.tar"), tmp_path / "tok", model=tok, size=None, workers=0,
                    progress=False, exif_transpose=True)
    assert r.samples_written == 1 and json.loads((tmp_path / "tok" / "manifest.json").read_text())["exif_transpose"] is True
    with pytest.raises(ValueError, match="exif_transpose"):
        pretokenize(str(tmp_path / "train-000000.tar"), tmp_path / "tok", model=tok, size=None, workers=0, progress=False)


def test_decode_names_the_default_version_that_made_the_ids(tmp_path: Path, capsys) -> None:
    # ids.json of a run that recorded plain 'default' (before versions were pinned), made by v1
    files = photo_files(tmp_path / "in", n=1)
    ids = tmp_path / "ids.npy"
    assert main(["encode", *files, "--model", "default@v1", "--size", "64", "--out", str(ids), "--no-progress",
                 "--device", "cpu"]) == 0
    record = json.loads(ids.with_suffix(".json").read_text())
    ids.with_suffix(".json").write_text(json.dumps({**record, "model": "default"}))
    capsys.readouterr()
    assert main(["decode", str(ids), "--out", str(tmp_path / "dec"), "--no-progress", "--device", "cpu"]) == 2
    assert _last_line(capsys.readouterr().err).endswith("decode with --model default@v1, or pass --force")
    assert main(["decode", str(ids), "--model", "default@v1", "--out", str(tmp_path / "dec"), "--no-progress",
                 "--device", "cpu"]) == 0


# ---------------------------------------------------------------------- item 9: decode has a size bound
def test_decode_refuses_huge_ids_and_lying_npy_headers_quickly(tmp_path: Path, model_dir: Path) -> None:
    big = tmp_path / "big.npy"
    np.save(big, np.zeros((512, 512), np.uint16))  # a 512 KB file: 262 144 positions (took 447 s and 3.3 GB)
    liar = tmp_path / "liar.npy"
    np.save(liar, np.zeros((4, 4), np.uint16))
    header = np.lib.format.header_data_from_array_1_0(np.zeros((4, 4), np.uint16)) | {"shape": (400000, 400000)}
    with open(liar, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, header)
        fh.write(np.zeros(16, np.uint16).tobytes())
    script = (
        "import sys\nfrom vqtok.cli import main\n"
        f"rc = main(['decode', sys.argv[1], '--model', {str(model_dir)!r}, '--out', sys.argv[2], '--no-progress'])\n"
        # VmHWM: this process's peak (ru_maxrss would carry the forking pytest process's over the exec)
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]\n"
        "print(rc, int(hwm) // 1024)\n"
    )
    for path, what in ((big, "max_decode_positions"), (liar, "header claims")):
        run = subprocess.run([sys.executable, "-c", script, str(path), str(tmp_path / "out")], capture_output=True,
                             text=True, timeout=120, cwd=ROOT)
        rc, peak_mib = map(int, run.stdout.split())
        assert rc == 2 and what in run.stderr and "Traceback" not in run.stderr, run.stderr
        assert peak_mib < 600  # the imports and the tiny model: no allocation for the claimed ids
        assert not (tmp_path / "out").exists()
