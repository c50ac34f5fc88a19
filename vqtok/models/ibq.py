"""IBQ: Index Backpropagation Quantization (TencentARC, SEED-Voken; Shi et al. 2024).

The autoencoder is taming's VQGAN unchanged (IBQ's ``Encoder``/``Decoder`` are taming's
``diffusionmodules/model.py``; keys ``encoder.*``, ``decoder.*``, ``quant_conv``,
``post_quant_conv``, ``quantize.embedding.weight``), so :class:`IBQ` reuses
:mod:`vqtok.models.vqgan`'s encoder and decoder with another quantizer. It is deliberately not a
``VQGAN`` subclass: code that handles VQGANs (the diffusers exporter, nearest-code tools) must
not take an IBQ model for one, since its ids are chosen differently. What differs is how a code is chosen
and trained (IBQ's ``IndexPropagationQuantize``)::

    logits = z · Eᵀ                   # (N, K) inner products, not distances
    id     = argmax softmax(logits)   # the largest inner product (softmax kept for identical ties)
    z_q    = (onehot(id) − sg[p] + p) · E,   p = softmax(logits)   (training: every code gets a gradient)
    loss   = ‖z_q − z‖² + ‖sg[E[id]] − z‖² + β ‖E[id] − sg[z]‖²

At inference ``z_q`` is ``E[id]`` (IBQ's ``get_codebook_entry``), so ``codes(lookup(z))`` is the
decoder input. The search over 16 384 – 262 144 codes of 256 dimensions is chunked
(:func:`max_inner_product`): extra memory about 128 MiB whatever the batch. IBQ's optional
entropy penalty (training only) is not implemented here.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from vqtok.models._config import ArchConfig, HalvingLevels
from vqtok.models._model import TokenizerModelMixin
from vqtok.models.quantizer import Codebook, QuantizerOutput
from vqtok.models.registry import Family, SourceFormat, lightning_options, one_file, register_family, state_keys
from vqtok.models.vqgan import Decoder, Encoder, VQGANConfig, VQGANOutput

__all__ = ["IBQConfig", "IBQ", "IndexQuantizer", "max_inner_product"]

# Elements of the (N, K) logit buffer alive at once (about 64 MiB of float32), as nearest_code.
_LOGIT_BUDGET = 1 << 24


def max_inner_product(
    z: torch.Tensor, codebook: torch.Tensor, *, chunk_size: int | None = None, exact: bool = True
) -> torch.Tensor:
    """Index of the codebook row with the largest inner product, for every row of ``z``.

    z: (N, D), codebook: (K, D) -> (N,) long; float32 at least, autocast and autograd off.
    Chunked over N so the (N, K) logits never exist whole (``chunk_size`` overrides the rows
    per chunk). ``exact=True`` takes the argmax of ``softmax(logits)`` as IBQ does (so ids
    that tie after the softmax's rounding resolve alike); ``exact=False`` the argmax of the
    logits (one pass fewer over the buffer).
    """
    if z.ndim != 2 or codebook.ndim != 2 or z.shape[1] != codebook.shape[1]:
        raise ValueError(f"max_inner_product expects z (N, D) and codebook (K, D), got {tuple(z.shape)} and {tuple(codebook.shape)}")
    with torch.no_grad(), torch.autocast(device_type=z.device.type, enabled=False):
        dtype = torch.promote_types(z.dtype, torch.float32)
        z, codebook = z.to(dtype), codebook.to(dtype)
        n, k = z.shape[0], codebook.shape[0]
        ids = torch.empty(n, dtype=torch.long, device=z.device)
        if n == 0:
            return ids
        if chunk_size is None:
            chunk_size = max(1, _LOGIT_BUDGET // max(k, 1))
        codebook_t = codebook.t()  # (D, K) view
        logits = z.new_empty(min(n, chunk_size), k)  # reused across chunks
        for start in range(0, n, chunk_size):
            zc = z[start : start + chunk_size]  # (n_c, D)
            buf = logits[: zc.shape[0]]
            torch.mm(zc, codebook_t, out=buf)  # (n_c, K)
            scores = torch.softmax(buf, dim=1) if exact else buf  # a second (n_c, K) buffer when exact
            ids[start : start + zc.shape[0]] = scores.max(dim=1).indices
            del scores
    return ids


class IndexQuantizer(Codebook):
    """IBQ's quantizer: a codebook of ``n_embed`` × ``embed_dim`` searched by inner product (see the module docstring)."""

    # Codebook's __init__ and codes as they are: IBQ keeps nn.Embedding's N(0, 1) init.

    def lookup(self, z: torch.Tensor, *, exact: bool = True) -> torch.Tensor:
        """z (B, D, h, w) -> ids (B, h, w) long: the code of largest inner product."""
        b, d, h, w = z.shape
        z_flat = z.permute(0, 2, 3, 1).reshape(-1, d)  # (B*h*w, D)
        return max_inner_product(z_flat, self.embedding.weight, exact=exact).view(b, h, w)

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        ids = self.lookup(z)  # (B, h, w)
        z_hard = self.codes(ids).to(z.dtype)  # (B, D, h, w)
        if not self.training:
            return QuantizerOutput(z_q=z_hard, ids=ids, loss=z.new_zeros(()))
        # Index backpropagation: the straight-through one-hot carries a gradient to every code.
        # (B, K, h, w) probabilities: training-sized codebooks only (K × tokens floats).
        probs = torch.softmax(torch.einsum("bdhw,kd->bkhw", z, self.embedding.weight), dim=1)
        hard = F.one_hot(ids, self.n_embed).permute(0, 3, 1, 2).to(probs.dtype)  # (B, K, h, w)
        z_q = torch.einsum("bkhw,kd->bdhw", hard - probs.detach() + probs, self.embedding.weight)
        loss = (
            torch.mean((z_q - z) ** 2)
            + torch.mean((z_hard.detach() - z) ** 2)
            + self.beta * torch.mean((z_hard - z.detach()) ** 2)
        )
        return QuantizerOutput(z_q=z_q, ids=ids, loss=loss)


@dataclass(frozen=True)
class IBQConfig(HalvingLevels, ArchConfig):
    """Architecture of an IBQ tokenizer (defaults: IBQ's ImageNet 256 models, ``imagenet_ibqgan_262144.yaml``).

    ``hash()`` differs from a VQGAN's of the same fields (``model_type`` "ibq" is mixed in).
    """

    config_name: ClassVar[str] = "IBQ"
    hash_model_type: ClassVar[str | None] = "ibq"

    ch: int = 128  # base channel count of the first level
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)  # channel multiplier per level; f = 2**(len-1)
    num_res_blocks: int = 4  # ResNet blocks per encoder level (decoder uses one more)
    attn_resolutions: tuple[int, ...] = (16,)  # feature-map sides (relative to `resolution`) with attention
    z_channels: int = 256  # channels of the encoder output / decoder input
    embed_dim: int = 256  # code dimension D (quant_conv maps z_channels -> embed_dim)
    n_embed: int = 262144  # codebook size K (published: 1024, 8192, 16384, 262144)
    resolution: int = 256  # training image side; only places the attention levels
    in_channels: int = 3  # image channels in
    out_ch: int = 3  # image channels out
    dropout: float = 0.0  # dropout inside ResNet blocks (training only)
    beta: float = 0.25  # weight of the commitment term of IBQ's loss

    def __post_init__(self) -> None:
        self._int_tuples("ch_mult", "attn_resolutions")
        self.vqgan_config()  # validates the autoencoder fields (GroupNorm divisibility, positive sizes)

    def vqgan_config(self) -> VQGANConfig:
        """The same autoencoder as a VQGANConfig (IBQ's encoder and decoder are taming's)."""
        shared = {f.name: getattr(self, f.name) for f in fields(self)}
        return VQGANConfig(**shared)


