"""vqtok._io: the one temporary-name-then-rename helper."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from vqtok._io import atomic_write, remove_stale_tmp


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_file_appears_whole_with_its_mode_or_not_at_all(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "x.json"
    with atomic_write(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith("x.json.tmp-")
        tmp.write_text("new")
        os.chmod(tmp, 0o600)
        assert not target.exists()
    assert target.read_text() == "new" and _mode(target) == 0o644 and list(target.parent.iterdir()) == [target]

    with pytest.raises(RuntimeError, match="boom"), atomic_write(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("boom")
    assert target.read_text() == "new" and list(target.parent.iterdir()) == [target]

    with atomic_write(target, mode=None) as tmp:
        tmp.write_text("kept mode")
        os.chmod(tmp, 0o600)
    assert _mode(target) == 0o600
    with pytest.raises(FileNotFoundError, match="nothing was written"), atomic_write(tmp_path / "empty"):
        pass


def test_nested_blocks_commit_the_inner_file_first(tmp_path: Path) -> None:
    order: list[str] = []
    with atomic_write(tmp_path / "marker") as marker:
        marker.write_text("done")
        with atomic_write(tmp_path / "data") as data:
            data.write_text("payload")
        order.append("data" if (tmp_path / "data").exists() and not (tmp_path / "marker").exists() else "wrong")
    assert order == ["data"] and (tmp_path / "marker").read_text() == "done"


def test_a_folder_replaces_the_old_one(tmp_path: Path) -> None:
    target = tmp_path / "ckpt"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with atomic_write(target, owner="step7") as tmp:
        assert tmp == tmp_path / "ckpt.tmp-step7"  # a name other ranks can write into too
        tmp.mkdir()
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in target.iterdir()] == ["new.txt"] and [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_keep_existing_leaves_a_folder_another_writer_completed(tmp_path: Path) -> None:
    """A shared cache entry: the first complete folder stays, a second writer's copy is dropped."""
    target = tmp_path / "entry"
    with atomic_write(target, keep_existing=True) as tmp:
        tmp.mkdir()
        (tmp / "config.json").write_text("mine")
        target.mkdir()  # another process finished the same entry meanwhile
        (target / "config.json").write_text("theirs")
    assert (target / "config.json").read_text() == "theirs" and [p.name for p in tmp_path.iterdir()] == ["entry"]
    with atomic_write(tmp_path / "fresh", keep_existing=True) as tmp:
        tmp.mkdir()
        (tmp / "config.json").write_text("mine")
    assert (tmp_path / "fresh" / "config.json").read_text() == "mine"


def test_remove_stale_tmp_only_touches_the_targets_leftovers(tmp_path: Path) -> None:
    for name in ("a.tar", "a.tar.tmp-host-1", "a.tar.old-host-2", "ab.tar.tmp-host-3", "[a].tar.tmp-h-4"):
        (tmp_path / name).write_text("x")
    (tmp_path / "a.tar.tmp-dir-5").mkdir()
    removed = sorted(p.name for p in remove_stale_tmp(tmp_path / "a.tar"))
    assert removed == ["a.tar.old-host-2", "a.tar.tmp-dir-5", "a.tar.tmp-host-1"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["[a].tar.tmp-h-4", "a.tar", "ab.tar.tmp-host-3"]
    assert [p.name for p in remove_stale_tmp(tmp_path / "[a].tar")] == ["[a].tar.tmp-h-4"]  # glob characters
