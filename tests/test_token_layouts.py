"""Token layouts (vqtok.layout) and the model-family registry: shapes, storage, usage counting, shards,
corpus identity across the 0.1 format, and a sweep over every registered family."""

from __future__ import annotations

import io
import json
import shutil
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from vqtok import Tokenizer
from vqtok.cli import main
from vqtok.layout import TokenLayout, split_scales
from vqtok.models import registry
from vqtok.models._config import ArchConfig
from vqtok.pipeline import pretokenize
from vqtok.tokens import load_token_corpus, read_shard_stats

pytestmark = pytest.mark.usefixtures("one_thread")

LEGACY = Path(__file__).resolve().parent / "fixtures" / "legacy_corpus"


# ---------------------------------------------------------------------- the layout itself
def test_layout_shapes_and_json_round_trip() -> None:
    var = TokenLayout.scales(4096, [(p, p) for p in (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)])
    assert var.shape == (680,) and var.positions == 680 and var.ndim == 1
    seq = TokenLayout.sequence(4096, 32)
    multi = TokenLayout.grid(4096, (16, 16), codebooks=8)
    bitwise = TokenLayout.scales(2**32, [(1, 1), (2, 2)], bits=32)
    assert seq.shape == (32,) and multi.shape == (16, 16, 8) and multi.tokens_per_image == 2048
    for layout in (var, seq, multi, bitwise, TokenLayout.grid(1024)):
        assert TokenLayout.from_dict(json.loads(json.dumps(layout.to_dict()))) == layout
    assert TokenLayout.grid(1024).shape is None
    assert [TokenLayout.grid(k).storage_dtype for k in (16, 65536, 65537, 2**31, 2**32)] == [
        np.uint16, np.uint16, np.int32, np.int32, np.int64]
    with pytest.raises(ValueError, match="unknown token layout keys: colour"):
        TokenLayout.from_dict({"kind": "grid", "codebook_size": 4, "colour": 1})
    with pytest.raises(ValueError, match="a 32-bit layout has codebook_size"):
        TokenLayout.sequence(1000, 4, bits=32)
    with pytest.raises(ValueError, match="scale must be two positive ints"):
        TokenLayout.scales(16, [(0, 1)])


def test_check_takes_exactly_the_layouts_shape() -> None:
    seq = TokenLayout.sequence(16, 4)
    ids, batched = seq.check(torch.tensor([1, 2, 3, 4]))
    assert ids.shape == (1, 4) and not batched
    assert seq.check(torch.zeros(3, 4, dtype=torch.uint16))[0].dtype == torch.int64
    with pytest.raises(ValueError, match=r"expected \(4\) for one image or \(B, 4\)"):
        seq.check(torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"must lie in \[0, 15\]"):
        seq.check(torch.tensor([0, 1, 2, 16]))
    grid = TokenLayout.grid(16)
    # (64, 256) is one 64x256 grid: the number of axes decides, nothing else is guessed
    assert grid.check(torch.zeros(64, 256, dtype=torch.long))[0].shape == (1, 64, 256)
    with pytest.raises(ValueError, match=r"pass grid=\(h, w\)"):
        grid.check(torch.zeros(256, dtype=torch.long))


def test_split_scales_is_vars_order() -> None:
    shapes = [(1, 1), (2, 2), (3, 3)]
    ids = torch.arange(2 * 14).reshape(2, 14)
    parts = split_scales(ids, shapes)
    assert [p.shape for p in parts] == [(2, 1, 1), (2, 2, 2), (2, 3, 3)]
    assert torch.equal(torch.cat([p.reshape(2, -1) for p in parts], 1), ids)  # torch.cat(idx_Bl, 1) back
    with pytest.raises(ValueError, match=r"\(B, 14"):
        split_scales(ids[:, :13], shapes)


