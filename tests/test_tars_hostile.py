"""Issue 26 items 5, 12 and 16: hostile tar shards (absurd member sizes, repeated members, dot names,
``..`` keys) are recorded as failed samples or a corrupt tar, never an escaping error."""

from __future__ import annotations

import gzip
import tarfile
from pathlib import Path

import pytest

from tests.conftest import write_tar

from vqtok.tars import HIDDEN_NAME, REPEATED_MEMBER, TRUNCATED_KEY, index_shard, read_samples, safe_key


def _huge_member_tar(path: Path, claimed: int) -> Path:
    """A tar whose one member header claims ``claimed`` bytes (GNU base-256 size) over 1000 real ones."""
    info = tarfile.TarInfo("a.jpg")
    info.size = claimed
    data = info.tobuf(format=tarfile.GNU_FORMAT) + b"x" * 1000 + b"\0" * 1024
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


@pytest.mark.parametrize("claimed", [2**70, 10**11], ids=["2^70", "1e11"])
@pytest.mark.parametrize("name", ["s.tar", "s.tar.gz"])
def test_a_member_claiming_absurd_sizes_is_a_corrupt_tar(tmp_path: Path, claimed: int, name: str) -> None:
    path = _huge_member_tar(tmp_path / name, claimed)
    for samples in (list(read_samples(path)), index_shard(path).samples, list(read_samples(f"pipe:cat {path}"))):
        assert [s.key for s in samples] == [TRUNCATED_KEY]
        assert "truncated or corrupt tar" in (samples[0].error or "")


def test_the_same_member_twice_is_a_failed_sample(tmp_path: Path) -> None:
    path = write_tar(tmp_path / "s.tar", [("f.jpg", b"1"), ("f.jpg", b"2"), ("g.jpg", b"3")])
    samples = list(read_samples(path))
    assert [(s.key, s.error) for s in samples] == [("f", REPEATED_MEMBER), ("g", None)]
    assert [(s.key, s.error) for s in index_shard(path).samples] == [("f", REPEATED_MEMBER), ("g", None)]


def test_dot_names_are_failed_samples_and_keys_are_made_safe(tmp_path: Path) -> None:
    members = [("a.jpg", b"1"), (".b.jpg", b"2"), ("d/.c.jpg", b"3"), ("README", b"r"), ("../../x.jpg", b"4"),
               ("/abs/y.jpg", b"5"), ("x.cls", b"6")]
    samples = list(read_samples(write_tar(tmp_path / "s.tar", members)))
    assert [(s.key, s.error) for s in samples] == [
        ("a", None), (".b.jpg", HIDDEN_NAME), ("d/.c.jpg", HIDDEN_NAME), ("x", None), ("abs/y", None),
        ("x", "duplicate key (its members are not consecutive in the tar)"),
    ]
    assert safe_key("a/./b/../c") == "a/b/c" and safe_key("k") == "k"


@pytest.mark.parametrize("workers", [0, 1])
def test_pretokenize_records_a_shard_that_breaks_the_reader_and_ends(tmp_path: Path, workers: int, monkeypatch) -> None:
    # a .tar.gz with an absurd member size, and any error escaping the shard index (MemoryError here),
    # becomes the shard's failure; with a DataLoader worker the run used to print a traceback and hang
    import vqtok.pipeline._reading as reading
    from tests.test_pipeline import good_samples, tiny_tokenizer
    from tests.test_pipeline import write_tar as write_samples
    from vqtok.pipeline import pretokenize

    data = tmp_path / "data"
    data.mkdir()
    _huge_member_tar(data / "train-000000.tar.gz", 10**11)
    write_samples(data / "train-000001.tar", good_samples(1, n=2))
    write_samples(data / "train-000002.tar", good_samples(2, n=2))
    real = reading.index_shard

    def index(src):  # noqa: ANN001, ANN202
        if Path(src).name == "train-000002.tar":
            raise MemoryError()
        return real(src)

    monkeypatch.setattr(reading, "index_shard", index)
    result = pretokenize(str(data), tmp_path / "out", model=tiny_tokenizer(), size=64, workers=workers,
                         progress=False, max_error_rate=None)
    assert result.samples_written == 2
    assert [(f.shard, f.key) for f in result.failures] == [("train-000000.tar", TRUNCATED_KEY), ("train-000002.tar", TRUNCATED_KEY)]
    assert "claims 100000000000 bytes" in result.failures[0].reason
    assert "MemoryError" in result.failures[1].reason
