"""NVIDIA Cosmos discrete image tokenizers (Cosmos-0.1-Tokenizer-DI8x8 / DI16x16), as one file.

Pipeline (``DiscreteImageTokenizer`` in NVIDIA's ``cosmos_tokenizer``)::

    image (B, 3, H, W) in [-1, 1]
      -> encoder.patcher      Haar wavelet patching, log2(p) levels: (B, 3·p², H/p, W/p)
      -> encoder              taming-style ResNet/attention stack, f/p further halvings: (B, z_channels, h, w)
      -> quant_conv           1×1 conv: (B, embedding_dim = 6, h, w)
      -> FSQ                  levels [8, 8, 8, 5, 5, 5]: ids (B, h, w) in [0, 64000), codes in [-1, 1]
      -> post_quant_conv      1×1 conv: (B, z_channels, h, w)
      -> decoder              ResNet/attention stack, nearest ×2 upsampling: (B, 3·p², H/p, W/p)
      -> decoder.unpatcher    inverse Haar transform: (B, 3, H, W)

with h = H/f, f = ``spatial_compression`` (8 for DI8x8, 16 for DI16x16) and p = ``patch_size`` (4).

Differences from the taming VQGAN (:mod:`vqtok.models.vqgan`): wavelet patching in and out,
downsampling only at the first ``log2(f/p)`` levels (zero-pad right/bottom, 3×3 stride-2 conv),
upsampling only at the last ``log2(f/p)`` decoder levels (``repeat_interleave`` ×2, 3×3 conv),
attention wherever the running side is in ``attn_resolutions`` (with the published
``resolution = 1024`` and ``attn_resolutions = [32]`` that is the mid blocks only), an FSQ
quantizer instead of a codebook.

Names follow the published modules (``cosmos_tokenizer/modules/layers2d.py``,
``networks/discrete_image.py``): ``encoder.down.0.block.1.conv1.weight``,
``encoder.down.1.downsample.conv.weight``, ``encoder.mid.attn_1.q.weight``,
``decoder.up.2.upsample.conv.weight``, ``quant_conv.weight``, ``post_quant_conv.bias`` ... so the
tensors of the published ``encoder.jit`` (``encoder.*``, ``quant_conv.*``) and ``decoder.jit``
(``post_quant_conv.*``, ``decoder.*``) load with ``strict=True`` (see :mod:`vqtok.convert.cosmos`).
The FSQ has no parameters; the Haar filters are fixed, non-persistent buffers.

Cosmos's ``FSQuantizer`` numbers codes exactly as :class:`vqtok.models.fsq.FSQ` does: the same
tanh bound (ε = 1e-3, atanh shift for even levels), level index = round(bounded) + ⌊L/2⌋, and
id = Σ_d index_d · ∏_{e<d} L_e (its ``_basis`` is the cumulative product of ``[1] + levels[:-1]``:
channel 0 least significant). tests/test_cosmos.py checks this against an independent
re-implementation of Cosmos's formulas.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from vqtok.models._config import ArchConfig
from vqtok.models._model import LastLayerMixin, ModelOutput, TokenizerModelMixin
from vqtok.models.fsq import FSQ
from vqtok.models.magvit2 import _norm, swish
from vqtok.models.registry import Family, SourceFormat, register_family
from vqtok.models.vqgan import AttnBlock as _TamingAttnBlock
from vqtok.models.vqgan import Downsample, _Level, _Mid
from vqtok.models.vqgan import ResnetBlock as _TamingResnetBlock
from vqtok.models.vqgan import Upsample as _TamingUpsample

__all__ = ["CosmosConfig", "CosmosDI", "CosmosEncoder", "CosmosDecoder", "Patcher", "UnPatcher", "COSMOS_PRESETS"]

_HAAR = 1.0 / math.sqrt(2.0)  # 0.7071067811865476, the Haar filter taps as published


@dataclass(frozen=True)
class CosmosConfig(ArchConfig):
    """Architecture of a Cosmos discrete image tokenizer. Defaults: ``Cosmos-0.1-Tokenizer-DI16x16``."""

    config_name: ClassVar[str] = "Cosmos"
    hash_model_type: ClassVar[str | None] = "cosmos"

    channels: int = 128  # base channel count
    channels_mult: tuple[int, ...] = (2, 4, 4)  # channel multiplier per resolution level
    num_res_blocks: int = 2  # ResNet blocks per encoder level (the decoder has one more per level)
    attn_resolutions: tuple[int, ...] = (32,)  # running sides (counted from resolution/patch_size) with attention
    resolution: int = 1024  # nominal image side; only decides where attention sits (as published)
    in_channels: int = 3  # image channels in
    out_channels: int = 3  # image channels out
    patch_size: int = 4  # wavelet patching factor p (a power of 2; 1 = no patching)
    patch_method: str = "haar"  # "haar" (published DI models) or "rearrange" (space-to-depth)
    z_channels: int = 256  # encoder output / decoder input channels
    embedding_dim: int = 6  # quant_conv output = FSQ channels (= len(levels))
    levels: tuple[int, ...] = (8, 8, 8, 5, 5, 5)  # FSQ levels per channel; codebook size = their product
    spatial_compression: int = 16  # f: image side / token grid side (8 for DI8x8, 16 for DI16x16)
    dropout: float = 0.0  # dropout inside the ResNet blocks (training only; 0 as published)
    quantizer: str = "fsq"  # the quantizer family; Cosmos DI uses finite scalar quantization

    def __post_init__(self) -> None:
        self._int_tuples("channels_mult", "attn_resolutions", "levels")
        if not self.channels_mult:
            raise ValueError("channels_mult must have at least one level")
        if any((self.channels * m) % 32 for m in self.channels_mult):
            raise ValueError(
                f"GroupNorm(32) needs channel counts divisible by 32: channels={self.channels}, channels_mult={self.channels_mult}"
            )
        if self.z_channels % 32:
            raise ValueError(f"z_channels must be divisible by 32 (GroupNorm), got {self.z_channels}")
        if self.num_res_blocks < 1:
            raise ValueError(f"num_res_blocks must be >= 1, got {self.num_res_blocks}")
        for name in ("patch_size", "spatial_compression"):
            v = getattr(self, name)
            if v < 1 or v & (v - 1):
                raise ValueError(f"{name} must be a power of 2, got {v}")
        if self.patch_method not in ("haar", "rearrange"):
            raise ValueError(f"patch_method must be 'haar' or 'rearrange', got {self.patch_method!r}")
        if self.spatial_compression < self.patch_size:
            raise ValueError(f"spatial_compression {self.spatial_compression} is smaller than patch_size {self.patch_size}")
        if self.num_resamples > len(self.channels_mult):
            raise ValueError(
                f"spatial_compression {self.spatial_compression} with patch_size {self.patch_size} needs "
                f"{self.num_resamples} downsamplings but there are only {len(self.channels_mult)} levels"
            )
        if self.quantizer != "fsq":
            raise ValueError(f"CosmosDI supports quantizer 'fsq', got {self.quantizer!r}")
        if self.embedding_dim != len(self.levels):
            raise ValueError(
                f"embedding_dim ({self.embedding_dim}) must equal the number of FSQ levels ({len(self.levels)}); "
                "Cosmos's FSQ has no projection in the published DI models"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def num_resamples(self) -> int:
        """Number of stride-2 downsamplings in the encoder (= ×2 upsamplings in the decoder): log2(f / p)."""
        return int(math.log2(self.spatial_compression)) - int(math.log2(self.patch_size))

    @property
    def downsample_factor(self) -> int:
        return self.spatial_compression

    @property
    def embed_dim(self) -> int:
        """Code dimension D (FSQ channels)."""
        return self.embedding_dim

    @property
    def n_embed(self) -> int:
        """Codebook size K = ∏ levels (64 000 for the published models)."""
        return math.prod(self.levels)

    @classmethod
    def preset(cls, name: str) -> "CosmosConfig":
        """The published architecture: ``"DI8x8"`` or ``"DI16x16"`` (also with the ``Cosmos-0.1-Tokenizer-`` prefix)."""
        key = name.rsplit("-", 1)[-1].upper().replace("X", "x")
        if key not in COSMOS_PRESETS:
            raise ValueError(f"unknown Cosmos discrete image tokenizer {name!r}; known: {', '.join(COSMOS_PRESETS)}")
        return cls(spatial_compression=COSMOS_PRESETS[key])


COSMOS_PRESETS: dict[str, int] = {"DI8x8": 8, "DI16x16": 16}  # published name -> spatial_compression


def _haar_filters(wavelets: torch.Tensor, groups: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Low-pass (reversed taps) and high-pass (alternating signs) filters, each (groups, 1, n)."""
    n = wavelets.shape[0]
    low = wavelets.flip(0).reshape(1, 1, n).repeat(groups, 1, 1).to(dtype)
    signs = (-1) ** torch.arange(n, device=wavelets.device)  # +1, -1, +1, ...
    high = (wavelets * signs).reshape(1, 1, n).repeat(groups, 1, 1).to(dtype)
    return low, high


