"""What every vqtok tokenizer model (VQGAN, IBQ, MAGVIT2, CosmosDI) derives from its encode/decode/quantize."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch

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

    The model provides ``config`` (with ``downsample_factor``), ``quantize`` (with ``codes``),
    ``encode`` and ``decode``; ``output_class`` is the dataclass ``forward`` returns.
    """

    config: Any
    quantize: Any
    output_class: ClassVar[type[ModelOutput]] = ModelOutput

    if TYPE_CHECKING:

        def encode(self, x: torch.Tensor) -> QuantizerOutput: ...

        def decode(self, z_q: torch.Tensor) -> torch.Tensor: ...

    @property
    def downsample_factor(self) -> int:
        return int(self.config.downsample_factor)

    @property
    def code_dtype(self) -> torch.dtype:
        """The dtype the decoder takes codes in (that of ``post_quant_conv``'s weights)."""
        return self.post_quant_conv.weight.dtype  # type: ignore[attr-defined, no-any-return]

    def decode_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, h, w) long -> image (B, 3, H, W), roughly in [-1, 1]."""
        return self.decode(self.quantize.codes(ids).to(self.code_dtype))

    def forward(self, x: torch.Tensor) -> ModelOutput:  # x (B, 3, H, W) in [-1, 1]
        q = self.encode(x)
        return self.output_class(reconstruction=self.decode(q.z_q), ids=q.ids, codebook_loss=q.loss)


class LastLayerMixin:
    """``last_layer`` of a decoder whose output conv is ``conv_out``."""

    @property
    def last_layer(self) -> torch.Tensor:
        """Weight of the final conv (where the adaptive GAN weight λ is measured)."""
        return self.conv_out.weight  # type: ignore[attr-defined, no-any-return]