def test_usage_counting_is_per_sub_codebook_and_per_bit_never_a_dense_2_32_table() -> None:
    multi = TokenLayout.grid(4, (2, 2), codebooks=2)
    ids = torch.tensor([[[0, 3], [1, 3]], [[2, 3], [1, 0]]])  # (2, 2, 2): codebook 0 gets 0,1,2,1; codebook 1 gets 3,3,3,0
    assert multi.count(ids).tolist() == [[1, 2, 1, 0], [1, 0, 0, 3]]
    bitwise = TokenLayout.sequence(2**32, 3, bits=32)
    assert bitwise.histogram_shape() == (32, 2)  # (bits, {0, 1}) counts: 64 numbers, not 2**32
    counts = bitwise.count(torch.tensor([0, 1, 2**32 - 1]))
    assert counts[0].tolist() == [1, 2] and counts[31].tolist() == [2, 1] and counts.sum() == 3 * 32


# ---------------------------------------------------------------------- a family with sub-codebooks (test only)
@dataclass(frozen=True)
class SplitConfig(ArchConfig):
    """A 4x-downsampling grid tokenizer whose every position holds ``codebooks`` ids of ``levels`` values each."""

    config_name: ClassVar[str] = "split-test"
    hash_model_type: ClassVar[str | None] = "split-test"
    codebooks: int = 3  # sub-codebooks per position (one channel each)
    levels: int = 5  # ids per sub-codebook


class SplitTokenizer(nn.Module):
    """Average-pool 4x4 patches of the three colour channels, quantise each to ``levels`` steps: k = 3 ids per position."""

    pixel_range: ClassVar[tuple[float, float]] = (-1.0, 1.0)
    downsample_factor = 4

    def __init__(self, config: SplitConfig | None = None) -> None:
        super().__init__()
        self.config = config or SplitConfig()
        self.scale = nn.Parameter(torch.ones(()))

    def layout(self, image_size: tuple[int, int] | None = None) -> TokenLayout:
        layout = TokenLayout.grid(self.config.levels, codebooks=self.config.codebooks)
        return layout if image_size is None else layout.with_grid((image_size[0] // 4, image_size[1] // 4))

    def encode_ids(self, x: torch.Tensor, *, autocast_dtype: torch.dtype | None = None) -> torch.Tensor:
        pooled = nn.functional.avg_pool2d(x[:, : self.config.codebooks] * self.scale, 4)  # (B, k, h, w) in [-1, 1]
        ids = ((pooled + 1) / 2 * (self.config.levels - 1)).round().clamp(0, self.config.levels - 1).long()
        return ids.permute(0, 2, 3, 1)  # (B, h, w, k)

    def decode_ids(self, ids: torch.Tensor, *, autocast_dtype: torch.dtype | None = None, channels_last: bool = False) -> torch.Tensor:
        values = ids.permute(0, 3, 1, 2).float() / (self.config.levels - 1) * 2 - 1  # (B, k, h, w)
        return nn.functional.interpolate(values, scale_factor=4, mode="nearest")


@pytest.fixture()
def split_family():
    entry = registry.register_family(registry.Family(
        name="split-test", config_class=SplitConfig, model_class=SplitTokenizer, tiny_config=SplitConfig, test_image_size=16,
    ))
    yield entry
    registry._REGISTRY.pop("split-test")


def _shard(path: Path, n: int = 3, side: int = 40) -> Path:
    rng = np.random.default_rng(0)
    with tarfile.open(path, "w") as tf:
        for i in range(n):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (side, side + 8, 3), dtype=np.uint8)).save(buf, format="PNG")
            info = tarfile.TarInfo(f"s{i:03d}.png")
            info.size = len(buf.getvalue())
            tf.addfile(info, io.BytesIO(buf.getvalue()))
    return path


