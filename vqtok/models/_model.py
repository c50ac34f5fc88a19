"""What every grid tokenizer model (VQGAN, IBQ, MAGVIT2, CosmosDI) derives from its encode/decode/quantize:
its token layout, ``encode_ids`` / ``decode_ids`` (the :class:`~vqtok.models.registry.TokenizerModel`
interface) and ``forward``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from vqtok._runtime import autocast
from vqtok.layout import TokenLayout

if TYPE_CHECKING:
    from vqtok.models.quantizer import QuantizerOutput

__all__ = ["ModelOutput", "TokenizerModelMixin", "LastLayerMixin"]


@dataclass
class ModelOutput:
    reconstruction: torch.Tensor  # (B, out_ch, H, W), roughly in [-1, 1]
    ids: torch.Tensor  # (B, h, w) long
    codebook_loss: torch.Tensor  # () quantizer loss (0 in eval mode)


class TokenizerModelMixin:
    """``downsample_factor``, ``decode_ids`` and ``forward`` of a tokenizer model; listed before ``nn.Module``.

    The model provides ``config`` (with ``downsample_factor``), ``encoder``, ``quant_conv``, ``quantize``
    (with ``lookup`` and ``codes``), ``post_quant_conv`` and ``decoder``, from which ``encode`` and ``decode``
    follow unless it overrides them; ``output_class`` is the dataclass ``forward`` returns.
    """

    config: Any
    quantize: Any
    output_class: ClassVar[type[ModelOutput]] = ModelOutput
    pixel_range: ClassVar[tuple[float, float]] = (-1.0, 1.0)  # encode_ids takes, decode_ids gives images in this range

    def encode(self, x: torch.Tensor) -> QuantizerOutput:
        """x (B, 3, H, W) in [-1, 1] -> quantized features (B, D, h, w), ids (B, h, w) and the quantizer's loss."""
        return self.quantize(self.quant_conv(self.encoder(x)))  # type: ignore[attr-defined, no-any-return]

    def decode(self, z_q: torch.Tensor) -> torch.Tensor:
        """z_q (B, D, h, w) -> image (B, 3, H, W), roughly in [-1, 1]."""
        return self.decoder(self.post_quant_conv(z_q))  # type: ignore[attr-defined, no-any-return]

    @property
    def downsample_factor(self) -> int:
        return int(self.config.downsample_factor)

    @property
    def code_dtype(self) -> torch.dtype:
        """The dtype the decoder takes codes in (that of ``post_quant_conv``'s weights)."""
        return self.post_quant_conv.weight.dtype  # type: ignore[attr-defined, no-any-return]

    def layout(self, image_size: tuple[int, int] | None = None) -> TokenLayout:
        """One (H/f, W/f) grid of ids from one codebook; of any size when ``image_size`` is None."""
        layout = TokenLayout.grid(int(self.config.n_embed))
        if image_size is None:
            return layout
        hgt, wid = image_size
        f = self.downsample_factor
        if hgt % f or wid % f or hgt <= 0 or wid <= 0:
            raise ValueError(f"image size {wid}x{hgt} (WxH) is not a positive multiple of the downsample factor {f}")
        return layout.with_grid((hgt // f, wid // f))

    def encode_ids(self, x: torch.Tensor, *, autocast_dtype: torch.dtype | None = None) -> torch.Tensor:
        """x (B, 3, H, W) in [-1, 1] -> ids (B, H/f, W/f) long.

        ``autocast_dtype``: the encoder alone runs under autocast; ``quant_conv`` and the code search,
        which decide the ids and cost little, run in the weights' dtype.
        """
        if autocast_dtype is None:
            return self.encode(x).ids
        with torch.autocast(device_type=x.device.type, dtype=autocast_dtype):
            h = self.encoder(x)  # type: ignore[attr-defined]
        conv = self.quant_conv  # type: ignore[attr-defined]
        dtype = conv.weight.dtype if hasattr(conv, "weight") else self.code_dtype
        return self.quantize.lookup(conv(h.to(dtype)))  # type: ignore[no-any-return]

    def decode_ids(
        self, ids: torch.Tensor, *, autocast_dtype: torch.dtype | None = None, channels_last: bool = False
    ) -> torch.Tensor:
        """ids (B, h, w) long -> image (B, 3, H, W), roughly in [-1, 1]; the decoder under autocast when asked.

        ``channels_last``: run the decoder on NHWC activations (faster oneDNN/cuDNN kernels, same result).
        """
        z_q = self.quantize.codes(ids).to(self.code_dtype)  # (B, D, h, w)
        if channels_last:
            z_q = z_q.contiguous(memory_format=torch.channels_last)
        with autocast(ids.device, autocast_dtype):
            return self.decode(z_q)

    def forward(self, x: torch.Tensor) -> ModelOutput:  # x (B, 3, H, W) in [-1, 1]
        q = self.encode(x)
        return self.output_class(reconstruction=self.decode(q.z_q), ids=q.ids, codebook_loss=q.loss)


class LastLayerMixin:
    """``last_layer`` of a decoder whose output conv is ``conv_out``."""

    @property
    def last_layer(self) -> torch.Tensor:
        """Weight of the final conv (where the adaptive GAN weight λ is measured)."""
        return self.conv_out.weight  # type: ignore[attr-defined, no-any-return]
