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
* Checkpoint (``<out>/checkpoint/``, replaced atomically): the model folder
  (``model.safetensors`` + ``config.json``), ``trainer_state.pt`` (optimizer state, step,
  train config; plain tensors/dicts, loaded with ``weights_only=True``) and
  ``rng_rank<r>.pt`` (torch/CUDA/numpy/python RNG states of each rank, for dropout).
  Resuming from it reproduces an uninterrupted run's weights exactly (same hardware).
* Logs: ``<out>/log.jsonl`` (one JSON object per logged step / validation) and a tqdm bar
  on stderr. Validation NLL is reported in bits per token.
* The latest weights are also written to ``<out>/`` itself, so ``vqtok sample --prior <out>`` works.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import Tensor, nn

from vqtok.data import TokenCorpus, load_token_corpus
from vqtok.prior.gpt import GPT, GPTConfig

logger = logging.getLogger(__name__)

__all__ = ["PriorTrainConfig", "TrainResult", "load_train_config", "train", "build_model_config", "lr_at"]

CHECKPOINT_DIR = "checkpoint"
STATE_NAME = "trainer_state.pt"
LOG_NAME = "log.jsonl"


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
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:1" ...

    def __post_init__(self) -> None:
        checks = {
            "steps": self.steps >= 1,
            "batch_size": self.batch_size >= 1,
            "grad_accum": self.grad_accum >= 1,
            "lr": self.lr > 0,
            "warmup_steps": self.warmup_steps >= 0,
            "label_dropout": 0.0 <= self.label_dropout < 1.0,
            "val_fraction": 0.0 <= self.val_fraction < 1.0,
            "precision": self.precision in ("auto", "bf16", "fp32"),
            "log_every": self.log_every >= 1,
            "val_every": self.val_every >= 1,
            "checkpoint_every": self.checkpoint_every >= 1,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(
                f"invalid train-prior config value(s): {', '.join(f'{k}={getattr(self, k)!r}' for k in bad)}"
            )
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
            raise ValueError(
                f"unknown train-prior config key(s): {', '.join(unknown)} (known: {', '.join(sorted(known))})"
            )
        return cls(**d)


def load_train_config(path: str | os.PathLike[str]) -> PriorTrainConfig:
    """Read a ``PriorTrainConfig`` from JSON or YAML (YAML needs the optional ``pyyaml``)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"config file {p} does not exist")
    text = p.read_text()
    if p.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as err:
            raise ValueError(f"{p} is YAML but pyyaml is not installed: `pip install pyyaml` or use JSON") from err
        data = yaml.safe_load(text)
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{p} is not valid JSON ({err}); YAML files need a .yaml/.yml suffix") from err
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f"{p} must hold a mapping of config keys")
    return PriorTrainConfig.from_dict(data)


@dataclass
class TrainResult:
    step: int  # optimizer steps done in total
    train_loss: float  # last logged training loss (nats/token)
    val_bits_per_token: float | None  # last validation NLL, None if no validation set
    out: Path  # output folder (holds the final model)


# ---------------------------------------------------------------------------- helpers
def lr_at(step: int, cfg: PriorTrainConfig) -> float:
    """Learning rate for optimizer step ``step`` (0-based): linear warmup, then cosine."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + 0.5 * (cfg.lr - floor) * (1.0 + math.cos(math.pi * progress))


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
        start = step * self.batch_size
        pos = torch.arange(start, start + self.batch_size)
        out = torch.empty(self.batch_size, dtype=torch.long)
        for epoch in torch.unique(pos // self.n).tolist():
            sel = (pos // self.n) == epoch
            out[sel] = self._perm(int(epoch))[pos[sel] % self.n]
        return out


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
            logger.warning(
                "the token shards record no codebook_size; using max id + 1 = %d as vocab_size "
                "(set model.vocab_size to the tokenizer's codebook size)",
                max_id + 1,
            )
    if max_id >= m["vocab_size"]:
        raise ValueError(f"token id {max_id} does not fit vocab_size={m['vocab_size']}")
    if "n_classes" not in m:
        m["n_classes"] = int(corpus.labels.max()) + 1 if corpus.has_labels else 0
    if corpus.has_labels and int(corpus.labels.max()) >= m["n_classes"]:
        raise ValueError(f"label {int(corpus.labels.max())} does not fit n_classes={m['n_classes']}")
    m.setdefault("block_size", h * w)
    m.setdefault("train_grid", (h, w))
    if h * w > m["block_size"]:
        raise ValueError(f"token grids are {h}x{w} = {h * w} tokens, more than block_size={m['block_size']}")
    return GPTConfig(**m)


def _autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 if requested/auto and supported on ``device``, else None (fp32)."""
    if precision == "fp32":
        return None
    if device.type == "cuda":
        ok = torch.cuda.is_bf16_supported()
    elif precision == "auto":
        ok = False  # bf16 matmuls on most CPUs are emulated and slower than fp32
    else:
        try:
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
                torch.ones(2, 2, device=device) @ torch.ones(2, 2, device=device)
            ok = True
        except (RuntimeError, TypeError):
            ok = False
    if precision == "bf16" and not ok:
        logger.warning("bf16 autocast is not supported on %s; training in fp32", device)
    return torch.bfloat16 if ok else None


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "kind": str(np_state[0]),
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": random.getstate(),
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    initialized_here: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(device_pref: str) -> tuple[_Dist, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_pref == "auto":
        device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(device_pref)
        if device.type == "cuda" and device.index is None:
            device = torch.device(f"cuda:{local_rank}")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world <= 1:
        return _Dist(), device
    import torch.distributed as dist

    created = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        created = True
    return _Dist(
        rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local_rank, initialized_here=created
    ), device


def _make_optimizer(model: GPT, cfg: PriorTrainConfig) -> torch.optim.AdamW:
    decay, no_decay = [], []
    for _, p in model.named_parameters():  # named_parameters lists the tied weight once
        (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))


def _save_checkpoint(
    out: Path, model: GPT, opt: torch.optim.Optimizer, step: int, cfg: PriorTrainConfig, dist: _Dist
) -> None:
    final = out / CHECKPOINT_DIR
    tmp = out / (CHECKPOINT_DIR + ".tmp")
    if dist.main:
        if tmp.exists():
            shutil.rmtree(tmp)
        model.save_pretrained(tmp)
        torch.save({"step": step, "optimizer": opt.state_dict(), "train_config": cfg.to_dict()}, tmp / STATE_NAME)
    _barrier(dist)
    torch.save(_rng_state(), tmp / f"rng_rank{dist.rank}.pt")
    _barrier(dist)
    if dist.main:
        old = out / (CHECKPOINT_DIR + ".old")
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        if old.exists():
            shutil.rmtree(old)
        model.save_pretrained(out)  # latest weights at the top level, for `vqtok sample`
        logger.info("checkpoint at step %d -> %s", step, final)
    _barrier(dist)


def _barrier(dist: _Dist) -> None:
    if dist.world > 1:
        from torch import distributed as tdist

        tdist.barrier()


@torch.no_grad()
def _validate(model: GPT, val: TokenCorpus, *, batch: int, device: torch.device, amp: torch.dtype | None) -> float:
    """Mean NLL of the validation set in bits per token (labels as recorded)."""
    was = model.training
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(val), batch):
        ids, labels = val.batch(torch.arange(start, min(start + batch, len(val))))
        ids, labels = ids.to(device), labels.to(device)
        with torch.autocast(device_type=device.type, dtype=amp or torch.float32, enabled=amp is not None):
            loss = model.loss(ids, labels)
        total += float(loss) * ids.numel()
        count += ids.numel()
    model.train(was)
    return total / max(count, 1) / math.log(2)


# ---------------------------------------------------------------------------- main loop
def train(
    cfg: PriorTrainConfig,
    *,
    out: str | os.PathLike[str],
    resume: bool = True,
    progress: bool = True,
    stop_after: int | None = None,
) -> TrainResult:
    """Train a prior into ``out``; see the module docstring.

    resume: continue from ``<out>/checkpoint`` when there is one (as the VQGAN trainer does);
        ``False`` makes an existing checkpoint an error, so a run is never silently continued.
    stop_after: stop (with a checkpoint) after this global step, as if interrupted; the
        schedule still uses ``cfg.steps``. For tests and time-sliced jobs.
    """
    out = Path(out)
    ckpt = out / CHECKPOINT_DIR
    if not resume and ckpt.exists():
        raise ValueError(f"{out} already holds a run (drop --no-resume to continue it, or pick another --out)")
    resume = (ckpt / STATE_NAME).is_file()
    if not cfg.tokens:
        raise ValueError("no token shards given (--tokens)")

    dist, device = _init_distributed(cfg.device)
    try:
        return _train(
            cfg,
            out=out,
            resume=resume,
            progress=progress and dist.main,
            stop_after=stop_after,
            dist=dist,
            device=device,
        )
    finally:
        if dist.initialized_here:
            from torch import distributed as tdist

            tdist.destroy_process_group()


def _train(
    cfg: PriorTrainConfig,
    *,
    out: Path,
    resume: bool,
    progress: bool,
    stop_after: int | None,
    dist: _Dist,
    device: torch.device,
) -> TrainResult:
    per_rank, rem = divmod(cfg.batch_size, dist.world * cfg.grad_accum)
    if rem or per_rank == 0:
        raise ValueError(
            f"batch_size={cfg.batch_size} must be a positive multiple of world_size*grad_accum="
            f"{dist.world * cfg.grad_accum}"
        )
    corpus = load_token_corpus(cfg.tokens, progress=progress)
    if cfg.val_tokens:
        train_set, val_set = corpus, load_token_corpus(cfg.val_tokens)
    elif cfg.val_fraction > 0 and len(corpus) >= 2:
        # a seeded random hold-out (shards are often ordered by class or source)
        n_val = min(cfg.val_max_samples, max(1, int(len(corpus) * cfg.val_fraction)))
        perm = torch.randperm(len(corpus), generator=torch.Generator().manual_seed(_seed_for(cfg.seed, 5))).numpy()
        train_set, val_set = corpus.subset(np.sort(perm[n_val:])), corpus.subset(np.sort(perm[:n_val]))
    else:
        train_set, val_set = corpus, None
    if val_set is not None and len(val_set) > cfg.val_max_samples:
        val_set = val_set.split(len(val_set) - cfg.val_max_samples)[1]
    if val_set is not None and val_set.grid != train_set.grid:
        raise ValueError(f"validation grids are {val_set.grid}, training grids {train_set.grid}")

    start_step = 0
    state: dict[str, Any] | None = None
    if resume:
        model = GPT.from_pretrained(out / CHECKPOINT_DIR, device=device)
        state = torch.load(out / CHECKPOINT_DIR / STATE_NAME, map_location="cpu", weights_only=True)
        start_step = int(state["step"])
        saved = PriorTrainConfig.from_dict(state["train_config"])
        changed = [
            k
            for k, v in saved.to_dict().items()
            if k not in ("steps", "tokens", "val_tokens", "device") and getattr(cfg, k) != v
        ]
        if changed:
            logger.warning("resuming with changed config fields: %s", ", ".join(changed))
    else:
        torch.manual_seed(_seed_for(cfg.seed, 0, dist.rank))
        random.seed(_seed_for(cfg.seed, 2, dist.rank))
        np.random.seed(_seed_for(cfg.seed, 3, dist.rank) % 2**32)
        model = GPT(build_model_config(cfg, train_set)).to(device)
    model.train()
    if model.config.train_grid is not None and tuple(model.config.train_grid) != train_set.grid:
        raise ValueError(f"the model was trained on {model.config.train_grid} grids, the corpus has {train_set.grid}")
    opt = _make_optimizer(model, cfg)
    if state is not None:
        opt.load_state_dict(state["optimizer"])
        rng_file = out / CHECKPOINT_DIR / f"rng_rank{dist.rank}.pt"
        if rng_file.is_file():
            _set_rng_state(torch.load(rng_file, map_location="cpu", weights_only=True))
        else:
            logger.warning("no RNG state for rank %d in the checkpoint; dropout noise will differ", dist.rank)

    amp = _autocast_dtype(cfg.precision, device)
    ddp: nn.Module = model
    if dist.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    if dist.main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
        logger.info(
            "prior: %.2fM parameters, %s, %d train / %d val grids of %s, device %s, %s",
            model.num_parameters() / 1e6,
            model.config,
            len(train_set),
            len(val_set) if val_set else 0,
            train_set.grid,
            device,
            "bf16 autocast" if amp else "fp32",
        )
    sampler = StepSampler(len(train_set), cfg.batch_size, cfg.seed)
    null = model.config.null_class
    end = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
    log = open(out / LOG_NAME, "a") if dist.main else None  # noqa: SIM115
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(
            total=cfg.steps, initial=start_step, desc="train-prior", unit="step", dynamic_ncols=True, file=sys.stderr
        )
    last_loss, last_val = float("nan"), None
    tokens_per_step = cfg.batch_size * train_set.grid[0] * train_set.grid[1]
    t0 = time.perf_counter()
    try:
        for step in range(start_step, end):
            lr = lr_at(step, cfg)
            for group in opt.param_groups:
                group["lr"] = lr
            idx = sampler.indices(step)  # (batch_size,) global
            ids_all, labels_all = train_set.batch(idx)
            g = torch.Generator().manual_seed(_seed_for(cfg.seed, 4, step))
            drop = torch.rand(cfg.batch_size, generator=g) < cfg.label_dropout
            labels_all = torch.where(drop | (labels_all < 0), torch.full_like(labels_all, null), labels_all)
            mine = slice(dist.rank * per_rank * cfg.grad_accum, (dist.rank + 1) * per_rank * cfg.grad_accum)
            ids_r, labels_r = ids_all[mine].to(device), labels_all[mine].to(device)
            loss_sum = torch.zeros((), device=device)
            for micro in range(cfg.grad_accum):
                sl = slice(micro * per_rank, (micro + 1) * per_rank)
                sync = micro == cfg.grad_accum - 1 or dist.world == 1
                ctx = contextlib.nullcontext() if sync else ddp.no_sync()  # type: ignore[operator]
                with ctx:
                    with torch.autocast(device_type=device.type, dtype=amp or torch.float32, enabled=amp is not None):
                        ids_m = ids_r[sl].reshape(per_rank, -1)  # (b, T)
                        logits = ddp(ids_m, labels_r[sl])  # (b, T, V)
                        loss = nn.functional.cross_entropy(
                            logits.float().reshape(-1, logits.shape[-1]), ids_m.reshape(-1)
                        )
                    (loss / cfg.grad_accum).backward()
                loss_sum += loss.detach()
            grad_norm = (
                float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip))
                if cfg.grad_clip > 0
                else float("nan")
            )
            opt.step()
            opt.zero_grad(set_to_none=True)
            done = step + 1
            if dist.world > 1:
                from torch import distributed as tdist

                tdist.all_reduce(loss_sum, op=tdist.ReduceOp.AVG)
            if done % cfg.log_every == 0 or done == end:
                last_loss = float(loss_sum) / cfg.grad_accum
                elapsed = time.perf_counter() - t0
                rec = {
                    "step": done,
                    "loss": last_loss,
                    "bits_per_token": last_loss / math.log(2),
                    "lr": lr,
                    "grad_norm": grad_norm,
                    "tokens_per_s": tokens_per_step * (done - start_step) / max(elapsed, 1e-9),
                }
                if log is not None:
                    log.write(json.dumps(rec) + "\n")
                    log.flush()
                if bar is not None:
                    bar.set_postfix(loss=f"{last_loss:.3f}", lr=f"{lr:.2e}")
            if val_set is not None and (done % cfg.val_every == 0 or done == cfg.steps) and dist.main:
                last_val = _validate(model, val_set, batch=per_rank, device=device, amp=amp)
                if log is not None:
                    log.write(json.dumps({"step": done, "val_bits_per_token": last_val}) + "\n")
                    log.flush()
                logger.info("step %d: validation %.4f bits/token", done, last_val)
            if done % cfg.checkpoint_every == 0 or done == end:
                _save_checkpoint(out, model, opt, done, cfg, dist)
            if bar is not None:
                bar.update()
    finally:
        if bar is not None:
            bar.close()
        if log is not None:
            log.close()
    return TrainResult(step=end, train_loss=last_loss, val_bits_per_token=last_val, out=out)


def iter_log(out: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """Records of ``<out>/log.jsonl``."""
    path = Path(out) / LOG_NAME
    with open(path) as f:
        for line in f:
            if line.strip():
                yield json.loads(line)
