"""VQGAN autoencoder (Esser, Rombach & Ommer 2021, "Taming Transformers").

Encoder E: image -> ẑ, codebook Z: ẑ -> ids -> z_q, decoder G: z_q -> image.
Module and parameter names follow taming-transformers' ``VQModel`` exactly
(``encoder.down.0.block.1.norm1.weight``, ``quantize.embedding.weight``,
``decoder.up.3.attn.0.q.weight``, ...), so its checkpoints load with ``strict=True``.

Shapes below: B batch, C channels, H×W image, h×w = (H/f)×(W/f) token grid, f = 2**(levels-1).
"""

from __future__ import annotations

import contextlib
import functools
import argparse
import math
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Mapping, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from vqtok._runtime import autocast
from vqtok.models._config import ArchConfig, HalvingLevels
from vqtok.models._model import LastLayerMixin, ModelOutput, TokenizerModelMixin
from vqtok.models.fsq import FSQ
from vqtok.models.lfq import LFQ
from vqtok.models.quantizer import QuantizerOutput, VectorQuantizer
from vqtok.models.registry import Family, SourceFormat, one_file, register_family, state_keys
from vqtok.models.thread_invariance import ThreadInvariantOps

__all__ = ["VQGANConfig", "VQGAN", "Encoder", "Decoder", "GroupNorm", "group_norm_channels_last"]


@dataclass(frozen=True)
class VQGANConfig(HalvingLevels, ArchConfig):
    """Architecture of a VQGAN. Defaults are taming's ImageNet f16-1024 model."""

    config_name: ClassVar[str] = "VQGAN"

    ch: int = 128  # base channel count of the first level
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)  # channel multiplier per level; f = 2**(len-1)
    num_res_blocks: int = 2  # ResNet blocks per encoder level (decoder uses one more)
    attn_resolutions: tuple[int, ...] = (16,)  # feature-map sides (relative to `resolution`) with attention
    z_channels: int = 256  # channels of the encoder output / decoder input
    embed_dim: int = 256  # code dimension D (quant_conv maps z_channels -> embed_dim)
    n_embed: int = 1024  # codebook size K
    resolution: int = 256  # training image side; only places the attention levels
    in_channels: int = 3  # image channels in
    out_ch: int = 3  # image channels out
    dropout: float = 0.0  # dropout inside ResNet blocks (training only)
    beta: float = 0.25  # commitment weight of the quantizer loss
    legacy_loss: bool = True  # taming's term order for β (see vqtok.models.quantizer)
    l2_norm_codes: bool = False  # cosine (l2-normalised) code lookup
    # GroupNorm groups in every norm layer (taming: 32). With ch 32 that is one channel per group
    # (instance normalisation), which removes each channel's image-wide mean before the decoder's output
    # conv. Written to config.json only when not 32, so older configs (and their hash) are unchanged.
    norm_groups: int = 32
    # The quantizer: "vq" (nearest code, the fields above), "fsq" (levels) or "lfq" (bits). For fsq / lfq
    # embed_dim and n_embed follow from the levels / bits (len / prod, bits / 2**bits) and beta,
    # legacy_loss, l2_norm_codes are unused. Written to config.json only when not "vq", so VQ configs
    # (and their hash) are as before these fields existed.
    quantizer: str = "vq"
    fsq_levels: tuple[int, ...] = ()  # fsq only: levels per channel, e.g. (8, 8, 8, 8) = 4096 codes
    lfq_bits: int = 0  # lfq only: bits per token D (2**D codes; channel 0 is bit 0)

    def __post_init__(self) -> None:
        self._int_tuples("ch_mult", "attn_resolutions", "fsq_levels")
        if not self.ch_mult:
            raise ValueError("ch_mult must have at least one level")
        if self.norm_groups < 1 or any((self.ch * m) % self.norm_groups for m in (1,) + self.ch_mult):
            raise ValueError(
                f"GroupNorm({self.norm_groups}) needs channel counts divisible by norm_groups: ch={self.ch}, "
                f"ch_mult={self.ch_mult}"
            )
        if self.quantizer == "fsq":
            if not self.fsq_levels or any(v < 2 for v in self.fsq_levels):
                raise ValueError(f"quantizer 'fsq' needs fsq_levels, integers >= 2, got {list(self.fsq_levels)}")
            object.__setattr__(self, "embed_dim", len(self.fsq_levels))
            object.__setattr__(self, "n_embed", math.prod(self.fsq_levels))
        elif self.quantizer == "lfq":
            if not 1 <= self.lfq_bits <= 31:
                raise ValueError(f"quantizer 'lfq' needs lfq_bits in [1, 31], got {self.lfq_bits}")
            object.__setattr__(self, "embed_dim", self.lfq_bits)
            object.__setattr__(self, "n_embed", 2**self.lfq_bits)
        elif self.quantizer != "vq":
            raise ValueError(f"quantizer must be 'vq', 'fsq' or 'lfq', got {self.quantizer!r}")
        if self.quantizer != "fsq" and self.fsq_levels:
            raise ValueError(f"fsq_levels is for quantizer 'fsq' (this config's is {self.quantizer!r})")
        if self.quantizer != "lfq" and self.lfq_bits:
            raise ValueError(f"lfq_bits is for quantizer 'lfq' (this config's is {self.quantizer!r})")
        if self.n_embed < 1 or self.embed_dim < 1:
            raise ValueError(f"n_embed and embed_dim must be positive, got {self.n_embed}, {self.embed_dim}")

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        for name, default in (("quantizer", "vq"), ("fsq_levels", []), ("lfq_bits", 0), ("norm_groups", 32)):
            if d[name] == default:  # VQ configs: keys, config.json and hash() as before these fields
                del d[name]
        return d


