"""Versions of the shipped default tokenizer: ``default`` (the newest), ``default@v1`` (pinned), and what runs record."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import EVAL_PHOTOS, TINY, real_photos, spread_codebook
from vqtok import Tokenizer
from vqtok import tokenizer as tokenizer_module
from vqtok.cli import main
from vqtok.tokenizer import DEFAULT_VERSIONS, default_version, model_id, resolve_default

WEIGHTS_DIR = Path(tokenizer_module.__file__).parent / "weights"
# every shipped version must stay byte-identical forever: corpora tokenized with it are decoded with it
SHA256 = {
    "v1": "65f98e82d895f90c8be8a53a90fd5f76113e5481032023a9fb6373780c921638",
    "v2": "b211037f4c12aad7184a7c1c1e54ece33a222953c5d726cefbf00095564b896d",
    "v3": "c48b83e3faac4f021e696f9e746ca1f5c40d82bfe0b52e8d8bb8fcd422ca8ee3",
}
needs_v1 = pytest.mark.skipif(
    not (WEIGHTS_DIR / "default-v1" / "model.safetensors").is_file(), reason="no shipped default weights"
)


def _photo() -> Image.Image:
    """A real held-out photo (the shared eval photos when present, else scikit-image's astronaut)."""
    files = sorted(EVAL_PHOTOS.glob("*.jpg")) if EVAL_PHOTOS.is_dir() else []
    return Image.open(files[0]).convert("RGB") if files else real_photos(1)[0]


@pytest.fixture
def only_v1(monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """The registry as it was when v1 was the only shipped version (these tests keep working once v2 ships)."""
    registry = {"v1": WEIGHTS_DIR / "default-v1"}
    monkeypatch.setattr(tokenizer_module, "DEFAULT_VERSIONS", registry)
    return registry


@pytest.fixture
def fake_v2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, only_v1: dict[str, Path]) -> Tokenizer:
    """A second shipped version (a tiny random model), registered after v1: ``default`` now means it."""
    torch.manual_seed(0)
    tok = Tokenizer.from_config(TINY)
    spread_codebook(tok.model)
    monkeypatch.setitem(only_v1, "v2", tok.save_pretrained(tmp_path / "default-v2"))
    return tok


def test_registry_lists_exactly_the_shipped_folders() -> None:
    folders = {p.name for p in WEIGHTS_DIR.iterdir() if p.is_dir() and p.name.startswith("default")}
    assert folders == {f"default-{v}" for v in DEFAULT_VERSIONS}  # no unversioned "default/", no unlisted version
    for version, folder in DEFAULT_VERSIONS.items():
        assert folder == WEIGHTS_DIR / f"default-{version}"
    assert default_version() == list(DEFAULT_VERSIONS)[-1]


@needs_v1
def test_shipped_weights_are_unchanged() -> None:
    assert set(SHA256) == set(DEFAULT_VERSIONS)  # a new version gets its pin here when it ships
    for version, sha in SHA256.items():
        data = (WEIGHTS_DIR / f"default-{version}" / "model.safetensors").read_bytes()
        assert hashlib.sha256(data).hexdigest() == sha, version


@needs_v1
def test_default_is_v1_bitwise_while_v1_is_the_newest(only_v1: dict[str, Path]) -> None:
    img = _photo()
    ids = Tokenizer.default().encode(img, size=256)  # (32, 32)
    assert ids.shape == (32, 32)
    for tok in (Tokenizer.default("v1"), Tokenizer.load("default@v1"), Tokenizer.from_pretrained("default"), Tokenizer.load()):
        assert torch.equal(tok.encode(img, size=256), ids)
    assert model_id(None) == model_id("default") == model_id("default@v1") == "default@v1"
    assert model_id("org/repo") == "org/repo"
    assert resolve_default("default@v1") == ("default@v1", WEIGHTS_DIR / "default-v1")


def test_unknown_version_names_the_shipped_ones(only_v1: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match=r"unknown default tokenizer version 'v9'; this vqtok ships default@v1"):
        Tokenizer.default("v9")
    with pytest.raises(ValueError, match="ships default@v1"):
        Tokenizer.from_pretrained("default@1")
    with pytest.raises(ValueError, match="revision= do not apply"):
        Tokenizer.from_pretrained("default", revision="main")


def test_uninstalled_weights_are_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(DEFAULT_VERSIONS, "v999", tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="no default tokenizer v999 at .*missing"):
        Tokenizer.default()


@needs_v1
def test_a_new_version_moves_default_and_v1_stays_pinned(fake_v2: Tokenizer) -> None:
    assert default_version() == "v2"
    assert model_id("default") == model_id(None) == "default@v2"
    assert Tokenizer.default().config == fake_v2.config == Tokenizer.load(None).config
    x = np.asarray(_photo().resize((64, 64)))
    assert torch.equal(Tokenizer.default().encode(x), fake_v2.encode(x))
    v1 = Tokenizer.default("v1")
    assert v1.codebook_size == 4096 and v1.config != fake_v2.config
    assert torch.equal(Tokenizer.from_pretrained("default@v1").encode(x), v1.encode(x))


@needs_v1
def test_cli_records_the_pinned_default(tmp_path: Path, fake_v2: Tokenizer, capsys: pytest.CaptureFixture[str]) -> None:
    photo = tmp_path / "photo.jpg"
    _photo().save(photo, quality=95)
    pinned, newest = tmp_path / "v1.npy", tmp_path / "newest.npy"
    assert main(["encode", str(photo), "--model", "default@v1", "--out", str(pinned), "--size", "64"]) == 0
    assert main(["encode", str(photo), "--out", str(newest), "--size", "64"]) == 0
    assert json.loads(pinned.with_suffix(".json").read_text())["model"] == "default@v1"
    assert json.loads(newest.with_suffix(".json").read_text())["model"] == "default@v2"
    assert np.array_equal(np.load(pinned)[0], Tokenizer.default("v1").encode(Image.open(photo), size=64).numpy())
    capsys.readouterr()
    assert main(["info", "default@v1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["model"] == "default@v1"


@needs_v1
def test_pretokenize_resume_after_default_moved_suggests_the_pinned_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, only_v1: dict[str, Path]
) -> None:
    from tests.conftest import write_tar
    from vqtok.pipeline import pretokenize

    buf = []
    for i, img in enumerate(real_photos(2)):
        path = tmp_path / f"s{i}.jpg"
        img.save(path, quality=90)
        buf.append((f"s{i:03d}.jpg", path.read_bytes()))
    (tmp_path / "data").mkdir()
    shard = str(write_tar(tmp_path / "data" / "train-000000.tar", buf))
    out = tmp_path / "tokens"
    pretokenize(shard, out, size=64, workers=0, progress=False, keep=())  # model=None: today's default, v1
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"] == "default@v1"

    torch.manual_seed(0)
    tok = Tokenizer.from_config(TINY)
    monkeypatch.setitem(only_v1, "v2", tok.save_pretrained(tmp_path / "default-v2"))
    with pytest.raises(ValueError, match=r"'default@v1'.*'default@v2'.*continue with model='default@v1' \(Tokenizer.default\('v1'\)\)"):
        pretokenize(shard, out, size=64, workers=0, progress=False, keep=())
    # a manifest written before versions existed says "default": the hint finds v1 by its fingerprint
    (out / "manifest.json").write_text(json.dumps({**manifest, "model": "default"}))
    with pytest.raises(ValueError, match=r"continue with model='default@v1'"):
        pretokenize(shard, out, model="default", size=64, workers=0, progress=False, keep=())
    # and continuing with the pinned name works (nothing left to do: the shard is done)
    result = pretokenize(shard, out, model="default@v1", size=64, workers=0, progress=False, keep=())
    assert result.samples_failed == 0
