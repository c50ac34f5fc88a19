"""The VQGAN objective (Esser et al. 2021, taming's ``VQLPIPSWithDiscriminator``).

Generator (autoencoder) loss::

    L_rec   = pixel(x, x̂) + perceptual_weight · LPIPS(x, x̂) + chroma_weight · chroma(x, x̂)
    L_GAN   = −mean D(x̂)
    λ       = clamp(‖∇_{G_L} L_rec‖ / (‖∇_{G_L} L_GAN‖ + 1e-4), 0, max_lambda) · disc_weight
    L_G     = L_rec + λ · f(step) · L_GAN + codebook_weight · L_VQ

where chroma is the L1 distance of the two images' patch-mean chroma (:func:`chroma_loss`; off by
default), G_L is the decoder's last layer and f(step) = disc_factor once step ≥ disc_start (else 0).
Discriminator loss (hinge): f(step) · ½ (mean relu(1 − D(x)) + mean relu(1 + D(x̂))).
Images are in [−1, 1].
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vqtok.training.config import LossConfig
from vqtok.training.discriminator import NLayerDiscriminator

logger = logging.getLogger(__name__)

__all__ = ["ChromaReadout", "GeneratorLosses", "VQGANLoss", "adaptive_weight", "chroma_loss", "hinge_d_loss", "load_perceptual", "pixel_loss"]

PerceptualFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x, x̂) in [-1, 1] -> (B,)


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (torch.mean(F.relu(1.0 - logits_real)) + torch.mean(F.relu(1.0 + logits_fake)))


def pixel_loss(x: torch.Tensor, rec: torch.Tensor, kind: str) -> torch.Tensor:
    """Mean pixel loss: "l1", "l2" or "l1+l2"."""
    diff = (x.float() - rec.float())
    if kind == "l1":
        return diff.abs().mean()
    if kind == "l2":
        return (diff**2).mean()
    if kind == "l1+l2":
        return diff.abs().mean() + (diff**2).mean()
    raise ValueError(f"unknown reconstruction loss {kind!r}")


# the two chroma axes of an orthonormal opponent basis (the third, (R+G+B)/√3, is lightness):
# red-green (R−G)/√2 and yellow-blue (R+G−2B)/√6
_CHROMA = ((1 / 2**0.5, -1 / 2**0.5, 0.0), (1 / 6**0.5, 1 / 6**0.5, -2 / 6**0.5))


def chroma_loss(x: torch.Tensor, rec: torch.Tensor, *, patch: int) -> torch.Tensor:
    """Mean L1 distance of the patch-mean chroma of x and x̂ (B, 3, H, W): both images averaged over
    ``patch`` × ``patch`` blocks (the tokens' footprint when ``patch`` is the downsample factor), then
    projected onto the red-green and yellow-blue opponent axes (lightness left out).

    A pixel loss lets a tight bottleneck drop the axis with the least variance in photos, red-green,
    first: foliage comes back grey or brown. This term prices each token's mean colour directly.
    """
    return patch_chroma(x.float() - rec.float(), patch).abs().mean()  # pooling and projection are linear


def patch_chroma(x: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 2, H/patch, W/patch): each patch's mean colour on the red-green and yellow-blue axes."""
    basis = torch.tensor(_CHROMA, device=x.device)  # (2, 3)
    return torch.einsum("kc,bchw->bkhw", basis, F.avg_pool2d(x.float(), patch))


class ChromaReadout(nn.Module):
    """A trainer-only linear read-out of each token's patch-mean chroma from the encoder output.

    A 1×1 convolution maps the L2-normalised encoder output z (B, D, h, w) to the two opponent chroma
    axes of the patch each position covers; the loss is the L1 distance to the input's patch-mean
    chroma. Its gradient reaches the encoder, so z, and with it the codes, must hold both chroma axes
    linearly: without it a tight bottleneck keeps the orange-blue axis and folds red-green (foliage)
    into it. The head is not part of the exported model; its weights live in the trainer checkpoint.
    """

    def __init__(self, channels: int, patch: int) -> None:
        super().__init__()
        self.patch = patch  # the model's downsample factor: one z position per patch
        self.head = nn.Conv2d(channels, 2, 1)  # channels of z: the codebook dimension

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """L1 between head(normalise(z)) and the patch-mean chroma of x; z (B, D, h, w), x (B, 3, h·p, w·p)."""
        target = patch_chroma(x, self.patch)  # (B, 2, h, w)
        pred = self.head(F.normalize(z.float(), dim=1))  # (B, 2, h, w)
        return (pred - target).abs().mean()


def adaptive_weight(rec_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor, *, max_lambda: float = 1e4) -> torch.Tensor:
    """λ = ‖∇ rec_loss‖ / (‖∇ g_loss‖ + 1e-4) at ``last_layer``, clamped to [0, max_lambda], detached."""
    rec_grads = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_grads = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    lam = torch.norm(rec_grads.float()) / (torch.norm(g_grads.float()) + 1e-4)
    return torch.clamp(lam, 0.0, max_lambda).detach()


def load_perceptual(config: LossConfig, device: torch.device) -> PerceptualFn:
    """LPIPS-VGG from :mod:`vqtok.metrics` (weights cached / downloaded; FileNotFoundError says where)."""
    from vqtok.metrics.lpips import load_lpips

    try:
        model, _ = load_lpips(vgg_weights=config.vgg_weights, lin_weights=config.lpips_weights, device=device)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"the perceptual loss needs the VGG16 / LPIPS weights: {err} "
                                "(or train with loss.perceptual_weight: 0)") from err
    model.eval().requires_grad_(False)

    def perceptual(x: torch.Tensor, rec: torch.Tensor) -> torch.Tensor:
        return model((x.float() + 1) / 2, (rec.float() + 1) / 2)

    return perceptual


