"""vqtok.tars: the WebDataset tar reading shared by training, evaluation and pre-tokenization."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from tests.conftest import write_tar

from vqtok.tars import (
    DUPLICATE_KEY,
    TRUNCATED_KEY,
    expand_shards,
    group_members,
    image_field,
    is_shard,
    read_samples,
    split_key,
)


def test_split_key_follows_webdataset() -> None:
    assert split_key("dir/000123.seg.png") == ("dir/000123", "seg.png")
    assert split_key("a.jpg") == ("a", "jpg")
    assert split_key("README") is None
    assert split_key("dir.v2/x.cls") == ("dir.v2/x", "cls")


def test_group_members_groups_consecutive_keys_only() -> None:
    members = [("a.jpg", 1), ("a.cls", 2), ("noext", 0), ("b.jpg", 3), ("a.txt", 4)]
    assert list(group_members(members)) == [("a", {"jpg": 1, "cls": 2}), ("b", {"jpg": 3}), ("a", {"txt": 4})]


def test_read_samples_plain_and_gzip(tmp_path: Path) -> None:
    members = [("x.png", b"P1"), ("x.cls", b"7"), ("y.json", b"{}"), ("y.webp", b"W")]
    plain = write_tar(tmp_path / "s.tar", members)
    gz = tmp_path / "s.tar.gz"
    gz.write_bytes(gzip.compress(plain.read_bytes()))
    for path in (plain, gz):
        samples = list(read_samples(path))
        assert [(s.key, s.fields, s.error) for s in samples] == [
            ("x", {"png": b"P1", "cls": b"7"}, None),
            ("y", {"json": b"{}", "webp": b"W"}, None),
        ]
        assert [s.image for s in samples] == [b"P1", b"W"]
    assert is_shard(gz) and is_shard("A.TGZ") and not is_shard("a.png")
    assert image_field({"json": 1, "png": 2, "jpg": 3}) == "jpg"
    assert image_field({"json": 1, "JPG": 2}) == "JPG" and image_field({"json": 1}) is None
    assert image_field({"png": 1, "webp": 2}, ("webp", "png")) == "webp"


def test_truncated_tar_yields_complete_members_then_an_error_sample(tmp_path: Path) -> None:
    big = bytes(range(256)) * 8  # 2048 bytes
    path = write_tar(tmp_path / "s.tar", [("a.jpg", b"A"), ("b.jpg", big), ("b.cls", b"1"), ("c.jpg", big)])
    data = path.read_bytes()
    path.write_bytes(data[: 512 * 3 + 1024 + 512 + 512 + 512 + 100])  # inside c.jpg's data
    samples = list(read_samples(path))
    assert [s.key for s in samples] == ["a", "b", TRUNCATED_KEY]
    assert samples[1].fields == {"jpg": big, "cls": b"1"}
    assert samples[2].fields == {} and "truncated or corrupt tar after 3 members" in samples[2].error

    path.write_bytes(b"\x1f\x8b" + b"\x00" * 100)  # a gzip header and garbage
    (only,) = read_samples(path)
    assert only.key == TRUNCATED_KEY and "after 0 members" in only.error
    missing = list(read_samples(tmp_path / "nope.tar"))
    assert missing[0].key == TRUNCATED_KEY and "FileNotFoundError" in missing[0].error


def test_a_tar_cut_inside_a_header_is_not_taken_as_complete(tmp_path: Path) -> None:
    # tarfile itself ends quietly at a cut header; read_samples checks for the end-of-archive marker
    path = write_tar(tmp_path / "s.tar", [("a.jpg", b"A" * 10), ("b.jpg", b"B" * 10)])
    cut = path.read_bytes()[: 512 + 512 + 100]  # a's header + data block, then part of b's header
    for name, data in (("cut.tar", cut), ("cut.tar.gz", gzip.compress(cut))):
        (tmp_path / name).write_bytes(data)
        samples = list(read_samples(tmp_path / name))
        assert [s.key for s in samples] == ["a", TRUNCATED_KEY], name
        assert "no end-of-archive marker" in samples[1].error


def test_remote_shards_are_streamed_with_the_same_verdicts(tmp_path: Path) -> None:
    big = bytes(range(256)) * 8
    path = write_tar(tmp_path / "s.tar", [("a.jpg", b"A"), ("b.jpg", big), ("a.cls", b"1"), ("c.jpg", big)])
    local = [(s.key, s.fields, s.error) for s in read_samples(path)]
    assert [(s.key, s.fields, s.error) for s in read_samples(f"pipe:cat {path}")] == local
    assert local[2][0] == "a" and local[2][2] == DUPLICATE_KEY  # a's members are not consecutive
    cut = tmp_path / "cut.tar"
    cut.write_bytes(path.read_bytes()[: 512 * 3 + 2048 + 512 + 512 + 100])  # inside c.jpg's data
    streamed = list(read_samples(f"pipe:cat {cut}"))
    assert [s.key for s in streamed] == ["a", "b", "a", TRUNCATED_KEY] and streamed[1].error is None
    assert [(s.key, s.error is None) for s in streamed] == [(s.key, s.error is None) for s in read_samples(cut)]


def test_expand_shards(tmp_path: Path) -> None:
    for name in ("b-000000.tar", "b-000001.tar.gz", "x.png", "sub/c-000000.tgz", ".incoming/b-000002.tar"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    d = str(tmp_path)
    assert expand_shards(d) == [f"{d}/b-000000.tar", f"{d}/b-000001.tar.gz", f"{d}/sub/c-000000.tgz"]  # not .incoming
    assert expand_shards(d, images=True) == [f"{d}/x.png"]  # a folder with images gives its images
    assert expand_shards([f"{d}/b-{{000000..000001}}.tar*", f"{d}/b-000000.tar", "pipe:cat a-{0..1}.tar"]) == [
        f"{d}/b-000000.tar", f"{d}/b-000001.tar.gz", "pipe:cat a-0.tar", "pipe:cat a-1.tar",
    ]
    assert expand_shards(f"{d}/**/*.tgz") == [f"{d}/sub/c-000000.tgz"]
    with pytest.raises(FileNotFoundError, match=r"2 input\(s\) not found .*nope.tar.*\*.zip \(glob matches no shard\)"):
        expand_shards([f"{d}/nope.tar", f"{d}/*.zip"])
    with pytest.raises(ValueError, match="no input shards"):
        expand_shards([])
