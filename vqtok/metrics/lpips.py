"""LPIPS (Zhang et al. 2018), VGG16 variant v0.1, in plain torch.

Parameter names: the backbone is ``features.<i>`` exactly as torchvision's VGG16 (so
``vgg16-397923af.pth`` loads as published; its ``classifier.*`` is ignored) and the linear
heads are ``lin<k>.model.1.weight`` exactly as the LPIPS ``weights/v0.1/vgg.pth`` file.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

logger = logging.getLogger(__name__)

__all__ = ["LPIPS", "LPIPS_VGG_URL", "VGG16_URL", "LPIPSWeights", "load_lpips"]

VGG16_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
VGG16_FILENAME = "vgg16-397923af.pth"
VGG16_SHA256_PREFIX = "397923af"
LPIPS_VGG_URL = "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/vgg.pth"
LPIPS_VGG_FILENAME = "lpips-v0.1-vgg.pth"
LPIPS_VGG_SHA256 = "a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868"  # lpips 0.1.4 wheel

# VGG16 "features" up to relu5_3: channel counts, "M" = 2x2 max pool.
_VGG_CFG: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
_TAPS = (3, 8, 15, 22, 29)  # indices of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 in features
_CHANNELS = (64, 128, 256, 512, 512)


class _Lin(nn.Module):
    """1x1 conv to one channel, no bias; index 0 is LPIPS' dropout (identity at eval)."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Identity(), nn.Conv2d(cin, 1, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class LPIPS(nn.Module):
    """``forward(x, y)``: images (B, 3, H, W) in [0, 1] -> LPIPS distance (B,) (lower = more similar)."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for item in _VGG_CFG:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(cin, int(item), 3, padding=1), nn.ReLU()]
                cin = int(item)
        self.features = nn.Sequential(*layers)  # 30 modules, relu5_3 is the last
        for k, ch in enumerate(_CHANNELS):
            self.add_module(f"lin{k}", _Lin(ch))
        # LPIPS' ScalingLayer: inputs in [-1, 1] are shifted/scaled to ImageNet statistics.
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False)
        self.eval()
        self.requires_grad_(False)

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        out: list[torch.Tensor] = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in _TAPS:
                out.append(x)
        return out

    @torch.no_grad()
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape != y.shape or x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected two RGB batches (B, 3, H, W) of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
        fx, fy = (self._taps(((2 * t.float() - 1) - self.shift) / self.scale) for t in (x, y))
        total = torch.zeros(x.shape[0], device=x.device)
        for k, taps in enumerate(zip(fx, fy)):
            a, b = (t / (t.pow(2).sum(1, keepdim=True).sqrt() + 1e-10) for t in taps)  # unit length over channels
            d = getattr(self, f"lin{k}")((a - b).pow(2))  # (B, 1, h, w)
            total = total + d.mean(dim=(1, 2, 3))
        return total

    def load_weights(self, vgg_state: Mapping[str, torch.Tensor], lin_state: Mapping[str, torch.Tensor]) -> None:
        """Load torchvision VGG16 weights (``features.*``; ``classifier.*`` ignored) and LPIPS heads."""
        own = self.state_dict()
        merged = {k: v for k, v in vgg_state.items() if k.startswith("features.") and int(k.split(".")[1]) < len(self.features)}
        merged.update(lin_state)
        missing = sorted(set(own) - set(merged))
        unexpected = sorted(set(merged) - set(own))
        if missing or unexpected:
            raise ValueError(f"LPIPS weights: missing {missing[:4]}, unexpected {unexpected[:4]}")
        for k in own:
            if tuple(merged[k].shape) != tuple(own[k].shape):
                raise ValueError(f"{k}: shape {tuple(merged[k].shape)}, expected {tuple(own[k].shape)}")
        self.load_state_dict(merged)


@dataclass(frozen=True)
class LPIPSWeights:
    vgg_path: str
    lin_path: str

    def to_dict(self) -> dict[str, str]:
        return {"vgg": self.vgg_path, "lin": self.lin_path}


def _load_pth(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping):
        raise TypeError(f"{path} holds a {type(state).__name__}, not a state dict")
    return dict(state)


def load_lpips(
    *, vgg_weights: str | os.PathLike[str] | None = None, lin_weights: str | os.PathLike[str] | None = None,
    allow_download: bool = True, device: str | torch.device = "cpu",
) -> tuple[LPIPS, LPIPSWeights]:
    """LPIPS-VGG with the published weights: given paths, else cache/download (checksum-verified).

    The linear heads also come from an installed ``lpips`` package. Raises
    ``FileNotFoundError`` naming the URL and the path to place the file when unavailable.
    """
    from vqtok.hub import download_weights
    from vqtok.metrics.inception import existing_file, package_file

    if vgg_weights is not None:
        vgg_path = existing_file(vgg_weights, "VGG16 weights")
    else:
        vgg_path = download_weights(filename=VGG16_FILENAME, url=VGG16_URL, sha256=VGG16_SHA256_PREFIX,
                                    local_files_only=not allow_download)
    if lin_weights is not None:
        lin_path = existing_file(lin_weights, "LPIPS linear-layer weights")
    else:
        lin_path = package_file("lpips", "weights/v0.1/vgg.pth") or download_weights(  # the registry package lpips' copy
            filename=LPIPS_VGG_FILENAME, url=LPIPS_VGG_URL, sha256=LPIPS_VGG_SHA256, local_files_only=not allow_download
        )
    model = LPIPS()
    model.load_weights(_load_pth(vgg_path), _load_pth(lin_path))
    logger.info("LPIPS weights: VGG16 %s, heads %s", vgg_path, lin_path)
    return model.to(device), LPIPSWeights(vgg_path=str(vgg_path), lin_path=str(lin_path))