class _WaveletPatching(nn.Module):
    """What :class:`Patcher` and :class:`UnPatcher` share: the factor p, the method and the fixed filter taps."""

    def __init__(self, patch_size: int = 1, patch_method: str = "haar") -> None:
        super().__init__()
        self.patch_size = patch_size
        self.patch_method = patch_method
        taps = [_HAAR, _HAAR] if patch_method == "haar" else [1.0, 1.0]
        self.register_buffer("wavelets", torch.tensor(taps), persistent=False)
        self.steps = int(math.log2(patch_size))


class Patcher(_WaveletPatching):
    """Image -> patches: ``haar`` = log2(p) 2-D Haar analysis steps (each (B, C, H, W) -> (B, 4C, H/2, W/2),
    sub-bands ordered LL, LH, HL, HH along channels, halved), ``rearrange`` = space-to-depth
    ``b c (h p1) (w p2) -> b (c p1 p2) h w``. No parameters."""

    def _dwt(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, 4C, H/2, W/2)
        n = self.wavelets.shape[0]
        g = x.shape[1]
        low, high = _haar_filters(self.wavelets, g, x.dtype)
        x = F.pad(x, (n - 2, n - 1, n - 2, n - 1), mode="reflect")
        xl = F.conv2d(x, low.unsqueeze(2), groups=g, stride=(1, 2))  # along W
        xh = F.conv2d(x, high.unsqueeze(2), groups=g, stride=(1, 2))
        bands = [
            F.conv2d(xl, low.unsqueeze(3), groups=g, stride=(2, 1)),  # along H
            F.conv2d(xl, high.unsqueeze(3), groups=g, stride=(2, 1)),
            F.conv2d(xh, low.unsqueeze(3), groups=g, stride=(2, 1)),
            F.conv2d(xh, high.unsqueeze(3), groups=g, stride=(2, 1)),
        ]
        return torch.cat(bands, dim=1) / 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, C·p², H/p, W/p)
        if self.patch_method == "haar":
            for _ in range(self.steps):
                x = self._dwt(x)
            return x
        b, c, h, w = x.shape
        p = self.patch_size
        x = x.reshape(b, c, h // p, p, w // p, p).permute(0, 1, 3, 5, 2, 4)  # (B, C, p1, p2, h, w)
        return x.reshape(b, c * p * p, h // p, w // p).contiguous()


class UnPatcher(_WaveletPatching):
    """Inverse of :class:`Patcher`: (B, C·p², h, w) -> (B, C, h·p, w·p) (Haar synthesis by transposed convs)."""

    def _idwt(self, x: torch.Tensor) -> torch.Tensor:  # (B, 4C, h, w) -> (B, C, 2h, 2w)
        n = self.wavelets.shape[0]
        g = x.shape[1] // 4
        low, high = _haar_filters(self.wavelets, g, x.dtype)
        ll, lh, hl, hh = torch.chunk(x, 4, dim=1)
        vlow, vhigh = low.unsqueeze(3), high.unsqueeze(3)  # (g, 1, n, 1): along H
        yl = F.conv_transpose2d(ll, vlow, groups=g, stride=(2, 1), padding=(n - 2, 0))
        yl = yl + F.conv_transpose2d(lh, vhigh, groups=g, stride=(2, 1), padding=(n - 2, 0))
        yh = F.conv_transpose2d(hl, vlow, groups=g, stride=(2, 1), padding=(n - 2, 0))
        yh = yh + F.conv_transpose2d(hh, vhigh, groups=g, stride=(2, 1), padding=(n - 2, 0))
        hlow, hhigh = low.unsqueeze(2), high.unsqueeze(2)  # (g, 1, 1, n): along W
        y = F.conv_transpose2d(yl, hlow, groups=g, stride=(1, 2), padding=(0, n - 2))
        y = y + F.conv_transpose2d(yh, hhigh, groups=g, stride=(1, 2), padding=(0, n - 2))
        return y * 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C·p², h, w) -> (B, C, h·p, w·p)
        if self.patch_method == "haar":
            for _ in range(self.steps):
                x = self._idwt(x)
            return x
        b, cpp, h, w = x.shape
        p = self.patch_size
        c = cpp // (p * p)
        x = x.reshape(b, c, p, p, h, w).permute(0, 1, 4, 2, 5, 3)  # (B, C, h, p1, w, p2)
        return x.reshape(b, c, h * p, w * p)


# The building blocks are taming's (vqtok.models.vqgan: same parameter names, same layout); what
# Cosmos computes differently is kept below, since its published pixels are matched bit for bit.
# Its norm and nonlinearity are Open-MAGVIT2's: plain GroupNorm(32), x·σ(x) written out (F.silu may round differently).


class ResnetBlock(_TamingResnetBlock):
    """Taming's ResNet block as Cosmos computes it: plain ``nn.GroupNorm``, x·σ(x) written out, identity shortcut."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0) -> None:
        super().__init__(in_channels, out_channels, dropout, norm=_norm)
        if in_channels == out_channels:
            self.nin_shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C_in, H, W) -> (B, C_out, H, W)
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(self.dropout(swish(self.norm2(h))))
        return self.nin_shortcut(x) + h


class AttnBlock(_TamingAttnBlock):
    """Taming's attention block as Cosmos computes it: plain ``nn.GroupNorm``, softmax(qᵀk/√C) by ``bmm`` (not SDPA)."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels, norm=_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> same
        h = self.norm(x)
        b, c, height, width = x.shape
        q = self.q(h).reshape(b, c, height * width).permute(0, 2, 1)  # (B, N, C)
        k = self.k(h).reshape(b, c, height * width)  # (B, C, N)
        v = self.v(h).reshape(b, c, height * width)  # (B, C, N)
        weights = F.softmax(torch.bmm(q, k) * (int(c) ** (-0.5)), dim=2)  # (B, N_query, N_key)
        out = torch.bmm(v, weights.permute(0, 2, 1)).reshape(b, c, height, width)
        return x + self.proj_out(out)


class Upsample(_TamingUpsample):
    """Nearest ×2 by ``repeat_interleave`` as Cosmos does (the values of taming's interpolation, but Cosmos's
    memory layout, which decides the conv kernels and so the bits), then 3×3 conv: (B, C, H, W) -> (B, C, 2H, 2W)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3))


class CosmosEncoder(nn.Module):
    """Image (B, in_channels, H, W) -> features (B, z_channels, H/f, W/f)."""

    def __init__(self, cfg: CosmosConfig) -> None:
        super().__init__()
        p = cfg.patch_size
        self.patcher = Patcher(p, cfg.patch_method)
        self.conv_in = nn.Conv2d(cfg.in_channels * p * p, cfg.channels, 3, padding=1)
        side = cfg.resolution // p  # running side, only for placing attention
        self.down = nn.ModuleList()
        block_out = cfg.channels
        for i, mult in enumerate(cfg.channels_mult):
            block_in, block_out = block_out, cfg.channels * mult
            attention = side in cfg.attn_resolutions
            level = _Level(block_in, block_out, cfg.num_res_blocks, cfg.dropout, attention, ResnetBlock, AttnBlock)
            if i < cfg.num_resamples:
                level.downsample = Downsample(block_out)
                side //= 2
            self.down.append(level)
        self.mid = _Mid(block_out, cfg.dropout, ResnetBlock, AttnBlock)
        self.norm_out = _norm(block_out)
        self.conv_out = nn.Conv2d(block_out, cfg.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(self.patcher(x))  # (B, channels, H/p, W/p)
        for level in self.down:
            h = level(h)
        h = self.mid(h)
        return self.conv_out(swish(self.norm_out(h)))


class CosmosDecoder(LastLayerMixin, nn.Module):
    """Features (B, z_channels, h, w) -> image (B, out_channels, h·f, w·f), roughly in [-1, 1]."""

    def __init__(self, cfg: CosmosConfig) -> None:
        super().__init__()
        n = len(cfg.channels_mult)
        p = cfg.patch_size
        block_in = cfg.channels * cfg.channels_mult[-1]
        # Running side as published: counted from the bottom of a full-depth pyramid, whether or
        # not every level upsamples (only decides where attention sits).
        side = (cfg.resolution // p) // 2 ** (n - 1)
        self.conv_in = nn.Conv2d(cfg.z_channels, block_in, 3, padding=1)
        self.mid = _Mid(block_in, cfg.dropout, ResnetBlock, AttnBlock)
        levels: list[_Level] = []
        for i in reversed(range(n)):
            block_out = cfg.channels * cfg.channels_mult[i]
            attention = side in cfg.attn_resolutions
            level = _Level(block_in, block_out, cfg.num_res_blocks + 1, cfg.dropout, attention, ResnetBlock, AttnBlock)
            block_in = block_out
            if i >= n - cfg.num_resamples:
                level.upsample = Upsample(block_in)
                side *= 2
            levels.insert(0, level)
        self.up = nn.ModuleList(levels)  # up[0] is the full-resolution level
        self.norm_out = _norm(block_in)
        self.conv_out = nn.Conv2d(block_in, cfg.out_channels * p * p, 3, padding=1)
        self.unpatcher = UnPatcher(p, cfg.patch_method)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):  # lowest resolution first
            h = level(h)
        h = self.conv_out(swish(self.norm_out(h)))  # (B, out·p², H/p, W/p)
        return self.unpatcher(h)


@dataclass
class CosmosOutput(ModelOutput):
    """``reconstruction`` (B, out_channels, H, W), ``ids`` (B, h, w), ``codebook_loss`` always 0 (FSQ has no auxiliary loss)."""


class CosmosDI(TokenizerModelMixin, nn.Module):
    """Encoder, ``quant_conv``, FSQ, ``post_quant_conv`` and decoder with Cosmos's parameter layout.

    Offers the interface of :class:`~vqtok.models.vqgan.VQGAN` (``encode``, ``decode``,
    ``decode_ids``, ``quantize.lookup/codes``, ``quant_conv``, ``config.n_embed`` ...), so the
    :class:`~vqtok.Tokenizer` and everything built on it use it unchanged. The quantizer is
    vqtok's :class:`~vqtok.models.fsq.FSQ` under the name ``quantize`` (Cosmos calls it
    ``quantizer``; it has no tensors to name, so checkpoints are unaffected).
    """

    def __init__(self, config: CosmosConfig | None = None) -> None:
        super().__init__()
        self.config = config or CosmosConfig()
        cfg = self.config
        self.encoder = CosmosEncoder(cfg)
        self.decoder = CosmosDecoder(cfg)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.embedding_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.embedding_dim, cfg.z_channels, 1)
        self.quantize = FSQ(cfg.levels)

    output_class = CosmosOutput

    def decode(self, z_q: torch.Tensor) -> torch.Tensor:
        """FSQ codes (B, 6, h, w) -> image (B, 3, H, W), roughly in [-1, 1].

        The codes are laid out channels-last, as Cosmos's quantizer leaves them (a
        ``b h w d -> b d h w`` view): the convolutions then take the same kernels and the pixels
        match the original bit for bit on CPU.
        """
        return self.decoder(self.post_quant_conv(z_q.contiguous(memory_format=torch.channels_last)))


def _cosmos_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--resolution", type=int, default=1024, help="Cosmos config 'resolution' (places attention; published: 1024)")
    parser.add_argument("--attn-resolutions", type=int, nargs="*", default=[32],
                        help="Cosmos config 'attn_resolutions' (published: 32, i.e. attention in the mid blocks only)")


register_family(Family(
    name="cosmos", config_class=CosmosConfig, model_class=CosmosDI, description="NVIDIA Cosmos DI (FSQ)",
    tiny_config=lambda: CosmosConfig(channels=32, channels_mult=(1, 1, 1), num_res_blocks=1, z_channels=32,
                                     spatial_compression=8, resolution=256, attn_resolutions=(16,)),
    formats=(SourceFormat(
        name="cosmos", help="NVIDIA Cosmos DI8x8 / DI16x16 encoder.jit + decoder.jit (tensors read, code not run)",
        convert="vqtok.convert.cosmos:convert_cosmos", add_arguments=_cosmos_arguments, sources=("encoder", "decoder"),
        recognise=lambda names, _: ("encoder.jit", "decoder.jit") if {"encoder.jit", "decoder.jit"} <= set(names) else None,
    ),),
))
