"""The docs run as written: every ```bash and ```python block of README.md and docs/*.md, at small scale.

Each page runs in a "doc world", a folder built once with the files and names the examples use:
photos (``cat.jpg``, ``a.jpg``, ``photos/``...), image and token shards (``data/``, ``shards/``,
``tokens/``), small models under every name the pages give (``models/mine``, ``runs/vqgan``, a taming
``last.ckpt``, a diffusers ``path/to/vqvae``, LlamaGen / Open-MAGVIT2 checkpoints) and the Hub ids
(``org/my-vqgan``, ...) in an offline Hugging Face cache. The blocks run unchanged except for the
scale substitutions in :data:`SMALL_SCALE` (fewer shards, CPU instead of CUDA). A page's bash blocks
run first, each in ``bash -e``; then its Python blocks in one process, in order, sharing one namespace
that starts with :data:`PYTHON_NAMES`.

A block that cannot run here (it installs packages, needs the network, a GPU cluster, or takes
minutes) is preceded by ``<!-- skip-test: reason -->``; ``test_skip_list_is_short`` keeps count.
"""

from __future__ import annotations

import importlib.util
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(bash|python)\n(.*?)^```\s*$", re.M | re.S)
SKIP = re.compile(r"<!--\s*skip-test:\s*(.*?)\s*-->\s*$")
# ``<!-- needs: ray -->`` before a block: it runs only where that module is installed (an optional extra)
NEEDS = re.compile(r"<!--\s*needs:\s*([\w.]+)\s*-->\s*$")
MAX_SKIPPED = 20  # blocks marked skip-test in all pages together (four of them clone a reference repo for parity)

# Same commands, small scale: (pattern, replacement) applied to every block.
SMALL_SCALE: list[tuple[str, str]] = [
    (r"\{000000\.\.0+9+\}", "{000000..000001}"),  # 100 / 1000 / 10000 shards -> 2
    (r"--device cuda", "--device cpu"),
    (r'\.to\("cuda"\)', '.to("cpu")'),
    (r'device="cuda"', 'device="cpu"'),
    (r"--workers 4", "--workers 1"),
]

PYTHON_NAMES = """
import torch
from PIL import Image
from vqtok import Tokenizer
paths = ["a.jpg", "b.jpg"]
image = Image.open("cat.jpg")
img1, img2 = Image.open("a.jpg"), Image.open("b.jpg")
images = [img1, img2]
spec = "tokens/train-{000000..000001}.tar"
tokenizer = Tokenizer.from_pretrained("models/mine")
ids = torch.randint(0, 1024, (4, 16, 16), generator=torch.Generator().manual_seed(0))
hist = torch.bincount(ids.flatten(), minlength=1024)
"""

HUB_COMMIT = "0123456789abcdef0123456789abcdef01234567"


def blocks(page: Path) -> list[tuple[int, str, str, str | None]]:
    """(line, language, code, skip reason or None) of every bash/python block of ``page``."""
    text = page.read_text()
    out = []
    for m in FENCE.finditer(text):
        before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        skip = SKIP.search(before)
        out.append((text[: m.start()].count("\n") + 1, m.group(1), m.group(2), skip.group(1) if skip else None))
    return out


def missing_module(page: Path, line: int) -> str | None:
    """The module named by a ``<!-- needs: MODULE -->`` line just before the block at ``line``, when it is not installed."""
    before = page.read_text().split("\n")[line - 2] if line >= 2 else ""
    need = NEEDS.search(before)
    if need is None or importlib.util.find_spec(need.group(1)) is not None:
        return None
    return need.group(1)


def small(code: str) -> str:
    for pattern, repl in SMALL_SCALE:
        code = re.sub(pattern, repl, code)
    return code


# ---------------------------------------------------------------------- the doc world
def _cache_repo(cache: Path, repo_id: str, files: dict[str, Path]) -> None:
    """Put ``files`` (path in the repo -> local file) into an offline Hugging Face cache as ``repo_id``@main."""
    base = cache / f"models--{repo_id.replace('/', '--')}"
    (base / "refs").mkdir(parents=True, exist_ok=True)
    (base / "refs" / "main").write_text(HUB_COMMIT)
    for rel, src in files.items():
        dst = base / "snapshots" / HUB_COMMIT / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)


def _image_shard(path: Path, first: int, n: int = 5) -> None:
    from tests.test_pipeline import jpeg_bytes

    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tf:
        for i in range(first, first + n):
            for ext, data in (("jpg", jpeg_bytes(i, w=96, h=80)), ("cls", str(i % 5).encode())):
                info = tarfile.TarInfo(f"img{i:05d}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    from tests.conftest import real_photos
    from tests.test_llamagen import llamagen_layout, random_state, save_llamagen_checkpoint
    from tests.test_magvit2 import _ckpt, _model
    from tests.test_training_loop import tiny_config
    from vqtok import Tokenizer, VQGANConfig
    from vqtok.convert import to_diffusers
    from vqtok.pipeline import pretokenize
    from vqtok.training.config import LossConfig

    w = tmp_path_factory.mktemp("docworld")
    photos = real_photos(4)
    for name, img in zip(("cat.jpg", "a.jpg", "b.jpg"), photos):
        img.save(w / name, quality=90)
    for folder, imgs in (("photos", photos[:3]), ("val-photos", photos[3:])):
        (w / folder).mkdir()
        for i, img in enumerate(imgs):
            img.resize((img.width // 2, img.height // 2)).save(w / folder / f"p{i}.jpg", quality=90)

    # one small f16 model with 1024 plain codes under every name the pages use
    torch.manual_seed(0)
    tok = Tokenizer.from_config(VQGANConfig(ch=32, ch_mult=(1, 1, 1, 1, 2), num_res_blocks=1, attn_resolutions=(),
                                            z_channels=8, embed_dim=8, n_embed=1024, resolution=256))
    with torch.no_grad():
        tok.model.quantize.embedding.weight.normal_(0, 0.5)
    model = tok.save_pretrained(w / "models" / "mine")
    for name in ("models/vqgan-f16-1024", "models/imagenet-f16-1024", "runs/vqgan"):
        shutil.copytree(model, w / name)
    ckpt = w / "vqgan_imagenet_f16_1024" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"state_dict": tok.model.state_dict()}, ckpt)  # vqtok's VQGAN has taming's parameter names
    shutil.copyfile(ckpt, w / "last.ckpt")
    (w / "configs").mkdir()
    (w / "configs" / "model.yaml").write_text(
        "model:\n  target: taming.models.vqgan.VQModel\n  params:\n    embed_dim: 8\n    n_embed: 1024\n"
        "    ddconfig:\n      double_z: false\n      z_channels: 8\n      resolution: 256\n      in_channels: 3\n"
        "      out_ch: 3\n      ch: 32\n      ch_mult: [1, 1, 1, 1, 2]\n      num_res_blocks: 1\n"
        "      attn_resolutions: []\n      dropout: 0.0\n"
    )
    to_diffusers(tok, w / "path" / "to" / "vqvae")
    save_llamagen_checkpoint(w / "vq_ds16_c2i.pt", random_state(llamagen_layout()))
    save_llamagen_checkpoint(w / "0250000.pt", random_state(llamagen_layout()), ema_state=random_state(llamagen_layout(), seed=1))
    _ckpt(_model(), w / "imagenet_256_L.ckpt", ema=None)
    # the other families of interop.md: IBQ, Cosmos (TorchScript archives), dalle-mini (Flax msgpack)
    from tests.flax_layout import write_flax_folder
    from tests.test_cosmos import _archives
    from tests.test_cosmos import _model as cosmos_model
    from tests.test_ibq import _model as ibq_model
    from tests.test_ibq import ibq_checkpoint
    from vqtok.models.cosmos import CosmosConfig

    ibq_checkpoint(w / "imagenet256_262144.ckpt", ibq_model(1), ema=ibq_model(2))
    cosmos = cosmos_model(CosmosConfig(channels=32, channels_mult=(1, 1, 1), num_res_blocks=1, z_channels=32, spatial_compression=16))
    _archives(cosmos, w / "Cosmos-0.1-Tokenizer-DI16x16")
    for name in ("encoder.jit", "decoder.jit"):
        shutil.copyfile(w / "Cosmos-0.1-Tokenizer-DI16x16" / name, w / name)
    write_flax_folder(w / "flax-vqgan", tok.model.state_dict(), tok.config)
    # VAR: the parity fixture's small VQVAE (VAR's own state dict, 10 scales at 256 px) under the released name
    from safetensors.torch import load_file

    torch.save(load_file(str(ROOT / "tests" / "fixtures" / "var" / "weights.safetensors")), w / "vae_ch160v4096z32.pth")

    cache = w / "hf-cache"
    for repo in ("org/my-vqgan", "my-org/my-vqgan", "some-org/some-vqgan"):
        _cache_repo(cache, repo, {"config.json": model / "config.json", "model.safetensors": model / "model.safetensors"})
    _cache_repo(cache, "TencentARC/Open-MAGVIT2-Tokenizer-256-resolution", {"imagenet_256_L.ckpt": w / "imagenet_256_L.ckpt"})
    _cache_repo(cache, "TencentARC/IBQ-Tokenizer-262144", {"imagenet256_262144.ckpt": w / "imagenet256_262144.ckpt"})
    _cache_repo(cache, "dalle-mini/vqgan_imagenet_f16_16384", {p.name: p for p in (w / "flax-vqgan").iterdir()})
    _cache_repo(cache, "FoundationVision/LlamaGen", {"vq_ds16_c2i.pt": w / "vq_ds16_c2i.pt", "vq_ds8_c2i.pt": w / "vq_ds16_c2i.pt"})
    _cache_repo(cache, "nvidia/Cosmos-0.1-Tokenizer-DI16x16",
                {n: w / "Cosmos-0.1-Tokenizer-DI16x16" / n for n in ("encoder.jit", "decoder.jit")})
    _cache_repo(cache, "FoundationVision/var", {"vae_ch160v4096z32.pth": w / "vae_ch160v4096z32.pth"})
    # TiTok: the parity fixture (TiTok's own save_pretrained output, 32 ids) under the released L-32 names
    titok = ROOT / "tests" / "fixtures" / "titok"
    titok_files = {n: titok / n for n in ("config.json", "model.safetensors")}
    _cache_repo(cache, "yucornetto/tokenizer_titok_l32_imagenet", titok_files)
    (w / "path" / "to" / "tokenizer_titok_l32_imagenet").mkdir(parents=True)
    for n, src in titok_files.items():
        shutil.copyfile(src, w / "path" / "to" / "tokenizer_titok_l32_imagenet" / n)
    _cache_repo(cache, "CompVis/ldm-celebahq-256",
                {f"vqvae/{p.name}": p for p in (w / "path" / "to" / "vqvae").iterdir()})

    for s in (0, 1, 123):
        _image_shard(w / "data" / f"train-{s:06d}.tar", 10 * s)
    for s in (0, 1):
        _image_shard(w / "shards" / f"train-{s:06d}.tar", 100 + 10 * s)
    pretokenize(str(w / "data" / "train-{000000..000001}.tar"), w / "tokens", model=tok, size=256, workers=0, progress=False)

    train_cfg = tiny_config(steps=2, grad_accum=1, loss=LossConfig(perceptual_weight=0.0, disc_weight=0.0))
    for name in ("configs/default-tokenizer.yaml", "my-vqgan.yaml", "my.yaml"):
        train_cfg.to_yaml(w / name)
    (w / "prior.yaml").write_text(
        "model: {n_layer: 2, n_head: 2, n_embd: 32, dropout: 0.0}\nsteps: 3\nbatch_size: 4\nwarmup_steps: 1\n"
        "val_fraction: 0.0\ncheckpoint_every: 3\nlog_every: 1\n"
    )
    subprocess.run([sys.executable, "-m", "vqtok", "train-prior", "--tokens", "tokens/", "--out", "runs/prior",
                    "--config", "prior.yaml", "--no-progress"], cwd=w, env=_env(w), check=True, capture_output=True)

    bin_dir = w / "bin"
    bin_dir.mkdir()
    (bin_dir / "vqtok").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m vqtok "$@"\n')
    (bin_dir / "vqtok").chmod(0o755)
    (bin_dir / "python").symlink_to(sys.executable)
    return w, _env(w)


def _env(w: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "PATH": f"{w / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        "HF_HUB_CACHE": str(w / "hf-cache"),
        "HF_HUB_OFFLINE": "1",
        "VQTOK_CACHE": str(w / "vqtok-cache"),  # no Inception / VGG weights: commands say so and skip them
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }


# ---------------------------------------------------------------------- the tests
def test_skip_list_is_short() -> None:
    skipped = [(p.name, line, reason) for p in PAGES for line, _, _, reason in blocks(p) if reason is not None]
    assert all(reason for _, _, reason in skipped)
    assert len(skipped) <= MAX_SKIPPED, skipped


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_page_runs_as_written(page: Path, world: tuple[Path, dict[str, str]]) -> None:
    w, env = world
    runnable = [(line, lang, small(code)) for line, lang, code, reason in blocks(page)
                if reason is None and missing_module(page, line) is None]
    if not runnable:
        pytest.skip(f"{page.name} has no runnable block")
    for line, lang, code in runnable:
        if lang != "bash":
            continue
        run = subprocess.run(["bash", "-e", "-c", code], cwd=w, env=env, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, f"{page.name}:{line} failed:\n{code}\n--- stderr:\n{run.stderr[-3000:]}"
    python = [(line, code) for line, lang, code in runnable if lang == "python"]
    if python:
        script = PYTHON_NAMES + "".join(
            f"\nprint('--- block at line {line}', flush=True)\n" + "exec(compile({!r}, {!r}, 'exec'))\n".format(
                code, f"{page.name}:{line}")
            for line, code in python
        )
        run = subprocess.run([sys.executable, "-c", script], cwd=w, env=env, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, f"{page.name} Python blocks failed:\n{run.stdout[-1500:]}\n--- stderr:\n{run.stderr[-3000:]}"
