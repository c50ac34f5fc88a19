"""vqtok.pipeline: pretokenize shards -> token shards (+ stats .json, manifest)."""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vqtok.models.vqgan import VQGANConfig
from vqtok.pipeline import (
    ErrorRateExceeded,
    commands,
    expand_inputs,
    pretokenize,
    tokenize_shard,
)
from vqtok.pipeline.driver import shards_for_rank
from vqtok import tokens as tokens_mod
from vqtok.tokenizer import Tokenizer

SIZE = 64


def tiny_tokenizer(seed: int = 0, n_embed: int = 512) -> Tokenizer:
    torch.manual_seed(seed)
    cfg = VQGANConfig(
        ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(), z_channels=16, embed_dim=8,
        n_embed=n_embed, resolution=64,
    )
    tok = Tokenizer.from_config(cfg, batch_size=8)
    with torch.no_grad():  # well separated codes (taming's ±1/K init maps most inputs to a few codes)
        w = tok.model.quantize.embedding.weight
        w.copy_(torch.randn(w.shape, generator=torch.Generator().manual_seed(seed)) * 0.5)
    return tok


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, tok: Tokenizer) -> Path:
    d = tmp_path_factory.mktemp("model")
    tok.save_pretrained(d)
    return d


def jpeg_bytes(seed: int, w: int = 80, h: int = 72, mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, w)[None, :, None] * rng.random(3)[None, None, :] + rng.integers(0, 60, (h, w, 3))
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    buf = io.BytesIO()
    if mode == "RGB":
        img.save(buf, format="JPEG", quality=90)
    else:
        img.convert(mode).save(buf, format="PNG" if mode in ("L", "LA", "P", "I;16") else "JPEG")
    return buf.getvalue()


def write_tar(path: Path, samples: list[tuple[str, dict[str, bytes]]]) -> Path:
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tf:
        for key, fields in samples:
            for ext, data in fields.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return path


def good_samples(shard: int, n: int = 4) -> list[tuple[str, dict[str, bytes]]]:
    out = []
    for i in range(n):
        seed = shard * 100 + i
        out.append(
            (
                f"s{shard:02d}_{i:03d}",
                {
                    "jpg": jpeg_bytes(seed, w=70 + 7 * i, h=64 + 5 * (i % 3)),
                    "cls": str(i % 3).encode(),
                    "txt": f"caption {seed}".encode(),
                    "json": json.dumps({"seed": seed}).encode(),
                    "extra": b"dropped",
                },
            )
        )
    return out


@pytest.fixture()
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    for s in range(3):
        write_tar(d / f"train-{s:06d}.tar", good_samples(s))
    return d


PATTERN = "train-{000000..000002}.tar"


def read_token_shard(path: Path) -> dict[str, dict[str, bytes]]:
    out: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tf:
        for m in tf:
            key, ext = m.name.split(".", 1)
            out.setdefault(key, {})[ext] = tf.extractfile(m).read()  # type: ignore[union-attr]
    return out


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def run(data_dir: Path, out: Path, model, **kw):
    kw.setdefault("size", SIZE)
    kw.setdefault("batch_size", 3)
    kw.setdefault("workers", 0)
    kw.setdefault("progress", False)
    return pretokenize(str(data_dir / PATTERN), out, model=model, **kw)