class IBQ(TokenizerModelMixin, nn.Module):
    """Taming's encoder/decoder with IBQ's :class:`IndexQuantizer`; parameter names identical to IBQ's ``VQModel``."""

    def __init__(self, config: IBQConfig | None = None) -> None:
        super().__init__()
        self.config = config or IBQConfig()
        cfg = self.config.vqgan_config()
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quantize = IndexQuantizer(cfg.n_embed, cfg.embed_dim, beta=self.config.beta)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.z_channels, 1)

    output_class = VQGANOutput


def _is_ibq(checkpoint: Any, name: str) -> bool:
    """A Lightning checkpoint with a codebook and model_ema.* weights (the published IBQ files; taming kept none) or "ibq" in its name."""
    keys = state_keys(checkpoint)
    return "quantize.embedding.weight" in keys and (any(k.startswith("model_ema.") for k in keys) or "ibq" in name.lower())


register_family(Family(
    name="ibq", config_class=IBQConfig, model_class=IBQ, description="IBQ (taming autoencoder, largest inner product)",
    tiny_config=lambda: IBQConfig(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(16,), z_channels=16,
                                  embed_dim=8, n_embed=512, resolution=64),
    formats=(SourceFormat(
        name="ibq", help="IBQ Lightning .ckpt (imagenet256_262144.ckpt, ...)", convert="vqtok.convert.ibq:convert_ibq",
        recognise=lambda names, _: one_file(names, (".ckpt",)), sources=("ckpt",), by_suffix=True,
        add_arguments=lightning_options("IBQ", "training resolution (names the attention levels)"),
        accepts=_is_ibq,
    ),),
))
