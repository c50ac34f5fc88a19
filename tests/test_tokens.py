"""vqtok.tokens: the token-shard reader (webdataset pipeline + in-memory corpus)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds

from vqtok.tars import expand_shards
from vqtok.tokens import NO_LABEL, decode_token_sample, load_token_corpus, token_dataset


pytestmark = pytest.mark.usefixtures("one_thread")


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def write_shards(
    root: Path,
    *,
    n_shards: int = 4,
    per_shard: int = 5,
    grid: tuple[int, int] = (4, 4),
    dtype: type = np.uint16,
    codebook_size: int | None = 64,
) -> str:
    """Shards whose sample number k has ids filled with k and label k % 3 (every 4th sample unlabelled)."""
    root.mkdir(parents=True, exist_ok=True)
    k = 0
    for s in range(n_shards):
        with wds.TarWriter(str(root / f"tok-{s:06d}.tar")) as w:
            for _ in range(per_shard):
                sample = {"__key__": f"img{k:05d}", "ids.npy": _npy(np.full(grid, k, dtype=dtype))}
                if k % 4 != 3:
                    sample["cls"] = str(k % 3).encode()
                if k == 0:
                    sample["txt"] = "a caption".encode()
                    sample["json"] = json.dumps({"w": 64}).encode()
                w.write(sample)
                k += 1
        if codebook_size is not None:
            (root / f"tok-{s:06d}.json").write_text(json.dumps({"codebook_size": codebook_size, "count": per_shard}))
    return str(root / ("tok-{000000..%06d}.tar" % (n_shards - 1)))


def test_pairs_in_order_with_labels(tmp_path: Path) -> None:
    spec = write_shards(tmp_path)
    pairs = list(token_dataset(spec, shuffle=0))
    assert len(pairs) == 20
    for k, (ids, label) in enumerate(pairs):
        assert ids.dtype == torch.int64 and ids.shape == (4, 4) and int(ids[0, 0]) == k
        assert label == (NO_LABEL if k % 4 == 3 else k % 3)


def test_dicts_keep_key_text_and_json(tmp_path: Path) -> None:
    spec = write_shards(tmp_path)
    first = next(iter(token_dataset(spec, shuffle=0, as_dict=True)))
    assert first["__key__"] == "img00000" and first["txt"] == "a caption" and first["json"] == {"w": 64}
    assert first["label"] == 0 and first["ids"].shape == (4, 4)


def test_shuffle_is_seeded_and_complete(tmp_path: Path) -> None:
    spec = write_shards(tmp_path)
    order = lambda seed: [int(i[0, 0]) for i, _ in token_dataset(spec, shuffle=8, seed=seed)]  # noqa: E731
    a, b, c = order(1), order(1), order(2)
    assert a == b and a != c and sorted(a) == list(range(20)) and a != list(range(20))


def test_node_splitting_partitions_shards(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = write_shards(tmp_path)
    seen = []
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        seen.append({int(i[0, 0]) for i, _ in token_dataset(spec, shuffle=4)})
    assert seen[0].isdisjoint(seen[1]) and seen[0] | seen[1] == set(range(20))
    assert len(seen[0]) == len(seen[1]) == 10


def test_worker_splitting_in_dataloader(tmp_path: Path) -> None:
    spec = write_shards(tmp_path)
    loader = torch.utils.data.DataLoader(token_dataset(spec, shuffle=0), batch_size=None, num_workers=2)
    got = sorted(int(ids[0, 0]) for ids, _ in loader)
    assert got == list(range(20))  # every sample exactly once across the two workers


def test_resampled_epochs(tmp_path: Path) -> None:
    spec = write_shards(tmp_path)
    ds = token_dataset(spec, resampled=True, shuffle=0, epoch_length=7, seed=3)
    a = [int(i[0, 0]) for i, _ in ds]
    b = [int(i[0, 0]) for i, _ in ds]
    assert len(a) == len(b) == 7 and all(0 <= x < 20 for x in a)
    again = [int(i[0, 0]) for i, _ in token_dataset(spec, resampled=True, shuffle=0, epoch_length=7, seed=3)]
    assert again == a  # deterministic per seed (and rank/worker)


def test_resampled_streams_differ_per_rank(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = write_shards(tmp_path, n_shards=8, per_shard=2)
    streams = []
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        streams.append([int(i[0, 0]) for i, _ in token_dataset(spec, resampled=True, shuffle=0, epoch_length=12)])
    assert len(streams[0]) == len(streams[1]) == 12 and streams[0] != streams[1]


def test_load_corpus(tmp_path: Path) -> None:
    spec = write_shards(tmp_path, grid=(2, 3), dtype=np.int32, codebook_size=70000)
    c = load_token_corpus(spec)
    assert c.ids.shape == (20, 2, 3) and c.ids.dtype == np.int32 and c.grid == (2, 3)
    assert c.codebook_size == 70000 and c.keys[0] == "img00000"
    assert list(c.labels[:4]) == [0, 1, 2, NO_LABEL] and c.has_labels
    ids, labels = c.batch(torch.tensor([5, 0]))
    assert ids.dtype == torch.int64 and ids[0, 0, 0] == 5 and labels.tolist() == [2, 0]
    sub = c.subset(np.array([4, 1]))
    assert sub.keys == ["img00004", "img00001"] and sub.labels.tolist() == [1, 1] and int(sub.ids[0, 0, 0]) == 4
    train, val = c.split(3)
    assert len(train) == 17 and len(val) == 3 and val.keys[-1] == "img00019"
    # a directory works as a spec, without stats files the codebook size is unknown
    d = tmp_path / "nostats"
    write_shards(d, n_shards=1, codebook_size=None)
    assert expand_shards(d) == [str(d / "tok-000000.tar")]
    assert load_token_corpus(str(d)).codebook_size is None


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"2 input\(s\) not found .*nope-000001.tar"):
        expand_shards(str(tmp_path / "nope-{000000..000001}.tar"))
    with pytest.raises(ValueError, match="no .ids.npy"):
        decode_token_sample({"__key__": "x", "cls": b"1"})
    with pytest.raises(ValueError, match="not an integer"):
        decode_token_sample({"__key__": "x", "ids.npy": _npy(np.zeros((2, 2), np.uint16)), "cls": b"cat"})
    write_shards(tmp_path / "a", n_shards=1, grid=(2, 2))
    write_shards(tmp_path / "b", n_shards=1, grid=(3, 3))
    with pytest.raises(ValueError, match="differ in shape"):
        load_token_corpus([str(tmp_path / "a" / "tok-000000.tar"), str(tmp_path / "b" / "tok-000000.tar")])


def test_old_import_path_still_works_with_a_deprecation_warning() -> None:
    import importlib
    import sys

    import vqtok.tokens

    sys.modules.pop("vqtok.data", None)
    with pytest.warns(DeprecationWarning, match="removed in vqtok 0.3.0"):
        old = importlib.import_module("vqtok.data")
    assert old.load_token_corpus is vqtok.tokens.load_token_corpus and old.expand_shards is expand_shards


def test_a_damaged_token_shard_is_an_error(tmp_path: Path) -> None:
    write_shards(tmp_path / "d", n_shards=1, codebook_size=None)
    shard = tmp_path / "d" / "tok-000000.tar"
    shard.write_bytes(shard.read_bytes()[:1500])
    with pytest.raises(ValueError, match=r"(?s)truncated or corrupt tar.*re-run pretokenize"):
        load_token_corpus(str(shard))
    with pytest.raises(ValueError, match="truncated or corrupt tar"):
        list(token_dataset(str(shard), shuffle=0))


# ---------------------------------------------------------------------- issue 13 item 5: a stream per rank x worker
def _rank_streams(spec: str, monkeypatch: pytest.MonkeyPatch, *, world: int, workers: int, epoch: int = 0,
                  **kw: object) -> list[list[list[int]]]:
    """streams[rank][worker]: the sample numbers each DataLoader worker of each rank yields."""
    out = []
    for rank in range(world):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", str(world))
        ds = token_dataset(spec, **kw)
        ds.set_epoch(epoch)
        got = [int(ids[0, 0]) for ids, _ in torch.utils.data.DataLoader(ds, batch_size=None, num_workers=workers)]
        out.append([got[w::workers] for w in range(workers)])  # the DataLoader takes from its workers in turn
    return out


def test_ranks_and_workers_read_disjoint_streams_covering_each_epoch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = write_shards(tmp_path, n_shards=8, per_shard=10)  # 80 samples, 4 streams of 2 shards
    orders = []
    for epoch in range(2):
        streams = _rank_streams(spec, monkeypatch, world=2, workers=2, epoch=epoch, shuffle=8, seed=5)
        flat = [x for rank in streams for worker in rank for x in worker]
        assert sorted(flat) == list(range(80))  # every sample exactly once per epoch, over ranks x workers
        lengths = {len(w) for rank in streams for w in rank}
        assert lengths == {20}
        # independent shuffles: no two streams are the same permutation of their shards' samples
        # (with one seed for all, stream b was stream a plus a constant: 4, 24, 6, 26, ...)
        firsts = [w for rank in streams for w in rank]
        for a in range(4):
            for b in range(a + 1, 4):
                offsets = {y - x for x, y in zip(firsts[a], firsts[b])}
                assert len(offsets) > 3, (firsts[a], firsts[b])
        orders.append(flat)
    assert orders[0] != orders[1]  # another epoch, another order
    again = _rank_streams(spec, monkeypatch, world=2, workers=2, epoch=1, shuffle=8, seed=5)
    assert [x for rank in again for w in rank for x in w] == orders[1]  # (seed, epoch) reproduce it


def test_resampled_ranks_do_not_repeat_each_other(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = write_shards(tmp_path, n_shards=4, per_shard=20)
    streams = _rank_streams(spec, monkeypatch, world=2, workers=1, resampled=True, shuffle=16, epoch_length=60)
    a, b = streams[0][0], streams[1][0]
    assert len(a) == len(b) == 60
    same = sum(x == y for x, y in zip(a, b))
    assert same <= 5, same  # one seed for both ranks gave 10-18 of 60 at the same position
