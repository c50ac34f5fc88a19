"""Helpers to build taming-transformers' own VQModel pieces and Lightning-shaped checkpoints.

taming's ``taming.models.vqgan.VQModel`` imports pytorch_lightning, so the reference here is
assembled from taming's modules with VQModel's exact attribute names and forward logic.
"""

from __future__ import annotations

import sys
import types
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from vqtok import VQGANConfig


def taming_ddconfig(cfg: VQGANConfig) -> dict:
    return dict(
        double_z=False,
        z_channels=cfg.z_channels,
        resolution=cfg.resolution,
        in_channels=cfg.in_channels,
        out_ch=cfg.out_ch,
        ch=cfg.ch,
        ch_mult=list(cfg.ch_mult),
        num_res_blocks=cfg.num_res_blocks,
        attn_resolutions=list(cfg.attn_resolutions),
        dropout=0.0,
    )


class TamingVQModel(nn.Module):
    """taming.models.vqgan.VQModel without Lightning: encode / decode / decode_code as taming does."""

    def __init__(self, cfg: VQGANConfig) -> None:
        super().__init__()
        from taming.modules.diffusionmodules.model import Decoder, Encoder
        from taming.modules.vqvae.quantize import VectorQuantizer

        dd = taming_ddconfig(cfg)
        self.encoder = Encoder(**dd)
        self.decoder = Decoder(**dd)
        self.quantize = VectorQuantizer(cfg.n_embed, cfg.embed_dim, beta=0.25)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.z_channels, 1)

    def encode(self, x):
        quant, _loss, (_, _, ids) = self.quantize(self.quant_conv(self.encoder(x)))
        return quant, ids.view(quant.shape[0], quant.shape[2], quant.shape[3])

    def decode(self, quant):
        return self.decoder(self.post_quant_conv(quant))


def _fake_module(name: str, **attrs) -> types.ModuleType:
    mod = types.ModuleType(name)
    for k, v in attrs.items():
        v.__module__ = name
        v.__qualname__ = k
        setattr(mod, k, v)
    return mod


def save_lightning_checkpoint(model: nn.Module, path: Path, *, with_loss: bool = True) -> Path:
    """Write a file shaped like the published taming .ckpt: Lightning callbacks, hparams, optimizer states."""

    class ModelCheckpoint:  # stands in for pytorch_lightning's class; pickled by reference
        def __init__(self):
            self.best_model_score = torch.tensor(0.123)
            self.best_model_path = "/logs/checkpoints/last.ckpt"
            self.monitor = "val/rec_loss"

    class AttributeDict(dict):
        pass

    names = {
        "pytorch_lightning": _fake_module("pytorch_lightning"),
        "pytorch_lightning.callbacks": _fake_module("pytorch_lightning.callbacks"),
        "pytorch_lightning.callbacks.model_checkpoint": _fake_module(
            "pytorch_lightning.callbacks.model_checkpoint", ModelCheckpoint=ModelCheckpoint
        ),
        "pytorch_lightning.utilities": _fake_module("pytorch_lightning.utilities"),
        "pytorch_lightning.utilities.parsing": _fake_module("pytorch_lightning.utilities.parsing", AttributeDict=AttributeDict),
    }
    saved = {k: sys.modules.get(k) for k in names}
    sys.modules.update(names)
    try:
        state = OrderedDict(model.state_dict())
        if with_loss:
            state["loss.discriminator.main.0.weight"] = torch.randn(64, 3, 4, 4)
            state["loss.perceptual_loss.net.slice1.0.weight"] = torch.randn(64, 3, 3, 3)
            state["loss.logvar"] = torch.zeros(())
        ckpt = {
            "epoch": 12,
            "global_step": 345678,
            "pytorch-lightning_version": "1.0.8",
            "state_dict": state,
            "callbacks": {ModelCheckpoint: {"best_model_score": torch.tensor(0.123), "best_model_path": "x.ckpt"}},
            "optimizer_states": [{"state": {0: {"exp_avg": torch.zeros(3)}}, "param_groups": [{"lr": 4.5e-6, "params": [0]}]}],
            "lr_schedulers": [],
            "hparams_name": "kwargs",
            "hyper_parameters": AttributeDict(ddconfig={"ch": 128}, n_embed=1024),
            "extra_object": ModelCheckpoint(),
        }
        torch.save(ckpt, path)
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    return path
