"""Tokenizer.from_pretrained on repos in other code bases' layouts: recognised, converted once, cached.

Each repo is a fake Hugging Face cache (``models--org--name/snapshots/<commit>/...`` + ``refs/``)
holding random weights in the original layout, read with ``local_files_only`` or HF offline mode.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import pytest
import torch

from tests.conftest import TINY, make_tiny_tokenizer, real_photos
from tests.flax_layout import write_flax_folder
from tests.test_llamagen import save_llamagen_checkpoint
import vqtok.hub
from vqtok import Tokenizer
from vqtok.convert import auto
from vqtok.convert.diffusers import to_diffusers
from vqtok.convert.llamagen import from_llamagen, vqtok_to_llamagen_keys
from vqtok.convert.magvit2 import from_magvit2
from vqtok.models.magvit2 import MAGVIT2, MAGVIT2Config
from vqtok.models.vqgan import VQGANConfig

A, B = "a" * 40, "b" * 40


@pytest.fixture(autouse=True)
def vqtok_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("VQTOK_CACHE", str(tmp_path / "vqtok-cache"))
    return tmp_path / "vqtok-cache"


@pytest.fixture(scope="module")
def photos():
    return real_photos(2)


def _snapshot(hub: Path, repo: str, commit: str = A, ref: str = "main") -> Path:
    root = hub / ("models--" + repo.replace("/", "--"))
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / ref).write_text(commit)
    snap = root / "snapshots" / commit
    snap.mkdir(parents=True, exist_ok=True)
    (snap / "README.md").write_text("# a model card\n")
    return snap


def _magvit2_ckpt(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    model = MAGVIT2(MAGVIT2Config(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, z_channels=18))
    state = {**model.state_dict(), "loss.discriminator.main.0.weight": torch.randn(4, 3, 4, 4)}
    torch.save({"state_dict": state, "epoch": 1, "global_step": 10}, path)
    return path


def _no_conversion(*args, **kwargs):
    raise AssertionError("converted again: the cached folder was not used")


def test_lightning_repo_converts_once_per_revision(tmp_path: Path, photos, vqtok_cache: Path, monkeypatch) -> None:
    hub = tmp_path / "hub"
    main = _magvit2_ckpt(_snapshot(hub, "TencentARC/Open-MAGVIT2-Tokenizer-256-resolution") / "imagenet_256_L.ckpt", 1)
    v2 = _magvit2_ckpt(_snapshot(hub, "TencentARC/Open-MAGVIT2-Tokenizer-256-resolution", B, "v2") / "imagenet_256_L.ckpt", 2)
    repo = "TencentARC/Open-MAGVIT2-Tokenizer-256-resolution"
    tok = Tokenizer.from_pretrained(repo, cache_dir=hub, local_files_only=True)
    assert isinstance(tok.model, MAGVIT2) and tok.codebook_size == 2**18
    ids = tok.encode(photos, size=64)
    assert torch.equal(ids, from_magvit2(main).encode(photos, size=64))
    cached = sorted(p.relative_to(vqtok_cache) for p in vqtok_cache.rglob("config.json"))
    assert len(cached) == 1 and cached[0].parts[:3] == ("converted", "TencentARC--Open-MAGVIT2-Tokenizer-256-resolution", A)

    monkeypatch.setattr(auto, "convert_files", _no_conversion)
    again = Tokenizer.from_pretrained(repo, cache_dir=hub, local_files_only=True)
    assert torch.equal(again.encode(photos, size=64), ids)
    monkeypatch.undo()
    monkeypatch.setenv("VQTOK_CACHE", str(vqtok_cache))

    other = Tokenizer.from_pretrained(repo, revision="v2", cache_dir=hub, local_files_only=True)
    assert torch.equal(other.encode(photos, size=64), from_magvit2(v2).encode(photos, size=64))
    assert not torch.equal(other.encode(photos, size=64), ids)
    assert len(list(vqtok_cache.rglob("config.json"))) == 2


def test_changed_file_converts_again(tmp_path: Path, photos, vqtok_cache: Path) -> None:
    hub = tmp_path / "hub"
    snap = _snapshot(hub, "org/ckpt")
    _magvit2_ckpt(snap / "model.ckpt", 1)
    first = Tokenizer.from_pretrained("org/ckpt", cache_dir=hub, local_files_only=True).encode(photos, size=64)
    _magvit2_ckpt(snap / "model.ckpt", 5)  # same name, same commit, other bytes
    second = Tokenizer.from_pretrained("org/ckpt", cache_dir=hub, local_files_only=True).encode(photos, size=64)
    assert not torch.equal(first, second)
    assert len(list(vqtok_cache.rglob("config.json"))) == 2


def test_hub_blob_names_are_the_file_hash(tmp_path: Path, photos, vqtok_cache: Path) -> None:
    """In a real cache snapshot files link to blobs/<sha256>: that name is the key, nothing is re-hashed."""
    hub = tmp_path / "hub"
    snap = _snapshot(hub, "org/linked")
    blob = hub / "models--org--linked" / "blobs" / ("c" * 64)
    blob.parent.mkdir(parents=True)
    _magvit2_ckpt(blob, 1)
    (snap / "model.ckpt").symlink_to(blob)
    assert auto._file_hash(snap / "model.ckpt") == "c" * 64
    tok = Tokenizer.from_pretrained("org/linked", cache_dir=hub, local_files_only=True)
    assert torch.equal(tok.encode(photos, size=64), from_magvit2(blob).encode(photos, size=64))


def _llamagen_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(4)
    tok = Tokenizer.from_config(VQGANConfig(ch=32, ch_mult=(1, 2, 2), z_channels=16, embed_dim=8, n_embed=64,
                                            attn_resolutions=(64,), l2_norm_codes=True))
    return vqtok_to_llamagen_keys(tok.model.state_dict())


def test_llamagen_file_by_name(tmp_path: Path, photos) -> None:
    hub = tmp_path / "hub"
    snap = _snapshot(hub, "FoundationVision/LlamaGen")
    args = argparse.Namespace(vq_model="VQ-16", codebook_size=64, codebook_embed_dim=8, codebook_l2_norm=True)
    path = save_llamagen_checkpoint(snap / "vq_ds16_c2i.pt", _llamagen_state(), args=args)
    save_llamagen_checkpoint(snap / "vq_ds8_c2i.pt", _llamagen_state(), args=args)
    with pytest.raises(ValueError, match=r"several checkpoints \(vq_ds16_c2i.pt, vq_ds8_c2i.pt\): pass filename="):
        Tokenizer.from_pretrained("FoundationVision/LlamaGen", cache_dir=hub, local_files_only=True)
    tok = Tokenizer.from_pretrained("FoundationVision/LlamaGen", filename="vq_ds16_c2i.pt", cache_dir=hub, local_files_only=True)
    assert tok.config.l2_norm_codes and tok.codebook_size == 64
    assert torch.equal(tok.encode(photos, size=64), from_llamagen(path).encode(photos, size=64))
    assert torch.equal(Tokenizer.from_pretrained(path).encode(photos, size=64), tok.encode(photos, size=64))  # a file path
    with pytest.raises(FileNotFoundError, match="has no 'vq_ds32.pt'"):
        Tokenizer.from_pretrained("FoundationVision/LlamaGen", filename="vq_ds32.pt", cache_dir=hub, local_files_only=True)


@pytest.fixture(scope="module")
def taming() -> Tokenizer:
    return make_tiny_tokenizer()


def test_diffusers_pipeline_subfolder(tmp_path: Path, photos, taming: Tokenizer) -> None:
    hub = tmp_path / "hub"
    snap = _snapshot(hub, "org/ldm-pipeline")
    to_diffusers(taming, snap / "vqvae")
    (snap / "model_index.json").write_text('{"_class_name": "LDMPipeline"}')
    (snap / "unet").mkdir()
    (snap / "unet" / "config.json").write_text('{"_class_name": "UNet2DModel"}')
    ref = taming.encode(photos, size=64)
    tok = Tokenizer.from_pretrained("org/ldm-pipeline", subfolder="vqvae", cache_dir=hub, local_files_only=True)
    assert torch.equal(tok.encode(photos, size=64), ref)
    found = Tokenizer.from_pretrained("org/ldm-pipeline", cache_dir=hub, local_files_only=True)  # vqvae/ found by itself
    assert torch.equal(found.encode(photos, size=64), ref)


def test_dalle_mini_repo_and_local_folder(tmp_path: Path, photos, taming: Tokenizer, monkeypatch) -> None:
    hub = tmp_path / "hub"
    snap = _snapshot(hub, "dalle-mini/vqgan_imagenet_f16_16384")
    write_flax_folder(snap, taming.model.state_dict(), TINY)
    ref = taming.encode(photos, size=64)
    # HF offline mode (not local_files_only): the listing falls back to the cache
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    tok = Tokenizer.from_pretrained("dalle-mini/vqgan_imagenet_f16_16384", cache_dir=hub)
    assert torch.equal(tok.encode(photos, size=64), ref)
    assert torch.equal(tok.decode(ref, output="pt"), taming.decode(ref, output="pt"))
    local = shutil.copytree(snap, tmp_path / "local-dalle")
    assert torch.equal(Tokenizer.from_pretrained(local).encode(photos, size=64), ref)
    # the weights file itself (its config.json beside it)
    assert torch.equal(Tokenizer.from_pretrained(local / "flax_model.msgpack").encode(photos, size=64), ref)


def test_vqtok_repos_are_untouched_and_subfolders_load(tmp_path: Path, photos, taming: Tokenizer, vqtok_cache: Path) -> None:
    hub = tmp_path / "hub"
    snap = _snapshot(hub, "org/vqtok-model")
    taming.save_pretrained(snap)
    taming.save_pretrained(snap / "tokenizer")
    ref = taming.encode(photos, size=64)
    assert torch.equal(Tokenizer.from_pretrained("org/vqtok-model", cache_dir=hub, local_files_only=True).encode(photos, size=64), ref)
    sub = Tokenizer.from_pretrained("org/vqtok-model", subfolder="tokenizer", cache_dir=hub, local_files_only=True)
    assert torch.equal(sub.encode(photos, size=64), ref)
    assert not vqtok_cache.exists()  # nothing converted


def test_unrecognised_repos_get_a_clear_error(tmp_path: Path) -> None:
    hub = tmp_path / "hub"
    snap = _snapshot(hub, "org/other")
    (snap / "weights.npz").write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match=r"in no layout vqtok recognises \(files: README.md, weights.npz\).*Lightning .ckpt"):
        Tokenizer.from_pretrained("org/other", cache_dir=hub, local_files_only=True)
    with pytest.raises(FileNotFoundError, match="not in the local cache"):
        Tokenizer.from_pretrained("org/absent", cache_dir=hub, local_files_only=True)
    with pytest.raises(ValueError, match="no format vqtok converts: .*Lightning .ckpt"):
        Tokenizer.from_pretrained("org/other", filename="weights.npz", cache_dir=hub, local_files_only=True)


def test_recognise_layout_table() -> None:
    def cfg(path: str):
        return {"_class_name": "VQModel"} if "vqvae" in path else {"vqtok_format": 1}

    assert auto.recognise_layout(["config.json", "model.safetensors"], read_config=cfg).layout == "vqtok"
    r = auto.recognise_layout(["model_index.json", "vqvae/config.json", "vqvae/diffusion_pytorch_model.bin"], read_config=cfg)
    assert r == auto.Recognised("diffusers", ("vqvae/config.json", "vqvae/diffusion_pytorch_model.bin"))
    assert auto.recognise_layout(["config.json", "flax_model.msgpack"], read_config=lambda p: {}).files == (
        "config.json", "flax_model.msgpack")
    assert auto.recognise_layout(["README.md", "ckpts/x.ckpt", "imagenet256_262144.ckpt"]).layout == "taming|magvit2|ibq"
    assert auto.recognise_layout(["sub/a.pt"], filename="a.pt", subfolder="sub").files == ("sub/a.pt",)


def test_ibq_and_taming_checkpoints_are_told_apart(tmp_path: Path, photos, taming: Tokenizer) -> None:
    from tests.test_ibq import SMALL, ibq_checkpoint
    from vqtok.models.ibq import IBQ
    from vqtok.models.vqgan import VQGAN

    hub = tmp_path / "hub"
    torch.manual_seed(7)
    raw, ema = IBQ(SMALL), IBQ(SMALL)
    ibq_checkpoint(_snapshot(hub, "TencentARC/IBQ-Tokenizer-262144") / "imagenet256_262144.ckpt", raw, ema=ema)
    tok = Tokenizer.from_pretrained("TencentARC/IBQ-Tokenizer-262144", cache_dir=hub, local_files_only=True)
    assert isinstance(tok.model, IBQ)
    assert torch.equal(tok.encode(photos, size=64), Tokenizer(ema.eval()).encode(photos, size=64))
    # an IBQ file without EMA weights is still IBQ when its repo says so
    ibq_checkpoint(_snapshot(hub, "org/ibq-raw") / "ibq_raw.ckpt", raw)
    assert isinstance(Tokenizer.from_pretrained("org/ibq-raw", cache_dir=hub, local_files_only=True).model, IBQ)
    # the same tensor names without EMA: a taming VQGAN .ckpt
    torch.save({"state_dict": taming.model.state_dict()}, _snapshot(hub, "org/taming-f4") / "last.ckpt")
    vq = Tokenizer.from_pretrained("org/taming-f4", cache_dir=hub, local_files_only=True)
    assert type(vq.model) is VQGAN
    assert torch.equal(vq.encode(photos, size=64), taming.encode(photos, size=64))


def test_other_files_keep_the_folder_error(tmp_path: Path, taming: Tokenizer) -> None:
    folder = taming.save_pretrained(tmp_path / "m")
    with pytest.raises(ValueError, match="is a file, not a model folder"):
        Tokenizer.from_pretrained(folder / "model.safetensors")


def test_online_listing_is_asked_of_the_hub(tmp_path: Path, photos, monkeypatch) -> None:
    """Without local_files_only the file names come from HfApi.list_repo_files (faked here; downloads from the cache)."""
    import huggingface_hub
    import huggingface_hub.constants

    hub = tmp_path / "hub"
    path = _magvit2_ckpt(_snapshot(hub, "org/online") / "imagenet_256_L.ckpt", 1)
    asked = []

    def list_repo_files(self, repo_id, *, revision=None, **kwargs):
        asked.append((repo_id, revision))
        if repo_id != "org/online":
            raise ConnectionError("no route to the Hub")
        return ["README.md", "imagenet_256_L.ckpt", "imagenet_128_L.ckpt.md5"]

    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", list_repo_files)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # file downloads: from the cache only
    monkeypatch.setattr(vqtok.hub, "hub_unreachable", lambda: None)  # ... while the listing is asked (faked above)
    tok = Tokenizer.from_pretrained("org/online", cache_dir=hub)
    assert asked == [("org/online", None)]
    assert torch.equal(tok.encode(photos, size=64), from_magvit2(path).encode(photos, size=64))
    with pytest.raises(FileNotFoundError, match=r"not in the local cache and the Hub could not be asked \(ConnectionError: no route"):
        Tokenizer.from_pretrained("org/unreachable", cache_dir=hub)


def test_cosmos_repo(tmp_path: Path, photos) -> None:
    from tests.test_cosmos import _archives, _model
    from vqtok.convert.cosmos import from_cosmos
    from vqtok.models.cosmos import CosmosConfig

    hub = tmp_path / "hub"
    snap = _snapshot(hub, "nvidia/Cosmos-0.1-Tokenizer-DI8x8")
    published_attention = CosmosConfig(channels=32, channels_mult=(1, 1, 1), num_res_blocks=1, z_channels=32, spatial_compression=8)
    enc, dec, _, _ = _archives(_model(published_attention), snap)
    ref = from_cosmos(enc, dec).encode(photos, size=64)
    tok = Tokenizer.from_pretrained("nvidia/Cosmos-0.1-Tokenizer-DI8x8", cache_dir=hub, local_files_only=True)
    assert isinstance(tok.config, CosmosConfig)
    assert torch.equal(tok.encode(photos, size=64), ref)
    assert auto.recognise_layout(["encoder.jit", "decoder.jit", "README.md"]).layout == "cosmos"
