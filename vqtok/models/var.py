"""VAR's multi-scale VQVAE (FoundationVision, Tian et al. 2024, "Visual Autoregressive Modeling").

The autoencoder is the latent-diffusion f16 VQGAN (``ch_mult`` 1,1,2,2,4, two ResNets per level,
attention at the lowest resolution only, one fused ``qkv`` 1×1 conv per attention block); the
quantizer is VAR's residual multi-scale VQ. An image becomes K token maps of growing side
``patch_nums = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)``, 1² + 2² + … + 16² = 680 ids, read scale by
scale and in raster order inside each (:meth:`~vqtok.layout.TokenLayout.scales`)::

    f      = quant_conv(encoder(x))                       # (B, C, 16, 16)
    rest   = f,  f̂ = 0
    for k, pn in enumerate(patch_nums):
        r_k  = area(rest, pn)                             # (B, C, pn, pn); the last scale: rest itself
        id_k = argmin_j ‖r_k − e_j‖²                      # nearest of the V codes, fp32
        h    = φ_k(bicubic(e[id_k], 16))                  # φ(h) = (1 − ρ) h + ρ conv3×3(h),  ρ = 0.5
        f̂   += h;  rest −= h
    x̂ = decoder(post_quant_conv(f̂)).clamp(−1, 1)

The K scales share ``share_quant_resi`` φ convolutions (4 for the published model): scale k uses
the φ whose tick in ``linspace(1/12, 11/12, 4)`` is nearest to k/(K−1) (VAR's
``PhiPartiallyShared``); ``share_quant_resi`` 1 is one φ for all scales, 0 one per scale.

Parameter names are those of VAR's ``VQVAE`` state dict (``vae_ch160v4096z32.pth``), so
:func:`convert_var` is a filter: it drops the training statistic ``quantize.ema_vocab_hit_SV``
and infers the widths from the tensor shapes. ``ρ`` (``quant_resi``) and ``using_znorm`` are not
in the weights; the converter takes VAR's defaults (0.5, False), those of the released model.
"""

from __future__ import annotations

import argparse
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from vqtok._errors import listing
from vqtok._runtime import autocast
from vqtok.hub import _check_names_and_shapes
from vqtok.layout import TokenLayout, split_scales
from vqtok.models._config import ArchConfig, HalvingLevels
from vqtok.models.registry import Family, SourceFormat, register_family
from vqtok.models.vqgan import Decoder, Encoder, Normalize, VQGANConfig

__all__ = ["VARConfig", "VARVQVAE", "MultiScaleQuantizer", "Phi", "convert_var", "recognise_var", "VAR_PATCH_NUMS"]

log = logging.getLogger(__name__)

VAR_PATCH_NUMS: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)  # VAR's 10 scales at 256 px
_PHI_OFF = 1e-6  # |quant_resi| at or below this: every φ is the identity (VAR's rule)


