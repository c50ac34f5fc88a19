"""Training loop of the transformer prior (``vqtok train-prior``).

* AdamW (decay on matrices only), linear warmup then cosine decay to ``min_lr_ratio·lr``,
  gradient clipping, gradient accumulation, bf16 autocast where supported.
* DDP under ``torchrun`` (``WORLD_SIZE > 1``): NCCL on CUDA, gloo on CPU. ``batch_size`` is
  the global batch of one optimizer step; each rank takes ``batch_size / (world · grad_accum)``
  samples per micro-step.
* Data: the corpus is read into memory through :func:`vqtok.data.load_token_corpus`. The
  samples of step ``s`` are a pure function of ``(seed, s)``: epochs are seeded permutations
  of the corpus and step ``s`` takes global samples ``s·B .. s·B+B-1`` of that stream; label
  dropout is drawn from a generator seeded the same way. Resuming therefore continues the
  data stream exactly.
* Output folder, the layout of the VQGAN trainer (:mod:`vqtok.training.trainer`)::

    OUT/train_config.yaml            the run's PriorTrainConfig
    OUT/log.jsonl                    one JSON object per logged step / validation
    OUT/checkpoints/step-NNNNNNN/    model folder (model.safetensors + config.json), optim.pt
                                     (optimizer state, loaded with weights_only=True), rng_rank<r>.pt
                                     (torch/CUDA/numpy/python RNG states of each rank, for dropout),
                                     state.json (step, train config; written last)
    OUT/checkpoints/latest           name of the newest complete checkpoint (keep_checkpoints are kept)
    OUT/model.safetensors, config.json  the latest weights, so ``vqtok sample --prior OUT`` works

  Resuming reproduces an uninterrupted run's weights exactly (same hardware). A run folder of
  vqtok 0.1 (``OUT/checkpoint/`` with ``trainer_state.pt``) is resumed too.
* Validation NLL is reported in bits per token; a tqdm bar goes to stderr.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from vqtok._runtime import (
    CHECKPOINTS_DIR,
    CONFIG_NAME,
    LOG_NAME,
    STATE_NAME,
    CheckpointDir,
    Distributed,
    append_jsonl,
    autocast,
    autocast_dtype,
    check_precision,
    init_distributed,
    read_config_file,
    read_jsonl,
    read_state,
    resolve_device,
    warmup_decay_lr,
    wrap_ddp,
    write_config_file,
    write_state,
)
from vqtok.tokens import TokenCorpus, load_token_corpus
from vqtok.prior.gpt import GPT, GPTConfig

logger = logging.getLogger(__name__)

__all__ = [
    "PriorTrainConfig",
    "PriorTrainResult",
    "TrainResult",
    "build_model_config",
    "iter_log",
    "load_train_config",
    "lr_at",
    "train",
]

LEGACY_CHECKPOINT_DIR = "checkpoint"  # vqtok 0.1: one OUT/checkpoint/ folder ...
LEGACY_STATE_NAME = "trainer_state.pt"  # ... holding step, optimizer state and train config in one file


@dataclass
class PriorTrainConfig:
    """Everything ``vqtok train-prior`` needs besides the output folder."""

    tokens: str = ""  # token shards (brace notation / directory), the pretokenize output
    val_tokens: str | None = None  # validation shards; if None, hold out val_fraction of `tokens`
    val_fraction: float = 0.01  # random held-out share of `tokens` when val_tokens is None (0 = no validation)
    val_max_samples: int = 2048  # validate on at most this many samples
    # GPTConfig fields (n_layer, n_head, n_embd, dropout, bias, ...). vocab_size defaults to the
    # shards' recorded codebook size, n_classes to max label + 1, block_size/train_grid to the grid.
    model: dict[str, Any] = field(default_factory=dict)
    steps: int = 100_000  # optimizer steps in total (the schedule's length)
    batch_size: int = 64  # global samples per optimizer step
    grad_accum: int = 1  # micro-steps per optimizer step
    lr: float = 3e-4  # peak learning rate
    min_lr_ratio: float = 0.1  # final lr = min_lr_ratio * lr (cosine)
    warmup_steps: int = 1000  # linear warmup from 0
    weight_decay: float = 0.01  # AdamW decay on weight matrices and embeddings
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # max global grad norm (0 = off)
    label_dropout: float = 0.1  # share of labels replaced by the null class (for CFG)
    precision: str = "auto"  # "auto" (bf16 on CUDA if supported, else fp32) | "bf16" | "fp32"
    seed: int = 0
    log_every: int = 50  # steps between log.jsonl lines
    val_every: int = 1000  # steps between validations (and at the end)
    checkpoint_every: int = 1000  # steps between checkpoints (and at the end)
    keep_checkpoints: int = 2  # newest checkpoints/step-N folders kept
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:1" ...

    def __post_init__(self) -> None:
        checks = {
            "steps": self.steps >= 1, "batch_size": self.batch_size >= 1, "grad_accum": self.grad_accum >= 1,
            "lr": self.lr > 0, "warmup_steps": self.warmup_steps >= 0,
            "label_dropout": 0.0 <= self.label_dropout < 1.0, "val_fraction": 0.0 <= self.val_fraction < 1.0,
            "log_every": self.log_every >= 1, "val_every": self.val_every >= 1,
            "checkpoint_every": self.checkpoint_every >= 1, "keep_checkpoints": self.keep_checkpoints >= 1,
        }
        check_precision(self.precision)
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid train-prior config value(s): {', '.join(f'{k}={getattr(self, k)!r}' for k in bad)}")
        unknown = set(self.model) - {f.name for f in dataclasses.fields(GPTConfig)}
        if unknown:
            raise ValueError(f"unknown model config field(s): {', '.join(sorted(unknown))}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PriorTrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown train-prior config key(s): {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        return cls(**d)


def load_train_config(path: str | os.PathLike[str]) -> PriorTrainConfig:
    """Read a ``PriorTrainConfig`` from YAML (``.yaml`` / ``.yml``) or JSON."""
    return PriorTrainConfig.from_dict(read_config_file(path))


@dataclass
class PriorTrainResult:
    """What :func:`train` did (the VQGAN trainer's :class:`vqtok.training.TrainResult` has the same first three fields)."""

    out: Path  # run folder
    final: Path  # folder of the latest model weights (= out: GPT.from_pretrained(final))
    steps: int  # optimizer steps done in total
    train_loss: float  # last logged training loss (nats/token)
    val_bits_per_token: float | None  # last validation NLL, None if no validation set

    @property
    def step(self) -> int:
        """Old name of ``steps`` (vqtok 0.1); kept until vqtok 0.3."""
        return self.steps


TrainResult = PriorTrainResult  # old name (vqtok 0.1), kept until vqtok 0.3


# ---------------------------------------------------------------------------- helpers
def lr_at(step: int, cfg: PriorTrainConfig) -> float:
    """Learning rate for optimizer step ``step`` (0-based): linear warmup, then cosine."""
    return warmup_decay_lr(step, cfg.lr, cfg.warmup_steps, cfg.steps, cfg.lr * cfg.min_lr_ratio)


def _seed_for(*parts: int) -> int:
    """Mix integers into a 63-bit seed (stable across runs and platforms)."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF


class StepSampler:
    """Global sample indices of each step: a pure function of (seed, step)."""

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self._perms: dict[int, Tensor] = {}

    def _perm(self, epoch: int) -> Tensor:
        if epoch not in self._perms:
            if len(self._perms) > 2:
                self._perms.pop(min(self._perms))
            g = torch.Generator().manual_seed(_seed_for(self.seed, 1, epoch))
            self._perms[epoch] = torch.randperm(self.n, generator=g)
        return self._perms[epoch]

    def indices(self, step: int) -> Tensor:
        """(batch_size,) long indices into the corpus for optimizer step ``step``."""
        pos = torch.arange(step * self.batch_size, (step + 1) * self.batch_size)  # global stream positions
        epochs = pos // self.n  # ascending: the batch is each epoch's part in turn
        return torch.cat([self._perm(e)[pos[epochs == e] % self.n] for e in torch.unique(epochs).tolist()])


def build_model_config(cfg: PriorTrainConfig, corpus: TokenCorpus) -> GPTConfig:
    """GPTConfig from the train config's ``model`` overrides and the corpus."""
    m = dict(cfg.model)
    h, w = corpus.grid
    max_id = int(corpus.ids.max())
    if "vocab_size" not in m:
        if corpus.codebook_size is not None:
            m["vocab_size"] = corpus.codebook_size
        else:
            m["vocab_size"] = max_id + 1
            logger.warning("the token shards record no codebook_size; using max id + 1 = %d as vocab_size "
                           "(set model.vocab_size to the tokenizer's codebook size)", max_id + 1)
    if max_id >= m["vocab_size"]:
        raise ValueError(f"token id {max_id} does not fit vocab_size={m['vocab_size']}")
    max_label = int(corpus.labels.max()) if corpus.has_labels else -1
    m.setdefault("n_classes", max_label + 1)
    if corpus.has_labels and max_label >= m["n_classes"]:
        raise ValueError(f"label {max_label} does not fit n_classes={m['n_classes']}")
    m.setdefault("block_size", h * w)
    m.setdefault("train_grid", (h, w))
    if h * w > m["block_size"]:
        raise ValueError(f"token grids are {h}x{w} = {h * w} tokens, more than block_size={m['block_size']}")
    return GPTConfig(**m)


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"kind": str(np_state[0]), "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": random.getstate(),
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


# ---------------------------------------------------------------------------- checkpoints
def _latest_checkpoint(out: Path) -> Path | None:
    """The newest checkpoint folder of the run in ``out`` (either layout), or None."""
    latest = CheckpointDir(out).latest()
    if latest is not None:
        return latest
    legacy = out / LEGACY_CHECKPOINT_DIR
    if (legacy / LEGACY_STATE_NAME).is_file():
        logger.warning(
            "%s is a checkpoint of the vqtok 0.1 layout; resuming from it (new checkpoints go to %s/step-N, "
            "this folder is deleted after the first one; the old layout is read until vqtok 0.3)", legacy, CHECKPOINTS_DIR,
        )
        return legacy
    return None


def _save_checkpoint(run: _Run, step: int) -> None:
    """``out/checkpoints/step-N/``: model folder, optim.pt, rng_rank<r>.pt (every rank), state.json (last)."""
    dist, out = run.dist, run.out
    ckpts = CheckpointDir(out, keep=run.cfg.keep_checkpoints)
    with ckpts.write(step, main=dist.is_main) as tmp:
        dist.barrier()  # the main rank has made the folder
        torch.save(_rng_state(), tmp / f"rng_rank{dist.rank}.pt")
        dist.barrier()
        if dist.is_main:
            run.model.save_pretrained(tmp)
            write_state(tmp, step, run.cfg.to_dict(), run.opt.state_dict())
    if dist.is_main:
        shutil.rmtree(out / LEGACY_CHECKPOINT_DIR, ignore_errors=True)  # superseded by the new layout
        run.model.save_pretrained(out)  # latest weights at the top level, for `vqtok sample`
    dist.barrier()


# ---------------------------------------------------------------------------- the run
@dataclass
class _Run:
    """What the loop works with; built by :func:`_prepare`."""

    cfg: PriorTrainConfig
    out: Path
    dist: Distributed
    device: torch.device
    train_set: TokenCorpus
    val_set: TokenCorpus | None
    model: GPT
    ddp: nn.Module  # the model, DDP-wrapped under torchrun
    opt: torch.optim.AdamW
    amp: torch.dtype | None  # autocast dtype (None = fp32)
    start_step: int
    per_rank: int  # samples per rank per micro-step


def as_prior_grids(corpus: TokenCorpus) -> TokenCorpus:
    """The corpus as (N, h, w) grids the prior models in raster order: grids as they are, a 1-D sequence
    of n tokens as a 1 x n grid (the same order). Multi-scale and sub-codebook ids are a ValueError."""
    layout = corpus.layout
    if layout is not None and (layout.kind == "scales" or layout.codebooks > 1):
        what = "multi-scale ids (a next-scale prior)" if layout.kind == "scales" else "sub-codebook ids (one head per codebook)"
        raise ValueError(f"the prior models token grids and 1-D sequences; this corpus holds {layout.describe()}, which needs {what}: not in vqtok yet")
    if corpus.ids.ndim == 2:  # (N, n) sequences
        return TokenCorpus(corpus.ids[:, None, :], corpus.labels, corpus.keys, corpus.codebook_size, corpus.layout)
    return corpus


def _load_data(cfg: PriorTrainConfig, *, progress: bool) -> tuple[TokenCorpus, TokenCorpus | None]:
    """(train, validation) corpora: ``val_tokens``, else a seeded random hold-out of ``tokens``."""
    corpus = as_prior_grids(load_token_corpus(cfg.tokens, progress=progress))
    if cfg.val_tokens:
        train_set, val_set = corpus, as_prior_grids(load_token_corpus(cfg.val_tokens))
    elif cfg.val_fraction > 0 and len(corpus) >= 2:
        # a seeded random hold-out (shards are often ordered by class or source)
        n_val = min(cfg.val_max_samples, max(1, int(len(corpus) * cfg.val_fraction)))
        perm = torch.randperm(len(corpus), generator=torch.Generator().manual_seed(_seed_for(cfg.seed, 5))).numpy()
        train_set, val_set = corpus.subset(np.sort(perm[n_val:])), corpus.subset(np.sort(perm[:n_val]))
    else:
        train_set, val_set = corpus, None
    if val_set is not None and len(val_set) > cfg.val_max_samples:
        val_set = val_set.split(cfg.val_max_samples)[1]  # the last val_max_samples
    if val_set is not None and val_set.grid != train_set.grid:
        raise ValueError(f"validation grids are {val_set.grid}, training grids {train_set.grid}")
    return train_set, val_set


def _start_model(
    cfg: PriorTrainConfig, checkpoint: Path | None, train_set: TokenCorpus, dist: Distributed, device: torch.device
) -> tuple[GPT, torch.optim.AdamW, int]:
    """(model, optimizer, first step): a fresh seeded model, or everything restored from ``checkpoint``."""
    if checkpoint is not None:
        model = GPT.from_pretrained(checkpoint, device=device)
        if (checkpoint / STATE_NAME).is_file():
            step, saved_config, optim = read_state(checkpoint)
        else:  # vqtok 0.1: step, optimizer state and train config in one file
            legacy = torch.load(checkpoint / LEGACY_STATE_NAME, map_location="cpu", weights_only=True)
            step, saved_config, optim = int(legacy["step"]), legacy["train_config"], legacy["optimizer"]
        saved = PriorTrainConfig.from_dict(saved_config)
        ignored = ("steps", "tokens", "val_tokens", "device", "keep_checkpoints")
        changed = [k for k, v in saved.to_dict().items() if k not in ignored and getattr(cfg, k) != v]
        if changed:
            logger.warning("resuming with changed config fields: %s", ", ".join(changed))
    else:
        torch.manual_seed(_seed_for(cfg.seed, 0, dist.rank))
        random.seed(_seed_for(cfg.seed, 2, dist.rank))
        np.random.seed(_seed_for(cfg.seed, 3, dist.rank) % 2**32)
        model = GPT(build_model_config(cfg, train_set)).to(device)
    model.train()
    if model.config.train_grid is not None and model.config.train_grid != train_set.grid:
        raise ValueError(f"the model was trained on {model.config.train_grid} grids, the corpus has {train_set.grid}")
    decay, no_decay = [], []  # AdamW's decay on matrices and embeddings only
    for p in model.parameters():  # the tied weight once
        (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    if checkpoint is None:
        return model, opt, 0
    opt.load_state_dict(optim)
    rng_file = checkpoint / f"rng_rank{dist.rank}.pt"
    if rng_file.is_file():
        _set_rng_state(torch.load(rng_file, map_location="cpu", weights_only=True))
    else:
        logger.warning("no RNG state for rank %d in the checkpoint; dropout noise will differ", dist.rank)
    return model, opt, step


def _prepare(
    cfg: PriorTrainConfig, out: Path, checkpoint: Path | None, dist: Distributed, device: torch.device, *, progress: bool
) -> _Run:
    """Data, model, optimizer (fresh or from ``checkpoint``), autocast and DDP; writes ``train_config.yaml``."""
    per_rank, rem = divmod(cfg.batch_size, dist.world_size * cfg.grad_accum)
    if rem or per_rank == 0:
        raise ValueError(f"batch_size={cfg.batch_size} must be a positive multiple of world_size*grad_accum="
                         f"{dist.world_size * cfg.grad_accum}")
    train_set, val_set = _load_data(cfg, progress=progress)
    model, opt, start_step = _start_model(cfg, checkpoint, train_set, dist, device)
    amp = autocast_dtype(cfg.precision, device)
    ddp = wrap_ddp(model, device) if dist.world_size > 1 else model
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_config_file(out / CONFIG_NAME, cfg.to_dict())
        logger.info("prior: %.2fM parameters, %s, %d train / %d val grids of %s, device %s, %s", model.num_parameters() / 1e6,
                    model.config, len(train_set), len(val_set) if val_set else 0, train_set.grid, device,
                    "bf16 autocast" if amp else "fp32")
    return _Run(cfg, out, dist, device, train_set, val_set, model, ddp, opt, amp, start_step, per_rank)


def _step_batch(run: _Run, sampler: StepSampler, step: int) -> tuple[Tensor, Tensor]:
    """This rank's (ids (b·grad_accum, h, w), labels (b·grad_accum,)) of optimizer step ``step``, labels dropped."""
    cfg = run.cfg
    ids_all, labels_all = run.train_set.batch(sampler.indices(step))  # the global batch
    g = torch.Generator().manual_seed(_seed_for(cfg.seed, 4, step))
    drop = torch.rand(cfg.batch_size, generator=g) < cfg.label_dropout
    labels_all = labels_all.masked_fill(drop | (labels_all < 0), run.model.config.null_class)
    n = run.per_rank * cfg.grad_accum
    mine = slice(run.dist.rank * n, (run.dist.rank + 1) * n)
    return ids_all[mine].to(run.device), labels_all[mine].to(run.device)


def _train_step(run: _Run, ids: Tensor, labels: Tensor, lr: float) -> tuple[Tensor, float]:
    """One optimizer step over ``grad_accum`` micro-steps -> (summed micro losses (scalar), grad norm or nan)."""
    cfg, b = run.cfg, run.per_rank
    for group in run.opt.param_groups:
        group["lr"] = lr
    loss_sum = torch.zeros((), device=run.device)
    for micro in range(cfg.grad_accum):
        sync = micro == cfg.grad_accum - 1 or run.dist.world_size == 1
        with contextlib.nullcontext() if sync else run.ddp.no_sync():  # type: ignore[operator]
            with autocast(run.device, run.amp):
                ids_m = ids[micro * b : (micro + 1) * b].reshape(b, -1)  # (b, T)
                logits = run.ddp(ids_m, labels[micro * b : (micro + 1) * b])  # (b, T, V)
                loss = nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), ids_m.reshape(-1))
            (loss / cfg.grad_accum).backward()
        loss_sum += loss.detach()
    grad_norm = float(nn.utils.clip_grad_norm_(run.model.parameters(), cfg.grad_clip)) if cfg.grad_clip > 0 else float("nan")
    run.opt.step()
    run.opt.zero_grad(set_to_none=True)
    if run.dist.world_size > 1:
        torch.distributed.all_reduce(loss_sum, op=torch.distributed.ReduceOp.AVG)
    return loss_sum, grad_norm


