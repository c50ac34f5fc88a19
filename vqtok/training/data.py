"""Training images: a folder of images or WebDataset-style ``.tar`` shards, as random crops.

Each training crop is a random square covering ``crop_size × s`` source pixels with ``s``
log-uniform in ``[1, max_zoom_out]`` (several scales of the same large photo), resized to
``crop_size`` and randomly flipped.

The stream is deterministic: the ``g``-th crop of the run depends only on the seed and ``g``
(folder: image of epoch permutation ``g // N``, crop randomness seeded by ``(seed, g)``), and
:class:`TrainImages` yields whole batches with batch ``k`` made by worker ``k mod W``. So a run
resumed at step ``n`` gets exactly the batches it would have had (``start_batch``), whatever the
number of DataLoader workers. Under DDP rank ``r`` of ``R`` takes crops ``g ≡ r (mod R)``.

Bad samples do not stop a run: an image that cannot be decoded keeps its index ``g`` but gives no
crop (its batch is one crop smaller; a warning names it, once per worker), and the unreadable
rest of a truncated or corrupt shard is skipped with a warning. So the stream stays exactly the
same on resume; only a batch whose every crop is unreadable raises.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Iterator
from dataclasses import KW_ONLY, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vqtok._runtime import die_with_parent
from vqtok.images import IMAGE_SUFFIXES, load_image, pil_to_rgb, prepare_image
from vqtok.tars import expand_shards, is_remote, read_samples

logger = logging.getLogger(__name__)

__all__ = ["TrainImages", "list_images", "load_validation_images", "make_loader", "random_crop"]


def list_images(folder: str | Path) -> list[Path]:
    """All image files under ``folder`` (recursive), sorted."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {root}")
    return files


def hue_rotation(angle: float) -> np.ndarray:
    """(3, 3) rotation of RGB about the grey axis (1, 1, 1)/√3 by ``angle`` radians (Rodrigues).

    Greys stay grey and every colour keeps its lightness (R+G+B) and saturation; hues turn by
    ``angle``: 2π/3 maps red -> green -> blue -> red.
    """
    k = np.full(3, 1 / math.sqrt(3))
    cross = np.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    return math.cos(angle) * np.eye(3) + math.sin(angle) * cross + (1 - math.cos(angle)) * np.outer(k, k)


def random_crop(
    img: Image.Image, size: int, rng: np.random.Generator, *, max_zoom_out: float = 4.0, flip: bool = True, hue_rotate: float = 0.0
) -> torch.Tensor:
    """Random multi-scale square crop resized to size×size (+ flip, + hue rotation): -> uint8 (3, size, size).

    ``hue_rotate``: probability of turning the crop's hues by a uniform random angle
    (:func:`hue_rotation`, then clipped to 0..255). Natural photos vary far more along
    orange-blue than along green-magenta, and a low-bit tokenizer trained on them spends its
    codes on the first axis: greens come back grey-brown. Rotated crops make every hue axis
    equally likely. With 0 no random number is drawn for it (older runs' crops are unchanged).
    """
    img = pil_to_rgb(img)
    w, h = img.size
    if min(w, h) < size:
        scale = size / min(w, h)
        img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.Resampling.BICUBIC)
        w, h = img.size
    s_max = max(1.0, min(max_zoom_out, min(w, h) / size))
    s = math.exp(rng.uniform(0.0, math.log(s_max)))
    side = min(min(w, h), max(size, round(size * s)))
    x0 = int(rng.integers(0, w - side + 1))
    y0 = int(rng.integers(0, h - side + 1))
    crop = img.crop((x0, y0, x0 + side, y0 + side))
    if side != size:
        crop = crop.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=None)
    arr = np.asarray(crop, dtype=np.uint8)
    if flip and rng.random() < 0.5:
        arr = arr[:, ::-1]
    if hue_rotate > 0 and rng.random() < hue_rotate:
        turn = hue_rotation(rng.uniform(0.0, 2 * math.pi)).astype(np.float32)
        arr = np.clip(np.rint(arr.astype(np.float32) @ turn.T), 0, 255).astype(np.uint8)  # (H, W, 3)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


def _is_shards(source: str) -> bool:
    return not Path(source).is_dir()


def training_sources(source: str) -> tuple[list[Path], list[str]]:
    """(image files, shards) of a training source: an image folder's images, or a shard spec's local
    shards. FileNotFoundError / ValueError (one line) when there is nothing to train on."""
    if not _is_shards(source):
        return list_images(source), []
    shards = expand_shards(source)
    remote = [u for u in shards if is_remote(u)]
    if remote:
        raise ValueError(f"training reads local shard files; {remote[0]} is remote (copy the shards or mount the bucket)")
    return [], shards


def _shard_images(url: str) -> Iterator[tuple[str, bytes]]:
    """(key, encoded image) of the samples of one shard that have an image, in order.

    The unreadable rest of a truncated/corrupt shard is logged and skipped.
    """
    for sample in read_samples(url):
        if sample.error is not None:
            logger.warning("skipped the rest of shard %s: %s", url, sample.error)
        elif sample.image is not None:
            yield sample.key, sample.image


