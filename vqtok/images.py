"""Turning user images into model input and model output back into images.

Accepted inputs (see :func:`to_uint8_batch`):

* PIL images, alone or in a list/tuple. Every mode is converted to RGB:
  ``RGB`` as is; ``L``/``1`` grey replicated to three channels; ``P``, ``RGBA``, ``LA``, ``PA``
  and ``RGBa`` (anything with transparency) composited over a white background;
  ``CMYK``, ``YCbCr``, ``LAB``, ``HSV`` through PIL's own conversion; 16/32-bit grey
  (``I;16*``, ``I``) scaled from 0..65535 to 0..255 and rounded (values outside clipped);
  float grey ``F`` taken as 0..1 and scaled to 0..255.
* numpy ``uint8`` (H, W, 3) or (B, H, W, 3); numpy float (H, W, 3) / (B, H, W, 3) in [0, 1].
* torch ``uint8`` (3, H, W) or (B, 3, H, W); torch float (3, H, W) / (B, 3, H, W) in [0, 1].

Model input is taming's scaling, x / 127.5 − 1 (computed in float64, then cast to float32,
exactly like taming's numpy data pipeline).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from vqtok._errors import is_int

__all__ = [
    "DECODE_MODES",
    "IMAGE_SUFFIXES",
    "ImageBatch",
    "from_model_output",
    "load_image",
    "pil_to_rgb",
    "prepare_image",
    "resize_center_crop",
    "to_model_input",
    "to_uint8_batch",
]

# File suffixes taken as images when a folder is searched (training, evaluation, the CLI).
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm")


@dataclass
class ImageBatch:
    pixels: torch.Tensor  # (B, 3, H, W) uint8, or float in [0, 1]
    batched: bool  # False when the caller passed a single image


# How images are decoded before the resize: "exact" (the full image, the default everywhere) or
# "fast" (JPEGs decoded at 1/2, 1/4 or 1/8 scale in the DCT domain — Pillow's draft mode — to no less
# than twice the target side, then the same resize; other formats as "exact"). docs/pipeline.md has
# its speed-up and id agreement.
DECODE_MODES: tuple[str, ...] = ("exact", "fast")


def load_image(source: str | os.PathLike[str] | bytes, *, draft: int | None = None) -> Image.Image:
    """Open an image file (path or encoded bytes) fully, with a clear error when it is not one.

    ``draft``: let a JPEG decode at a reduced scale (DCT domain) as long as both sides stay >= ``draft``.
    """
    try:
        img = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
        if draft is not None and img.format == "JPEG":
            img.draft(None, (draft, draft))
        img.load()
    except FileNotFoundError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as err:
        name = "<bytes>" if isinstance(source, bytes) else str(source)
        raise ValueError(f"{name} is not a readable image: {err}") from err
    return img


def pil_to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB (rules in the module docstring)."""
    if img.width == 0 or img.height == 0:
        raise ValueError(f"empty image ({img.width}x{img.height})")
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):  # grey scaled to 0..255
        a = np.asarray(img, dtype=np.float64)
        if mode == "F" and not np.isfinite(a).all():
            raise ValueError("float image (mode F) contains NaN or inf")
        a = np.clip(a, 0.0, 1.0) * 255.0 if mode == "F" else np.clip(a, 0, 65535) / 257.0  # 65535 / 257 = 255
        return Image.fromarray(np.rint(a).astype(np.uint8), mode="L").convert("RGB")
    if mode in ("P", "RGBA", "LA", "PA", "RGBa", "La"):  # a palette may hold transparency
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    try:
        return img.convert("RGB")
    except (ValueError, OSError) as err:
        raise ValueError(f"cannot convert PIL mode {mode!r} to RGB: {err}") from err


# Above this many pixels (16 M, 48 MB as RGB) the resized whole image is not made: only the crop's
# region is resized (PIL's ``box``), so memory stays near size² whatever the aspect ratio (a 1x100000
# image at size 256 would need 20 GB). Pixels then differ by a few levels from a whole-image resize;
# every image below the limit (all but extreme aspect ratios) is resized whole, as before.
FULL_RESIZE_PIXELS = 1 << 24


def _cover(w: int, h: int, size: int) -> tuple[int, int, int, int]:
    """(new width, new height, left, top): the shorter side resized to ``size``, the size×size crop centred."""
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    return nw, nh, (nw - size) // 2, (nh - size) // 2


