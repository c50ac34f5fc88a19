"""VQGAN training loop: single process or DDP under ``torchrun``.

Output folder layout (the prior trainer, :mod:`vqtok.prior.train`, uses the same names)::

    OUT/train_config.yaml      the full TrainConfig of the run
    OUT/log.jsonl              one JSON object per log / validation event
    OUT/images/step-XXXXXXX.png  reconstruction grids (top: originals, bottom: reconstructions)
    OUT/checkpoints/step-XXXXXXX/  model.safetensors + config.json (a Tokenizer folder),
                                trainer.safetensors (discriminator, EMA weights, codebook statistics, RNG),
                                optim.pt (optimizer states), state.json (step)
    OUT/checkpoints/latest     name of the newest complete checkpoint
    OUT/final/                 the exported model (EMA weights when enabled): Tokenizer.from_pretrained(OUT/final)

Resuming (the default when OUT has a checkpoint) restores every tensor and the data position,
so N steps + resume + M steps equals N + M steps in one go.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from einops import rearrange
from safetensors.torch import load_file, save_file
from torch import nn

from vqtok import hub
from vqtok._runtime import (
    CONFIG_NAME,
    LOG_NAME,
    STATE_NAME,
    CheckpointDir,
    append_jsonl,
    autocast,
    autocast_dtype,
    init_distributed,
    read_state,
    resolve_device,
    warmup_decay_lr,
    wrap_ddp,
    write_state,
)
from vqtok.images import from_model_output, to_model_input
from vqtok.models.vqgan import VQGAN
from vqtok.training.codebook import CodebookTrainer, ImplicitCodebookTrainer, quantizer_trainer
from vqtok.training.config import TrainConfig
from vqtok.training.data import TrainImages, load_validation_images, make_loader
from vqtok.training.losses import ChromaReadout, PerceptualFn, VQGANLoss

logger = logging.getLogger(__name__)

__all__ = ["TrainResult", "Trainer", "ValidationResult", "checkpoint_config", "train"]

MODEL_TYPE = "vqgan"


@dataclass
class ValidationResult:
    psnr: float  # mean PSNR (dB) of the validation reconstructions
    usage: float  # fraction of the codebook used on the validation images
    used_codes: int
    perplexity: float


@dataclass
class TrainResult:
    """What :meth:`Trainer.train` did (the prior's :class:`vqtok.prior.PriorTrainResult` starts with the same fields)."""

    out: Path  # run folder
    final: Path  # exported model folder (Tokenizer.from_pretrained(final))
    steps: int  # optimizer steps done in total
    validation: ValidationResult | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


# The parts of a VQGAN that decide the ids: frozen by TrainConfig.decoder_only.
ENCODER_SIDE = ("encoder", "quant_conv", "quantize")


class _AutoEncoder(nn.Module):
    """Encoder -> training quantizer (VQ codebook, FSQ or LFQ) -> decoder, one module so DDP can wrap it.

    ``decoder_only``: the encoder side runs without autograd and in eval mode (as in inference; its
    parameters have ``requires_grad=False``), only ``post_quant_conv`` + decoder see gradients.
    """

    def __init__(
        self,
        model: VQGAN,
        codebook: CodebookTrainer | ImplicitCodebookTrainer,
        *,
        decoder_only: bool = False,
        readout: ChromaReadout | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.codebook = codebook
        self.decoder_only = decoder_only
        self.readout = readout  # trainer-only chroma read-out of z (loss.chroma_readout_weight > 0)

    def train(self, mode: bool = True) -> _AutoEncoder:
        super().train(mode)
        if self.decoder_only:  # the frozen encoder side computes exactly what inference computes
            self.model.encoder.eval()
            self.model.quant_conv.eval()
        return self

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, 3, H, W) -> reconstruction, ids, quantizer loss, chroma read-out loss (0 when off)."""
        with torch.no_grad() if self.decoder_only else contextlib.nullcontext():
            z = self.model.quant_conv(self.model.encoder(x))  # (B, D, h, w)
            with torch.autocast(device_type=x.device.type, enabled=False):
                q = self.codebook(z.float())
                readout = self.readout(z, x) if self.readout is not None else q.loss.new_zeros(())
        rec = self.model.decode(q.z_q.to(z.dtype))  # (B, 3, H, W)
        return rec, q.ids, q.loss, readout


class WeightEMA:
    """Exponential moving average of a model's parameters (buffers copied).

    ``frozen``: names of parameters that never change; their EMA copy is left alone, so it stays bitwise
    equal to them (``d·p + (1 − d)·p`` is not always bitwise ``p``).
    """

    def __init__(self, model: nn.Module, decay: float, *, frozen: frozenset[str] = frozenset()) -> None:
        self.decay = decay
        self.frozen = frozen
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for (name, p_ema), p in zip(self.model.named_parameters(), model.parameters()):
            if name not in self.frozen:
                p_ema.lerp_(p.detach(), 1.0 - self.decay)
        for b_ema, b in zip(self.model.buffers(), model.buffers()):
            b_ema.copy_(b)


def grads_in_param_strides(module: nn.Module) -> None:
    """Hand DDP every parameter's gradient with the parameter's own strides.

    A 1x1 convolution whose input is a channels_last view (``proj_out`` of the attention blocks:
    the attention output is rearranged, not copied) gets its weight gradient from oneDNN's bf16
    backward with channels_last strides, (C, 1, C, C) for a (C, C, 1, 1) weight whose strides
    are (C, 1, 1, 1). Autograd keeps such a gradient (strides of size-1 dims do not matter to it),
    DDP's reducer compares all strides and warns "Grad strides do not match bucket view strides"
    on every rank (issue 13). The memory is the same, so the hook re-strides the gradient to the
    parameter's strides, without a copy, before it is accumulated.
    """
    for p in module.parameters():
        if p.requires_grad:
            p.register_hook(functools.partial(_restride, p.stride()))


def _restride(stride: tuple[int, ...], grad: torch.Tensor) -> torch.Tensor:
    """The gradient hook of a parameter of strides ``stride`` (the gradient has the parameter's shape)."""
    if grad.stride() == stride or grad.layout != torch.strided:
        return grad
    if all(a == b or n == 1 for n, a, b in zip(grad.shape, grad.stride(), stride)):
        return grad.as_strided(grad.shape, stride)  # only size-1 dims differ: the same memory
    return grad  # a real layout difference: autograd copies it into the parameter's layout itself


def checkpoint_config(path: str | os.PathLike[str]) -> TrainConfig:
    """The training config a checkpoint folder (``RUN/checkpoints/step-NNNNNNN``) was written with."""
    state = Path(path) / STATE_NAME
    if not state.is_file():
        raise FileNotFoundError(
            f"from_checkpoint={str(path)!r} is not a complete training checkpoint (no state.json); "
            "give a RUN/checkpoints/step-NNNNNNN folder"
        )
    return TrainConfig.from_dict(json.loads(state.read_text())["config"])


class Trainer:
    """Train a VQGAN on ``data`` (image folder or shards) into ``out``.

    Args:
        config: the run's TrainConfig.
        data: image folder or shard spec (``shards/train-{000000..000009}.tar``).
        out: output folder (created; resumed from when it has a checkpoint).
        progress: progress on stderr, rank 0 (a tqdm bar on a terminal, else a log line every 30 s).
        resume: continue from ``out``'s newest checkpoint when there is one; ``False`` makes an
            existing checkpoint an error, so a run is never silently continued (as in the prior trainer).
        perceptual: override of the perceptual loss function (x, x̂) -> (B,) (tests).
        init_weights: optional model folder / safetensors / shipped default (``"default@v1"``) to start from
            (fine-tuning; required with ``config.decoder_only`` unless ``out`` has a checkpoint).
        from_checkpoint: optional checkpoint folder of another run (``RUN/checkpoints/step-NNNNNNN``) to
            continue as this new run: weights, optimizer, EMA, codebook state, RNG and step are taken from it,
            everything else from ``config`` (e.g. a longer ``total_steps``, another loss weight; the model
            must be the same). Used only while ``out`` has no checkpoint of its own, so re-running the same
            command continues the new run.
    """

    def __init__(
        self,
        config: TrainConfig,
        data: str,
        out: str | os.PathLike[str],
        *,
        progress: bool = True,
        resume: bool = True,
        perceptual: PerceptualFn | None = None,
        init_weights: str | os.PathLike[str] | None = None,
        from_checkpoint: str | os.PathLike[str] | None = None,
    ) -> None:
        self.config = config
        self.data = str(data)
        self.out = Path(out)
        self.progress = progress
        self.checkpoints = CheckpointDir(self.out, keep=config.keep_checkpoints)
        if not resume and self.checkpoints.latest() is not None:
            raise ValueError(f"{self.out} already holds a run; continue it or pick another output folder")
        if from_checkpoint is not None and init_weights is not None:
            raise ValueError("give init_weights (weights only) or from_checkpoint (a whole training state), not both")
        self.from_checkpoint = Path(from_checkpoint) if from_checkpoint is not None else None
        if self.from_checkpoint is not None:
            checkpoint_config(self.from_checkpoint)  # a clear error now, not after the model is built
        if config.threads > 0:
            torch.set_num_threads(config.threads)
        self.device = resolve_device(config.device)
        self.dist = init_distributed(self.device)
        self.world_size, self.rank = self.dist.world_size, self.dist.rank
        self.amp_dtype = autocast_dtype(config.precision, self.device)  # None = fp32

        torch.manual_seed(config.seed)
        self.model = VQGAN(config.model).to(self.device)
        if init_weights is not None:
            self._load_init(init_weights)
        self.frozen = self._freeze_encoder_side(init_weights) if config.decoder_only else frozenset()
        # VQ: CodebookTrainer (k-means init, EMA, restarts); FSQ / LFQ: ImplicitCodebookTrainer (LFQ entropy loss)
        self.codebook = quantizer_trainer(
            self.model.quantize, config.codebook, config.loss, seed=config.seed, frozen=config.decoder_only
        ).to(self.device)
        self.loss = VQGANLoss(config.loss, perceptual=perceptual, device=self.device).to(self.device)
        readout = ChromaReadout(config.model.embed_dim, config.model.downsample_factor) if config.loss.chroma_readout_weight > 0 else None
        self.ae = _AutoEncoder(self.model, self.codebook, decoder_only=config.decoder_only, readout=readout).to(self.device)
        self.ae_ddp: nn.Module = self.ae
        if self.world_size > 1:
            self.ae_ddp = wrap_ddp(self.ae, self.device)
            grads_in_param_strides(self.ae)
            if self.loss.discriminator is not None:  # not DDP-wrapped (it is frozen inside the generator loss):
                for p in self.loss.discriminator.parameters():  # same initial weights on every rank
                    dist.broadcast(p.data, src=0)
        params = [p for p in self.ae.parameters() if p.requires_grad]  # the model's, then the read-out's (the codebook has none)
        self.opt = torch.optim.Adam(params, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)
        self.opt_d: torch.optim.Optimizer | None = None
        if self.loss.discriminator is not None:
            self.opt_d = torch.optim.Adam(
                self.loss.discriminator.parameters(), lr=config.lr * config.loss.disc_lr_mult, betas=config.betas
            )
        self.ema = WeightEMA(self.model, config.ema_decay, frozen=self.frozen) if config.ema_decay > 0 else None
        self.step = 0
        self.val_images: torch.Tensor | None = None
        self.history: list[dict[str, Any]] = []

    # -- setup -------------------------------------------------------------------------
    def _load_init(self, init: str | os.PathLike[str]) -> None:
        """Weights from a model folder, a model.safetensors file, or a shipped default (``default@v1``)."""
        from vqtok.tokenizer import is_default_name, resolve_default

        path = resolve_default(init)[1] if isinstance(init, str) and is_default_name(init) else Path(init)
        file = path / hub.WEIGHTS_NAME if path.is_dir() else path
        if not file.is_file():
            raise FileNotFoundError(f"initial weights {file} do not exist")
        self.model.load_state_dict(load_file(str(file)), strict=True)
        logger.info("initialised the model from %s", file)

    def _freeze_encoder_side(self, init_weights: str | os.PathLike[str] | None) -> frozenset[str]:
        """decoder_only: ``requires_grad=False`` on the encoder, quant_conv and codebook (before DDP wraps the
        model, so it neither expects their gradients nor syncs them); returns their parameter names."""
        if init_weights is None and self.from_checkpoint is None and self.checkpoints.latest() is None:
            raise ValueError(
                "decoder_only trains the decoder of an existing model: give its weights (--init MODEL_DIR / "
                "init_weights=...), or continue a run from its checkpoint"
            )
        names = set()
        for part in ENCODER_SIDE:
            for name, p in getattr(self.model, part).named_parameters(prefix=part):
                p.requires_grad_(False)
                names.add(name)
        n_frozen = sum(p.numel() for p in self.model.parameters() if not p.requires_grad)
        n_train = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        logger.info(
            "decoder_only: training post_quant_conv + decoder (%d parameters); encoder, quant_conv and codebook "
            "frozen (%d parameters, ids unchanged); no codebook/commitment loss, no codebook tricks", n_train, n_frozen,
        )
        return frozenset(names)

    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    # -- checkpoints -------------------------------------------------------------------
    def _state_modules(self) -> dict[str, nn.Module | None]:
        """The modules of the training state beside the model, by their key prefix in trainer.safetensors."""
        return {"codebook.": self.codebook, "disc.": self.loss.discriminator, "readout.": self.ae.readout,
                "ema.": self.ema.model if self.ema is not None else None}

    def _trainer_tensors(self) -> dict[str, torch.Tensor]:
        t = {prefix + k: v for prefix, m in self._state_modules().items() if m is not None for k, v in m.state_dict().items()}
        t["rng.torch"] = torch.get_rng_state()
        if isinstance(self.codebook, CodebookTrainer):  # FSQ / LFQ draw no random numbers
            t["rng.codebook"] = self.codebook.generator.get_state()
        if self.device.type == "cuda":
            t["rng.cuda"] = torch.cuda.get_rng_state(self.device)
        return {k: v.detach().cpu().contiguous() for k, v in t.items()}

    def save_checkpoint(self) -> Path | None:
        """Write a checkpoint for the current step (rank 0); returns its folder."""
        if not self.is_main:
            return None
        with self.checkpoints.write(self.step) as tmp:
            hub.save_pretrained(tmp, state_dict=self.model.state_dict(), config=self.config.model.to_dict(), model_type=MODEL_TYPE)
            save_file(self._trainer_tensors(), str(tmp / "trainer.safetensors"))
            optim = {"ae": self.opt.state_dict(), "disc": self.opt_d.state_dict() if self.opt_d is not None else None}
            write_state(tmp, self.step, self.config.to_dict(), optim)
        return self.checkpoints.path(self.step)

    def load_checkpoint(self, path: Path) -> None:
        step, config, optim = read_state(path)  # its config may use vqtok 0.1 key names: only model is read
        if config["model"] != self.config.model.to_dict():
            raise ValueError(f"checkpoint {path} has a different model config than this run")
        self.model.load_state_dict(load_file(str(path / hub.WEIGHTS_NAME), device=str(self.device)), strict=True)
        tensors = load_file(str(path / "trainer.safetensors"), device="cpu")
        cfg, modules = self.config, self._state_modules()
        parts = {  # optional parts of the training state: the checkpoint must have exactly the run's
            "readout.": ("the chroma read-out", f"loss.chroma_readout_weight {cfg.loss.chroma_readout_weight}"),
            "disc.": ("a discriminator", f"loss.disc_weight {cfg.loss.disc_weight}"),
            "ema.": ("EMA weights", f"ema_decay {cfg.ema_decay}"),
        }
        for prefix, (what, setting) in parts.items():
            here = modules[prefix] is not None
            if any(k.startswith(prefix) for k in tensors) != here:
                raise ValueError(
                    f"checkpoint {path} was written with{'out' if here else ''} {what}, and this run "
                    f"has {setting}: its training state does not fit; keep the setting of that run, or start a new "
                    "run from its weights (--init)"
                )
        for prefix, module in modules.items():
            if module is not None:
                module.load_state_dict({k[len(prefix):]: v.to(self.device) for k, v in tensors.items() if k.startswith(prefix)}, strict=True)
        torch.set_rng_state(tensors["rng.torch"])
        if isinstance(self.codebook, CodebookTrainer):
            self.codebook.generator.set_state(tensors["rng.codebook"])
        if "rng.cuda" in tensors and self.device.type == "cuda":
            torch.cuda.set_rng_state(tensors["rng.cuda"], self.device)
        self.opt.load_state_dict(optim["ae"])
        if self.opt_d is not None and optim.get("disc") is not None:
            self.opt_d.load_state_dict(optim["disc"])
        self.step = step
        logger.info("resumed from %s (step %d)", path, self.step)

    # -- logging -----------------------------------------------------------------------
    def _log(self, record: dict[str, Any]) -> None:
        self.history.append(record)
        if self.is_main:
            append_jsonl(self.out / LOG_NAME, record)

    # -- validation --------------------------------------------------------------------
    @torch.no_grad()
    def validate(self, images: torch.Tensor | None = None, *, model: VQGAN | None = None) -> ValidationResult:
        """PSNR and codebook usage of ``model`` (EMA weights if any) on the validation images."""
        from vqtok.metrics import codebook_usage, psnr

        model = model or self._final_model
        images = self.val_images if images is None else images
        if images is None:
            raise ValueError("no validation images (set data.val_data)")
        scores, ids_all = [], []
        with self._evaluating(model):
            for chunk in images.split(8):  # (<=8, 3, H, W) uint8
                with autocast(self.device, self.amp_dtype):
                    q = model.encode(to_model_input(chunk).to(self.device))
                    rec = model.decode(q.z_q)
                scores.append(psnr(from_model_output(rec).cpu().double(), chunk.double() / 255))
                ids_all.append(q.ids.cpu())  # (<=8, h, w)
        usage = codebook_usage(torch.cat(ids_all).reshape(-1), model.config.n_embed)
        return ValidationResult(
            psnr=float(torch.cat(scores).mean()), usage=usage.used_fraction, used_codes=usage.used_codes, perplexity=usage.perplexity
        )

    @property
    def _final_model(self) -> VQGAN:
        """The model that is validated, shown and exported: the EMA weights when enabled."""
        return self.ema.model if self.ema is not None else self.model

    @contextlib.contextmanager
    def _evaluating(self, model: VQGAN) -> Iterator[None]:
        """``model`` in eval mode, then back in its mode; the training model through the autoencoder wrapper, so
        a decoder_only run's frozen encoder side stays in eval mode."""
        was_training = model.training
        model.eval()
        yield
        (self.ae if model is self.model else model).train(was_training)

    @torch.no_grad()
    def _write_grid(self, batch: torch.Tensor) -> None:
        """images/step-N.png: up to 8 uint8 originals (top row) over their reconstructions (bottom row)."""
        from PIL import Image

        model = self._final_model
        src = (self.val_images if self.val_images is not None else batch)[:8]  # (N, 3, H, W) uint8
        with self._evaluating(model), autocast(self.device, self.amp_dtype):
            rec = model(to_model_input(src).to(self.device)).reconstruction
        rows = torch.stack([src.cpu(), (from_model_output(rec).cpu() * 255).round().to(torch.uint8)])  # (2, N, 3, H, W)
        path = self.out / "images" / f"step-{self.step:07d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rearrange(rows, "r n c h w -> (r h) (n w) c").numpy()).save(path)

    # -- the loop ----------------------------------------------------------------------
    def _lr(self, step: int) -> float:
        """Learning rate of optimizer step ``step`` (0-based): linear warmup, then the schedule's decay."""
        cfg = self.config
        return warmup_decay_lr(step, cfg.lr, cfg.warmup_steps, cfg.total_steps or cfg.steps, cfg.min_lr, cfg.lr_schedule)

    def train(self, steps: int | None = None) -> TrainResult:
        """Run until ``steps`` total optimizer steps (default ``config.steps``); returns the result."""
        cfg = self.config
        total = cfg.steps if steps is None else steps
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
        start = self.checkpoints.latest() or self.from_checkpoint  # the run's own checkpoint first
        if start is not None:
            self.load_checkpoint(start)
        if self.is_main:
            cfg.to_yaml(self.out / CONFIG_NAME)
        if cfg.data.val_data:
            self.val_images = load_validation_images(cfg.data.val_data, size=cfg.data.val_size, limit=cfg.data.val_images)
        self.ae.train()
        if self.loss.discriminator is not None:
            self.loss.discriminator.train()
        dataset = TrainImages(
            self.data, batch_size=cfg.batch_size, crop_size=cfg.data.crop_size, max_zoom_out=cfg.data.max_zoom_out,
            flip=cfg.data.flip, hue_rotate=cfg.data.hue_rotate, seed=cfg.seed, start_batch=self.step * cfg.grad_accum,
            rank=self.rank, world_size=self.world_size, cache_images=cfg.data.cache_images,
        )
        batches = iter(make_loader(dataset, num_workers=cfg.data.num_workers))
        from vqtok._progress import Progress

        bar = Progress("train", total=total, initial=self.step, unit="step", enabled=self.progress and self.is_main)
        t0, window = time.time(), []
        last_val: ValidationResult | None = None
        while self.step < total:
            metrics, batch = self._train_step(batches)
            window.append(metrics)
            bar.set_postfix(f"rec={metrics['rec']:.4f}, act={metrics['active']:.2f}")
            bar.update(1)
            if self.step % cfg.log_every == 0 or self.step == total:
                avg = {k: float(np.mean([m[k] for m in window])) for k in window[0]}
                self._log({"step": self.step, "kind": "train", "time": round(time.time() - t0, 2), **avg})
                logger.info("step %d: %s", self.step, " ".join(f"{k}={v:.4g}" for k, v in avg.items()))
                window = []
            if self.val_images is not None and (self.step % cfg.val_every == 0 or self.step == total) and self.is_main:
                last_val = self.validate()
                self._log({"step": self.step, "kind": "val", **last_val.__dict__})
                logger.info("step %d: val PSNR %.2f dB, usage %.1f%%", self.step, last_val.psnr, 100 * last_val.usage)
            if self.is_main and (self.step % cfg.image_every == 0 or self.step == total):
                self._write_grid(batch)
            if self.step % cfg.checkpoint_every == 0 or self.step == total:
                self.save_checkpoint()
        bar.close()
        del batches  # stop the DataLoader workers now, not at interpreter exit
        final = self.export(self.out / "final")
        self.dist.barrier()
        return TrainResult(out=self.out, final=final, steps=self.step, validation=last_val, history=self.history)

    def close(self) -> None:
        """Leave the ``torchrun`` process group this trainer joined (a no-op without one).

        Call it when done with the trainer: a gloo/NCCL group still alive at interpreter exit can
        abort the process (``terminate called without an active exception``). The DDP wrapper holds
        the group too, so it is dropped first: the group's threads then stop here, not at exit.
        """
        self.ae_ddp = self.ae
        self.dist.close()

    def _train_step(self, batches: Iterator[torch.Tensor]) -> tuple[dict[str, float], torch.Tensor]:
        """One optimizer step over grad_accum batches -> (logged means, the last uint8 batch (B, 3, S, S))."""
        cfg = self.config
        lr = self._lr(self.step)
        for group in self.opt.param_groups:
            group["lr"] = lr
        if self.opt_d is not None:
            for group in self.opt_d.param_groups:
                group["lr"] = lr * cfg.loss.disc_lr_mult
        gan = self.loss.gan_active(self.step)
        sums = dict.fromkeys(("rec", "perceptual", "chroma", "readout", "codebook", "gan", "lambda", "d_loss"), 0.0)  # logged means
        self.opt.zero_grad(set_to_none=True)
        if self.opt_d is not None:
            self.opt_d.zero_grad(set_to_none=True)
        for micro in range(cfg.grad_accum):
            raw = next(batches)
            x = to_model_input(raw).to(self.device)
            last = micro == cfg.grad_accum - 1  # DDP syncs the gradients on the last micro-step only
            with self.ae_ddp.no_sync() if self.world_size > 1 and not last else contextlib.nullcontext():  # type: ignore[operator]
                if self.loss.discriminator is not None:
                    self.loss.discriminator.requires_grad_(False)
                with autocast(self.device, self.amp_dtype):
                    rec, _ids, qloss, readout = self.ae_ddp(x)
                    g = self.loss.generator(x, rec, qloss, step=self.step, last_layer=self.model.decoder.last_layer)
                ((g.total + cfg.loss.chroma_readout_weight * readout) / cfg.grad_accum).backward()
            if gan and self.loss.discriminator is not None:
                self.loss.discriminator.requires_grad_(True)
                with autocast(self.device, self.amp_dtype):
                    d_loss = self.loss.discriminator_loss(x, rec.detach(), step=self.step)
                (d_loss / cfg.grad_accum).backward()
                sums["d_loss"] += float(d_loss.detach()) / cfg.grad_accum
            terms = {"rec": g.rec, "perceptual": g.perceptual, "chroma": g.chroma, "readout": readout.detach(),
                     "codebook": g.codebook, "gan": g.gan, "lambda": g.lam}
            for k, v in terms.items():
                sums[k] += float(v) / cfg.grad_accum
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.opt.step()
        if gan and self.opt_d is not None:
            if self.world_size > 1:  # average the discriminator's gradients over ranks
                for p in self.loss.discriminator.parameters():  # type: ignore[union-attr]
                    if p.grad is not None:
                        dist.all_reduce(p.grad)
                        p.grad /= self.world_size
            self.opt_d.step()
        restarted = self.codebook.end_step()
        if self.ema is not None:
            self.ema.update(self.model)
        self.step += 1
        sums.update(lr=lr, restarted=float(restarted), active=self.codebook.active_fraction())
        return sums, raw

    def export(self, directory: str | os.PathLike[str]) -> Path:
        """Write the trained model (EMA weights when enabled) as a Tokenizer folder (rank 0)."""
        path = Path(directory)
        if self.is_main:
            hub.save_pretrained(path, state_dict=self._final_model.state_dict(), config=self.config.model.to_dict(), model_type=MODEL_TYPE)
        return path


def train(
    config: TrainConfig,
    data: str,
    out: str | os.PathLike[str],
    *,
    steps: int | None = None,
    progress: bool = True,
    resume: bool = True,
    perceptual: PerceptualFn | None = None,
    init_weights: str | os.PathLike[str] | None = None,
    from_checkpoint: str | os.PathLike[str] | None = None,
) -> TrainResult:
    """Train a VQGAN (see :class:`Trainer`); returns the result with the exported model folder."""
    trainer = Trainer(config, data, out, progress=progress, resume=resume, perceptual=perceptual, init_weights=init_weights,
                      from_checkpoint=from_checkpoint)
    try:
        return trainer.train(steps)
    finally:
        trainer.close()