@torch.no_grad()
def _validate(run: _Run) -> float:
    """Mean NLL of the validation set in bits per token (labels as recorded)."""
    model, val = run.model, run.val_set
    assert val is not None
    model.eval()
    total, count = 0.0, 0
    for index in torch.arange(len(val)).split(run.per_rank):
        ids, labels = (t.to(run.device) for t in val.batch(index))
        with autocast(run.device, run.amp):
            loss = model.loss(ids, labels)
        total += float(loss) * ids.numel()
        count += ids.numel()
    model.train()
    return total / max(count, 1) / math.log(2)


def train(
    cfg: PriorTrainConfig, *, out: str | os.PathLike[str], resume: bool = True, progress: bool = True, stop_after: int | None = None
) -> PriorTrainResult:
    """Train a prior into ``out``; see the module docstring.

    resume: continue from the newest checkpoint in ``out`` when there is one (as the VQGAN trainer
        does); ``False`` makes an existing checkpoint an error, so a run is never silently continued.
    stop_after: stop (with a checkpoint) after this global step, as if interrupted; the
        schedule still uses ``cfg.steps``. For tests and time-sliced jobs.
    """
    out = Path(out)
    checkpoint = _latest_checkpoint(out)
    if not resume and checkpoint is not None:
        raise ValueError(f"{out} already holds a run; continue it or pick another output folder")
    if not cfg.tokens:
        raise ValueError("no token shards given (PriorTrainConfig.tokens)")
    device = resolve_device(cfg.device)
    dist = init_distributed(device)
    progress = progress and dist.is_main
    try:  # no local holds the run: its DDP wrapper (it holds the process group) is freed here, not at exit
        return _loop(
            _prepare(cfg, out, checkpoint, dist, device, progress=progress), stop_after=stop_after, progress=progress
        )
    finally:
        dist.close()


