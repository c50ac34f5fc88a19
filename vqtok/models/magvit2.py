"""Open-MAGVIT2 tokenizer (Luo et al. 2024, "Open-MAGVIT2"; TencentARC / SEED-Voken), as one file.

Encoder E: image -> ẑ (z_channels = bits per token), LFQ: ẑ -> ids (sign bits) -> z_q ∈ {±1}^D,
decoder G: z_q -> image. Unlike the taming VQGAN there is no attention, no ``quant_conv`` /
``post_quant_conv`` (the encoder emits the D bits directly), strided-conv downsampling and
depth-to-space upsampling, and every decoder level starts with an **adaptive group norm**
whose scale and shift are linear maps of the per-channel std and mean of z_q over the grid.

Module and parameter names follow Open-MAGVIT2's ``improved_model.py`` / ``lfqgan.VQModel``
exactly (``encoder.down.0.block.1.conv1.weight``, ``encoder.mid_block.0.norm2.bias``,
``decoder.adaptive.2.gamma.weight``, ``decoder.up.3.upsample.conv1.weight``...), so the
``state_dict`` of its Lightning checkpoints (minus ``loss.*``) loads with ``strict=True``. The
LFQ quantizer has no parameters.

Shapes: B batch, H×W image, h×w = (H/f)×(W/f) token grid, f = 2**(len(ch_mult) − 1), D = z_channels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from vqtok.models._config import ArchConfig, HalvingLevels
from vqtok.models._model import LastLayerMixin, ModelOutput, TokenizerModelMixin
from vqtok.models.lfq import LFQ
from vqtok.models.registry import Family, SourceFormat, lightning_options, one_file, register_family, state_keys
from vqtok.models.vqgan import _Level

__all__ = ["MAGVIT2Config", "MAGVIT2", "MAGVIT2Encoder", "MAGVIT2Decoder", "MAGVIT2Output"]


@dataclass(frozen=True)
class MAGVIT2Config(HalvingLevels, ArchConfig):
    """Architecture of an Open-MAGVIT2 tokenizer. Defaults: the published 256-px ImageNet model (``imagenet_256_L``)."""

    config_name: ClassVar[str] = "MAGVIT2"
    hash_model_type: ClassVar[str | None] = "magvit2"

    ch: int = 128  # base channel count of the first level
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)  # channel multiplier per level; f = 2**(len-1)
    num_res_blocks: int = 4  # ResNet blocks per level, encoder and decoder, and in each mid stack
    z_channels: int = 18  # encoder output channels = LFQ bits per token D; 2**D codes
    resolution: int = 256  # training image side (recorded only; the network takes any multiple of f)
    in_channels: int = 3  # image channels in
    out_ch: int = 3  # image channels out
    quantizer: str = "lfq"  # the quantizer family; Open-MAGVIT2 uses lookup-free quantization
    bit_order: str = "little"  # LFQ id bit order: channel 0 is bit 0 (Open-MAGVIT2's numbering)
    entropy_weight: float = 0.1  # training: weight of the LFQ entropy penalty (Open-MAGVIT2's codebook_weight)
    commitment_weight: float = 0.25  # training: weight of the LFQ commitment term (Open-MAGVIT2's commit_weight)
    sample_minimization_weight: float = 1.0  # training: w_s of the entropy penalty
    batch_maximization_weight: float = 1.0  # training: w_b of the entropy penalty

    def __post_init__(self) -> None:
        self._int_tuples("ch_mult")
        if not self.ch_mult:
            raise ValueError("ch_mult must have at least one level")
        if any((self.ch * m) % 32 for m in self.ch_mult):
            raise ValueError(f"GroupNorm(32) needs channel counts divisible by 32: ch={self.ch}, ch_mult={self.ch_mult}")
        if self.num_res_blocks < 1:
            raise ValueError(f"num_res_blocks must be >= 1, got {self.num_res_blocks}")
        if self.quantizer != "lfq":
            raise ValueError(f"MAGVIT2 supports quantizer 'lfq', got {self.quantizer!r}")
        if not 1 <= self.z_channels <= 31:
            raise ValueError(f"z_channels (LFQ bits per token) must be in [1, 31], got {self.z_channels}")
        if self.bit_order not in ("little", "big"):
            raise ValueError(f"bit_order must be 'little' or 'big', got {self.bit_order!r}")

    @property
    def embed_dim(self) -> int:
        """Code dimension D (= z_channels: the LFQ quantizes the encoder output directly)."""
        return self.z_channels

    @property
    def n_embed(self) -> int:
        """Codebook size K = 2**z_channels."""
        return 2**self.z_channels


def swish(x: torch.Tensor) -> torch.Tensor:
    # x·σ(x) written out as Open-MAGVIT2 does (F.silu may round differently; ids are signs of ẑ)
    return x * torch.sigmoid(x)


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels, eps=1e-6)


class ResBlock(nn.Module):
    """norm → swish → conv3×3 → norm → swish → conv3×3, plus a (1×1 conv when widths differ) shortcut. No biases."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0) -> None:  # no dropout: vqgan's signature
        super().__init__()
        self.norm1 = _norm(in_channels)
        self.norm2 = _norm(out_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C_in, H, W) -> (B, C_out, H, W)
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(swish(self.norm2(h)))
        if hasattr(self, "nin_shortcut"):
            x = self.nin_shortcut(x)
        return h + x


