"""vqtok.pipeline.ray on a local Ray (2 CPUs): the same bytes as one process, faults, partial folders.

Runs when the ``ray`` extra is installed (``pip install -e ".[ray]"``; CI installs it).
"""

from __future__ import annotations

import io
import json
import tarfile
import threading
import time
from pathlib import Path

import pytest
import torch

ray = pytest.importorskip("ray")

from tests.conftest import real_photos  # noqa: E402
from vqtok.models.vqgan import VQGANConfig  # noqa: E402
from vqtok.pipeline import pretokenize  # noqa: E402
from vqtok.pipeline.ray import RayOptions, ShardFailed, pretokenize_ray  # noqa: E402
from vqtok.tokenizer import Tokenizer  # noqa: E402

SIZE = 64
N_SHARDS = 4


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    cfg = VQGANConfig(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(), z_channels=16, embed_dim=8,
                      n_embed=512, resolution=64)
    tok = Tokenizer.from_config(cfg, batch_size=8)
    with torch.no_grad():
        w = tok.model.quantize.embedding.weight
        w.copy_(torch.randn(w.shape, generator=torch.Generator().manual_seed(0)) * 0.5)
    d = tmp_path_factory.mktemp("model")
    tok.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 shards of real photos (3 each, JPEG re-encoded), one with an undecodable member."""
    d = tmp_path_factory.mktemp("shards")
    photos = real_photos(8)
    for s in range(N_SHARDS):
        with tarfile.open(d / f"part-{s:06d}.tar", "w") as tf:
            for i in range(3):
                buf = io.BytesIO()
                k = 3 * s + i
                photo = photos[k % len(photos)]
                photo = photo if k < len(photos) else photo.transpose(0)  # mirrored when photos run out
                photo.resize((96, 80)).save(buf, format="JPEG", quality=90)
                members = {"jpg": buf.getvalue(), "cls": str(i).encode()}
                if s == 2 and i == 1:
                    members["jpg"] = b"not a jpeg"
                for ext, data in members.items():
                    info = tarfile.TarInfo(f"p{s}_{i:02d}.{ext}")
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
    return d


PATTERN = "part-{000000..000003}.tar"


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".")}


@pytest.fixture(scope="module")
def reference(shards: Path, model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("local") / "tokens"
    pretokenize(str(shards / PATTERN), out, model=str(model_dir), size=SIZE, batch_size=2, workers=0, progress=False,
                max_error_rate=None)
    return folder_bytes(out)


def ray_run(shards: Path, out: Path, model_dir: Path, *, workers: int = 0, **ray_kw):
    ray_kw.setdefault("num_actors", 2)
    ray_kw.setdefault("num_cpus", 1)
    ray_kw.setdefault("threads", 1)
    return pretokenize_ray(str(shards / PATTERN), out, model=str(model_dir), ray_options=RayOptions(**ray_kw), size=SIZE,
                           batch_size=2, workers=workers, progress=False, max_error_rate=None)


def test_ray_output_is_byte_identical_to_one_process(local_ray, shards, model_dir, reference, tmp_path) -> None:
    out = tmp_path / "tokens"
    result = ray_run(shards, out, model_dir)
    assert folder_bytes(out) == reference
    assert set(reference) >= {f"part-{s:06d}.tar" for s in range(N_SHARDS)} | {"manifest.json"}
    assert result.samples_written == 11 and result.samples_failed == 1
    assert result.failures[0][:2] == ("part-000002.tar", "p2_01")
    # an in-memory Tokenizer (shipped through the object store) and one actor with a DataLoader worker
    out2 = tmp_path / "tokens2"
    pretokenize_ray(str(shards / PATTERN), out2, model=Tokenizer.from_pretrained(model_dir), size=SIZE, batch_size=2,
                    workers=1, ray_options=RayOptions(num_actors=1, num_cpus=2, threads=1), progress=False, max_error_rate=None)
    manifest = json.loads((out2 / "manifest.json").read_text())
    assert manifest["model"] == "<in-memory Tokenizer>"
    assert {k: v for k, v in folder_bytes(out2).items() if k != "manifest.json"} == {
        k: v for k, v in reference.items() if k != "manifest.json"}


def test_ray_skips_complete_shards_and_cleans_a_killed_writer(local_ray, shards, model_dir, reference, tmp_path) -> None:
    out = tmp_path / "tokens"
    ray_run(shards, out, model_dir)
    done = out / "part-000001.tar"
    before = done.stat().st_mtime_ns
    # what a worker killed mid-shard leaves: a partial temp tar, no .json; and a lost output
    (out / "part-000003.tar").unlink()
    (out / "part-000003.json").unlink()
    (out / "part-000003.tar.tmp-host-123").write_bytes(b"partial")
    result = ray_run(shards, out, model_dir)
    assert folder_bytes(out) == reference
    assert done.stat().st_mtime_ns == before  # a complete shard is not rewritten
    assert result.shards_processed == 1 and len(result.shards) == N_SHARDS
    assert not list(out.glob("*.tmp-*"))


def test_ray_actor_killed_mid_run_gives_the_same_bytes(local_ray, shards, model_dir, reference, tmp_path) -> None:
    out = tmp_path / "tokens"
    killed: list[str] = []

    def kill_an_actor() -> None:  # once the first shard is complete, kill a live actor (Ray restarts it)
        deadline = time.time() + 120
        while time.time() < deadline and not list(out.glob("part-*.json")):
            time.sleep(0.02)
        names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith("vqtok-")]
        if names:
            ray.kill(ray.get_actor(names[0]), no_restart=False)
            killed.append(names[0])

    t = threading.Thread(target=kill_an_actor)
    t.start()
    result = ray_run(shards, out, model_dir, num_actors=2, max_retries=3)
    t.join()
    assert killed, "no actor was alive to kill"
    assert folder_bytes(out) == reference
    assert len(result.shards) == N_SHARDS and not result.fetch_failures


def test_ray_reports_a_failed_shard_and_writes_the_others(local_ray, shards, model_dir, tmp_path) -> None:
    from vqtok.pipeline import prepare_output

    out = tmp_path / "tokens"
    prepare_output(out, Tokenizer.from_pretrained(model_dir), size=SIZE)  # a pretokenize folder (a foreign one is refused)
    (out / "part-000001.tar").mkdir(parents=True)  # the output cannot be renamed into place: that task raises
    with pytest.raises(ShardFailed, match="part-000001.tar") as info:
        ray_run(shards, out, model_dir, max_retries=0)
    result = info.value.result
    assert [s.shard for s in result.shards] == ["part-000000.tar", "part-000002.tar", "part-000003.tar"]
    assert "IsADirectoryError" in result.fetch_failures[0].reason
    assert not (out / "part-000001.json").exists() and not list(out.glob("*.tmp-*"))
    assert json.loads((out / "manifest.json").read_text())["totals"]["shards"] == 3


def test_ray_refuses_remote_inputs(local_ray, model_dir, tmp_path) -> None:
    with pytest.raises(ValueError, match="shared file system"):
        pretokenize_ray("pipe:cat x.tar", tmp_path / "o", model=str(model_dir), progress=False)


def test_cli_engine_ray(local_ray, shards, model_dir, reference, tmp_path, capsys) -> None:
    from vqtok.cli import main

    out = tmp_path / "tokens"
    code = main(["pretokenize", "--engine", "ray", "--ray-actors", "1", "--ray-cpus-per-actor", "1", "--input",
                 str(shards / PATTERN), "--out", str(out), "--model", str(model_dir), "--size", str(SIZE),
                 "--batch-size", "2", "--workers", "0", "--max-error-rate", "0.5", "--no-progress"])
    assert code == 0
    assert {k: v for k, v in folder_bytes(out).items() if k != "manifest.json"} == {
        k: v for k, v in reference.items() if k != "manifest.json"}
    assert main(["pretokenize", "--engine", "ray", "--rank", "1", "--input", str(shards / PATTERN), "--out",
                 str(tmp_path / "x"), "--model", str(model_dir)]) == 2
    assert "--rank/--world-size are for the local engine" in capsys.readouterr().err