# ---------------------------------------------------------------------- round trip and format
def test_round_trip_equals_encode(data_dir: Path, tmp_path: Path, tok: Tokenizer) -> None:
    out = tmp_path / "tokens"
    result = run(data_dir, out, tok)
    assert result.samples_written == 12 and result.samples_failed == 0
    for s in range(3):
        shard = read_token_shard(out / f"train-{s:06d}.tar")
        assert list(shard) == [k for k, _ in good_samples(s)]  # input order, all keys
        stats = json.loads((out / f"train-{s:06d}.json").read_text())
        assert stats["samples_written"] == 4 and stats["samples_failed"] == []
        assert stats["codebook_size"] == 512 and len(stats["histogram"]) == 512
        hist = np.zeros(512, dtype=np.int64)
        for key, fields in good_samples(s):
            got = shard[key]
            assert set(got) == {"ids.npy", "cls", "txt", "json"}  # "extra" is not kept
            for ext in ("cls", "txt", "json"):
                assert got[ext] == fields[ext]
            ids = np.load(io.BytesIO(got["ids.npy"]))
            assert ids.dtype == np.uint16 and ids.shape == (16, 16)
            ref = tok.encode(Image.open(io.BytesIO(fields["jpg"])), size=SIZE).numpy()
            np.testing.assert_array_equal(ids, ref)
            hist += np.bincount(ids.ravel(), minlength=512)
        assert stats["histogram"] == hist.tolist()
        assert (hist > 0).sum() > 20  # ids are diverse enough for equality to mean something
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["shards_done"] == [f"train-{s:06d}.tar" for s in range(3)]
    assert manifest["totals"]["samples_written"] == 12
    assert manifest["config_hash"] == tok.config.hash() and "histogram" not in manifest


def test_reader_gets_the_same_ids_as_encode(data_dir: Path, tmp_path: Path, tok: Tokenizer) -> None:
    from vqtok.tokens import load_token_corpus, token_dataset

    out = tmp_path / "tokens"
    run(data_dir, out, tok)
    corpus = load_token_corpus(str(out / PATTERN))
    samples = [kv for s in range(3) for kv in good_samples(s)]
    assert corpus.keys == [k for k, _ in samples] and corpus.codebook_size == 512
    assert corpus.labels.tolist() == [int(f["cls"]) for _, f in samples]
    want = tok.encode([Image.open(io.BytesIO(f["jpg"])) for _, f in samples], size=SIZE).numpy()
    np.testing.assert_array_equal(corpus.ids, want)
    streamed = {d["__key__"]: d["ids"].numpy() for d in token_dataset(str(out / PATTERN), shuffle=0, as_dict=True)}
    for i, (key, _) in enumerate(samples):
        np.testing.assert_array_equal(streamed[key], want[i])


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
def test_keep_option_and_workers_give_same_bytes(data_dir: Path, tmp_path: Path, tok: Tokenizer) -> None:
    run(data_dir, tmp_path / "a", tok, keep=("cls",))
    run(data_dir, tmp_path / "b", tok, keep=("cls",), workers=3, batch_size=3)
    assert folder_bytes(tmp_path / "a") == folder_bytes(tmp_path / "b")
    assert set(read_token_shard(tmp_path / "a" / "train-000000.tar")["s00_000"]) == {"ids.npy", "cls"}


def test_int32_for_large_codebooks(tmp_path: Path) -> None:
    big = tiny_tokenizer(n_embed=65537)
    src = write_tar(tmp_path / "x.tar", good_samples(0, n=2))
    stats = tokenize_shard(src, tmp_path / "out" / "x.tar", big, size=SIZE)
    ids = np.load(io.BytesIO(read_token_shard(tmp_path / "out" / "x.tar")["s00_000"]["ids.npy"]))
    assert ids.dtype == np.int32 and stats.ids_dtype == "int32"
    np.testing.assert_array_equal(ids, big.encode(Image.open(io.BytesIO(good_samples(0, n=1)[0][1]["jpg"])), size=SIZE))