@dataclass
class GeneratorLosses:
    total: torch.Tensor  # what is back-propagated
    rec: torch.Tensor  # pixel loss
    perceptual: torch.Tensor  # LPIPS (0 when off)
    chroma: torch.Tensor  # patch-mean chroma L1 (0 when off)
    codebook: torch.Tensor  # quantizer loss
    gan: torch.Tensor  # −mean D(x̂) (0 when off)
    lam: torch.Tensor  # adaptive weight λ · disc_weight (0 when off)


class VQGANLoss(nn.Module):
    """Generator and discriminator losses. ``perceptual`` may be given (tests); else loaded when weight > 0."""

    def __init__(self, config: LossConfig, *, perceptual: PerceptualFn | None = None, device: torch.device | None = None) -> None:
        super().__init__()
        self.config = config
        self.discriminator = NLayerDiscriminator(3, config.disc_ch, config.disc_layers) if config.disc_weight > 0 else None
        if perceptual is None and config.perceptual_weight > 0:
            perceptual = load_perceptual(config, device or torch.device("cpu"))
        self.perceptual = perceptual

    def gan_active(self, step: int) -> bool:
        return self.discriminator is not None and step >= self.config.disc_start and self.config.disc_factor > 0

    def generator(
        self, x: torch.Tensor, rec: torch.Tensor, codebook_loss: torch.Tensor, *, step: int, last_layer: torch.Tensor
    ) -> GeneratorLosses:
        cfg = self.config
        rec_term = pixel_loss(x, rec, cfg.rec_loss) * cfg.rec_weight
        zero = rec_term.new_zeros(())
        p_term = self.perceptual(x, rec).mean() if self.perceptual is not None and cfg.perceptual_weight > 0 else zero
        c_term = chroma_loss(x, rec, patch=cfg.chroma_patch) if cfg.chroma_weight > 0 else zero
        nll = rec_term + cfg.perceptual_weight * p_term + cfg.chroma_weight * c_term
        total = nll + cfg.codebook_weight * codebook_loss.float()
        g_loss, lam = zero, zero
        if self.gan_active(step):
            assert self.discriminator is not None
            g_loss = -torch.mean(self.discriminator(rec.float()))
            if torch.is_grad_enabled() and last_layer.requires_grad:
                lam = adaptive_weight(nll, g_loss, last_layer, max_lambda=cfg.max_lambda) * cfg.disc_weight
            else:
                lam = zero + cfg.disc_weight
            total = total + lam * cfg.disc_factor * g_loss
        return GeneratorLosses(total=total, rec=rec_term.detach(), perceptual=p_term.detach(),
                               chroma=c_term.detach(), codebook=codebook_loss.detach().float(), gan=g_loss.detach(), lam=lam)

    def discriminator_loss(self, x: torch.Tensor, rec: torch.Tensor, *, step: int) -> torch.Tensor:
        """Hinge loss of D on real x and detached reconstructions."""
        assert self.discriminator is not None
        logits_real = self.discriminator(x.detach().float())
        logits_fake = self.discriminator(rec.detach().float())
        return self.config.disc_factor * hinge_d_loss(logits_real, logits_fake)
