"""``Tokenizer``: images in, token ids out, and back — the user-facing face of every model family.

    >>> tok = Tokenizer.from_pretrained("some-org/some-vqgan")   # or a local folder
    >>> ids = tok.encode(image)          # (h, w) long for a grid model; a batch gives (B, h, w)
    >>> img = tok.decode(ids)            # PIL image; a batch gives a list

The ids' shape is the model's token layout (:mod:`vqtok.layout`): a grid (h, w), a sequence (n,)
or multi-scale ids (Σ hᵢwᵢ,), with a trailing sub-codebook axis where the model has one. The
Tokenizer reaches the model only through ``layout`` / ``encode_ids`` / ``decode_ids``.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import torch
from PIL import Image

from vqtok import hub
from vqtok.images import from_model_output, to_model_input, to_uint8_batch
from vqtok.layout import TokenLayout
from vqtok.models import registry
from vqtok.models.vqgan import VQGAN, VQGANConfig

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_NAME", "DEFAULT_VERSIONS", "MODEL_TYPE", "Tokenizer", "default_version", "is_default_name", "model_id", "resolve_default",
]

MODEL_TYPE = "vqgan"
Precision = Literal["fp32", "bf16", "fp16"]
_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _native_on_cpu(precision: str) -> bool:
    """Whether oneDNN has native kernels for bf16 (AVX512-BF16/AMX) or fp16 (AVX512-FP16/AMX-FP16)."""
    if precision == "bf16":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())


# ---------------------------------------------------------------------- the shipped default tokenizer
DEFAULT_NAME = "default"  # model name of the newest shipped version; "default@v1" pins one

# The versions of the default tokenizer shipped in this package, oldest first: version -> its folder
# (vqtok/weights/default-<version>/). The last one is what ``Tokenizer.default()``, ``--model default``
# and every command without ``--model`` load. Listed rather than discovered from the folders: the order
# is explicit (no "v10" < "v2" sorting), and copying a folder in never silently changes what everyone's
# "default" means. tests/test_default_versions.py checks that this list and the folders agree.
_WEIGHTS_DIR = Path(__file__).parent / "weights"
DEFAULT_VERSIONS: dict[str, Path] = {
    "v1": _WEIGHTS_DIR / "default-v1",  # 2026-11: 6000 steps on 96 px crops (docs/model-card.md)
    "v2": _WEIGHTS_DIR / "default-v2",  # 2026-11: + 36 000 steps on 256 px crops, cosine, EMA (docs/model-card.md)
    "v3": _WEIGHTS_DIR / "default-v3",  # 2026-11: + 30 000 steps from v2 with a chroma read-out: greens stay green
}


def default_version() -> str:
    """The newest shipped version of the default tokenizer (what ``"default"`` means)."""
    if not DEFAULT_VERSIONS:
        raise FileNotFoundError("this vqtok installation ships no default tokenizer")
    return next(reversed(DEFAULT_VERSIONS))


def is_default_name(model: str | os.PathLike[str] | None) -> bool:
    """Whether ``model`` names the shipped default tokenizer: None, ``"default"`` or ``"default@<version>"``.

    Only these exact strings: a folder called ``default`` is ``./default``; '@' cannot occur in a Hub repo id.
    """
    return model is None or (isinstance(model, str) and (model == DEFAULT_NAME or model.startswith(DEFAULT_NAME + "@")))


def resolve_default(model: str | None = None) -> tuple[str, Path]:
    """(pinned name, folder) of a default-tokenizer name: None / ``"default"`` -> the newest version,
    ``"default@v1"`` -> v1. The one place that decides what "default" means.

    Raises ValueError for an unknown version (naming the shipped ones) and FileNotFoundError when the
    version's weights are not installed.
    """
    if not is_default_name(model):
        raise ValueError(f"{model!r} is not a default tokenizer name ({DEFAULT_NAME!r} or '{DEFAULT_NAME}@<version>')")
    version = default_version() if model is None or model == DEFAULT_NAME else model.partition("@")[2]
    if version not in DEFAULT_VERSIONS:
        shipped = ", ".join(f"{DEFAULT_NAME}@{v}" for v in DEFAULT_VERSIONS)
        raise ValueError(
            f"unknown default tokenizer version {version!r}; this vqtok ships {shipped} "
            f"({DEFAULT_NAME!r} is {DEFAULT_NAME}@{default_version()})"
        )
    folder = DEFAULT_VERSIONS[version]
    if not (folder / hub.WEIGHTS_NAME).is_file():
        raise FileNotFoundError(
            f"this vqtok installation has no default tokenizer {version} at {folder}; "
            "pass --model / Tokenizer.from_pretrained(PATH_OR_REPO) instead"
        )
    return f"{DEFAULT_NAME}@{version}", folder


def model_id(model: str | os.PathLike[str] | None) -> str:
    """What a run records as its model: the pinned name for the default tokenizer (``"default@v1"``, so a
    corpus says which default made it, also after ``"default"`` moves on), else ``model`` as given."""
    if is_default_name(model):
        return resolve_default(model)[0]  # type: ignore[arg-type]
    return os.fspath(model)  # type: ignore[arg-type]

# Turns a folder or Hub repo in another code base's layout into a local vqtok folder (None: a vqtok
# folder, loaded as is). Registered by vqtok.convert.auto, which ``import vqtok`` imports: the
# converters depend on the Tokenizer, so the Tokenizer reaches them through this hook, not an import.
LayoutResolver = Callable[..., "Path | None"]
_layout_resolvers: list[LayoutResolver] = []


# Exporters to other libraries' formats, registered by vqtok.convert (same reason as the resolvers: the
# tokenizer module never imports the converters). Only the deprecated Tokenizer.to_diffusers uses it.
_exporters: dict[str, Callable[..., Path]] = {}


def register_exporter(name: str, exporter: Callable[..., Path]) -> None:
    """``exporter(tokenizer, directory) -> Path`` for the format ``name`` (``"diffusers"``)."""
    _exporters[name] = exporter


def register_layout_resolver(resolver: LayoutResolver) -> None:
    """Let ``Tokenizer.from_pretrained`` load other layouts: ``resolver(source, *, filename, subfolder,
    revision, cache_dir, local_files_only)`` returns a local vqtok folder, or None to load ``source`` as is."""
    if resolver not in _layout_resolvers:
        _layout_resolvers.append(resolver)

# Token positions one image may decode to unless raised (Tokenizer.max_decode_positions): 128 x 128,
# a 2048 px image for an f16 model. Attention over more positions costs minutes and gigabytes.
MAX_DECODE_POSITIONS = 128 * 128


class Tokenizer:
    """Wraps a tokenizer model of any registered family with image conversion, batching and device handling.

    Args:
        model: a registered model (VQGAN, MAGVIT2, IBQ, CosmosDI, VAR, TiTok ...; put in eval mode, not copied).
        batch_size: images per forward pass; larger inputs are processed in chunks.
        precision: ``"fp32"`` (exact: same tokens as taming-transformers), or ``"bf16"`` / ``"fp16"``
            (autocast over the encoder/decoder). bf16 measured 2.3-2.6x taming's fp32 speed on a
            CPU with AVX512-BF16, with 98.2% of the shipped tokenizer's ids equal to fp32; fp16
            keeps 99.8% but is for GPUs (CPUs without AVX512-FP16/AMX-FP16 emulate it, ~6x slower
            than fp32; a warning is logged). The codebook side (``quant_conv`` + nearest-code
            search) always runs in the model's dtype, outside autocast. See docs/performance.md.
        channels_last: run the convolution stacks on NHWC (channels_last) activations: faster
            oneDNN/cuDNN kernels, same tokens. Only the inputs are converted; weights are untouched.

    ``max_decode_positions`` (attribute, default 16384 = 128x128) bounds the token positions of one
    decoded image; larger ids are a ValueError before any work is done.
    """

    max_decode_positions: int = MAX_DECODE_POSITIONS

    def __init__(
        self, model: VQGAN | registry.TokenizerModel, *, batch_size: int = 32, precision: Precision = "fp32", channels_last: bool = True
    ) -> None:
        registry.family_of(model)  # TypeError unless a registered family (VQGAN, MAGVIT2, VAR, TiTok ...)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model.eval()
        self.batch_size = batch_size
        self.precision = precision
        self.channels_last = channels_last

    # ------------------------------------------------------------------ construction and I/O
    @classmethod
    def from_config(
        cls, config: VQGANConfig | registry.ModelConfig, *, batch_size: int = 32, precision: Precision = "fp32",
        channels_last: bool = True,
    ) -> "Tokenizer":
        """A randomly initialised tokenizer (for training or tests); the architecture follows the config's class."""
        model = registry.model_from_config(config)
        return cls(model, batch_size=batch_size, precision=precision, channels_last=channels_last)

    @classmethod
    def from_pretrained(
        cls,
        repo_id_or_dir: str | os.PathLike[str],
        *,
        filename: str | None = None,
        subfolder: str | None = None,
        revision: str | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        local_files_only: bool = False,
        device: str | torch.device | None = None,
        precision: Precision = "fp32",
        batch_size: int = 32,
    ) -> "Tokenizer":
        """Load a vqtok model folder or Hub repo (``model.safetensors`` + ``config.json``), strictly.

        A folder or repo in another code base's layout (Open-MAGVIT2 / IBQ ``.ckpt``, dalle-mini
        ``flax_model.msgpack``, LlamaGen ``filename="vq_ds16_c2i.pt"``, diffusers ``subfolder="vqvae"``)
        is recognised from its files, converted once and cached (see :mod:`vqtok.convert.auto`).
        ``"default"`` (the newest) and ``"default@v1"`` (a pinned version) are the tokenizers shipped in
        the package, as in :meth:`default`.
        """
        if is_default_name(repo_id_or_dir):
            if filename is not None or subfolder is not None or revision is not None:
                raise ValueError(f"{repo_id_or_dir!r} is the built-in tokenizer: filename=, subfolder= and revision= do not apply")
            if repo_id_or_dir == DEFAULT_NAME and Path(DEFAULT_NAME).is_dir():
                logger.warning("%r is the built-in tokenizer, not the folder ./%s here (pass ./%s for it)",
                               DEFAULT_NAME, DEFAULT_NAME, DEFAULT_NAME)
            _, repo_id_or_dir = resolve_default(repo_id_or_dir)  # type: ignore[arg-type]
        for resolve in _layout_resolvers:
            folder = resolve(
                repo_id_or_dir, filename=filename, subfolder=subfolder, revision=revision,
                cache_dir=cache_dir, local_files_only=local_files_only,
            )
            if folder is not None:
                repo_id_or_dir, revision = folder, None
                break
        else:
            if filename is not None or subfolder is not None:
                raise ValueError("filename= and subfolder= need vqtok.convert (import vqtok does it)")
        config, state = hub.load_pretrained(
            repo_id_or_dir,
            model_type=registry.MODEL_TYPES,
            revision=revision,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
        )
        model_type = config.pop("model_type")
        model = hub.build_for_weights(lambda: registry.build_model(model_type, config), state, source=str(repo_id_or_dir))
        hub.load_strict(model, state, source=str(repo_id_or_dir))
        tok = cls(model, batch_size=batch_size, precision=precision)
        if device is not None:
            tok.to(device)
        return tok

    @classmethod
    def load(
        cls,
        model: str | os.PathLike[str] | None = None,
        *,
        device: str | torch.device | None = None,
        precision: Precision = "fp32",
        batch_size: int = 32,
    ) -> "Tokenizer":
        """``from_pretrained(model, ...)``; None means the built-in tokenizer (``"default"``)."""
        return cls.from_pretrained(
            DEFAULT_NAME if model is None else model, device=device, precision=precision, batch_size=batch_size
        )

    @classmethod
    def default(
        cls,
        version: str | None = None,
        *,
        device: str | torch.device | None = None,
        precision: Precision = "fp32",
        batch_size: int = 32,
    ) -> "Tokenizer":
        """The small tokenizer shipped inside the package (works offline).

        ``version``: None for the newest shipped version, or a pinned one (``"v1"``, see
        ``vqtok.tokenizer.DEFAULT_VERSIONS``) to keep the ids of a corpus tokenized with it.
        """
        name = DEFAULT_NAME if version is None else f"{DEFAULT_NAME}@{version}"
        return cls.from_pretrained(name, device=device, precision=precision, batch_size=batch_size)

    def save_pretrained(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``model.safetensors`` + ``config.json`` to ``directory``."""
        return hub.save_pretrained(
            directory, state_dict=self.model.state_dict(), config=self.config.to_dict(),
            model_type=registry.model_type_of(self.model),
        )

    def to_diffusers(self, directory: str | os.PathLike[str]) -> Path:
        """Deprecated (removed in 0.3): use :func:`vqtok.convert.to_diffusers` (tokenizer, directory)."""
        import warnings

        warnings.warn("Tokenizer.to_diffusers is deprecated; use vqtok.convert.to_diffusers(tokenizer, directory)",
                      DeprecationWarning, stacklevel=2)
        if "diffusers" not in _exporters:
            raise RuntimeError("the diffusers exporter is not registered (import vqtok.convert, as import vqtok does)")
        return _exporters["diffusers"](self, directory)

    def push_to_hub(self, repo_id: str, *, private: bool = False, token: str | None = None) -> str:
        """Upload ``model.safetensors`` + ``config.json`` to the Hub repo ``repo_id``; returns the commit URL."""
        return hub.push_to_hub(self, repo_id, private=private, token=token)

    # ------------------------------------------------------------------ properties
    @property
    def config(self) -> VQGANConfig | registry.ModelConfig:
        return self.model.config

    @property
    def model_type(self) -> str:
        """The model's family (``config.json``'s ``model_type``)."""
        return registry.model_type_of(self.model)

    def layout(self, image_size: int | tuple[int, int] | None = None) -> TokenLayout:
        """The token layout of an image of side ``image_size`` or (H, W) (None: as the model states it
        without a size — a grid of any (h, w) for convolutional models)."""
        if isinstance(image_size, int):
            image_size = (image_size, image_size)
        return self.model.layout(image_size)  # type: ignore[operator, no-any-return]

    @property
    def codebook_size(self) -> int:
        """Ids lie in [0, codebook_size) (per sub-codebook where the layout has several)."""
        return self.layout().codebook_size

    @property
    def downsample_factor(self) -> int:
        """Image side / token-grid side (16 for VAR's last scale; TiTok's patch size)."""
        factor = getattr(self.model, "downsample_factor", None)
        return int(factor if factor is not None else self.config.downsample_factor)

    @property
    def embed_dim(self) -> int:
        return int(self.config.embed_dim)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def grid_shape(self, image_size: int | tuple[int, int]) -> tuple[int, int]:
        """Token grid (h, w) of an image of side ``image_size`` or (H, W) (grid layouts only)."""
        layout = self.layout(image_size)
        if layout.grid_shape is None:
            raise ValueError(f"{self.model_type} tokens are not one grid ({layout.describe()}); use Tokenizer.layout(size)")
        return layout.grid_shape

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> "Tokenizer":
        """Move the model (in place) and return self. ``dtype`` casts the weights (e.g. torch.bfloat16)."""
        self.model.to(device=device, dtype=dtype)
        return self

    def __repr__(self) -> str:
        return (
            f"Tokenizer({self.model_type}, {self.layout().describe()}, {type(self.config).__name__} {self.config.hash()}, "
            f"device={self.device}, precision={self.precision!r})"
        )

    @property
    def precision(self) -> Precision:
        """``"fp32"`` (exact), ``"bf16"`` or ``"fp16"`` (autocast); settable."""
        return self._precision

    @precision.setter
    def precision(self, value: Precision) -> None:
        if value not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be 'fp32', 'bf16' or 'fp16', got {value!r}")
        self._precision: Precision = value
        self._warned_emulated = False

    # ------------------------------------------------------------------ encode / decode
    def _autocast_dtype(self) -> torch.dtype | None:
        """None in fp32; the autocast dtype of the fast modes (warning once where a CPU emulates it)."""
        if self.precision == "fp32":
            return None
        if self.device.type == "cpu" and not self._warned_emulated and not _native_on_cpu(self.precision):
            self._warned_emulated = True
            logger.warning(
                "precision=%r on a CPU without native %s support is emulated and slower than fp32; "
                "use precision='fp32' (exact) on this machine",
                self.precision, self.precision,
            )
        return _AUTOCAST[self.precision]

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        """A CPU batch onto the model's device: through pinned memory with a non-blocking copy on CUDA
        (the copy overlaps the host's work until the first kernel needs it), a no-op on CPU."""
        if self.device.type == "cuda" and t.device.type == "cpu":
            return t.pin_memory().to(self.device, non_blocking=True)
        return t.to(self.device)

    def _model_input(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 (b, 3, H, W) on the device -> the model's pixel range in the model's dtype (NHWC if channels_last)."""
        if self.model.pixel_range == (0.0, 1.0):  # type: ignore[attr-defined]
            x = (pixels.to(torch.float64) / 255.0).to(self.dtype)
        else:
            x = to_model_input(pixels, dtype=self.dtype)  # [-1, 1]
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _from_model_output(self, x: torch.Tensor) -> torch.Tensor:
        """Model output in its pixel range -> float [0, 1]."""
        if self.model.pixel_range == (0.0, 1.0):  # type: ignore[attr-defined]
            return x.float().clamp_(0.0, 1.0)
        return from_model_output(x)

    def encode(self, images: Any, *, size: int | None = None) -> torch.Tensor:
        """Images -> token ids (long, on CPU) in the layout's shape: (h, w) / (n,) / (Σ hᵢwᵢ,) for one
        image, with a leading B for a batch.

        Accepts PIL images (any mode), numpy uint8/float arrays, torch uint8/float tensors,
        single or batched (see :mod:`vqtok.images`). Sides must suit the model (multiples of
        ``downsample_factor``; the one size of a sequence or multi-scale model) unless ``size=S``
        is given: then the shorter side is resized to S (bicubic, antialiased) and the center S×S
        crop is taken.
        """
        batch = to_uint8_batch(images, size=size)
        pixels = batch.pixels  # (B, 3, H, W)
        hgt, wid = pixels.shape[-2:]
        try:
            layout = self.model.layout((hgt, wid))  # type: ignore[operator]
        except ValueError as err:
            f = self.downsample_factor
            raise ValueError(
                f"{err}; pass size=S (e.g. {max(f, (min(hgt, wid) // f) * f)}) to resize and center-crop"
                if self.layout().kind == "grid" else f"{err}"
            ) from None
        amp = self._autocast_dtype()
        out = []
        with torch.inference_mode():
            for chunk in pixels.split(self.batch_size):  # views of at most batch_size images
                x = self._model_input(self._to_device(chunk))  # (b, 3, H, W)
                out.append(self.model.encode_ids(x, autocast_dtype=amp).cpu())  # type: ignore[operator]  # (b, *layout)
        ids = torch.cat(out)
        if tuple(ids.shape[1:]) != layout.shape:
            raise RuntimeError(f"{self.model_type} returned ids of shape {tuple(ids.shape[1:])}, its layout says {layout.shape}")
        return ids if batch.batched else ids[0]

    def check_ids(self, ids: Any, *, grid: tuple[int, int] | None = None) -> torch.Tensor:
        """The checks ``decode`` makes, without decoding: ids -> (B, *layout shape) int64 (on the input's device).

        TypeError / ValueError naming the problem (type, dtype, a shape that does not match the
        layout, an id outside the codebook, more positions than ``max_decode_positions``).
        """
        return self._check_ids(ids, grid)[0]

    def _check_ids(self, ids: Any, grid: tuple[int, int] | None) -> tuple[torch.Tensor, bool]:
        if isinstance(ids, np.ndarray):
            if not np.issubdtype(ids.dtype, np.integer):
                raise ValueError(f"token ids must be integers, got numpy dtype {ids.dtype}")
            ids = torch.from_numpy(np.ascontiguousarray(ids))
        if not isinstance(ids, torch.Tensor):
            raise TypeError(f"token ids must be a torch tensor or numpy array, got {type(ids).__name__}")
        layout = self.layout()
        batched: bool | None = None
        if grid is not None:
            if layout.kind != "grid":
                raise ValueError(f"grid= applies to grid layouts; {self.model_type} ids are a {layout.describe()}")
            layout = layout.with_grid(tuple(grid))  # type: ignore[arg-type]  # ValueError for (0, 0), (-1, 4), ...
            h, w = layout.grid_shape  # type: ignore[misc]
            if ids.ndim == layout.ndim - 1 and ids.shape[0] == h * w:  # one flat image (h*w[, k]) -> (h, w[, k])
                ids, batched = ids.reshape(layout.shape), False  # type: ignore[arg-type]
            elif ids.ndim == layout.ndim and ids.shape[1] == h * w and ids.shape[0] != h:  # (B, h*w[, k])
                ids, batched = ids.reshape(ids.shape[0], *layout.shape), True  # type: ignore[misc]
        if ids.ndim in (layout.ndim, layout.ndim + 1):
            per_image = ids.shape[-layout.ndim :]
            positions = math.prod(per_image[: layout.ndim - (1 if layout.codebooks > 1 else 0)])
            if positions > self.max_decode_positions:
                raise ValueError(
                    f"token ids of shape {tuple(ids.shape)} hold {positions} positions per image, over "
                    f"max_decode_positions={self.max_decode_positions} (set Tokenizer.max_decode_positions to decode larger images)"
                )
        return layout.check(ids, batched=batched)

    def decode(
        self,
        ids: Any,
        *,
        output: Literal["pil", "np", "pt"] = "pil",
        grid: tuple[int, int] | None = None,
    ) -> Any:
        """Token ids -> images.

        ids: the layout's shape for one image — (h, w) for a grid model, (n,) for a sequence,
        (Σ hᵢwᵢ,) for multi-scale ids — or with a leading batch axis; any integer dtype (numpy or
        torch). Nothing is guessed: flat grid ids (B, h*w) / (h*w,) need ``grid=(h, w)``.
        output: ``"pil"`` PIL image (list for a batch); ``"np"`` uint8 (B, H, W, 3);
        ``"pt"`` float (B, 3, H, W) in [0, 1]. A single (unbatched) input gives a single image /
        drops the batch axis.
        """
        if output not in ("pil", "np", "pt"):
            raise ValueError(f"output must be 'pil', 'np' or 'pt', got {output!r}")
        ids, batched = self._check_ids(ids, grid)
        amp = self._autocast_dtype()
        out = []
        with torch.inference_mode():
            for chunk in ids.split(self.batch_size):
                x = self.model.decode_ids(self._to_device(chunk), autocast_dtype=amp, channels_last=self.channels_last)  # type: ignore[operator]
                out.append(self._from_model_output(x).cpu())  # (b, 3, H, W) in [0, 1]
        images = torch.cat(out)  # (B, 3, H, W) float in [0, 1]
        if output == "pt":
            return images if batched else images[0]
        arrays = (images * 255.0).round_().to(torch.uint8).permute(0, 2, 3, 1).numpy()  # (B, H, W, 3)
        if output == "np":
            return arrays if batched else arrays[0]
        pil = [Image.fromarray(a) for a in arrays]
        return pil if batched else pil[0]

    def reconstruct(self, images: Any, *, size: int | None = None, output: Literal["pil", "np", "pt"] = "pil") -> Any:
        """decode(encode(images)): the round trip used for reconstruction metrics."""
        return self.decode(self.encode(images, size=size), output=output)
