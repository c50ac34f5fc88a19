"""Failure reasons are stable text: no memory addresses, no temporary names (stats files are reproducible)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from vqtok._errors import reason
from vqtok.images import load_image


def test_reason_strips_addresses_and_temp_names() -> None:
    try:
        load_image(b"hello")
    except ValueError as err:
        text = reason(err, subject="jpg field")
    assert "0x" not in text and "BytesIO object" not in text
    assert text.startswith("ValueError: jpg field is not a readable image: cannot identify image file")
    assert reason(OSError("cannot open /out/a.tar.tmp-host-123\nsecond line")) == "OSError: cannot open /out/a.tar"
    assert reason(KeyError()) == "KeyError"


def _shard(path: Path) -> Path:
    with tarfile.open(path, "w") as tf:
        for name, data in (("textimg.jpg", b"hello"), ("textimg.cls", b"1")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def test_pretokenize_stats_of_a_bad_sample_are_identical_across_runs(tmp_path: Path, tiny_tokenizer) -> None:
    from vqtok.pipeline import pretokenize

    shard = _shard(tmp_path / "s-000000.tar")
    outs = []
    for run in range(2):
        out = tmp_path / f"out{run}"
        pretokenize(str(shard), out, model=tiny_tokenizer, size=64, workers=0, progress=False, max_error_rate=None)
        outs.append((out / "s-000000.json").read_bytes())
    assert outs[0] == outs[1]
    failed = json.loads(outs[0])["samples_failed"]
    assert failed[0]["key"] == "textimg" and "0x" not in failed[0]["reason"] and "cannot identify image file" in failed[0]["reason"]
