from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vqtok import Tokenizer, VQGANConfig

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
EVAL_PHOTOS = SHARED / "data" / "eval-photos"

# A few-hundred-kB model that runs in milliseconds on a CPU: f4, 512 codes, attention at 16.
TINY = VQGANConfig(
    ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(16,), z_channels=16, embed_dim=8, n_embed=512, resolution=64
)


def spread_codebook(model: torch.nn.Module, seed: int = 0) -> None:
    """Give a random model a trained-like codebook (well separated codes instead of taming's ±1/K init)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        w = model.quantize.embedding.weight
        w.copy_(torch.randn(w.shape, generator=g) * 0.5)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest single-threaded; extra OpenMP threads only spin on a shared CPU."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def make_tiny_tokenizer() -> Tokenizer:
    """The tests' tiny VQGAN tokenizer (``TINY``, seed 0, codes spread over the features)."""
    torch.manual_seed(0)
    tok = Tokenizer.from_config(TINY)
    spread_codebook(tok.model)
    return tok


@pytest.fixture
def tiny_tokenizer() -> Tokenizer:
    return make_tiny_tokenizer()


def real_photos(n: int = 4) -> list[Image.Image]:
    """Real photographs: scikit-image's samples (always there in the test extra) + shared eval photos."""
    from skimage import data

    imgs = [Image.fromarray(getattr(data, name)()) for name in ("astronaut", "chelsea", "coffee", "rocket")]
    if EVAL_PHOTOS.is_dir():
        imgs += [Image.open(p).convert("RGB") for p in sorted(EVAL_PHOTOS.glob("*.jpg"))[:4]]
    return imgs[:n]


def training_photos(folder: Path, *, width: int, n: int = 4) -> Path:
    """``n`` real photos resized to ``width`` px wide, saved as ``folder/p<i>.png`` (a training folder)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(real_photos(n)):
        img.resize((width, width * img.height // img.width)).save(folder / f"p{i}.png")
    return folder


def photo_files(folder: Path, *, n: int = 3, stem: str = "photo", suffix: str = ".jpg") -> list[str]:
    """``n`` real photos saved as ``folder/<stem><i><suffix>`` (JPEG quality 95), the folder created; their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, img in enumerate(real_photos(n)):
        p = folder / f"{stem}{i}{suffix}"
        img.save(p, quality=95)
        paths.append(str(p))
    return paths


@pytest.fixture
def photos() -> list[Image.Image]:
    return real_photos(4)


@pytest.fixture
def photo_array() -> np.ndarray:
    return np.array(real_photos(1)[0].resize((64, 64)))


class ShellPayload:
    """Pickles as a call of ``os.system(command)``: what the restricted unpicklers must refuse to run."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        import os

        return (os.system, (self.command,))


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    """A plain tar with the given (member name, bytes), in order."""
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def pretokenize_photos(tok: Tokenizer, folder: Path, *, n: int = 3, size: int = 64):
    """Real photos as JPEGs in ``folder/data/train-000000.tar``, pretokenized into ``folder/tokens``.

    Returns (RunResult, {key: ids array read back from the token shard}, the decoded JPEGs the pipeline read).
    """
    from vqtok.pipeline import pretokenize

    members = []
    for i, img in enumerate(real_photos(n)):
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=95)
        members.append((f"s{i:03d}.jpg", buf.getvalue()))
    (folder / "data").mkdir()
    shard = write_tar(folder / "data" / "train-000000.tar", members)
    result = pretokenize(str(shard), folder / "tokens", model=tok, size=size, workers=0, progress=False, keep=())
    with tarfile.open(folder / "tokens" / "train-000000.tar") as tf:
        ids = {m.name.split(".")[0]: np.load(io.BytesIO(tf.extractfile(m).read())) for m in tf if m.name.endswith(".npy")}  # type: ignore[union-attr]
    decoded = [Image.open(io.BytesIO(data)) for _, data in members]
    return result, ids, decoded