def test_sub_codebook_family_through_tokenizer_shards_corpus_and_usage(split_family, tmp_path: Path, capsys) -> None:
    tok = Tokenizer(SplitTokenizer())
    ids = tok.encode(torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8))
    assert ids.shape == (2, 4, 4, 3) and tok.layout(16).shape == (4, 4, 3)
    assert tok.decode(ids, output="pt").shape == (2, 3, 16, 16)
    with pytest.raises(ValueError, match="last axis must hold the 3 sub-codebook ids"):
        tok.check_ids(torch.zeros(2, 4, 4, 2, dtype=torch.long))
    tok.save_pretrained(tmp_path / "model")
    again = Tokenizer.from_pretrained(tmp_path / "model")
    assert isinstance(again.model, SplitTokenizer) and again.model_type == "split-test"
    shard = _shard(tmp_path / "train-000000.tar")
    pretokenize(str(shard), tmp_path / "tokens", model=tok, size=16, workers=0, progress=False, keep=())
    stats = read_shard_stats(tmp_path / "tokens" / "train-000000.json")
    assert stats["layout"] == {"kind": "grid", "codebook_size": 5, "grid_shape": [4, 4], "codebooks": 3}
    assert np.asarray(stats["histogram"]).shape == (3, 5) and np.asarray(stats["histogram"]).sum() == 3 * 16 * 3
    corpus = load_token_corpus(str(tmp_path / "tokens" / "train-000000.tar"))
    assert corpus.ids.shape == (3, 4, 4, 3) and corpus.layout == tok.layout(16)
    assert main(["usage", str(tmp_path / "tokens")]) == 0
    out = capsys.readouterr().out
    assert "x 3 codebooks" in out and "codebook 2" in out
    from vqtok.prior.train import as_prior_grids

    with pytest.raises(ValueError, match="sub-codebook ids"):
        as_prior_grids(corpus)


def test_bitwise_ids_are_stored_wide_and_counted_per_bit(tmp_path: Path) -> None:
    from vqtok.tokens import TokenShardWriter

    layout = TokenLayout.sequence(2**40, 4, bits=40)
    writer = TokenShardWriter(tmp_path / "t.tar", source="x", layout=layout, size=None, keep=(), fingerprint="f", config_hash="c")
    writer.add("a", torch.tensor([0, 1, 2**40 - 1, 2**39]), {})
    stats = writer.finish()
    assert stats.histogram.shape == (40, 2) and stats.ids_dtype == "int64"
    corpus = load_token_corpus(str(tmp_path / "t.tar"))
    assert corpus.ids.tolist() == [[0, 1, 2**40 - 1, 2**39]] and corpus.layout == layout


# ---------------------------------------------------------------------- 0.1 corpora
def test_a_corpus_written_before_layouts_reads_validates_and_resumes(tmp_path: Path) -> None:
    folder = shutil.copytree(LEGACY, tmp_path / "legacy")
    corpus = load_token_corpus(str(folder / "tokens" / "train-000000.tar"))
    assert corpus.ids.shape == (3, 16, 16) and corpus.ids.dtype == np.uint16 and corpus.layout is None
    assert corpus.grid == (16, 16) and corpus.codebook_size == 64
    manifest = json.loads((folder / "tokens" / "manifest.json").read_text())
    tok = Tokenizer.from_pretrained(folder / "model")
    from vqtok.pipeline._naming import legacy_fingerprint, model_fingerprint

    assert legacy_fingerprint(tok) == manifest["model_fingerprint"] != model_fingerprint(tok)
    # the same ids today, and a resumed run adds a shard under the folder's own fingerprint
    again = tok.encode([Image.open(io.BytesIO(m)) for m in _members(folder / "data" / "train-000000.tar")], size=32)
    assert np.array_equal(again.numpy(), corpus.ids.astype(np.int64))
    shutil.copy(folder / "data" / "train-000000.tar", folder / "data" / "train-000001.tar")
    result = pretokenize(f"{folder}/data/train-{{000000..000001}}.tar", folder / "tokens", model=str(folder / "model"),
                         size=32, workers=0, progress=False, keep=())
    assert [s.skipped for s in result.shards] == [True, False]  # only the new shard; the 0.1 shard is kept as it is
    st0 = read_shard_stats(folder / "tokens" / "train-000000.json")
    st1 = read_shard_stats(folder / "tokens" / "train-000001.json")
    assert st0 == json.loads((LEGACY / "tokens" / "train-000000.json").read_text())
    assert st1["model_fingerprint"] == manifest["model_fingerprint"] and st1["histogram"] == st0["histogram"]
    assert main(["usage", str(folder / "tokens")]) == 0


