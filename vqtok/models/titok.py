"""TiTok: 1-D image tokenizers (ByteDance, Yu et al. 2024, "An Image is Worth 32 Tokens").

A ViT encoder reads the 16×16 patches of a 256×256 image together with ``n`` learned latent
tokens; only the latent tokens leave it, each quantized to its nearest code (cosine distance when
``use_l2_norm``). So an image is a *sequence* of ``n`` ids (32 to 256), not a grid. A ViT
decoder reads the ``n`` codes with one mask token per patch and, per variant:

* ``decoder="maskgit"`` (TiTok-L-32 / B-64 / S-128, ``is_legacy`` + ``finetune_decoder``): the
  decoder predicts, for each patch, logits over the 1024 codes of MaskGIT's VQGAN; their softmax
  mixes MaskGIT's codebook (``pixel_quantize``) into a 16×16 feature map that MaskGIT's VQGAN
  decoder (``pixel_decoder``) turns into pixels;
* ``decoder="pixels"`` (TiTok-BL-64 / BL-128 / SL-256 VQ-8k, ``is_legacy: False``): the decoder
  predicts each patch's RGB values directly, followed by a 3×3 convolution.

Images are in [0, 1] both ways (``pixel_range``); TiTok's own demo clamps the output to [0, 1].

Parameter names are those of TiTok's ``modeling/titok.py`` (its ``model.safetensors``, as
``PyTorchModelHubMixin.save_pretrained`` writes it, loads with ``strict=True``), including two
quirks kept for identical ids and pixels:

* the legacy encoder hands its (B, n, width) latent tokens to the 1×1 ``conv_out`` through a
  *reshape* to (B, width, n, 1), not a transpose (:meth:`TiTokEncoder.forward`);
* MaskGIT's VQGAN ResNet block with a channel change adds ``nin_shortcut`` of its *output*, not
  of its input (:meth:`PixelResnetBlock.forward`).

The released Hub repos (``yucornetto/tokenizer_titok_l32_imagenet``, ``..._b64_imagenet``,
``..._s128_imagenet``, ``..._bl64_vq8k_imagenet``, ...) hold TiTok's nested training config as
``config.json`` (``{"model": {"vq_model": {...}}, "dataset": {"preprocessing": {"crop_size": 256}}}``)
and ``model.safetensors``: :func:`recognise_titok` spots them, :func:`convert_titok` reads them.
TiTok's VAE tokenizers (``quantize_mode: vae``) and TA-TiTok (text-conditioned decoder) are not
discrete-token models of this family and are refused with the reason.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vqtok._runtime import autocast
from vqtok.layout import TokenLayout
from vqtok.models._config import ArchConfig
from vqtok.models._model import ModelOutput
from vqtok.models.quantizer import nearest_code
from vqtok.models.registry import Family, SourceFormat, register_family

logger = logging.getLogger(__name__)

__all__ = ["TiTokConfig", "TiTok", "VIT_SIZES", "convert_titok", "recognise_titok", "titok_config"]

# TiTok's named ViT sizes: (width, layers, heads) of `vit_enc_model_size` / `vit_dec_model_size`.
VIT_SIZES: dict[str, tuple[int, int, int]] = {"small": (512, 8, 8), "base": (768, 12, 12), "large": (1024, 24, 16)}
DECODERS = ("maskgit", "pixels")


@dataclass(frozen=True)
class TiTokConfig(ArchConfig):
    """Architecture of a VQ TiTok tokenizer (defaults: TiTok-L-32, ``configs/infer/TiTok/titok_l32.yaml``).

    The TiTok config key each field comes from is in its comment (:func:`convert_titok` maps them).
    """

    config_name: ClassVar[str] = "TiTok"
    hash_model_type: ClassVar[str | None] = "titok"

    image_size: int = 256  # dataset.preprocessing.crop_size: the one image side the model takes
    num_latent_tokens: int = 32  # n: ids per image
    codebook_size: int = 4096  # K codes of the latent tokens
    token_size: int = 12  # D: channels of a latent token and of a code
    use_l2_norm: bool = True  # codes and latents l2-normalised (nearest by cosine)
    encoder_patch_size: int = 16  # vit_enc_patch_size
    encoder_width: int = 1024  # vit_enc_model_size: small 512 / base 768 / large 1024
    encoder_layers: int = 24  # small 8 / base 12 / large 24
    encoder_heads: int = 16  # small 8 / base 12 / large 16
    decoder_patch_size: int = 16  # vit_dec_patch_size
    decoder_width: int = 1024  # vit_dec_model_size (same table as the encoder's)
    decoder_layers: int = 24
    decoder_heads: int = 16
    # "maskgit": is_legacy + finetune_decoder (ViT -> MaskGIT-VQGAN code logits -> pixel decoder);
    # "pixels": is_legacy False, finetune_decoder False (ViT -> RGB patches -> 3x3 conv)
    decoder: str = "maskgit"
    # MaskGIT's VQGAN (decoder="maskgit" only; TiTok fixes these in code)
    pixel_codebook_size: int = 1024  # codes of MaskGIT's VQGAN: the ViT decoder's logits per patch
    pixel_embed_dim: int = 256  # their dimension (the pixel decoder's z_channels)
    pixel_hidden_channels: int = 128  # base channels of the pixel decoder
    pixel_channel_mult: tuple[int, ...] = (1, 1, 2, 2, 4)  # per level; upsamples by 2**(len-1)
    pixel_num_res_blocks: int = 2  # ResNet blocks per level and in the middle

    def __post_init__(self) -> None:
        self._int_tuples("pixel_channel_mult")
        self._positive_ints("TiTok", (f.name for f in dataclasses.fields(self) if f.type == "int"))  # every int field
        if not isinstance(self.use_l2_norm, bool):
            raise ValueError(f"TiTok use_l2_norm must be true or false, got {self.use_l2_norm!r}")
        if self.decoder not in DECODERS:
            raise ValueError(f"TiTok decoder must be one of {', '.join(DECODERS)}, got {self.decoder!r}")
        for side in ("encoder", "decoder"):
            patch, width, heads = (getattr(self, f"{side}_{k}") for k in ("patch_size", "width", "heads"))
            if self.image_size % patch:
                raise ValueError(f"TiTok image_size {self.image_size} is not a multiple of the {side} patch size {patch}")
            if width % heads:
                raise ValueError(f"TiTok {side}_width {width} is not a multiple of {side}_heads {heads}")
        if self.decoder == "maskgit":
            mult = self.pixel_channel_mult
            if not mult or min(mult) < 1:
                raise ValueError(f"TiTok pixel_channel_mult must be positive ints, got {mult!r}")
            if self.decoder_patch_size != 2 ** (len(mult) - 1):
                raise ValueError(
                    f"TiTok's pixel decoder upsamples by 2**(len(pixel_channel_mult) - 1) = {2 ** (len(mult) - 1)}, "
                    f"which must equal decoder_patch_size {self.decoder_patch_size}"
                )
            if any(self.pixel_hidden_channels * m % 32 for m in mult):
                raise ValueError(f"TiTok pixel decoder channels (pixel_hidden_channels x mult) must be multiples of 32 (GroupNorm), got {self.pixel_hidden_channels} x {mult}")

    @property
    def grid_size(self) -> int:
        """Patches per side of the encoder (the decoder's: ``image_size // decoder_patch_size``)."""
        return self.image_size // self.encoder_patch_size

    @property
    def downsample_factor(self) -> int:
        """Image side / patch grid side of the encoder (16): what ``Tokenizer.downsample_factor`` reports."""
        return self.encoder_patch_size

    @property
    def embed_dim(self) -> int:
        """Channels of a code (``token_size``)."""
        return self.token_size


# ---------------------------------------------------------------------------------------- ViT
class SelfAttention(nn.Module):
    """``nn.MultiheadAttention``'s self-attention (its parameter names), batch first: (B, L, D) -> (B, L, D)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))  # rows: q, k, v
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)  # (B, L, 3D)
        q, k, v = qkv.view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # each (B, H, L, D/H)
        y = F.scaled_dot_product_attention(q, k, v)  # (B, H, L, D/H)
        return self.out_proj(y.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.c_fc = nn.Linear(width, 4 * width)
        self.c_proj = nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x)))


class ResidualAttentionBlock(nn.Module):
    """Pre-norm transformer block (open_clip's, as TiTok uses it)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = SelfAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = Mlp(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, L, D)
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


def _embedding(*shape: int) -> nn.Parameter:
    """A learned embedding drawn N(0, 1/width) as TiTok does (truncated at ±2, over 11 σ: the same in practice,
    and cheap on the meta device, where ``normal_`` is not)."""
    return nn.Parameter(nn.init.trunc_normal_(torch.empty(*shape), std=shape[-1] ** -0.5))


class TiTokEncoder(nn.Module):
    """Patches + latent tokens through a ViT -> the latent tokens, (B, n, token_size)."""

    def __init__(self, cfg: TiTokConfig) -> None:
        super().__init__()
        self.cfg = cfg
        width, g = cfg.encoder_width, cfg.grid_size
        self.patch_embed = nn.Conv2d(3, width, cfg.encoder_patch_size, stride=cfg.encoder_patch_size)
        self.class_embedding = _embedding(1, width)
        self.positional_embedding = _embedding(g * g + 1, width)
        self.latent_token_positional_embedding = _embedding(cfg.num_latent_tokens, width)
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = nn.ModuleList(ResidualAttentionBlock(width, cfg.encoder_heads) for _ in range(cfg.encoder_layers))
        self.ln_post = nn.LayerNorm(width)
        self.conv_out = nn.Conv2d(width, cfg.token_size, 1)

    def forward(self, x: torch.Tensor, latent_tokens: torch.Tensor) -> torch.Tensor:
        b, n, width = x.shape[0], self.cfg.num_latent_tokens, self.cfg.encoder_width
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, g², W)
        cls = self.class_embedding.to(x.dtype).expand(b, -1, -1)  # (B, 1, W)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)  # (B, 1 + g², W)
        latents = latent_tokens.to(x.dtype) + self.latent_token_positional_embedding.to(x.dtype)  # (n, W)
        x = self.ln_pre(torch.cat([x, latents.expand(b, -1, -1)], dim=1))  # (B, 1 + g² + n, W)
        for block in self.transformer:
            x = block(x)
        latents = self.ln_post(x[:, -n:])  # (B, n, W)
        if self.cfg.decoder == "maskgit":  # TiTok's legacy layout: a reshape, not a transpose
            latents = latents.reshape(b, width, n, 1)
        else:
            latents = latents.transpose(1, 2).unsqueeze(-1)  # (B, W, n, 1)
        return self.conv_out(latents).squeeze(-1).transpose(1, 2)  # (B, n, token_size)


class TiTokDecoder(nn.Module):
    """Codes (B, n, token_size) + one mask token per patch through a ViT -> MaskGIT code logits (B, 1024, g, g) or RGB (B, 3, H, W)."""

    def __init__(self, cfg: TiTokConfig) -> None:
        super().__init__()
        self.cfg = cfg
        width, p = cfg.decoder_width, cfg.decoder_patch_size
        self.grid_size = g = cfg.image_size // p
        self.decoder_embed = nn.Linear(cfg.token_size, width)
        self.class_embedding = _embedding(1, width)
        self.positional_embedding = _embedding(g * g + 1, width)
        self.mask_token = _embedding(1, 1, width)
        self.latent_token_positional_embedding = _embedding(cfg.num_latent_tokens, width)
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = nn.ModuleList(ResidualAttentionBlock(width, cfg.decoder_heads) for _ in range(cfg.decoder_layers))
        self.ln_post = nn.LayerNorm(width)
        if cfg.decoder == "maskgit":  # ffn.1 is a Tanh (no parameters)
            self.ffn = nn.Sequential(nn.Conv2d(width, 2 * width, 1), nn.Tanh(), nn.Conv2d(2 * width, cfg.pixel_codebook_size, 1))
            self.conv_out: nn.Module = nn.Identity()
        else:  # ffn.1 of TiTok is an einops Rearrange (no parameters): done in forward
            self.ffn = nn.Sequential(nn.Conv2d(width, p * p * 3, 1))
            self.conv_out = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, z_q: torch.Tensor) -> torch.Tensor:
        b, g, p = z_q.shape[0], self.grid_size, self.cfg.decoder_patch_size
        x = self.decoder_embed(z_q)  # (B, n, W)
        mask = self.mask_token.to(x.dtype).expand(b, g * g, -1)  # (B, g², W)
        cls = self.class_embedding.to(x.dtype).expand(b, -1, -1)  # (B, 1, W)
        mask = torch.cat([cls, mask], dim=1) + self.positional_embedding.to(x.dtype)  # (B, 1 + g², W)
        x = x + self.latent_token_positional_embedding[: x.shape[1]]
        x = self.ln_pre(torch.cat([mask, x], dim=1))  # (B, 1 + g² + n, W)
        for block in self.transformer:
            x = block(x)
        x = self.ln_post(x[:, 1 : 1 + g * g])  # (B, g², W): the patches' tokens
        x = self.ffn(x.transpose(1, 2).reshape(b, -1, g, g))  # (B, 1024, g, g) or (B, p·p·3, g, g)
        if self.cfg.decoder == "pixels":  # 'b (p1 p2 c) h w -> b c (h p1) (w p2)'
            x = x.view(b, p, p, 3, g, g).permute(0, 3, 4, 1, 5, 2).reshape(b, 3, g * p, g * p)
        return self.conv_out(x)