def depth_to_space(x: torch.Tensor, block: int) -> torch.Tensor:
    """(B, C·s², H, W) -> (B, C, H·s, W·s), DCR order: input channel (i·s + j)·C + c lands at (c, H·s+i, W·s+j)."""
    b, c, h, w = x.shape
    out = c // (block * block)
    x = x.reshape(b, block, block, out, h, w).permute(0, 3, 4, 1, 5, 2)  # (B, C, H, s, W, s)
    return x.reshape(b, out, h * block, w * block)


class Upsampler(nn.Module):
    """conv3×3 to 4× the channels, then depth-to-space: (B, C, H, W) -> (B, C, 2H, 2W)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels * 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return depth_to_space(self.conv1(x), 2)


class AdaptiveGroupNorm(nn.Module):
    """GroupNorm without affine, then ``gamma(std(z_q)) · x + beta(mean(z_q))`` per channel.

    std and mean are taken per (sample, channel) of the quantized latent over its h×w grid
    (std = sqrt(unbiased variance + eps), as Open-MAGVIT2 computes it).
    """

    def __init__(self, z_channels: int, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.gn = nn.GroupNorm(32, channels, eps=eps, affine=False)
        self.gamma = nn.Linear(z_channels, channels)
        self.beta = nn.Linear(z_channels, channels)
        self.eps = eps

    def forward(self, x: torch.Tensor, z_q: torch.Tensor) -> torch.Tensor:  # x (B, C, H, W), z_q (B, D, h, w)
        b, c = x.shape[:2]
        flat = z_q.flatten(2)  # (B, D, h*w)
        scale = self.gamma((flat.var(dim=-1) + self.eps).sqrt()).view(b, c, 1, 1)
        bias = self.beta(flat.mean(dim=-1)).view(b, c, 1, 1)
        return scale * self.gn(x) + bias


class MAGVIT2Encoder(nn.Module):
    """Image (B, in_channels, H, W) -> features (B, z_channels, H/f, W/f)."""

    def __init__(self, cfg: MAGVIT2Config) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1, bias=False)
        self.down = nn.ModuleList()
        block_out = cfg.ch
        for i, mult in enumerate(cfg.ch_mult):
            block_in, block_out = block_out, cfg.ch * mult
            level = _Level(block_in, block_out, cfg.num_res_blocks, 0.0, False, ResBlock)
            if i < len(cfg.ch_mult) - 1:
                level.downsample = nn.Conv2d(block_out, block_out, 3, stride=2, padding=1)
            self.down.append(level)
        self.mid_block = nn.Sequential(*(ResBlock(block_out, block_out) for _ in range(cfg.num_res_blocks)))
        self.norm_out = _norm(block_out)
        self.conv_out = nn.Conv2d(block_out, cfg.z_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)  # its ResNets, then the stride-2 conv (B, C, H/2, W/2) but at the last level
        return self.conv_out(swish(self.norm_out(self.mid_block(h))))


class MAGVIT2Decoder(LastLayerMixin, nn.Module):
    """Quantized latent (B, z_channels, h, w) -> image (B, out_ch, h·f, w·f), roughly in [-1, 1]."""

    def __init__(self, cfg: MAGVIT2Config) -> None:
        super().__init__()
        n = len(cfg.ch_mult)
        block_in = cfg.ch * cfg.ch_mult[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, block_in, 3, padding=1)
        self.mid_block = nn.Sequential(*(ResBlock(block_in, block_in) for _ in range(cfg.num_res_blocks)))
        levels: list[_Level] = []
        adaptive: list[AdaptiveGroupNorm] = []
        for i in reversed(range(n)):
            adaptive.insert(0, AdaptiveGroupNorm(cfg.z_channels, block_in))
            block_out = cfg.ch * cfg.ch_mult[i]
            level = _Level(block_in, block_out, cfg.num_res_blocks, 0.0, False, ResBlock)
            block_in = block_out
            if i > 0:
                level.upsample = Upsampler(block_in)
            levels.insert(0, level)
        self.up = nn.ModuleList(levels)  # up[0] is the full-resolution level
        self.adaptive = nn.ModuleList(adaptive)  # adaptive[i] opens level i
        self.norm_out = _norm(block_in)
        self.conv_out = nn.Conv2d(block_in, cfg.out_ch, 3, padding=1)

    def forward(self, z_q: torch.Tensor) -> torch.Tensor:
        h = self.mid_block(self.conv_in(z_q))
        for i in reversed(range(len(self.up))):
            h = self.up[i](self.adaptive[i](h, z_q))  # its ResNets, then (B, C, 2H, 2W) but at level 0
        return self.conv_out(swish(self.norm_out(h)))


@dataclass
class MAGVIT2Output(ModelOutput):
    """``reconstruction`` (B, out_ch, H, W), ``ids`` (B, h, w), ``codebook_loss``: LFQ entropy + commitment (0 in eval mode)."""


class MAGVIT2(TokenizerModelMixin, nn.Module):
    """Encoder, LFQ and decoder with Open-MAGVIT2's ``VQModel`` parameter layout.

    Offers the same interface as :class:`~vqtok.models.vqgan.VQGAN` (``encode``, ``decode``,
    ``decode_ids``, ``quantize.lookup/codes``, ``quant_conv``, ``config.n_embed`` ...), so the
    :class:`~vqtok.Tokenizer` and everything built on it use it unchanged. ``quant_conv`` and
    ``post_quant_conv`` are identities (no parameters, no checkpoint keys).
    """

    def __init__(self, config: MAGVIT2Config | None = None) -> None:
        super().__init__()
        self.config = config or MAGVIT2Config()
        cfg = self.config
        self.encoder = MAGVIT2Encoder(cfg)
        self.decoder = MAGVIT2Decoder(cfg)
        self.quantize = LFQ(
            cfg.z_channels,
            bit_order=cfg.bit_order,  # type: ignore[arg-type]  # "little" or "big" (checked by the config)
            entropy_weight=cfg.entropy_weight,
            commitment_weight=cfg.commitment_weight,
            sample_weight=cfg.sample_minimization_weight,
            batch_weight=cfg.batch_maximization_weight,
        )
        self.quant_conv = nn.Identity()
        self.post_quant_conv = nn.Identity()

    output_class = MAGVIT2Output

    @property
    def code_dtype(self) -> torch.dtype:
        """The dtype the decoder takes codes in (post_quant_conv is an identity: the decoder's first conv)."""
        return self.decoder.conv_in.weight.dtype


register_family(Family(
    name="magvit2", config_class=MAGVIT2Config, model_class=MAGVIT2, description="Open-MAGVIT2 (LFQ)",
    tiny_config=lambda: MAGVIT2Config(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, z_channels=10, resolution=64),
    formats=(SourceFormat(
        name="magvit2", help="Open-MAGVIT2 Lightning .ckpt (imagenet_256_L.ckpt, ...)", convert="vqtok.convert.magvit2:convert_magvit2",
        recognise=lambda names, _: one_file(names, (".ckpt",)), sources=("ckpt",), by_suffix=True,
        add_arguments=lightning_options("Open-MAGVIT2", "training resolution recorded in the config"),
        accepts=lambda checkpoint, name: "quantize.embedding.weight" not in state_keys(checkpoint),  # LFQ: no codebook tensor
    ),),
))