@dataclass(eq=False)  # compared and hashed by identity, as a Dataset
class TrainImages(torch.utils.data.IterableDataset):
    """Infinite, deterministic stream of uint8 batches (B, 3, S, S) from a folder or shards.

    Args:
        source: image folder, or shard spec (brace notation / directory of ``.tar``).
        batch_size: crops per yielded batch.
        crop_size, max_zoom_out, flip, hue_rotate: augmentation (see :func:`random_crop`).
        seed: seeds the order and the crops.
        start_batch: index of the first batch to produce (resume).
        rank, world_size: DDP split of the crops.
        cache_images: keep decoded folder images in memory (per worker).
    """

    source: str
    _: KW_ONLY
    batch_size: int
    crop_size: int
    max_zoom_out: float = 4.0
    flip: bool = True
    hue_rotate: float = 0.0
    seed: int = 0
    start_batch: int = 0
    rank: int = 0
    world_size: int = 1
    cache_images: bool = False

    def __post_init__(self) -> None:
        self.source = str(self.source)
        self.files, self.shards = training_sources(self.source)
        self._cache: dict[int, Image.Image] = {}
        self._reported: set[str] = set()  # bad samples already warned about (per worker)

    def __len__(self) -> int:  # number of source images (folder) or shards
        return len(self.files) or len(self.shards)

    def _crop(self, img: Image.Image, g: int) -> torch.Tensor:
        rng = np.random.default_rng([self.seed, g])
        return random_crop(img, self.crop_size, rng, max_zoom_out=self.max_zoom_out, flip=self.flip, hue_rotate=self.hue_rotate)

    def _bad(self, key: str, err: Exception) -> None:
        if key not in self._reported:
            self._reported.add(key)
            logger.warning("skipped unreadable training image %s: %s", key, err)

    def _folder_crop(self, g: int) -> torch.Tensor | None:
        """Crop g of a folder source, or None (logged) when its image cannot be read."""
        n = len(self.files)
        epoch, pos = divmod(g, n)
        perm = np.random.default_rng([self.seed, 7, epoch]).permutation(n)
        i = int(perm[pos])
        img = self._cache.get(i)
        try:
            if img is None:
                img = pil_to_rgb(load_image(self.files[i]))
                if self.cache_images:
                    self._cache[i] = img
            return self._crop(img, g)
        except (ValueError, OSError) as err:
            self._bad(str(self.files[i]), err)
            return None

    def _stack(self, crops: list[torch.Tensor | None], k: int) -> torch.Tensor:
        good = [c for c in crops if c is not None]
        if not good:
            raise ValueError(f"every image of training batch {k} is unreadable ({self.source}); see the warnings")
        return torch.stack(good)

    def __iter__(self) -> Iterator[torch.Tensor]:
        info = torch.utils.data.get_worker_info()
        wid, nworkers = (0, 1) if info is None else (info.id, info.num_workers)
        if self.files:
            for k in itertools.count(self.start_batch + wid, nworkers):
                slots = range(k * self.batch_size, (k + 1) * self.batch_size)  # this rank's crops g = slot·R + r
                yield self._stack([self._folder_crop(slot * self.world_size + self.rank) for slot in slots], k)
        else:
            yield from self._iter_shards(wid, nworkers)

    def _shard_stream(self) -> Iterator[tuple[int, str, bytes]]:
        """(global index g, sample key, encoded image) over epochs, shards shuffled per epoch."""
        g = epoch = 0
        while True:
            order = np.random.default_rng([self.seed, 7, epoch]).permutation(len(self.shards))
            seen = 0
            for s in order:
                url = self.shards[int(s)]
                for key, data in _shard_images(url):
                    yield g, f"{url}:{key}", data
                    g += 1
                    seen += 1
            if seen == 0:
                raise ValueError(f"no images in the shards {self.source}")
            epoch += 1

    def _iter_shards(self, wid: int, nworkers: int) -> Iterator[torch.Tensor]:
        per_batch = self.batch_size * self.world_size
        pending: list[torch.Tensor | None] = []  # this rank's slots of batch k (None: unreadable)
        for g, key, data in self._shard_stream():
            k, within = divmod(g, per_batch)
            if k < self.start_batch or (k - self.start_batch) % nworkers != wid or within % self.world_size != self.rank:
                continue
            try:
                pending.append(self._crop(load_image(data), g))
            except (ValueError, OSError) as err:
                self._bad(key, err)
                pending.append(None)
            if len(pending) == self.batch_size:
                yield self._stack(pending, k)
                pending = []


def make_loader(dataset: TrainImages, *, num_workers: int) -> torch.utils.data.DataLoader:
    """DataLoader over whole batches (the dataset batches itself, keeping the order exact)."""
    return torch.utils.data.DataLoader(
        dataset, batch_size=None, num_workers=num_workers, persistent_workers=False,
        prefetch_factor=2 if num_workers > 0 else None,
        worker_init_fn=die_with_parent if num_workers > 0 else None,  # workers die with the trainer
    )


def load_validation_images(source: str, *, size: int, limit: int) -> torch.Tensor:
    """Up to ``limit`` images, resized + center-cropped to size×size: uint8 (N, 3, size, size)."""
    out: list[torch.Tensor] = []
    if _is_shards(source):
        items: Iterator[tuple[str, str | Path | bytes]] = (
            (f"{url}:{key}", data) for url in expand_shards(source) for key, data in _shard_images(url)
        )
    else:
        items = ((str(path), path) for path in list_images(source))
    for key, data in items:
        try:
            out.append(torch.from_numpy(prepare_image(data, size=size).copy()).permute(2, 0, 1))  # (3, size, size) uint8
        except (ValueError, OSError) as err:
            logger.warning("skipped unreadable validation image %s: %s", key, err)
        if len(out) >= limit:
            break
    if not out:
        raise FileNotFoundError(f"no validation images in {source}")
    return torch.stack(out)