# ---------------------------------------------------------------------- bad data
def test_bad_samples_are_recorded_and_the_run_goes_on(tmp_path: Path, tok: Tokenizer) -> None:
    good = good_samples(0, n=2)
    jpg = good[0][1]["jpg"]
    samples = [
        good[0],
        ("corrupt", {"jpg": jpg[: len(jpg) // 3] + b"garbage" * 10, "cls": b"1"}),
        ("empty", {"jpg": b""}),
        ("noimage", {"txt": b"only text"}),
        ("notanimage", {"png": b"this is not a png"}),
        ("grey16", {"png": jpeg_bytes(5, mode="I;16")}),
        ("palette", {"png": jpeg_bytes(6, mode="P")}),
        good[1],
    ]
    src = write_tar(tmp_path / "bad.tar", samples)
    stats = tokenize_shard(src, tmp_path / "out" / "bad.tar", tok, size=SIZE, batch_size=3)
    failed = {f["key"]: f["reason"] for f in stats.samples_failed}
    assert set(failed) == {"corrupt", "empty", "noimage", "notanimage"}
    assert "zero-size" in failed["empty"] and "no image field" in failed["noimage"]
    assert "not a readable image" in failed["notanimage"]
    written = read_token_shard(tmp_path / "out" / "bad.tar")
    assert list(written) == ["s00_000", "grey16", "palette", "s00_001"]
    # The good samples next to bad ones in a batch still match encode().
    ref = tok.encode(Image.open(io.BytesIO(samples[5][1]["png"])), size=SIZE).numpy()
    np.testing.assert_array_equal(np.load(io.BytesIO(written["grey16"]["ids.npy"])), ref)
    on_disk = json.loads((tmp_path / "out" / "bad.json").read_text())
    assert on_disk["samples_written"] == 4 and len(on_disk["samples_failed"]) == 4


@pytest.mark.parametrize("gzipped", [False, True], ids=["tar", "tar.gz"])
@pytest.mark.parametrize("cut", ["mid-member", "boundary", "garbage"])
def test_truncated_tar(tmp_path: Path, tok: Tokenizer, cut: str, gzipped: bool) -> None:
    samples = good_samples(1, n=4)
    full = write_tar(tmp_path / "full.tar", samples).read_bytes()
    with tarfile.open(tmp_path / "full.tar") as tf:
        members = tf.getmembers()
    third_key = samples[2][0]
    first_of_third = next(m for m in members if m.name.startswith(third_key))
    if cut == "mid-member":
        data = full[: first_of_third.offset_data + first_of_third.size // 2]
    elif cut == "boundary":
        data = full[: first_of_third.offset]  # ends exactly between samples, no end-of-archive blocks
    else:
        data = full[: first_of_third.offset] + b"\x07" * 2048
    src = tmp_path / ("cut.tar.gz" if gzipped else "cut.tar")
    if gzipped:
        import gzip

        data = gzip.compress(data)  # a complete gzip stream of a cut tar
    src.write_bytes(data)
    stats = tokenize_shard(src, tmp_path / "out" / "cut.tar", tok, size=SIZE)
    keys = [f["key"] for f in stats.samples_failed]
    assert "<rest of shard>" in keys
    assert all("truncated or corrupt tar" in f["reason"] for f in stats.samples_failed)
    written = list(read_token_shard(tmp_path / "out" / "cut.tar"))
    assert written[0] == samples[0][0] and third_key not in written
    assert stats.samples_written + stats.num_failed - 1 <= 3


def test_unreadable_shard_does_not_stop_the_run(data_dir: Path, tmp_path: Path, tok: Tokenizer) -> None:
    (data_dir / "train-000001.tar").write_bytes(b"not a tar at all" * 10)
    result = run(data_dir, tmp_path / "t", tok, max_error_rate=None, workers=2, batch_size=2)
    assert result.samples_written == 8
    stats = json.loads((tmp_path / "t" / "train-000001.json").read_text())
    assert stats["samples_written"] == 0 and stats["samples_failed"][0]["key"] == "<rest of shard>"


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    commands.add_commands(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_exit_code_follows_max_error_rate(data_dir: Path, tmp_path: Path, model_dir: Path, capsys) -> None:
    write_tar(data_dir / "train-000001.tar", good_samples(1, n=3) + [("bad", {"jpg": b"\xff\xd8broken"})])
    base = ["pretokenize", "--model", str(model_dir), "--input", str(data_dir / PATTERN), "--size", str(SIZE), "--batch-size", "4", "--workers", "0", "--no-progress"]
    assert cli(base + ["--output", str(tmp_path / "a"), "--max-error-rate", "0.05"]) == 1  # 1/12 > 5 %
    captured = capsys.readouterr()
    assert "11 samples written, 1 failed" in captured.out and "bad" in captured.err
    assert cli(base + ["--output", str(tmp_path / "a"), "--max-error-rate", "0.1"]) == 0  # rerun: same totals, now allowed
    assert "0 done now, 3 already complete" in capsys.readouterr().out
    with pytest.raises(ErrorRateExceeded) as info:
        run(data_dir, tmp_path / "b", str(model_dir), max_error_rate=0.0)
    assert info.value.result.samples_failed == 1
    assert (tmp_path / "b" / "train-000002.json").is_file()  # everything was still written


# ---------------------------------------------------------------------- exactly once
def test_resume_after_crash_is_byte_identical(data_dir: Path, tmp_path: Path, tok: Tokenizer, monkeypatch) -> None:
    ref = tmp_path / "ref"
    run(data_dir, ref, tok)

    out = tmp_path / "out"
    calls = {"n": 0}
    real = tokens_mod._add_member

    def crashing(tf, name, data):
        calls["n"] += 1
        if calls["n"] == 20:  # in the middle of the second shard
            raise KeyboardInterrupt("killed")
        real(tf, name, data)

    monkeypatch.setattr(tokens_mod, "_add_member", crashing)
    with pytest.raises(KeyboardInterrupt):
        run(data_dir, out, tok)
    monkeypatch.setattr(tokens_mod, "_add_member", real)
    assert (out / "train-000000.json").is_file() and not (out / "train-000001.json").exists()
    # What a hard kill leaves behind: temporary files of a dead process, and a tar renamed before its .json.
    (out / "train-000001.tar.tmp-deadhost-4242").write_bytes(b"partial")
    (out / "train-000001.json.tmp-deadhost-4242").write_bytes(b"{")
    (out / "train-000002.tar").write_bytes(b"renamed, but the .json never was")

    before = (out / "train-000000.tar").stat().st_mtime_ns
    result = run(data_dir, out, tok)
    assert [s.skipped for s in result.shards] == [True, False, False]
    assert (out / "train-000000.tar").stat().st_mtime_ns == before
    assert folder_bytes(out) == folder_bytes(ref)

    again = run(data_dir, out, tok)
    assert again.shards_processed == 0 and again.samples_written == 12
    assert folder_bytes(out) == folder_bytes(ref)


def test_deleted_outputs_are_redone_byte_identical(data_dir: Path, tmp_path: Path, tok: Tokenizer) -> None:
    out = tmp_path / "out"
    run(data_dir, out, tok)
    ref = folder_bytes(out)
    (out / "train-000001.tar").unlink()  # a finished token shard lost (its .json is still there)
    (out / "train-000002.json").unlink()  # a completion marker lost (its tar is still there)
    before = (out / "train-000000.tar").stat().st_mtime_ns
    result = run(data_dir, out, tok)
    assert [s.skipped for s in result.shards] == [True, False, False]
    assert (out / "train-000000.tar").stat().st_mtime_ns == before  # not rewritten
    assert folder_bytes(out) == ref  # tars, stats .json and manifest, byte for byte


# ---------------------------------------------------------------------- ranks
def test_ranks_split_disjointly_and_union_equals_single_run(data_dir: Path, tmp_path: Path, tok: Tokenizer, monkeypatch) -> None:
    names = list(range(7))
    parts = [shards_for_rank(names, r, 3) for r in range(3)]
    assert sorted(x for p in parts for x in p) == names and parts[0] == [0, 3, 6]

    run(data_dir, tmp_path / "single", tok)
    for rank in (1, 0):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        result = run(data_dir, tmp_path / "multi", tok)
        assert [s.shard for s in result.shards] == (["train-000000.tar", "train-000002.tar"] if rank == 0 else ["train-000001.tar"])
    assert folder_bytes(tmp_path / "multi") == folder_bytes(tmp_path / "single")


def test_two_rank_processes_equal_one(data_dir: Path, tmp_path: Path, model_dir: Path) -> None:
    # Real data problems in the mix: a corrupt JPEG and a PNG in shard 1, a truncated shard 2.
    write_tar(data_dir / "train-000001.tar", good_samples(1, n=2) + [
        ("corrupt", {"jpg": good_samples(1)[0][1]["jpg"][:300], "cls": b"1"}),
        ("png", {"png": jpeg_bytes(7, mode="P"), "cls": b"2"}),
    ])
    full = (data_dir / "train-000002.tar").read_bytes()
    (data_dir / "train-000002.tar").write_bytes(full[: len(full) * 2 // 3])
    run(data_dir, tmp_path / "single", str(model_dir), max_error_rate=None)

    cmd = [sys.executable, "-m", "vqtok", "pretokenize", "--model", str(model_dir), "--input", str(data_dir / PATTERN),
           "--output", str(tmp_path / "multi"), "--size", str(SIZE), "--batch-size", "3", "--workers", "1",
           "--max-error-rate", "1", "--no-progress"]
    env = {**os.environ, "WORLD_SIZE": "2", "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(cmd, env={**env, "RANK": str(r)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    outs = [p.communicate(timeout=120) for p in procs]
    for r, (p, (out, err)) in enumerate(zip(procs, outs)):
        assert p.returncode == 0, err
        assert f"(rank {r} of 2)" in out
    assert "2 shards" in outs[0][0] and "1 shards" in outs[1][0]
    single, multi = folder_bytes(tmp_path / "single"), folder_bytes(tmp_path / "multi")
    assert sorted(multi) == sorted(single)
    assert multi == single  # every token shard, stats .json and the manifest, byte for byte
    stats = {s: json.loads(single[f"train-00000{s}.json"]) for s in (1, 2)}
    assert [f["key"] for f in stats[1]["samples_failed"]] == ["corrupt"] and stats[1]["samples_written"] == 3
    assert stats[2]["samples_failed"][-1]["key"] == "<rest of shard>"


def test_progress_only_on_rank_0(data_dir: Path, tmp_path: Path, tok: Tokenizer, capsys, caplog) -> None:
    caplog.set_level("INFO", logger="vqtok.progress")
    run(data_dir, tmp_path / "t", tok, progress=True, rank=1, world_size=2)
    assert capsys.readouterr().err == "" and not caplog.records
    run(data_dir, tmp_path / "t", tok, progress=True, rank=0, world_size=2)
    captured = capsys.readouterr()
    # stderr is not a terminal here: no bar, a log line instead (issue 13 item 11)
    assert captured.err == "" and captured.out == ""
    lines = [r.getMessage() for r in caplog.records if r.name == "vqtok.progress"]
    assert lines and "pretokenize: 8/8 img" in lines[-1]


# ---------------------------------------------------------------------- identity of the output folder
def test_other_model_or_size_is_refused(data_dir: Path, tmp_path: Path, tok: Tokenizer) -> None:
    out = tmp_path / "t"
    run(data_dir, out, tok)
    with pytest.raises(ValueError, match="another model"):
        run(data_dir, out, tiny_tokenizer(seed=1))
    with pytest.raises(ValueError, match="another model"):  # the per-shard function refuses too
        tokenize_shard(data_dir / "train-000000.tar", out / "train-000000.tar", tiny_tokenizer(seed=1), size=SIZE)
    with pytest.raises(ValueError, match="made at size 64, this run uses size 32"):
        run(data_dir, out, tok, size=32)


# ---------------------------------------------------------------------- inputs
def test_expand_inputs(data_dir: Path, tmp_path: Path) -> None:
    want = [data_dir / f"train-{s:06d}.tar" for s in range(3)]
    assert expand_inputs(str(data_dir / PATTERN)) == want
    assert expand_inputs(str(data_dir / "train-*.tar")) == want
    assert expand_inputs([str(want[2]), str(want[0]), str(want[2])]) == [want[2], want[0]]
    with pytest.raises(FileNotFoundError, match="not found"):
        expand_inputs(str(data_dir / "train-{000000..000004}.tar"))
    other = tmp_path / "other"
    other.mkdir()
    write_tar(other / "train-000000.tar", good_samples(0, n=1))
    with pytest.raises(ValueError, match="both be written"):
        expand_inputs([str(want[0]), str(other / "train-000000.tar")])


def test_gzipped_input_gives_the_same_shard(tmp_path: Path, tok: Tokenizer) -> None:
    import gzip

    plain = write_tar(tmp_path / "p.tar", good_samples(2))
    (tmp_path / "g.tar.gz").write_bytes(gzip.compress(plain.read_bytes()))
    a = tokenize_shard(plain, tmp_path / "a" / "p.tar", tok, size=SIZE)
    b = tokenize_shard(tmp_path / "g.tar.gz", tmp_path / "b" / "p.tar", tok, size=SIZE)
    assert a.samples_written == b.samples_written == 4
    assert (tmp_path / "a" / "p.tar").read_bytes() == (tmp_path / "b" / "p.tar").read_bytes()


def test_native_size_requires_multiples(tmp_path: Path, tok: Tokenizer) -> None:
    src = write_tar(tmp_path / "n.tar", [("ok", {"jpg": jpeg_bytes(1, w=64, h=48)}), ("odd", {"jpg": jpeg_bytes(2, w=66, h=48)})])
    stats = tokenize_shard(src, tmp_path / "o" / "n.tar", tok, size=None)
    assert [f["key"] for f in stats.samples_failed] == ["odd"] and "multiple" in stats.samples_failed[0]["reason"]
    ids = np.load(io.BytesIO(read_token_shard(tmp_path / "o" / "n.tar")["ok"]["ids.npy"]))
    np.testing.assert_array_equal(ids, tok.encode(Image.open(io.BytesIO(jpeg_bytes(1, w=64, h=48)))))


# ---------------------------------------------------------------------- remote inputs
def _outputs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("train-*"))}


def test_remote_shards_pipe_and_http_give_the_local_outputs(data_dir: Path, tmp_path: Path, tok: Tokenizer) -> None:
    import functools
    import http.server
    import threading

    run(data_dir, tmp_path / "local", tok)
    incoming = tmp_path / "pipe" / ".incoming"  # left by a crashed run: this rank's copies go, others stay
    incoming.mkdir(parents=True)
    for name in ("train-000001.tar", "train-000002.tar.tmp-deadhost-4242", "other-000000.tar.tmp-deadhost-1"):
        (incoming / name).write_bytes(b"stale")
    pretokenize(f"pipe:cat {data_dir}/{PATTERN}", tmp_path / "pipe", model=tok, size=SIZE, batch_size=3, workers=0, progress=False)
    assert [p.name for p in incoming.iterdir()] == ["other-000000.tar.tmp-deadhost-1"]
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(data_dir))
    handler.log_message = lambda *a, **k: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{PATTERN}"
        result = pretokenize(url, tmp_path / "http", model=tok, size=SIZE, batch_size=3, workers=0, progress=False)
    finally:
        server.shutdown()
    local = _outputs(tmp_path / "local")
    assert len(local) == 6  # 3 token shards + 3 stats files
    assert _outputs(tmp_path / "pipe") == local == _outputs(tmp_path / "http")
    assert result.samples_written == 12 and not any((tmp_path / "http" / ".incoming").iterdir())  # copies deleted


def test_failed_fetch_leaves_the_shard_undone_and_a_rerun_fetches_it(data_dir: Path, tmp_path: Path, model_dir: Path, capsys) -> None:
    run(data_dir, tmp_path / "local", str(model_dir))
    hidden = data_dir / "train-000001.tar"
    hidden.rename(tmp_path / "away.tar")
    spec = f"pipe:cat {data_dir}/{PATTERN}"
    argv = ["pretokenize", "--model", str(model_dir), "--input", spec, "--output", str(tmp_path / "out"),
            "--size", str(SIZE), "--batch-size", "4", "--workers", "0", "--no-progress"]
    assert cli(argv) == 1
    captured = capsys.readouterr()
    assert "1 remote shard(s) could not be fetched; re-run to retry them" in captured.err
    assert "train-000001.tar" in captured.err and "exit 1" in captured.err
    assert (tmp_path / "out" / "train-000002.json").is_file()
    assert not (tmp_path / "out" / "train-000001.json").exists()  # not marked done

    (tmp_path / "away.tar").rename(hidden)
    assert cli(argv) == 0
    assert "1 done now, 2 already complete" in capsys.readouterr().out
    assert _outputs(tmp_path / "out") == _outputs(tmp_path / "local")


def test_remote_shard_names() -> None:
    from vqtok.pipeline import output_name_for
    from vqtok.pipeline.remote import is_remote, shard_name

    assert shard_name("pipe:aws s3 cp s3://bucket/x/train-000001.tar -") == "train-000001.tar"
    assert shard_name("https://host/data/train-000007.tar.gz?download=1") == "train-000007.tar.gz"
    assert output_name_for("pipe:curl -s https://h/a/val-01.tgz") == "val-01.tar"
    assert is_remote("gs://b/x.tar") and is_remote("pipe:cat x.tar") and not is_remote("data/x.tar")
    assert not is_remote("file:///data/x.tar") and not is_remote(Path("pipe:x.tar"))
    with pytest.raises(ValueError, match="no word of the command ends in .tar"):
        shard_name("pipe:cat everything")
    with pytest.raises(ValueError, match="does not end in .tar"):
        expand_inputs("https://host/shards/")


@pytest.mark.parametrize("gzipped", [False, True], ids=["tar", "tar.gz"])
@pytest.mark.parametrize("cut", ["header", "data"])
def test_eval_training_and_pretokenize_keep_the_same_samples_of_a_damaged_shard(
    tmp_path: Path, tok: Tokenizer, cut: str, gzipped: bool
) -> None:
    """Issue 12: a duplicate key plus a truncated tar; eval kept 4 images where pretokenize kept 3."""
    from vqtok.metrics.evaluate import evaluate_reconstruction, resolve_data
    from vqtok.tars import read_samples

    samples = [(f"k{i}", {"jpg": jpeg_bytes(i), "cls": b"1"}) for i in range(5)]
    samples.insert(3, ("k1", {"txt": b"the key k1 again, not next to its first members"}))
    full = write_tar(tmp_path / "full.tar", samples).read_bytes()
    with tarfile.open(tmp_path / "full.tar") as tf:
        last = [m for m in tf.getmembers() if m.name.startswith("k4.")][0]
    # "header": the file ends inside k4's first header, so k3 (the sample in progress) may be missing
    # members; "data": k4's header is read, so k3 is known to be complete.
    end = last.offset + 100 if cut == "header" else last.offset_data + 10
    src = tmp_path / ("cut.tar.gz" if gzipped else "cut.tar")
    if gzipped:
        import gzip

        src.write_bytes(gzip.compress(full[:end]))
    else:
        src.write_bytes(full[:end])

    stats = tokenize_shard(src, tmp_path / "out" / "cut.tar", tok, size=SIZE)
    result = evaluate_reconstruction(tok, resolve_data([src]), size=SIZE, progress=False)
    from vqtok.training.data import load_validation_images  # the training reader

    trained = load_validation_images(str(src), size=SIZE, limit=100)  # (N, 3, SIZE, SIZE) uint8
    written = sorted(k for k in read_token_shard(tmp_path / "out" / "cut.tar"))
    expected = ["k0", "k1", "k2"] + (["k3"] if cut == "data" else [])
    assert written == expected and trained.shape[0] == len(expected)
    assert stats.samples_written == result.n == len(expected)
    assert stats.num_failed == result.bad_samples.count  # the duplicate, (k3), and the rest of the shard
    reasons = {f["key"]: f["reason"] for f in stats.samples_failed}
    assert reasons["k1"].startswith("duplicate key") and "<rest of shard>" in reasons
    assert [s.key for s in read_samples(src) if s.error is None] == expected