# ------------------------------------------------------------------------- MaskGIT's VQGAN decoder
def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels, eps=1e-6)


class PixelResnetBlock(nn.Module):
    """MaskGIT-VQGAN's ResNet block (bias-free convolutions)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.norm1 = _group_norm(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.norm2 = _group_norm(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.nin_shortcut = nn.Conv2d(c_out, c_out, 1, bias=False) if c_in != c_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        # MaskGIT-VQGAN's (open-muse) quirk: with a channel change the shortcut is taken of h, not x
        return h + (x if self.nin_shortcut is None else self.nin_shortcut(h))


class PixelUpBlock(nn.Module):
    """The ResNet blocks of one level, then (except at level 0) a 2× nearest upsampling and a 3×3 conv."""

    def __init__(self, c_in: int, c_out: int, num_res_blocks: int, *, upsample: bool) -> None:
        super().__init__()
        self.block = nn.ModuleList(PixelResnetBlock(c_in if i == 0 else c_out, c_out) for i in range(num_res_blocks))
        self.upsample_conv = nn.Conv2d(c_out, c_out, 3, padding=1) if upsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.block:
            x = block(x)
        if self.upsample_conv is not None:
            x = self.upsample_conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        return x


class PixelDecoder(nn.Module):
    """MaskGIT's VQGAN decoder (no attention): features (B, pixel_embed_dim, g, g) -> image (B, 3, g·2^(L-1), ...)."""

    def __init__(self, cfg: TiTokConfig) -> None:
        super().__init__()
        ch, mult, nres = cfg.pixel_hidden_channels, cfg.pixel_channel_mult, cfg.pixel_num_res_blocks
        self.conv_in = nn.Conv2d(cfg.pixel_embed_dim, ch * mult[-1], 3, padding=1)
        self.mid = nn.ModuleList(PixelResnetBlock(ch * mult[-1], ch * mult[-1]) for _ in range(nres))
        # up[i] is level i (run from the last level to the first); level i reads level i+1's channels
        self.up = nn.ModuleList(
            PixelUpBlock(ch * mult[min(i + 1, len(mult) - 1)], ch * mult[i], nres, upsample=i != 0) for i in range(len(mult))
        )
        self.norm_out = _group_norm(ch * mult[0])
        self.conv_out = nn.Conv2d(ch * mult[0], 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for block in self.mid:
            x = block(x)
        for level in reversed(self.up):
            x = level(x)
        return self.conv_out(F.silu(self.norm_out(x)))


# ---------------------------------------------------------------------------------- quantizers
class CodeTable(nn.Module):
    """A codebook (K, D) under nn.Embedding's parameter name ``weight``, drawn U(-1/K, 1/K) as TiTok's quantizers do."""

    def __init__(self, codebook_size: int, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(codebook_size, dim).uniform_(-1.0 / codebook_size, 1.0 / codebook_size))


class TiTokQuantizer(nn.Module):
    """TiTok's VectorQuantizer at inference: nearest code by ‖z‖² + ‖e‖² − 2z·e, both l2-normalised when asked."""

    def __init__(self, codebook_size: int, token_size: int, *, use_l2_norm: bool) -> None:
        super().__init__()
        self.use_l2_norm = use_l2_norm
        self.embedding = CodeTable(codebook_size, token_size)

    def _codebook(self) -> torch.Tensor:
        e = self.embedding.weight.float()  # (K, D)
        return F.normalize(e, dim=-1) if self.use_l2_norm else e

    def lookup(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, n, D) -> ids (B, n) int64, in float32 (TiTok's quantizer disables autocast)."""
        b, n, d = z.shape
        z = z.float().reshape(b * n, d)
        if self.use_l2_norm:
            z = F.normalize(z, dim=-1)
        # taming's rounding order (‖z‖² + ‖e‖²) − 2 z·e, which is TiTok's; fixed row blocks (batch-invariant)
        return nearest_code(z, self._codebook()).view(b, n)

    def codes(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, n) -> codes (B, n, D) float32 (normalised when ``use_l2_norm``)."""
        return F.embedding(ids, self._codebook())


class PixelQuantizer(nn.Module):
    """MaskGIT-VQGAN's codebook: TiTok decodes with the softmax mixture of its codes, never a hard id."""

    def __init__(self, codebook_size: int, embed_dim: int) -> None:
        super().__init__()
        self.embedding = CodeTable(codebook_size, embed_dim)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        """logits (B, K, g, g) -> features (B, D, g, g) = softmax over K · codebook."""
        return torch.einsum("nchw,cd->ndhw", logits.softmax(1), self.embedding.weight.to(logits.dtype))


# ---------------------------------------------------------------------------------------- model
class TiTok(nn.Module):
    """TiTok's VQ tokenizer (see the module docstring): images in [0, 1] <-> ``num_latent_tokens`` ids."""

    pixel_range: ClassVar[tuple[float, float]] = (0.0, 1.0)

    def __init__(self, config: TiTokConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or TiTokConfig()
        self.encoder = TiTokEncoder(cfg)
        self.decoder = TiTokDecoder(cfg)
        self.latent_tokens = _embedding(cfg.num_latent_tokens, cfg.encoder_width)  # (n, W)
        self.apply(self._init_weights)
        self.quantize = TiTokQuantizer(cfg.codebook_size, cfg.token_size, use_l2_norm=cfg.use_l2_norm)
        if cfg.decoder == "maskgit":
            self.pixel_quantize = PixelQuantizer(cfg.pixel_codebook_size, cfg.pixel_embed_dim)
            self.pixel_decoder = PixelDecoder(cfg)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        """TiTok's initialisation of its ViTs (weights are loaded for inference; this is for fresh models)."""
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    # ------------------------------------------------------------------ TokenizerModel
    def layout(self, image_size: tuple[int, int] | int | None = None) -> TokenLayout:
        """A sequence of ``num_latent_tokens`` ids; TiTok takes one image size only (ValueError for another)."""
        side = self.config.image_size
        if image_size is not None:
            hw = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
            if hw != (side, side):
                raise ValueError(f"TiTok takes {side}x{side} images only, got {hw[1]}x{hw[0]} (WxH): pass size={side}")
        return TokenLayout.sequence(self.config.codebook_size, self.config.num_latent_tokens)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, 3, S, S) in [0, 1] -> unquantized latent tokens (B, n, token_size)."""
        self.layout(tuple(x.shape[-2:]))  # the one size the positional embeddings fit
        return self.encoder(x, self.latent_tokens)

    def encode_ids(self, x: torch.Tensor, *, autocast_dtype: torch.dtype | None = None) -> torch.Tensor:
        """x (B, 3, S, S) in [0, 1] -> ids (B, n) int64 (TiTok's ``min_encoding_indices``, (B, 1, n), flattened).

        ``autocast_dtype``: the ViT encoder runs under autocast; the code search in float32.
        """
        with autocast(x.device, autocast_dtype):
            z = self.encode(x)
        return self.quantize.lookup(z)

    def decode(self, z_q: torch.Tensor, *, channels_last: bool = False) -> torch.Tensor:
        """Codes (B, n, token_size) -> image (B, 3, S, S), roughly in [0, 1] (unclamped).

        ``channels_last``: run the pixel decoder on NHWC activations (equal up to float rounding).
        """
        x = self.decoder(z_q.to(self.decoder.decoder_embed.weight.dtype))
        if self.config.decoder == "maskgit":
            features = self.pixel_quantize(x)  # (B, 1024, g, g) logits -> (B, D, g, g) mixture of MaskGIT's codes
            if channels_last:
                features = features.contiguous(memory_format=torch.channels_last)
            x = self.pixel_decoder(features)
        return x

    def decode_ids(
        self, ids: torch.Tensor, *, autocast_dtype: torch.dtype | None = None, channels_last: bool = False
    ) -> torch.Tensor:
        """ids (B, n) -> image (B, 3, S, S), roughly in [0, 1] (TiTok's ``decode_tokens``, before the demo's clamp).

        ``autocast_dtype``: the decoders run under autocast. ``channels_last``: the pixel decoder
        runs on NHWC activations (equal up to float rounding).
        """
        z_q = self.quantize.codes(ids)  # (B, n, D)
        with autocast(ids.device, autocast_dtype):
            return self.decode(z_q, channels_last=channels_last)

    def forward(self, x: torch.Tensor) -> ModelOutput:
        """x (B, 3, S, S) in [0, 1] -> reconstruction (unclamped) and ids (B, n); no training loss."""
        ids = self.encode_ids(x)
        return ModelOutput(reconstruction=self.decode_ids(ids), ids=ids, codebook_loss=x.new_zeros(()))

    def extra_repr(self) -> str:
        c = self.config
        return f"{c.num_latent_tokens} tokens, {c.codebook_size} codes, {c.image_size}px, decoder={c.decoder}"


# ------------------------------------------------------------------------------ converting
def _vq_section(config: Mapping[str, Any]) -> Mapping[str, Any] | None:
    model = config.get("model")
    vq = model.get("vq_model") if isinstance(model, Mapping) else None
    return vq if isinstance(vq, Mapping) else None


_TITOK_KEYS = ("num_latent_tokens", "codebook_size", "vit_enc_model_size")


def recognise_titok(names: Sequence[str], read_config: Callable[[str], Mapping[str, Any] | None]) -> tuple[str, ...] | None:
    """("config.json", "model.safetensors") for a folder / Hub repo that TiTok's ``save_pretrained`` wrote, else None.

    Told by its ``config.json``: TiTok's nested config with a ``model.vq_model`` section holding
    TiTok's keys (vqtok's own folders, marked ``vqtok_format``, are never claimed).
    """
    if "config.json" not in names or "model.safetensors" not in names:
        return None
    config = read_config("config.json")
    if not isinstance(config, Mapping) or "vqtok_format" in config:
        return None
    vq = _vq_section(config)
    if vq is None or not all(k in vq for k in _TITOK_KEYS):
        return None
    return ("config.json", "model.safetensors")


def _count(state: Mapping[str, torch.Tensor], prefix: str) -> int:
    """How many numbered children ``prefix.<i>.`` the state dict has."""
    found = {int(m.group(1)) for k in state if (m := re.match(re.escape(prefix) + r"\.(\d+)\.", k))}
    return max(found) + 1 if found else 0


def _vit_size(vq: Mapping[str, Any], side: str, state: Mapping[str, torch.Tensor] | None) -> dict[str, int]:
    """``{side}_width / _layers / _heads`` of one ViT from its size name, checked against the weights when given.

    A name TiTok's code does not know (a patched copy, e.g. the tests' tiny fixture) takes width
    and layers from the weights and 64-channel heads, as TiTok's small / base / large have.
    """
    key = "vit_enc_model_size" if side == "encoder" else "vit_dec_model_size"
    name = vq.get(key)
    if state is None:
        if name not in VIT_SIZES:
            raise ValueError(f"TiTok {key} must be one of {', '.join(VIT_SIZES)}, got {name!r}")
        width, layers, heads = VIT_SIZES[name]
    else:
        width = state["latent_tokens" if side == "encoder" else "decoder.positional_embedding"].shape[1]
        layers = _count(state, f"{side}.transformer")
        if name in VIT_SIZES:
            if (width, layers) != VIT_SIZES[name][:2]:
                raise ValueError(
                    f"TiTok {key} {name!r} is {VIT_SIZES[name][0]} wide with {VIT_SIZES[name][1]} layers, "
                    f"but the weights have {width} and {layers}"
                )
            heads = VIT_SIZES[name][2]
        else:
            heads = max(1, width // 64)
            logger.info("TiTok %s %r is not small/base/large: %d wide, %d layers (from the weights), %d heads of 64", key, name, width, layers, heads)
    return {f"{side}_width": width, f"{side}_layers": layers, f"{side}_heads": heads}


def titok_config(config: Mapping[str, Any], state: Mapping[str, torch.Tensor] | None = None) -> TiTokConfig:
    """The :class:`TiTokConfig` of TiTok's nested ``config.json`` (as ``save_pretrained`` writes it).

    ``state``: the weights, when at hand. They give the sizes TiTok fixes in code (MaskGIT's
    pixel decoder) and those of a ViT size name TiTok does not know, and are checked against the
    named sizes; without them the pixel decoder is TiTok's (1024 x 256 codes, 128 channels).
    """
    vq = _vq_section(config)
    if vq is None:
        raise ValueError("not a TiTok config: no model.vq_model section")
    mode = vq.get("quantize_mode", "vq")
    if mode != "vq":
        raise ValueError(f"TiTok quantize_mode {mode!r} makes continuous latents, not ids; vqtok loads the VQ TiTok tokenizers")
    legacy, finetune = bool(vq.get("is_legacy", True)), bool(vq.get("finetune_decoder", True))
    if legacy and finetune:
        decoder = "maskgit"
    elif not legacy and not finetune:
        decoder = "pixels"
    elif legacy:
        raise ValueError("a stage-1 TiTok (finetune_decoder false, is_legacy true) decodes to MaskGIT-VQGAN logits, not pixels; load the stage-2 tokenizer")
    else:
        raise ValueError("TiTok with finetune_decoder true needs is_legacy true (TiTok itself cannot run this combination)")
    try:
        image_size = int(config["dataset"]["preprocessing"]["crop_size"])
    except (KeyError, TypeError, ValueError):
        raise ValueError("TiTok config has no dataset.preprocessing.crop_size (the image size)") from None
    if state is not None:
        need = ["latent_tokens", "decoder.positional_embedding"]
        need += ["pixel_quantize.embedding.weight", "pixel_decoder.up.0.block.0.conv2.weight"] if decoder == "maskgit" else []
        missing = [k for k in need if k not in state]
        if missing:
            raise ValueError(f"TiTok weights lack {', '.join(missing)} (the config says decoder={decoder!r})")
    try:
        fields: dict[str, Any] = dict(
            image_size=image_size, num_latent_tokens=int(vq["num_latent_tokens"]), codebook_size=int(vq["codebook_size"]),
            token_size=int(vq["token_size"]), use_l2_norm=bool(vq.get("use_l2_norm", False)), decoder=decoder,
            encoder_patch_size=int(vq["vit_enc_patch_size"]), decoder_patch_size=int(vq["vit_dec_patch_size"]),
        )
    except KeyError as err:
        raise ValueError(f"TiTok config has no model.vq_model.{err.args[0]}") from None
    fields.update(_vit_size(vq, "encoder", state))
    fields.update(_vit_size(vq, "decoder", state))
    if decoder == "maskgit" and state is not None:  # MaskGIT's VQGAN: fixed in TiTok's code, read off the weights
        widths = [state[f"pixel_decoder.up.{i}.block.0.conv2.weight"].shape[0] for i in range(_count(state, "pixel_decoder.up"))]
        hidden = math.gcd(*widths)
        fields.update(
            pixel_codebook_size=state["pixel_quantize.embedding.weight"].shape[0],
            pixel_embed_dim=state["pixel_quantize.embedding.weight"].shape[1],
            pixel_hidden_channels=hidden, pixel_channel_mult=tuple(w // hidden for w in widths),
            pixel_num_res_blocks=_count(state, "pixel_decoder.mid"),
        )
    return TiTokConfig(**fields)


def convert_titok(paths: list[Path]) -> tuple[TiTokConfig, dict[str, torch.Tensor]]:
    """TiTok's ``config.json`` + ``model.safetensors`` (or the folder holding them, or one of them) -> (config, state dict).

    The tensors keep their names (they are this module's). A TiTok generator (its weights have no
    ``latent_tokens``) or TA-TiTok (a text-guided decoder) is refused with the reason.
    """
    from safetensors.torch import load_file

    paths = [Path(p) for p in paths]
    if len(paths) == 1:  # the folder, or one of its two files: both are read
        folder = paths[0] if paths[0].is_dir() else paths[0].parent
        paths = [folder / "config.json", folder / "model.safetensors"]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"TiTok conversion reads config.json and model.safetensors: {', '.join(missing)} not found")
    configs = [p for p in paths if p.suffix == ".json"]
    weights = [p for p in paths if p.suffix == ".safetensors"]
    if len(configs) != 1 or len(weights) != 1:
        raise ValueError(f"TiTok conversion reads one config.json and one model.safetensors, got {', '.join(map(str, paths))}")
    state = load_file(str(weights[0]))
    if "latent_tokens" not in state or "encoder.patch_embed.weight" not in state:
        raise ValueError(f"{weights[0]} holds no TiTok tokenizer (no latent_tokens / encoder.patch_embed): a TiTok generator?")
    if any(k.startswith("decoder.text_guidance") for k in state):
        raise ValueError(f"{weights[0]} is a TA-TiTok tokenizer (text-guided decoder), which vqtok does not load")
    config = titok_config(json.loads(configs[0].read_text()), state)
    logger.info("converted TiTok %s: %s", weights[0], config)
    return config, state


register_family(Family(
    name="titok", config_class=TiTokConfig, model_class=TiTok,
    description="TiTok (ByteDance 1-D tokenizer: ViT, sequence of 32-256 ids, MaskGIT-VQGAN or pixel ViT decoder)",
    tiny_config=lambda: TiTokConfig(
        image_size=32, num_latent_tokens=8, codebook_size=64, token_size=8, encoder_patch_size=8, encoder_width=32,
        encoder_layers=1, encoder_heads=2, decoder_patch_size=8, decoder_width=32, decoder_layers=1, decoder_heads=2,
        pixel_codebook_size=64, pixel_embed_dim=16, pixel_hidden_channels=32, pixel_channel_mult=(1, 1, 1, 1),
        pixel_num_res_blocks=1,
    ),
    test_image_size=32,
    formats=(SourceFormat(
        name="titok", help="ByteDance TiTok (config.json + model.safetensors, as save_pretrained writes)",
        convert="vqtok.models.titok:convert_titok", recognise=recognise_titok, sources=("folder",),
    ),),
))