def resize_center_crop(img: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to ``size`` (bicubic, antialiased) and center-crop to size×size.

    An image whose resized whole would exceed :data:`FULL_RESIZE_PIXELS` has only its crop region resized.
    """
    w, h = img.size
    nw, nh, left, top = _cover(w, h, size)
    if nw * nh > FULL_RESIZE_PIXELS:
        sx, sy = w / nw, h / nh
        box = (left * sx, top * sy, (left + size) * sx, (top + size) * sy)
        return img.resize((size, size), resample=Image.Resampling.BICUBIC, box=box, reducing_gap=None)
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), resample=Image.Resampling.BICUBIC, reducing_gap=None)
    return img.crop((left, top, left + size, top + size))


def prepare_image(
    image: Image.Image | bytes | str | os.PathLike[str],
    *,
    size: int | None = None,
    factor: int | None = None,
    decode: str = "exact",
    exif_transpose: bool = False,
) -> np.ndarray:
    """One image as the tokenizer sees it: decode (a path or encoded bytes) -> RGB -> uint8 (H, W, 3).

    ``size``: resize the shorter side to ``size`` and center-crop to size×size (:func:`resize_center_crop`).
    Without a size, ``factor`` (the downsample factor) checks that both sides are multiples of it
    (ValueError otherwise; None: no check). The one image-preparation path of vqtok: the Tokenizer,
    ``pretokenize`` and ``eval`` give the same pixels for the same file. ``decode="fast"`` (with a
    ``size``) decodes JPEG files at a reduced scale first (:data:`DECODE_MODES`).

    EXIF orientation is ignored by default, as PIL, torchvision's decoders and the data pipelines these
    models were trained with do (and as every corpus tokenized before this option was); ``exif_transpose``
    turns the image upright first, as ``PIL.ImageOps.exif_transpose`` does.
    """
    if decode not in DECODE_MODES:
        raise ValueError(f"decode must be one of {', '.join(DECODE_MODES)}, got {decode!r}")
    if isinstance(image, bytes) and not image:
        raise ValueError("zero-size image (0 bytes)")
    draft = 2 * size if (decode == "fast" and size is not None) else None
    img = image if isinstance(image, Image.Image) else load_image(image, draft=draft)
    if exif_transpose:
        img = ImageOps.exif_transpose(img)
    rgb = pil_to_rgb(img)
    if size is not None:
        rgb = resize_center_crop(rgb, size)
    elif factor is not None and (rgb.width % factor or rgb.height % factor):
        raise ValueError(f"image size {rgb.width}x{rgb.height} is not a multiple of the downsample factor {factor} "
                         "(give a size to resize and center-crop)")
    return np.asarray(rgb, dtype=np.uint8)


def _pil_batch(images: Sequence[Any], size: int | None) -> torch.Tensor:
    arrays = []
    for i, img in enumerate(images):
        if not isinstance(img, Image.Image):
            raise TypeError(f"item {i} of the image list is {type(img).__name__}, expected a PIL image")
        try:
            arrays.append(prepare_image(img, size=size))  # (H, W, 3) uint8; sides checked by the caller
        except ValueError as err:
            raise ValueError(f"image {i}: {err}") from err
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        sizes = sorted({f"{s[1]}x{s[0]}" for s in shapes})
        raise ValueError(f"images in one batch must share a size, got {', '.join(sizes)}; pass size=S to resize and crop")
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()  # (B, 3, H, W) uint8


def _tensor_batch(t: torch.Tensor, size: int | None, *, layout: str) -> ImageBatch:
    what = "numpy array" if layout == "hwc" else "tensor"
    if t.ndim not in (3, 4):
        shape = "(H, W, 3) or (B, H, W, 3)" if layout == "hwc" else "(3, H, W) or (B, 3, H, W)"
        raise ValueError(f"{what} of shape {tuple(t.shape)}: expected {shape}")
    batched = t.ndim == 4
    if not batched:
        t = t.unsqueeze(0)
    if layout == "hwc":
        t = t.permute(0, 3, 1, 2)
    if t.shape[1] != 3:
        raise ValueError(
            f"{what} has {t.shape[1]} channels in {tuple(t.shape if layout == 'chw' else t.permute(0, 2, 3, 1).shape)}; "
            "expected 3 (RGB) — convert grey or RGBA images to RGB first, or pass PIL images"
        )
    if t.shape[0] == 0 or t.shape[2] == 0 or t.shape[3] == 0:
        raise ValueError(f"empty {what} of shape {tuple(t.shape)}")
    if t.is_floating_point():
        if not torch.isfinite(t).all():
            raise ValueError(f"{what} contains NaN or inf")
        lo, hi = float(t.min()), float(t.max())
        if lo < 0.0 or hi > 1.0:
            raise ValueError(f"{what} must hold values in [0, 1], got [{lo:.4g}, {hi:.4g}] (uint8 images: pass dtype uint8)")
    elif t.dtype != torch.uint8:
        raise TypeError(f"{what} has dtype {t.dtype}; expected uint8 (0..255) or float in [0, 1]")
    if size is not None:
        if t.dtype == torch.uint8:
            # Same path as PIL inputs, so arrays and PIL images give the same pixels.
            pil = [Image.fromarray(a) for a in t.permute(0, 2, 3, 1).cpu().numpy()]
            return ImageBatch(_pil_batch(pil, size), batched)
        # float: shorter side to size (bicubic, antialias), center crop -> (B, 3, size, size)
        h, w = t.shape[-2:]
        nw, nh, left, top = _cover(w, h, size)
        if (nh, nw) != (h, w):
            t = F.interpolate(t.float(), size=(nh, nw), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
        t = t[..., top : top + size, left : left + size]
    return ImageBatch(t.contiguous(), batched)


def to_uint8_batch(images: Any, *, size: int | None = None) -> ImageBatch:
    """Normalise any accepted image input to a (B, 3, H, W) tensor (uint8 or float in [0, 1])."""
    if size is not None and not is_int(size, 1):
        raise ValueError(f"size must be a positive int, got {size!r}")
    if isinstance(images, Image.Image):
        return ImageBatch(_pil_batch([images], size), batched=False)
    if isinstance(images, (list, tuple)):
        if len(images) == 0:
            raise ValueError("empty list of images")
        if all(isinstance(i, Image.Image) for i in images):
            return ImageBatch(_pil_batch(images, size), batched=True)
        if all(isinstance(i, (np.ndarray, torch.Tensor)) for i in images):
            parts = [to_uint8_batch(i, size=size) for i in images]
            if any(p.batched for p in parts):
                raise ValueError("a list of arrays must hold single images (H, W, 3) / (3, H, W), not batches")
            if len({(p.pixels.dtype, p.pixels.shape) for p in parts}) > 1:
                raise ValueError("images in one batch must share size and dtype; pass size=S to resize and crop")
            return ImageBatch(torch.cat([p.pixels for p in parts]), batched=True)
        bad = [type(i).__name__ for i in images if not isinstance(i, (Image.Image, np.ndarray, torch.Tensor))]
        if bad:
            raise TypeError(f"unsupported item type {bad[0]} in the image list; expected PIL images, numpy arrays or tensors")
        kinds = sorted({type(i).__name__ for i in images})
        raise TypeError(f"a list of images holds one kind, all PIL images or all arrays/tensors; got {', '.join(kinds)}")
    if isinstance(images, np.ndarray):
        if images.dtype == np.uint8 or np.issubdtype(images.dtype, np.floating):
            arr = images if images.flags.writeable else images.copy()
            return _tensor_batch(torch.from_numpy(np.ascontiguousarray(arr)), size, layout="hwc")
        raise TypeError(f"numpy array has dtype {images.dtype}; expected uint8 (0..255) or float in [0, 1]")
    if isinstance(images, torch.Tensor):
        return _tensor_batch(images, size, layout="chw")
    if isinstance(images, (str, os.PathLike, bytes)):
        raise TypeError(f"got {type(images).__name__} {images!r:.80}; pass image data, e.g. vqtok.images.load_image(path) "
                        "or PIL.Image.open(path)")
    raise TypeError(f"unsupported image type {type(images).__name__}; expected PIL image(s), numpy array or torch tensor")


def to_model_input(pixels: torch.Tensor, *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 or [0, 1] float (B, 3, H, W) -> model range [-1, 1] (taming: x / 127.5 - 1)."""
    if pixels.dtype == torch.uint8:
        return (pixels.to(torch.float64) / 127.5 - 1.0).to(dtype)
    return (pixels.to(torch.float64) * 2.0 - 1.0).to(dtype)


def from_model_output(x: torch.Tensor) -> torch.Tensor:
    """Model output (B, 3, H, W) in about [-1, 1] -> float [0, 1] = clamp((x + 1) / 2)."""
    return ((x.float() + 1.0) / 2.0).clamp_(0.0, 1.0)