@dataclass(frozen=True)
class VARConfig(HalvingLevels, ArchConfig):
    """Architecture of a VAR VQVAE. Defaults: the released ``vae_ch160v4096z32.pth`` (256 px, 680 ids)."""

    config_name: ClassVar[str] = "VAR"
    hash_model_type: ClassVar[str | None] = "var"

    vocab_size: int = 4096  # codebook size V
    z_channels: int = 32  # code dimension C (encoder output, quant_conv, codes, decoder input)
    ch: int = 160  # base channel count of the first level
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)  # channel multiplier per level; f = 2**(len-1)
    num_res_blocks: int = 2  # ResNet blocks per encoder level (decoder uses one more)
    dropout: float = 0.0  # dropout inside ResNet blocks (training only)
    using_sa: bool = True  # self-attention after each ResNet of the lowest-resolution level
    using_mid_sa: bool = True  # self-attention between the two middle ResNets
    using_znorm: bool = False  # cosine code search (l2-normalised rest and codes) instead of distances
    beta: float = 0.25  # commitment weight of VAR's quantizer loss (training only)
    quant_conv_ks: int = 3  # kernel of quant_conv / post_quant_conv
    quant_resi: float = 0.5  # ρ of φ(h) = (1 − |ρ|) h + |ρ| conv(h); |ρ| <= 1e-6: no φ convolutions
    share_quant_resi: int = 4  # φ convolutions shared by the scales: 0 one per scale, 1 one for all, n >= 2: n
    default_qresi_counts: int = 0  # share_quant_resi 0 only: how many φ (0: one per scale)
    patch_nums: tuple[int, ...] = VAR_PATCH_NUMS  # token map sides, coarse to fine; the last is the latent side

    def __post_init__(self) -> None:
        self._int_tuples("ch_mult", "patch_nums")
        self._positive_ints("VAR config:", ("vocab_size", "z_channels", "ch", "num_res_blocks", "quant_conv_ks"))
        if self.quant_conv_ks % 2 == 0:
            raise ValueError(f"VAR config: quant_conv_ks must be odd (same-size convolution), got {self.quant_conv_ks}")
        if not self.ch_mult or any(m < 1 for m in self.ch_mult):
            raise ValueError(f"VAR config: ch_mult must be positive ints, got {list(self.ch_mult)}")
        if any((self.ch * m) % 32 for m in (1,) + self.ch_mult):
            raise ValueError(f"VAR config: GroupNorm(32) needs ch * every ch_mult divisible by 32: ch={self.ch}, ch_mult={list(self.ch_mult)}")
        if len(self.patch_nums) < 2 or any(p < 1 for p in self.patch_nums) or list(self.patch_nums) != sorted(set(self.patch_nums)):
            raise ValueError(f"VAR config: patch_nums must be at least two increasing positive ints, got {list(self.patch_nums)}")
        if self.share_quant_resi < 0 or self.default_qresi_counts < 0:
            raise ValueError(
                f"VAR config: share_quant_resi and default_qresi_counts must be >= 0, got {self.share_quant_resi}, {self.default_qresi_counts}"
            )
        if not 0.0 <= self.dropout < 1.0 or not math.isfinite(self.quant_resi):
            raise ValueError(f"VAR config: dropout must lie in [0, 1) and quant_resi be finite, got {self.dropout}, {self.quant_resi}")

    @property
    def embed_dim(self) -> int:
        """Code dimension D (= z_channels), as every family's config names it."""
        return self.z_channels

    @property
    def image_size(self) -> int:
        """The one image side the model takes: the last token map side × the downsample factor (256)."""
        return self.patch_nums[-1] * self.downsample_factor

    @property
    def num_phi(self) -> int:
        """How many φ convolutions the quantizer holds (0 when ρ turns them off)."""
        if abs(self.quant_resi) <= _PHI_OFF:
            return 0
        if self.share_quant_resi == 0:
            return self.default_qresi_counts or len(self.patch_nums)
        return self.share_quant_resi

    def vqgan_config(self) -> VQGANConfig:
        """The autoencoder as a VQGANConfig: taming's levels, attention (``using_sa``) at the lowest resolution only."""
        return VQGANConfig(ch=self.ch, ch_mult=self.ch_mult, num_res_blocks=self.num_res_blocks, dropout=self.dropout,
                           z_channels=self.z_channels, resolution=self.downsample_factor, attn_resolutions=(1,) if self.using_sa else ())


