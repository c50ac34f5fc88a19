"""Training configuration: one dataclass per concern, loaded from / saved to YAML (or JSON).

A YAML file mirrors :class:`TrainConfig`::

    model: {ch: 64, ch_mult: [1, 2, 2, 4], n_embed: 4096, embed_dim: 8, l2_norm_codes: true, ...}
    # or another quantizer: model: {quantizer: fsq, fsq_levels: [8, 8, 8, 8], ...} / {quantizer: lfq, lfq_bits: 12, ...}
    codebook: {kmeans_init: true, dead_after: 200, ...}
    loss: {perceptual_weight: 0.0, disc_start: 20000, ...}
    data: {crop_size: 128, ...}
    steps: 20000
    batch_size: 8
    ...

Unknown keys are errors (a typo must not silently train something else). The names of vqtok 0.1
are read until vqtok 0.3, with a deprecation warning: ``bf16: auto|on|off`` is
``precision: auto|bf16|fp32`` and ``ckpt_every`` is ``checkpoint_every`` (the prior trainer's names).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from vqtok._runtime import check_precision, read_config_file, write_config_file
from vqtok.models.lfq import LFQ
from vqtok.models.vqgan import VQGANConfig

logger = logging.getLogger(__name__)

__all__ = ["CodebookConfig", "DataConfig", "LossConfig", "TrainConfig", "default_model_config", "vanilla_codebook"]

@dataclass
class CodebookConfig:
    """Training-time codebook behaviour of nearest-code VQ (``model.quantizer: vq``). None of it is saved in
    the exported model. FSQ and LFQ have no codebook to train: only ``dead_after`` (the window of the
    logged ``active`` fraction) applies to them."""

    ema: bool = False  # update codes by an exponential moving average of their assigned encoder outputs (no codebook gradient)
    ema_decay: float = 0.99  # decay of the EMA statistics
    kmeans_init: bool = True  # initialise the codes by k-means on the encoder outputs of the first batches
    kmeans_batches: int = 8  # how many first batches feed the k-means initialisation
    kmeans_iters: int = 10  # Lloyd iterations of that k-means
    dead_after: int = 200  # a code not chosen for this many steps is dead and gets re-seeded (0 = never)
    restart_every: int = 20  # how often (in steps) dead codes are looked for
    buffer_size: int = 16384  # recent encoder outputs kept to re-seed dead codes from
    restart_noise: float = 0.01  # relative noise added to re-seeded codes (so duplicates separate)


@dataclass
class LossConfig:
    """The VQGAN objective (Esser et al. 2021): reconstruction + perceptual + codebook + adversarial."""

    rec_loss: str = "l1"  # pixel loss: "l1", "l2" or "l1+l2"
    rec_weight: float = 1.0  # weight of the pixel loss
    perceptual_weight: float = 1.0  # weight of LPIPS(x, x̂); 0 trains without VGG16 weights
    chroma_weight: float = 0.0  # weight of the patch-mean chroma L1 (losses.chroma_loss); 0 = off
    chroma_patch: int = 8  # its patch size: the tokens' footprint (the model's downsample factor)
    chroma_readout_weight: float = 0.0  # weight of the encoder-side chroma read-out L1 (losses.ChromaReadout); 0 = off
    vgg_weights: str | None = None  # path to vgg16-397923af.pth (else cached / downloaded)
    lpips_weights: str | None = None  # path to LPIPS v0.1 vgg.pth linear heads (else cached / downloaded)
    codebook_weight: float = 1.0  # weight of the quantizer loss (VQ: codebook + commitment; LFQ: entropy + commitment; FSQ: none)
    entropy_weight: float = 0.1  # LFQ: weight of the MAGVIT-v2 entropy penalty (Open-MAGVIT2: 0.1)
    lfq_commitment_weight: float = 0.25  # LFQ: weight of the commitment term mean ‖ẑ − sign(ẑ)‖² (Open-MAGVIT2: 0.25)
    entropy_temperature: float = 0.01  # LFQ: softmax temperature of the code affinities in the entropy penalty
    sample_entropy_weight: float = 1.0  # LFQ: weight of the per-token entropy (minimised)
    codebook_entropy_weight: float = 1.0  # LFQ: weight of the entropy of the batch's mean code distribution (maximised)
    disc_weight: float = 0.8  # multiplies the adaptive generator weight λ; 0 disables the discriminator
    disc_start: int = 20000  # step at which the adversarial terms switch on
    disc_factor: float = 1.0  # weight of the discriminator terms once switched on
    disc_layers: int = 3  # conv layers of the N-layer PatchGAN
    disc_ch: int = 64  # channels of its first layer
    disc_lr_mult: float = 1.0  # discriminator learning rate = lr × this
    max_lambda: float = 1e4  # upper clamp of the adaptive weight λ


@dataclass
class DataConfig:
    """Training images and augmentation."""

    crop_size: int = 128  # side of the square training crops (pixels)
    max_zoom_out: float = 4.0  # crops cover crop_size × s source pixels, s log-uniform in [1, this] (then resized)
    flip: bool = True  # random horizontal flips
    hue_rotate: float = 0.0  # probability of turning a crop's hues by a random angle about the grey axis (greens kept)
    num_workers: int = 2  # DataLoader worker processes (0 = load in the training process)
    cache_images: bool = False  # keep decoded images in (each worker's) memory: fast, costs RAM
    val_data: str | None = None  # folder / shards of validation images (never the training set)
    val_size: int = 256  # validation images are resized + center-cropped to this side
    val_images: int = 32  # at most this many validation images


@dataclass
class TrainConfig:
    """Everything a training run needs besides the data location and output folder."""

    model: VQGANConfig = field(default_factory=lambda: default_model_config())
    codebook: CodebookConfig = field(default_factory=CodebookConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    steps: int = 20000  # optimizer steps
    batch_size: int = 8  # images per micro-batch per process
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 1e-4  # Adam learning rate (autoencoder)
    betas: tuple[float, float] = (0.5, 0.9)  # Adam betas (taming)
    weight_decay: float = 0.0  # Adam weight decay
    warmup_steps: int = 500  # linear learning-rate warmup
    lr_schedule: str = "constant"  # after warmup: "constant", "cosine" or "linear" (decay to min_lr at total_steps)
    min_lr: float = 0.0  # learning rate the cosine / linear schedule ends at
    total_steps: int = 0  # length of the decay (0 = steps); fixed in the config so the curve survives resume and --steps
    grad_clip: float = 0.0  # max gradient norm (0 = no clipping)
    precision: str = "auto"  # autocast: "auto" (bf16 on CUDA with bf16, else fp32), "bf16" or "fp32"
    ema_decay: float = 0.0  # decay of an EMA copy of the weights, exported instead (0 = off)
    decoder_only: bool = False  # train post_quant_conv + decoder only (e.g. a GAN phase on a finished model, from
    #   --init): encoder, quant_conv and codebook frozen bitwise, so the ids never change; the codebook/commitment
    #   loss and the codebook tricks (k-means, EMA codes, restarts) are off, the `codebook` section is unused
    seed: int = 0  # seeds weights, data order and augmentation
    threads: int = 0  # torch intra-op threads (0 = torch's default)
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1", ...
    log_every: int = 20  # JSONL log period (steps)
    val_every: int = 500  # validation period (steps)
    checkpoint_every: int = 500  # checkpoint period (steps)
    image_every: int = 500  # reconstruction-grid period (steps)
    keep_checkpoints: int = 2  # newest step checkpoints kept (plus "last")

    def __post_init__(self) -> None:
        self.betas = (float(self.betas[0]), float(self.betas[1]))
        check_precision(self.precision)
        if self.lr_schedule not in ("constant", "cosine", "linear"):
            raise ValueError(f"lr_schedule must be 'constant', 'cosine' or 'linear', got {self.lr_schedule!r}")
        if self.min_lr < 0 or self.total_steps < 0:
            raise ValueError("min_lr and total_steps must be >= 0")
        if self.loss.rec_loss not in ("l1", "l2", "l1+l2"):
            raise ValueError(f"loss.rec_loss must be 'l1', 'l2' or 'l1+l2', got {self.loss.rec_loss!r}")
        if self.loss.entropy_temperature <= 0:
            raise ValueError(f"loss.entropy_temperature must be positive, got {self.loss.entropy_temperature}")
        if self.model.quantizer == "lfq" and self.loss.entropy_weight > 0 and self.model.lfq_bits > LFQ.max_entropy_bits:
            raise ValueError(f"the LFQ entropy loss holds (tokens, 2**lfq_bits) probabilities: train at most {LFQ.max_entropy_bits} "
                             f"bits with it, or set loss.entropy_weight: 0 (model.lfq_bits is {self.model.lfq_bits})")
        if self.loss.chroma_weight < 0 or self.loss.chroma_patch < 1 or self.data.crop_size % self.loss.chroma_patch:
            raise ValueError(f"loss.chroma_weight must be >= 0 and loss.chroma_patch a divisor of crop_size {self.data.crop_size}, "
                             f"got {self.loss.chroma_weight} and {self.loss.chroma_patch}")
        if self.loss.chroma_readout_weight < 0:
            raise ValueError(f"loss.chroma_readout_weight must be >= 0, got {self.loss.chroma_readout_weight}")
        if self.loss.chroma_readout_weight > 0 and self.decoder_only:
            raise ValueError("loss.chroma_readout_weight trains the encoder: it cannot be used with decoder_only")
        if not 0.0 <= self.data.hue_rotate <= 1.0:
            raise ValueError(f"data.hue_rotate is a probability in [0, 1], got {self.data.hue_rotate}")
        if self.steps < 0 or self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError("steps must be >= 0, batch_size and grad_accum >= 1")
        if self.data.crop_size % self.model.downsample_factor:
            raise ValueError(f"crop_size {self.data.crop_size} must be a multiple of the downsampling factor {self.model.downsample_factor}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["model"] = self.model.to_dict()
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        d = upgrade_legacy_keys(d)  # a copy: its sections are replaced by their configs
        _check_keys(cls, d, "")
        if "model" in d:
            d["model"] = VQGANConfig.from_dict(d["model"] or {})
        for name, sub in (("codebook", CodebookConfig), ("loss", LossConfig), ("data", DataConfig)):
            if name in d:
                part = dict(d[name] or {})
                _check_keys(sub, part, name + ".")
                d[name] = sub(**part)
        return cls(**d)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str]) -> TrainConfig:
        """Read a YAML file (or JSON, by any other suffix)."""
        return cls.from_dict(read_config_file(path))

    def to_yaml(self, path: str | os.PathLike[str]) -> Path:
        return write_config_file(path, self.to_dict())

    def replace(self, **changes: Any) -> TrainConfig:
        return replace(self, **changes)


def _legacy_bf16(value: Any) -> str:
    # YAML 1.1 reads a bare on/off as a boolean
    return {True: "bf16", False: "fp32", "on": "bf16", "off": "fp32", "auto": "auto"}.get(value, str(value))


# vqtok 0.1 key -> (key now, value conversion); read until vqtok 0.3
LEGACY_KEYS: dict[str, tuple[str, Any]] = {"bf16": ("precision", _legacy_bf16), "ckpt_every": ("checkpoint_every", int)}


def upgrade_legacy_keys(d: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of the top-level config mapping ``d`` with vqtok 0.1 key names renamed (logged as deprecated)."""
    d = dict(d)
    for old, (new, convert) in LEGACY_KEYS.items():
        if old not in d:
            continue
        if new in d:
            raise ValueError(f"training config gives both {old!r} and its new name {new!r}; keep {new!r}")
        value = convert(d.pop(old))
        logger.warning("training config key %r is deprecated (read until vqtok 0.3): use %s: %s", old, new, value)
        d[new] = value
    return d


def _check_keys(cls: type, d: Mapping[str, Any], prefix: str) -> None:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"unknown training config keys: {', '.join(prefix + k for k in unknown)}")


def default_model_config() -> VQGANConfig:
    """The architecture of the shipped default tokenizer: f8, 4096 cosine codes of dimension 8."""
    return VQGANConfig(ch=32, ch_mult=(1, 2, 2, 4), num_res_blocks=1, attn_resolutions=(), z_channels=64, embed_dim=8,
                       n_embed=4096, resolution=96, beta=0.25, legacy_loss=False, l2_norm_codes=True)


def vanilla_codebook() -> CodebookConfig:
    """taming's plain VQ: random uniform init, codebook gradient, no restarts."""
    return CodebookConfig(ema=False, kmeans_init=False, dead_after=0)