def _members(path: Path) -> list[bytes]:
    with tarfile.open(path) as tf:
        return [tf.extractfile(m).read() for m in sorted(tf.getmembers(), key=lambda m: m.name)]  # type: ignore[union-attr]


# ---------------------------------------------------------------------- every registered family
FAMILIES = [f.name for f in registry.families()]


@pytest.mark.parametrize("name", FAMILIES)
def test_registry_sweep(name: str, tmp_path: Path, capsys) -> None:
    fam = registry.family(name)
    torch.manual_seed(0)
    model = fam.model_class(fam.tiny_config())
    tok = Tokenizer(model, batch_size=2)
    assert name in repr(tok) and tok.model_type == name
    assert tok.embed_dim >= 1 and tok.downsample_factor >= 1 and tok.codebook_size == tok.layout().codebook_size
    side = fam.test_image_size
    layout = tok.layout(side)
    # encode -> decode shapes, in the layout
    pixels = torch.randint(0, 256, (2, 3, side, side), dtype=torch.uint8)
    ids = tok.encode(pixels)
    assert tuple(ids.shape) == (2, *layout.shape) and ids.dtype == torch.int64
    assert int(ids.min()) >= 0 and int(ids.max()) < layout.codebook_size
    assert tok.decode(ids, output="pt").shape == (2, 3, side, side)
    assert tuple(tok.encode(pixels[0]).shape) == layout.shape
    # check_ids refuses what is not the layout
    with pytest.raises(ValueError, match=r"\[0, "):
        tok.check_ids(torch.full_like(ids, layout.codebook_size))
    with pytest.raises(ValueError, match="layout"):
        tok.check_ids(ids.reshape(-1)[:-1] if layout.kind != "grid" else ids.reshape(2, -1)[:, :-1].reshape(-1))
    # save / load round trip: same config, same ids
    tok.save_pretrained(tmp_path / "model")
    again = Tokenizer.from_pretrained(tmp_path / "model")
    assert type(again.model) is fam.model_class and again.config == tok.config
    assert torch.equal(again.encode(pixels), ids)
    # pretokenize one shard, usage and eval through the CLI
    shard = _shard(tmp_path / "train-000000.tar", n=2, side=side + 8)
    assert main(["pretokenize", "--input", str(shard), "--out", str(tmp_path / "tokens"), "--model", str(tmp_path / "model"),
                 "--size", str(side), "--workers", "0", "--no-progress"]) == 0
    stats = read_shard_stats(tmp_path / "tokens" / "train-000000.json")
    assert stats["layout"] == layout.to_dict() and stats["samples_written"] == 2
    corpus = load_token_corpus(str(tmp_path / "tokens" / "train-000000.tar"))
    assert corpus.ids.shape == (2, *layout.shape)
    capsys.readouterr()
    assert main(["usage", str(tmp_path / "tokens"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["total_tokens"] == 2 * layout.tokens_per_image
    assert main(["eval", "--data", str(shard), "--model", str(tmp_path / "model"), "--size", str(side), "--no-fid",
                 "--no-lpips", "--out", str(tmp_path / "report.json"), "--no-progress"]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["image_count"] == 2 and report["psnr"] > 0 and report["codebook_usage"]["total_tokens"] == 2 * layout.tokens_per_image


# ---------------------------------------------------------------------- every registered source format
FORMATS = [fmt.name for _, fmt in registry.source_formats()]


@pytest.mark.parametrize("name", FORMATS)
def test_format_sweep(name: str, capsys) -> None:
    """Every format has its `vqtok convert NAME`, is a layout from_pretrained knows, and claims no stranger's files."""
    from vqtok.convert import auto

    fam, fmt = registry.source_format(name)
    assert fmt in fam.formats and name in auto.layouts()
    with pytest.raises(SystemExit) as exit_:
        main(["convert", name, "--help"])
    assert exit_.value.code == 0
    usage = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert all(source in usage for source in fmt.sources) and "--out" in usage and fmt.help.split(" (")[0] in usage
    assert fmt.recognise is not None and fmt.recognise(["README.md", "notes.txt"], lambda _p: None) is None
    assert callable(fmt.load_converter())  # the converter module imports and names a function
    assert fmt.accepts is None or fmt.by_suffix  # accepts() tells apart formats that claim a file by its suffix


class _FakeVQ(nn.Module):
    """Stands for a family added later: a subclass registered from outside vqtok."""


def test_a_family_added_later_needs_no_edit_elsewhere(tmp_path: Path, monkeypatch, capsys) -> None:
    """A family registered by one module gets `vqtok convert NAME` and from_pretrained recognition, nothing else edited."""
    from safetensors.torch import save_file

    from vqtok.models.vqgan import VQGAN, VQGANConfig

    class FakeVQ(VQGAN):
        pass

    def convert_fake(paths: list[Path], *, shift: int = 0) -> tuple[VQGANConfig, dict[str, torch.Tensor]]:
        from safetensors.torch import load_file

        state = load_file(str(paths[0]))
        state["quantize.embedding.weight"] = state["quantize.embedding.weight"].roll(shift, 0)
        return registry.family("vqgan").tiny_config(), state

    def add_arguments(parser) -> None:
        parser.add_argument("--shift", type=int, default=0)

    monkeypatch.setattr(sys.modules[__name__], "convert_fake", convert_fake, raising=False)
    fam = registry.Family(name="fake", config_class=VQGANConfig, model_class=FakeVQ, tiny_config=registry.family("vqgan").tiny_config,
                          formats=(registry.SourceFormat(name="fake", help="a test family's .fake file", convert=f"{__name__}:convert_fake",
                                                         recognise=lambda names, _: registry.one_file(names, (".fake",)),
                                                         add_arguments=add_arguments, sources=("weights",)),))
    monkeypatch.setitem(registry._load(), "fake", fam)
    monkeypatch.setenv("VQTOK_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    original = Tokenizer(VQGAN(registry.family("vqgan").tiny_config()))
    (tmp_path / "src").mkdir()
    save_file({k: v.contiguous() for k, v in original.model.state_dict().items()}, str(tmp_path / "src" / "w.fake"))
    pixels = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)

    assert main(["convert", "fake", str(tmp_path / "src" / "w.fake"), "--out", str(tmp_path / "out")]) == 0
    assert "(fake -> fake: grid" in capsys.readouterr().out
    converted = Tokenizer.from_pretrained(tmp_path / "out")
    assert type(converted.model) is FakeVQ and torch.equal(converted.encode(pixels), original.encode(pixels))
    found = Tokenizer.from_pretrained(tmp_path / "src")  # recognised by the family's recogniser, converted once
    assert type(found.model) is FakeVQ and torch.equal(found.encode(pixels), original.encode(pixels))
    assert main(["convert", "fake", str(tmp_path / "src"), "--shift", "1", "--out", str(tmp_path / "shifted")]) == 0
    shifted = Tokenizer.from_pretrained(tmp_path / "shifted").model.quantize.embedding.weight
    assert torch.equal(shifted, original.model.quantize.embedding.weight.roll(1, 0))
