"""N-layer PatchGAN discriminator (Isola et al. 2017, pix2pix), as used by taming-transformers.

Parameter names follow taming's ``NLayerDiscriminator`` (``main.0.weight``, ``main.2.weight``,
``main.3.running_mean``, ...), so its ``loss.discriminator.*`` weights load with strict matching.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["NLayerDiscriminator", "weights_init"]


def weights_init(module: nn.Module) -> None:
    """taming's init: conv weights N(0, 0.02); batch-norm weights N(1, 0.02), biases 0."""
    name = type(module).__name__
    if "Conv" in name:
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif "BatchNorm" in name:
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.constant_(module.bias, 0.0)


class NLayerDiscriminator(nn.Module):
    """Image (B, in_channels, H, W) -> patch logits (B, 1, h, w); each logit sees a 70×70 patch for n_layers=3."""

    def __init__(self, in_channels: int = 3, ndf: int = 64, n_layers: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in [*range(1, n_layers), n_layers]:  # the last of these keeps the resolution
            prev, mult = mult, min(2**n, 8)
            layers += [
                nn.Conv2d(ndf * prev, ndf * mult, 4, stride=2 if n < n_layers else 1, padding=1, bias=False),
                nn.BatchNorm2d(ndf * mult),
                nn.LeakyReLU(0.2, True),
            ]
        layers.append(nn.Conv2d(ndf * mult, 1, 4, stride=1, padding=1))
        self.main = nn.Sequential(*layers)
        self.apply(weights_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)
