"""Issue 26, pretokenize's inputs and output folder (items 11, 13, 16, 18, 20): refused in one line
before anything is overwritten, or recorded and skipped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_pipeline import good_samples, jpeg_bytes, tiny_tokenizer, write_tar
from vqtok.cli import main
from vqtok.pipeline import pretokenize

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture
def data(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    for s in range(2):
        write_tar(d / f"train-{s:06d}.tar", good_samples(s, n=2))
    return d


def _run(data: Path, out: Path, tok, **kw):
    kw.setdefault("workers", 0)
    return pretokenize(str(data), out, model=tok, size=64, progress=False, **kw)


def test_a_foreign_non_empty_folder_is_refused(data: Path, tmp_path: Path, tok) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "train-000000.tar").write_bytes(b"the user's own file")
    with pytest.raises(ValueError, match="not empty .* has no manifest.json"):
        _run(data, out, tok)
    assert (out / "train-000000.tar").read_bytes() == b"the user's own file"
    assert sorted(p.name for p in out.iterdir()) == [".manifest.lock", "train-000000.tar"]


def test_output_inside_the_input_folder_works_twice(data: Path, tok) -> None:
    # --input data --out data/tokens: the rerun found data/tokens/*.tar as inputs ("would both be written to")
    first = _run(data, data / "tokens", tok)
    again = _run(data, data / "tokens", tok)
    assert first.samples_written == 4 and again.shards_processed == 0 and len(again.shards) == 2


def test_a_second_concurrent_run_is_refused(data: Path, tmp_path: Path, tok) -> None:
    out = tmp_path / "out"
    _run(data, out, tok)  # the folder and its manifest exist
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom vqtok.pipeline.driver import run_lock\n"
         "with run_lock(sys.argv[1]):\n    print('locked', flush=True)\n    time.sleep(60)\n", str(out)],
        env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(ValueError, match="another pretokenize run is writing to"):
            _run(data, out, tok, overwrite=True)
    finally:
        holder.kill()
        holder.wait()
    assert _run(data, out, tok).shards_processed == 0  # free again once the holder is gone


def test_keep_refuses_output_field_names(data: Path, tmp_path: Path, tok, capsys) -> None:
    with pytest.raises(ValueError, match="keep field 'ids.npy'"):
        _run(data, tmp_path / "out", tok, keep=("cls", ".ids.npy"))
    model = tok.save_pretrained(tmp_path / "model")
    argv = ["pretokenize", "--model", str(model), "--input", str(data), "--out", str(tmp_path / "o2"), "--size", "64",
            "--keep", "cls,ids.npy", "--no-progress", "--device", "cpu", "--workers", "0"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("vqtok pretokenize: error: --keep field 'ids.npy'") and len(err.strip().splitlines()) == 1


def test_images_as_input_are_refused_with_what_pretokenize_takes(tmp_path: Path, tok) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(2):
        (photos / f"p{i}.jpg").write_bytes(jpeg_bytes(i))
    with pytest.raises(ValueError, match="p0.jpg is an image; pretokenize takes WebDataset tar shards"):
        pretokenize(str(photos / "p0.jpg"), tmp_path / "out", model=tok, progress=False)
    with pytest.raises(ValueError, match="holds images but no tar shards"):
        pretokenize(str(photos), tmp_path / "out", model=tok, progress=False)
    with pytest.raises(ValueError, match="matches images but no tar shards"):
        pretokenize(str(photos / "*.jpg"), tmp_path / "out", model=tok, progress=False)
    assert not (tmp_path / "out").exists() and not (photos / "p0.jpg.tar").exists()


def test_hostile_stats_and_manifest_json(data: Path, tmp_path: Path, tok) -> None:
    out = tmp_path / "out"
    _run(data, out, tok)
    stats = json.loads((out / "train-000000.json").read_text())
    (out / "train-000000.json").write_text(json.dumps({**stats, "samples_written": "many", "shard": ["x"]}))
    again = _run(data, out, tok)  # the broken record is redone, not a traceback
    assert again.shards_processed == 1 and json.loads((out / "train-000000.json").read_text()) == stats
    (out / "manifest.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a vqtok pretokenize manifest"):
        _run(data, out, tok)


def test_continue_hint_is_in_cli_terms() -> None:
    from vqtok.pipeline.commands import _cli_terms

    msg = "mixed: continue with model='default@v1', precision='bf16' (Tokenizer.default('v1')), or use another output folder"
    assert _cli_terms(msg) == "mixed: continue with --model default@v1 --precision bf16, or use another output folder"