def _loop(run: _Run, *, stop_after: int | None, progress: bool) -> PriorTrainResult:
    cfg, start = run.cfg, run.start_step
    end = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
    sampler = StepSampler(len(run.train_set), cfg.batch_size, cfg.seed)
    log = run.out / LOG_NAME
    from vqtok._progress import Progress

    bar = Progress("train-prior", total=cfg.steps, initial=start, unit="step", enabled=progress)
    last_loss, last_val = float("nan"), None
    tokens_per_step = cfg.batch_size * run.train_set.grid[0] * run.train_set.grid[1]
    t0 = time.perf_counter()
    try:
        for step in range(start, end):
            lr = lr_at(step, cfg)
            loss_sum, grad_norm = _train_step(run, *_step_batch(run, sampler, step), lr)
            done = step + 1
            if done % cfg.log_every == 0 or done == end:
                last_loss = float(loss_sum) / cfg.grad_accum
                rate = tokens_per_step * (done - start) / max(time.perf_counter() - t0, 1e-9)
                if run.dist.is_main:
                    append_jsonl(log, {"step": done, "loss": last_loss, "bits_per_token": last_loss / math.log(2),
                                       "lr": lr, "grad_norm": grad_norm, "tokens_per_s": rate})
                bar.set_postfix(f"loss={last_loss:.3f} nats, lr={lr:.2e}")
            if run.val_set is not None and (done % cfg.val_every == 0 or done == cfg.steps) and run.dist.is_main:
                last_val = _validate(run)
                append_jsonl(log, {"step": done, "val_bits_per_token": last_val})
                logger.info("step %d: validation %.4f bits/token", done, last_val)
            if done % cfg.checkpoint_every == 0 or done == end:
                _save_checkpoint(run, done)
            bar.update()
    finally:
        bar.close()
    return PriorTrainResult(out=run.out, final=run.out, steps=end, train_loss=last_loss, val_bits_per_token=last_val)


def iter_log(out: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """Records of ``<out>/log.jsonl``."""
    return read_jsonl(Path(out) / LOG_NAME)
