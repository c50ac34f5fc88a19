"""``decode="fast"``: JPEG draft decoding before the same resize (pretokenize --decode fast)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import real_photos
from vqtok.images import load_image, prepare_image
from vqtok.pipeline import pretokenize


def _jpeg(img: Image.Image, side: int) -> bytes:
    buf = io.BytesIO()
    img.resize((side, side * 3 // 4)).save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def test_fast_decode_drafts_jpegs_to_twice_the_size_only() -> None:
    data = _jpeg(real_photos(1)[0], 1024)  # 1024 x 768
    assert load_image(data).size == (1024, 768)
    assert load_image(data, draft=128).size == (256, 192)  # 1/4 scale: both sides still >= 128
    exact = prepare_image(data, size=64)
    fast = prepare_image(data, size=64, decode="fast")  # drafted to >= 128, then the same resize
    assert fast.shape == exact.shape == (64, 64, 3)
    assert 0 < np.abs(fast.astype(int) - exact).mean() < 3  # close, not identical
    png = io.BytesIO()
    Image.open(io.BytesIO(data)).save(png, format="PNG")
    assert np.array_equal(prepare_image(png.getvalue(), size=64, decode="fast"), prepare_image(png.getvalue(), size=64))
    with pytest.raises(ValueError, match="decode must be one of exact, fast"):
        prepare_image(data, size=64, decode="draft")


def test_pretokenize_fast_decode_records_and_guards_its_mode(tmp_path: Path, tiny_tokenizer) -> None:
    shard = tmp_path / "big-000000.tar"
    with tarfile.open(shard, "w") as tf:
        for i, photo in enumerate(real_photos(4)):
            data = _jpeg(photo, 1024)
            info = tarfile.TarInfo(f"p{i}.jpg")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    kw = dict(model=tiny_tokenizer, size=64, workers=0, progress=False)
    exact = pretokenize(str(shard), tmp_path / "exact", **kw)
    fast = pretokenize(str(shard), tmp_path / "fast", decode="fast", **kw)
    assert exact.samples_written == fast.samples_written == 4
    manifest = json.loads((tmp_path / "fast" / "manifest.json").read_text())
    assert manifest["decode"] == "fast"
    assert "decode" not in json.loads((tmp_path / "exact" / "manifest.json").read_text())  # 0.1 manifests unchanged
    with pytest.raises(ValueError, match="decoded 'fast', this run decodes 'exact'"):
        pretokenize(str(shard), tmp_path / "fast", **kw)