def group_norm_channels_last(
    x: torch.Tensor, num_groups: int, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float
) -> torch.Tensor:
    """GroupNorm of channels_last x (B, C, H, W) in place of PyTorch's NHWC kernel; channels_last out.

    Statistics per (image, group), one image at a time, by the compensated two-pass method over the
    NHWC memory: the group mean m from per-channel sums, then the sums of the deviations d = x - m and
    of their squares; mean = m + sum(d)/n and var = (sum(d^2) - sum(d)^2/n)/n (Chan, Golub & LeVeque
    1983: no E[x^2] - E[x]^2 cancellation, and m's float32 rounding removed). Each per-channel sum is
    reduced in one order whatever the batch size and thread count. Then one fused ``addcmul`` pass
    x*scale + shift with per-(image, channel) scale and shift, which keeps the layout.
    """
    b, c, h, w = x.shape
    per_group = c // num_groups
    n = h * w * per_group  # elements per group

    def group_sums(per_channel: torch.Tensor) -> torch.Tensor:  # (C,) -> (G,)
        return per_channel.view(num_groups, -1).sum(1)

    stats = []
    for image in rearrange(x, "b c h w -> b (h w) c"):  # (HW, C) views of NHWC memory; one deviation buffer at a time
        m = group_sums(image.sum(0)) / n  # (G,)
        dev = image - m.repeat_interleave(per_group)  # (HW, C)
        s1 = group_sums(dev.sum(0))
        s2 = group_sums(dev.square_().sum(0))
        stats.append(torch.stack([m + s1 / n, (s2 - s1 * s1 / n) / n]))
    mean, var = torch.stack(stats).unbind(1)  # (B, G) each
    scale = torch.rsqrt(var + eps).repeat_interleave(per_group, dim=1)  # (B, C)
    if weight is not None:
        scale = scale * weight
    shift = -mean.repeat_interleave(per_group, dim=1) * scale  # (B, C)
    if bias is not None:
        shift = shift + bias
    return torch.addcmul(shift.view(b, c, 1, 1), x, scale.view(b, c, 1, 1))


class GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` that does not use PyTorch's NHWC kernel on channels_last activations.

    PyTorch's CPU GroupNorm kernel for NHWC tensors (seen in 2.13) loses precision when a group's
    mean is large against its spread (1e-4 to 1e-2 from float64 at mean/std 10-30, against ~1e-6 for the
    NCHW kernel), and how it splits the reduction depends on batch size and thread count, so its
    output for an image changes with its batch companions and threads. Channels_last input goes
    through :func:`group_norm_channels_last` instead (precise, batch- and thread-invariant, keeps
    the layout; docs/performance.md: copying to NCHW and back cost twice as much).
    bf16/fp16 activations (the fast modes' autocast, or a model cast to half precision) take
    PyTorch's kernel: their ids are not fp32's anyway, and normalising them in float32 here cost
    the bf16 mode ~40 % of its speed for 0.12 points more ids equal to fp32's (98.34 vs 98.22 % on
    default@v1; docs/performance.md).
    Parameters and ``state_dict`` keys are ``nn.GroupNorm``'s.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> same shape and layout
        if (
            x.ndim != 4
            or x.dtype not in (torch.float32, torch.float64)
            or x.is_contiguous()
            or not x.is_contiguous(memory_format=torch.channels_last)
        ):
            return super().forward(x)
        return group_norm_channels_last(x, self.num_groups, self.weight, self.bias, self.eps)


def Normalize(channels: int, groups: int = 32) -> nn.GroupNorm:
    return GroupNorm(num_groups=groups, num_channels=channels, eps=1e-6, affine=True)


def swish(x: torch.Tensor) -> torch.Tensor:
    """SiLU, in place when no gradient is recorded: x is always a fresh normalisation output, so writing
    over it saves an activation-sized buffer (and its page faults) per call; the bits are the same."""
    return F.silu(x, inplace=not (torch.is_grad_enabled() and x.requires_grad))


class ResnetBlock(nn.Module):
    """norm → swish → conv3×3 → norm → swish → dropout → conv3×3, plus a 1×1 ``nin_shortcut`` when widths differ.

    ``norm``: the normalisation layer for a channel count (Cosmos passes plain ``nn.GroupNorm``).
    """

    def __init__(
        self, in_channels: int, out_channels: int, dropout: float, norm: Callable[[int], nn.Module] = Normalize
    ) -> None:
        super().__init__()
        self.norm1 = norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C_in, H, W) -> (B, C_out, H, W)
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(self.dropout(swish(self.norm2(h))))
        if hasattr(self, "nin_shortcut"):
            x = self.nin_shortcut(x)
        if torch.is_grad_enabled() and h.requires_grad:
            return x + h
        return h.add_(x)  # h is conv2's fresh output; x + h == h + x bit for bit


class AttnBlock(nn.Module):
    """Single-head self-attention over all h×w positions (1×1 conv projections)."""

    def __init__(self, channels: int, norm: Callable[[int], nn.Module] = Normalize) -> None:
        super().__init__()
        self.norm = norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W)
        h, w = x.shape[-2:]
        y = self.norm(x)
        # one head over all positions; a view, no copy, when the activations are channels_last
        # (see Tokenizer's channels_last)
        q, k, v = (rearrange(t, "b c h w -> b 1 (h w) c") for t in (self.q(y), self.k(y), self.v(y)))
        y = F.scaled_dot_product_attention(q, k, v)  # (B, 1, H*W, C), scale C**-0.5 as taming
        y = rearrange(y, "b 1 (h w) c -> b c h w", h=h, w=w)  # channels_last view of a contiguous y
        return x + self.proj_out(y)


class Downsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, C, H/2, W/2)
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # taming's asymmetric padding


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, C, 2H, 2W)
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """One resolution level: ``block`` (ResNets), ``attn`` (maybe empty), then ``downsample``/``upsample`` where present."""

    def __init__(
        self,
        block_in: int,
        block_out: int,
        num_blocks: int,
        dropout: float,
        attention: bool,
        resnet: Callable[[int, int, float], nn.Module] = ResnetBlock,
        attn: Callable[[int], nn.Module] = AttnBlock,
    ) -> None:
        """``num_blocks`` ResNets block_in -> block_out (each followed by attention when ``attention``); no resampling yet."""
        super().__init__()
        self.block = nn.ModuleList()
        self.attn = nn.ModuleList()
        for _ in range(num_blocks):
            self.block.append(resnet(block_in, block_out, dropout))
            block_in = block_out
            if attention:
                self.attn.append(attn(block_out))

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # each block, then its attention if any, then the resampling (TorchScript-able)
        if len(self.attn) == 0:
            for block in self.block:
                h = block(h)
        else:
            for block, attn in zip(self.block, self.attn):
                h = attn(block(h))
        if hasattr(self, "downsample"):
            h = self.downsample(h)  # (B, C, H/2, W/2)
        if hasattr(self, "upsample"):
            h = self.upsample(h)  # (B, C, 2H, 2W)
        return h


class _Mid(nn.Module):
    """ResNet → attention → ResNet at the lowest resolution (``mid.block_1``, ``mid.attn_1``, ``mid.block_2``)."""

    def __init__(
        self,
        channels: int,
        dropout: float,
        resnet: Callable[[int, int, float], nn.Module] = ResnetBlock,
        attn: Callable[[int], nn.Module] = AttnBlock,
    ) -> None:
        super().__init__()
        self.block_1 = resnet(channels, channels, dropout)
        self.attn_1 = attn(channels)
        self.block_2 = resnet(channels, channels, dropout)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(h)))


def _norm_layers(
    cfg: VQGANConfig, attn: Callable[[int], nn.Module] | None
) -> tuple[Callable[[int], nn.Module], Callable[[int, int, float], nn.Module], Callable[[int], nn.Module]]:
    """The norm layer, ResNet block and attention block (``attn``, else taming's) of a config (its ``norm_groups``)."""
    norm = functools.partial(Normalize, groups=cfg.norm_groups)
    return norm, functools.partial(ResnetBlock, norm=norm), attn or functools.partial(AttnBlock, norm=norm)


class Encoder(nn.Module):
    """Image (B, in_channels, H, W) -> features (B, z_channels, H/f, W/f).

    ``attn`` / ``mid_attn``: the attention blocks of the ``attn_resolutions`` levels / of the middle, for a
    channel count (default: taming's :class:`AttnBlock`; VAR passes its fused-``qkv`` block).
    """

    def __init__(
        self, cfg: VQGANConfig, attn: Callable[[int], nn.Module] | None = None, mid_attn: Callable[[int], nn.Module] | None = None
    ) -> None:
        super().__init__()
        norm, resnet, attn = _norm_layers(cfg, attn)
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1)
        res = cfg.resolution
        self.down = nn.ModuleList()
        block_out = cfg.ch
        for i, mult in enumerate(cfg.ch_mult):
            block_in, block_out = block_out, cfg.ch * mult
            level = _Level(block_in, block_out, cfg.num_res_blocks, cfg.dropout, res in cfg.attn_resolutions, resnet, attn)
            if i != len(cfg.ch_mult) - 1:
                level.downsample = Downsample(block_out)
                res //= 2
            self.down.append(level)
        self.mid = _Mid(block_out, cfg.dropout, resnet, mid_attn or attn)
        self.norm_out = norm(block_out)
        self.conv_out = nn.Conv2d(block_out, cfg.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        h = self.mid(h)
        return self.conv_out(swish(self.norm_out(h)))


class Decoder(LastLayerMixin, nn.Module):
    """Features (B, z_channels, h, w) -> image (B, out_ch, h*f, w*f), roughly in [-1, 1]; ``attn`` / ``mid_attn`` as :class:`Encoder`'s."""

    def __init__(
        self, cfg: VQGANConfig, attn: Callable[[int], nn.Module] | None = None, mid_attn: Callable[[int], nn.Module] | None = None
    ) -> None:
        super().__init__()
        norm, resnet, attn = _norm_layers(cfg, attn)
        n = len(cfg.ch_mult)
        block_in = cfg.ch * cfg.ch_mult[-1]
        res = cfg.resolution // 2 ** (n - 1)
        self.conv_in = nn.Conv2d(cfg.z_channels, block_in, 3, padding=1)
        self.mid = _Mid(block_in, cfg.dropout, resnet, mid_attn or attn)
        levels: list[_Level] = []
        for i in reversed(range(n)):
            block_out = cfg.ch * cfg.ch_mult[i]
            level = _Level(
                block_in, block_out, cfg.num_res_blocks + 1, cfg.dropout, res in cfg.attn_resolutions, resnet, attn
            )
            block_in = block_out
            if i != 0:
                level.upsample = Upsample(block_out)
                res *= 2
            levels.insert(0, level)
        self.up = nn.ModuleList(levels)  # indexed like taming: up[0] is the full-resolution level
        self.norm_out = norm(block_in)
        self.conv_out = nn.Conv2d(block_in, cfg.out_ch, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(swish(self.norm_out(h)))


@dataclass
class VQGANOutput(ModelOutput):
    """What VQGAN (and IBQ) ``forward`` returns: ``reconstruction``, ``ids``, ``codebook_loss``."""


class VQGAN(TokenizerModelMixin, nn.Module):
    """Encoder, codebook and decoder with taming's ``VQModel`` parameter layout."""

    def __init__(self, config: VQGANConfig | None = None) -> None:
        super().__init__()
        self.config = config or VQGANConfig()
        cfg = self.config
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quantize: VectorQuantizer | FSQ | LFQ
        if cfg.quantizer == "fsq":
            self.quantize = FSQ(cfg.fsq_levels)
        elif cfg.quantizer == "lfq":
            self.quantize = LFQ(cfg.lfq_bits)
        else:
            self.quantize = VectorQuantizer(
                cfg.n_embed, cfg.embed_dim, beta=cfg.beta, legacy=cfg.legacy_loss, l2_norm=cfg.l2_norm_codes
            )
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.z_channels, 1)
        # default of encode(batch_invariant=None): None = on in eval mode on CPU. Set False to trade
        # batch invariance for throughput (e.g. tok.model.batch_invariant = False; docs/performance.md).
        self.batch_invariant: bool | None = None

    output_class = VQGANOutput

    def encode(
        self, x: torch.Tensor, *, batch_invariant: bool | None = None, autocast_dtype: torch.dtype | None = None
    ) -> QuantizerOutput:
        """x (B, 3, H, W) in [-1, 1] -> quantized features, ids and codebook loss.

        ``batch_invariant``: run the encoder one image at a time, so an image's features and ids
        do not depend on how many images share its batch, which ones, or where it sits in it
        (oneDNN picks convolution kernels by batch size, and they round differently: measured
        up to 2.6e-6 per layer in fp32, enough to flip ids on a dense codebook). The nearest-code
        search is batch-invariant by itself (fixed-shape blocks, :func:`~vqtok.models.quantizer.nearest_code`).
        In fp32 on CPU it also makes them independent of the intra-op thread count: SiLU and 1×1
        convolutions run in forms that give the bits of one thread at any thread count
        (:class:`~vqtok.models.thread_invariance.ThreadInvariantOps`; single-threaded ids unchanged).
        Default ``None``: the model's ``batch_invariant`` attribute, and when that is ``None`` too:
        on in eval mode on CPU, off in training and on other devices. One image at a time costs
        throughput on CPU too (0.44-0.86x batched, measured in docs/performance.md, "Batch
        invariance"); ``model.batch_invariant = False`` turns it off for every encode.

        ``autocast_dtype`` (``torch.bfloat16`` / ``torch.float16``): the encoder alone runs under
        ``torch.autocast``; ``quant_conv`` and the nearest-code search, which decide the ids and
        cost little, run in the weights' dtype (the Tokenizer's fast modes).
        """
        if batch_invariant is None:
            batch_invariant = self.batch_invariant
        if batch_invariant is None:
            batch_invariant = not self.training and x.device.type == "cpu"
        if not batch_invariant:
            return self._encode(x, autocast_dtype)
        # fp32 on CPU: SiLU and 1x1 convolutions computed with the bits of one thread at any thread count
        with ThreadInvariantOps() if autocast_dtype is None and x.device.type == "cpu" else contextlib.nullcontext():
            if x.shape[0] <= 1:
                return self._encode(x, autocast_dtype)
            # each image in its own fresh (aligned) tensor: the same call as encoding it alone
            parts = [self._encode(x[i : i + 1].clone(), autocast_dtype) for i in range(x.shape[0])]
        return QuantizerOutput(
            z_q=torch.cat([p.z_q for p in parts]),  # (B, D, h, w)
            ids=torch.cat([p.ids for p in parts]),  # (B, h, w)
            loss=torch.stack([p.loss for p in parts]).mean(),  # images have equal sizes: the batch mean
        )

    def _encode(self, x: torch.Tensor, autocast_dtype: torch.dtype | None) -> QuantizerOutput:
        with autocast(x.device, autocast_dtype):
            h = self.encoder(x)  # (B, z_channels, h, w), in autocast_dtype when given
        return self.quantize(self.quant_conv(h.to(self.quant_conv.weight.dtype)))


# ------------------------------------------------------------------------------ source formats
# The converters live in vqtok.convert.<format> and are imported when a file is converted.
_DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


def _recognise_diffusers(names: Sequence[str], read_config: Callable[[str], Mapping[str, Any] | None]) -> tuple[str, ...] | None:
    weights = [w for w in _DIFFUSERS_WEIGHTS if w in names]
    return ("config.json", weights[0]) if weights and "config.json" in names else None


def _recognise_dalle_mini(names: Sequence[str], read_config: Callable[[str], Mapping[str, Any] | None]) -> tuple[str, ...] | None:
    weights = one_file(names, (".msgpack",))
    return (("config.json",) if "config.json" in names else ()) + weights if weights else None


def _recognise_llamagen(names: Sequence[str], read_config: Callable[[str], Mapping[str, Any] | None]) -> tuple[str, ...] | None:
    # a .pt / .pth; a .bin only when it is the one file named (a folder's .bin may be anything)
    return one_file(names, (".pt", ".pth")) or (tuple(names) if len(names) == 1 and names[0].endswith(".bin") else None)


def _is_taming(checkpoint: Any, name: str) -> bool:
    """A Lightning checkpoint with a codebook and no EMA weights (IBQ keeps model_ema.*, taming never did)."""
    keys = state_keys(checkpoint)
    return "quantize.embedding.weight" in keys and not any(k.startswith("model_ema.") for k in keys) and "ibq" not in name.lower()


def _taming_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="taming model YAML (default: infer from the weights)")


def _llamagen_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ema", action="store_true", help="take the 'ema' weights instead of 'model'")


register_family(Family(
    name="vqgan", config_class=VQGANConfig, model_class=VQGAN, description="taming-transformers VQGAN (nearest-code VQ)",
    tiny_config=lambda: VQGANConfig(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(16,), z_channels=16,
                                    embed_dim=8, n_embed=512, resolution=64),
    formats=(
        SourceFormat(name="diffusers", help="diffusers VQModel (config.json + diffusion_pytorch_model.safetensors)",
                     convert="vqtok.convert.diffusers:convert_diffusers", recognise=_recognise_diffusers),
        SourceFormat(name="dalle-mini", help="dalle-mini / vqgan-jax Flax VQGAN (flax_model.msgpack + config.json)",
                     convert="vqtok.convert.dalle_mini:convert_dalle_mini", recognise=_recognise_dalle_mini),
        SourceFormat(name="taming", help="taming-transformers VQModel Lightning .ckpt", convert="vqtok.convert.taming:convert_taming",
                     recognise=lambda names, _: one_file(names, (".ckpt",)), add_arguments=_taming_arguments,
                     sources=("ckpt",), by_suffix=True, accepts=_is_taming),
        SourceFormat(name="llamagen", help="LlamaGen VQ tokenizer .pt (vq_ds16_c2i.pt, vq_ds8_c2i.pt, ...)",
                     convert="vqtok.convert.llamagen:convert_llamagen", recognise=_recognise_llamagen,
                     add_arguments=_llamagen_arguments, sources=("ckpt",), by_suffix=True),
    ),
))