# ---------------------------------------------------------------------------------------- autoencoder
class QKVAttnBlock(nn.Module):
    """Single-head self-attention over all h×w positions with one fused ``qkv`` 1×1 conv (VAR's ``AttnBlock``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = Normalize(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W)
        h, w = x.shape[-2:]
        q, k, v = rearrange(self.qkv(self.norm(x)), "b (three c) h w -> three b 1 (h w) c", three=3)
        y = F.scaled_dot_product_attention(q, k, v)  # (B, 1, H*W, C), scale C**-0.5 as VAR
        return x + self.proj_out(rearrange(y, "b 1 (h w) c -> b c h w", h=h, w=w))


# ---------------------------------------------------------------------------------------- quantizer
class Phi(nn.Conv2d):
    """φ(h) = (1 − ρ) h + ρ conv3×3(h): the residual refinement of an upsampled token map (VAR's ``Phi``).

    Runs in the dtype of ``h`` (float32 in the quantizer) whatever the weights' dtype.
    """

    def __init__(self, channels: int, ratio: float) -> None:
        super().__init__(channels, channels, 3, padding=1)
        self.ratio = abs(ratio)

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> same
        bias = None if self.bias is None else self.bias.to(h.dtype)
        return h.mul(1 - self.ratio) + self._conv_forward(h, self.weight.to(h.dtype), bias).mul_(self.ratio)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, ratio={self.ratio}"


class PhiShared(nn.Module):
    """One φ for every scale (``share_quant_resi`` 1); keys ``quant_resi.qresi.*``."""

    def __init__(self, phi: nn.Module) -> None:
        super().__init__()
        self.qresi = phi


class PhiPartiallyShared(nn.Module):
    """n φ shared by the scales (``share_quant_resi`` n >= 2); keys ``quant_resi.qresi_ls.{i}.*``."""

    def __init__(self, phis: Sequence[nn.Module]) -> None:
        super().__init__()
        self.qresi_ls = nn.ModuleList(phis)


class PhiNonShared(nn.ModuleList):
    """One φ per scale (``share_quant_resi`` 0); keys ``quant_resi.{i}.*``."""


def phi_indices(num_phi: int, num_scales: int) -> tuple[int, ...]:
    """Which of ``num_phi`` φ each of ``num_scales`` scales uses: the nearest tick to k/(K−1), first on ties.

    VAR's ticks: ``linspace(1/12, 11/12, 4)`` for 4 φ, else ``linspace(1/(2n), 1 − 1/(2n), n)``.
    """
    if num_phi <= 1:
        return (0,) * num_scales
    edge = 1 / 3 / num_phi if num_phi == 4 else 1 / 2 / num_phi
    ticks = np.linspace(edge, 1 - edge, num_phi)
    return tuple(int(np.argmin(np.abs(ticks - k / (num_scales - 1)))) for k in range(num_scales))


class MultiScaleQuantizer(nn.Module):
    """VAR's residual multi-scale quantizer: ``embedding`` (V, C) and the φ convolutions ``quant_resi``."""

    def __init__(self, cfg: VARConfig) -> None:
        super().__init__()
        self.patch_nums = cfg.patch_nums
        self.using_znorm = cfg.using_znorm
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.z_channels)
        # VAR's φ count; with |ρ| <= 1e-6 the same containers hold identities (no weights)
        count = (cfg.default_qresi_counts or len(cfg.patch_nums)) if cfg.share_quant_resi == 0 else cfg.share_quant_resi
        phis: list[nn.Module] = [Phi(cfg.z_channels, cfg.quant_resi) if cfg.num_phi else nn.Identity() for _ in range(count)]
        if cfg.share_quant_resi == 0:
            self.quant_resi: nn.Module = PhiNonShared(phis)
        elif cfg.share_quant_resi == 1:
            self.quant_resi = PhiShared(phis[0])
        else:
            self.quant_resi = PhiPartiallyShared(phis)
        self._phis = tuple(phis)  # the φ in order (registered above, in quant_resi)
        self._phi_of_scale = phi_indices(len(phis), len(cfg.patch_nums))

    def phi(self, scale: int) -> nn.Module:
        """The φ of scale ``scale`` (0 = the 1×1 map)."""
        return self._phis[self._phi_of_scale[scale]]

    def extra_repr(self) -> str:
        return f"patch_nums={list(self.patch_nums)}, phi_of_scale={list(self._phi_of_scale)}, znorm={self.using_znorm}"

    def nearest(self, z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
        """z (N, C), codebook (V, C), float32 -> (N,) long: VAR's nearest code (or largest cosine with znorm)."""
        if self.using_znorm:
            return torch.argmax(F.normalize(z, dim=-1) @ F.normalize(codebook.T, dim=0), dim=1)
        d = torch.sum(z.square(), dim=1, keepdim=True) + torch.sum(codebook.square(), dim=1)  # (N, V)
        d.addmm_(z, codebook.T, alpha=-2, beta=1)
        return torch.argmin(d, dim=1)

    @torch.no_grad()
    def f_to_ids(self, f: torch.Tensor) -> list[torch.Tensor]:
        """Features f (B, C, H, W) float32 -> ids per scale [(B, pnₖ²) long, ...] (VAR's ``f_to_idxBl_or_fhat``)."""
        b, c, hgt, wid = f.shape
        codebook = self.embedding.weight.float()  # (V, C)
        rest = f.clone()  # f − f̂ so far
        ids: list[torch.Tensor] = []
        last = len(self.patch_nums) - 1
        for k, pn in enumerate(self.patch_nums):
            r = rest if k == last else F.interpolate(rest, size=(pn, pn), mode="area")  # (B, C, pn, pn)
            idx = self.nearest(r.permute(0, 2, 3, 1).reshape(-1, c), codebook)  # (B*pn*pn,)
            h = F.embedding(idx.view(b, pn, pn), codebook).permute(0, 3, 1, 2)  # (B, C, pn, pn), channels_last view
            if k != last:
                h = F.interpolate(h, size=(hgt, wid), mode="bicubic")
            rest.sub_(self.phi(k)(h.contiguous()))  # the φ-refined map (B, C, H, W) joins f̂
            ids.append(idx.view(b, pn * pn))
        return ids

    @torch.no_grad()
    def ids_to_f_hat(self, ids: Sequence[torch.Tensor]) -> torch.Tensor:
        """Ids per scale [(B, pnₖ²) long, ...] -> f̂ (B, C, H, W) float32 (VAR's ``embed_to_fhat``, all scales to the last)."""
        b, side = ids[0].shape[0], self.patch_nums[-1]
        codebook = self.embedding.weight.float()  # (V, C)
        c = codebook.shape[1]
        f_hat = codebook.new_zeros(b, c, side, side)
        last = len(self.patch_nums) - 1
        for k, (pn, idx) in enumerate(zip(self.patch_nums, ids)):
            h = F.embedding(idx, codebook).transpose(1, 2).view(b, c, pn, pn)  # (B, C, pn, pn)
            if k != last:
                h = F.interpolate(h, size=(side, side), mode="bicubic")
            f_hat.add_(self.phi(k)(h))
        return f_hat


# ---------------------------------------------------------------------------------------- model
class VARVQVAE(nn.Module):
    """VAR's VQVAE: images of one size <-> Σ pn² multi-scale ids; parameter names identical to VAR's ``VQVAE``."""

    pixel_range: ClassVar[tuple[float, float]] = (-1.0, 1.0)  # encode_ids takes, decode_ids gives images in this range

    def __init__(self, config: VARConfig | None = None) -> None:
        super().__init__()
        self.config = config or VARConfig()
        cfg = self.config
        pad = cfg.quant_conv_ks // 2
        # taming's encoder and decoder (VAR's names) with VAR's attention blocks; the middle one may be off
        mid_attn = QKVAttnBlock if cfg.using_mid_sa else (lambda channels: nn.Identity())
        self.encoder = Encoder(cfg.vqgan_config(), QKVAttnBlock, mid_attn)
        self.decoder = Decoder(cfg.vqgan_config(), QKVAttnBlock, mid_attn)
        self.quantize = MultiScaleQuantizer(cfg)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.z_channels, cfg.quant_conv_ks, padding=pad)
        self.post_quant_conv = nn.Conv2d(cfg.z_channels, cfg.z_channels, cfg.quant_conv_ks, padding=pad)

    @property
    def downsample_factor(self) -> int:
        return int(self.config.downsample_factor)

    @property
    def image_size(self) -> int:
        return int(self.config.image_size)

    def layout(self, image_size: int | tuple[int, int] | None = None) -> TokenLayout:
        """The scales layout: one (pn, pn) map per ``patch_nums`` entry; only ``image_size`` × ``image_size`` images."""
        if image_size is not None:
            self._check_size(*((image_size, image_size) if isinstance(image_size, int) else image_size))
        return TokenLayout.scales(self.config.vocab_size, [(pn, pn) for pn in self.config.patch_nums])

    def _check_size(self, hgt: int, wid: int) -> None:
        if (hgt, wid) != (self.image_size, self.image_size):
            sides = ",".join(map(str, self.config.patch_nums))
            raise ValueError(
                f"VAR with patch_nums {sides} takes {self.image_size}x{self.image_size} images, got {wid}x{hgt} (WxH); "
                f"pass size={self.image_size}"
            )

    def encode_features(self, x: torch.Tensor, *, autocast_dtype: torch.dtype | None = None) -> torch.Tensor:
        """x (B, 3, H, W) in [-1, 1] -> f (B, C, H/f, W/f) float32; the encoder alone under autocast when asked."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"VAR encodes images shaped (B, 3, H, W), got {tuple(x.shape)}")
        self._check_size(x.shape[-2], x.shape[-1])
        with autocast(x.device, autocast_dtype):
            h = self.encoder(x)
        return self.quant_conv(h.to(self.quant_conv.weight.dtype)).float()

    def encode_ids(self, x: torch.Tensor, *, autocast_dtype: torch.dtype | None = None) -> torch.Tensor:
        """x (B, 3, H, W) in [-1, 1] -> ids (B, Σ pn²) long, scale by scale (VAR's ``img_to_idxBl``, concatenated)."""
        with torch.autocast(device_type=x.device.type, enabled=False):
            return torch.cat(self.quantize.f_to_ids(self.encode_features(x, autocast_dtype=autocast_dtype)), dim=1)

    def decode_ids(
        self, ids: torch.Tensor, *, autocast_dtype: torch.dtype | None = None, channels_last: bool = False
    ) -> torch.Tensor:
        """ids (B, Σ pn²) long -> image (B, 3, H, W) in [-1, 1] (VAR's ``idxBl_to_img(same_shape=True, last_one=True)``).

        The φ accumulation runs in float32; post_quant_conv and the decoder under autocast when asked.
        ``channels_last``: the decoder on NHWC activations (same result, faster kernels).
        """
        shapes = [(pn, pn) for pn in self.config.patch_nums]
        per_scale = [s.flatten(1) for s in split_scales(ids.long(), shapes)]  # [(B, pn²), ...]
        with torch.autocast(device_type=ids.device.type, enabled=False):
            f_hat = self.quantize.ids_to_f_hat(per_scale)  # (B, C, 16, 16)
        f_hat = f_hat.to(self.post_quant_conv.weight.dtype)
        if channels_last:
            f_hat = f_hat.contiguous(memory_format=torch.channels_last)
        with autocast(ids.device, autocast_dtype):
            return self.decoder(self.post_quant_conv(f_hat)).clamp_(-1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, 3, H, W) in [-1, 1] -> its reconstruction through the ids (inference; no straight-through gradient)."""
        return self.decode_ids(self.encode_ids(x))


# ---------------------------------------------------------------------------------------- conversion
_EMA = "quantize.ema_vocab_hit_SV"  # VAR's per-scale code-usage EMA: a training statistic, not the tokenizer
_PREFIXES = ("encoder.", "decoder.", "quantize.", "quant_conv.", "post_quant_conv.")


def _indices(state: Mapping[str, Any], pattern: str) -> list[int]:
    """Sorted distinct integers captured by ``pattern`` (one group) over the state dict's keys."""
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in state if (m := rx.fullmatch(k))})


def infer_var_config(state: Mapping[str, torch.Tensor], *, patch_nums: Sequence[int] | None = None, source: str = "state dict") -> VARConfig:
    """The VARConfig of a VAR VQVAE state dict (VAR's names), read from its tensor shapes."""
    need = ("quantize.embedding.weight", "encoder.conv_in.weight", "quant_conv.weight", "encoder.down.0.block.0.conv1.weight")
    missing = [k for k in need if k not in state]
    if missing:
        raise ValueError(f"{source} is not a VAR VQVAE state dict: no {', '.join(missing)}")
    vocab_size, z_channels = state["quantize.embedding.weight"].shape
    ch = state["encoder.conv_in.weight"].shape[0]
    levels = _indices(state, r"encoder\.down\.(\d+)\..*")
    ch_mult = tuple(state[f"encoder.down.{i}.block.0.conv1.weight"].shape[0] // ch for i in levels)
    num_res_blocks = len(_indices(state, r"encoder\.down\.0\.block\.(\d+)\..*"))
    using_sa = any(k.startswith(f"encoder.down.{levels[-1]}.attn.") for k in state)
    using_mid_sa = "encoder.mid.attn_1.qkv.weight" in state
    partial = _indices(state, r"quantize\.quant_resi\.qresi_ls\.(\d+)\.weight")
    nonshared = _indices(state, r"quantize\.quant_resi\.(\d+)\.weight")
    pns = tuple(patch_nums) if patch_nums is not None else VAR_PATCH_NUMS
    quant_resi, counts = 0.5, 0
    if "quantize.quant_resi.qresi.weight" in state:
        share = 1
    elif partial:
        share = len(partial)
    elif nonshared:
        share, counts = 0, (0 if len(nonshared) == len(pns) else len(nonshared))
    else:  # no φ weights: VAR built it with |quant_resi| <= 1e-6 (φ = identity)
        share, quant_resi = 4, 0.0
    return VARConfig(
        vocab_size=int(vocab_size), z_channels=int(z_channels), ch=int(ch), ch_mult=ch_mult, num_res_blocks=num_res_blocks,
        using_sa=using_sa, using_mid_sa=using_mid_sa, quant_conv_ks=int(state["quant_conv.weight"].shape[-1]),
        quant_resi=quant_resi, share_quant_resi=share, default_qresi_counts=counts, patch_nums=pns,
    )


def convert_var(paths: list[Path], *, patch_nums: tuple[int, ...] | None = None) -> tuple[VARConfig, dict[str, torch.Tensor]]:
    """A VAR VQVAE ``.pth`` (plain state dict, e.g. ``vae_ch160v4096z32.pth``) -> (VARConfig, state dict in our names).

    ``patch_nums``: the token map sides the model is used with (VAR's 1,2,3,4,5,6,8,10,13,16 by
    default); they are not in the weights (the φ count is). Reads with the restricted unpickler.
    """
    from vqtok.convert.safe_pickle import load_checkpoint

    if len(paths) != 1:
        raise ValueError(f"a VAR VQVAE is one .pth file, got {len(paths)} paths")
    path = Path(paths[0])
    raw = load_checkpoint(path)
    if not isinstance(raw, Mapping) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise ValueError(f"{path} is not a VAR VQVAE state dict (a plain dict of tensors, as vae_ch160v4096z32.pth)")
    state = {k: v for k, v in raw.items() if k != _EMA}
    foreign = sorted(k for k in state if not k.startswith(_PREFIXES))
    if foreign:
        raise ValueError(f"{path} is not a VAR VQVAE state dict: unexpected keys {listing(foreign)}")
    config = infer_var_config(state, patch_nums=patch_nums, source=str(path))
    with torch.device("meta"):
        expected = VARVQVAE(config).state_dict()
    _check_names_and_shapes(expected, state, str(path))  # against the VAR VQVAE its shapes imply
    if _EMA in raw:
        log.info("dropped %s (VAR's code-usage statistic, not part of the tokenizer)", _EMA)
    log.info("converted %s: vocab %d, z %d, ch %d x %s, %d scales", path.name, config.vocab_size, config.z_channels,
             config.ch, list(config.ch_mult), len(config.patch_nums))
    return config, {k: state[k].float().contiguous() for k in expected}


_VAE_FILE = re.compile(r"(?:.*/)?vae_[^/]*\.pth")


def recognise_var(names: Sequence[str], read_config: Callable[[str], Mapping[str, Any] | None]) -> tuple[str, ...] | None:
    """A Hub repo / folder holding a VAR VQVAE ``vae_*.pth`` (FoundationVision/var: ``vae_ch160v4096z32.pth``) -> that file."""
    found = sorted(n for n in names if _VAE_FILE.fullmatch(n))
    if not found:
        return None
    if len(found) > 1:
        log.info("several VAR VQVAE files (%s): taking %s", ", ".join(found), found[0])
    return (found[0],)


def _patch_nums_arg(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.replace(" ", "").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--patch-nums takes comma-separated ints such as 1,2,3,4,5,6,8,10,13,16, got {text!r}") from None


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--patch-nums", type=_patch_nums_arg, default=None, dest="patch_nums",
                        help="token map sides, coarse to fine (default VAR's 1,2,3,4,5,6,8,10,13,16; the last × 16 is the image side)")


register_family(Family(
    name="var", config_class=VARConfig, model_class=VARVQVAE,
    description="FoundationVision VAR VQVAE (multi-scale residual VQ, 680 ids at 256 px)",
    tiny_config=lambda: VARConfig(vocab_size=512, z_channels=8, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, patch_nums=(1, 2, 4, 8)),
    test_image_size=32,
    formats=(SourceFormat(
        name="var", help="FoundationVision VAR VQVAE .pth (plain state dict)", convert="vqtok.models.var:convert_var",
        recognise=recognise_var, add_arguments=_add_arguments, sources=("ckpt",),
    ),),
))
