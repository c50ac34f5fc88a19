"""A small nanoGPT-style transformer over VQGAN codebook ids (the second stage).

The prior models an image's token grid ``s`` (h×w codebook ids, read in row-major /
raster order) autoregressively::

    p(s | c) = ∏_t p(s_t | c, s_<t)          loss = −log p(s | c)

Sequence layout. The model input at position 0 is a *class token* ``c`` (a learned
embedding; ``n_classes`` real classes plus one extra "null" class). The null class is
the start token of unconditional models (``n_classes = 0``) and the "no label" input
that label dropout trains for classifier-free guidance. Input position ``t ≥ 1`` holds
``s_{t-1}``; the output at position ``t`` predicts ``s_t``. So a grid of ``T = h·w``
tokens uses exactly ``T`` positions, and ``block_size`` is the number of image tokens
of the largest grid the model can see at once (256 for 16×16).

Positions are **learned 1-D** embeddings (one per sequence position). They are simple
and they are what the sliding-window sampler needs: a window of the trained grid shape,
flattened row-major, occupies the same positions as a training image did. The grid
shape the model was trained on is kept in ``GPTConfig.train_grid``.

Blocks are pre-LayerNorm (``x + attn(ln(x))``, ``x + mlp(ln(x))``) with causal
``F.scaled_dot_product_attention``. The output projection shares its weight with the
token embedding (tied embeddings); on disk only ``tok_emb.weight`` is stored and the
tie is rebuilt on load (safetensors refuses shared tensors).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from vqtok.prior.sampling import resolve_grid, resolve_window, sample_logits, window_context, window_for

logger = logging.getLogger(__name__)

MODEL_TYPE = "gpt-prior"

__all__ = ["GPTConfig", "GPT", "KVCache", "MODEL_TYPE"]


@dataclass(frozen=True)
class GPTConfig:
    """Architecture of the prior. Defaults are a ~40M-parameter model for 16×16 grids."""

    vocab_size: int = 1024  # codebook size K of the tokenizer (ids 0..K-1)
    block_size: int = 256  # max image tokens in context (= h·w of the training grid)
    n_layer: int = 12  # transformer blocks
    n_head: int = 8  # attention heads per block (n_embd must divide evenly)
    n_embd: int = 512  # width of the residual stream
    n_classes: int = 0  # number of class labels; 0 = unconditional (only the null/start token)
    dropout: float = 0.0  # dropout on embeddings, attention and residual branches (training only)
    bias: bool = True  # biases in Linear layers and LayerNorms
    train_grid: tuple[int, int] | None = None  # (h, w) grid the model was trained on; sliding-window shape

    def __post_init__(self) -> None:
        if self.train_grid is not None:  # JSON gives lists
            object.__setattr__(self, "train_grid", (int(self.train_grid[0]), int(self.train_grid[1])))
            h, w = self.train_grid
            if h * w > self.block_size:
                raise ValueError(f"train_grid {h}x{w} has more tokens than block_size={self.block_size}")
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"GPTConfig.{name} must be positive, got {getattr(self, name)}")
        if self.n_classes < 0:
            raise ValueError(f"GPTConfig.n_classes must be >= 0, got {self.n_classes}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def null_class(self) -> int:
        """Index of the null class embedding (start token / dropped label)."""
        return self.n_classes

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["train_grid"] = list(self.train_grid) if self.train_grid is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GPTConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown GPTConfig fields: {', '.join(unknown)}")
        return cls(**d)


@dataclass
class KVCache:
    """Per-layer keys/values of the positions seen so far (for incremental decoding).

    ``k[i]`` / ``v[i]`` are preallocated ``(B, n_head, block_size, head_dim)`` buffers;
    the first ``length`` positions are filled.
    """

    k: list[Tensor] = field(default_factory=list)
    v: list[Tensor] = field(default_factory=list)
    length: int = 0

    @classmethod
    def empty(cls, config: GPTConfig, batch: int, *, device: torch.device, dtype: torch.dtype) -> KVCache:
        shape = (batch, config.n_head, config.block_size, config.n_embd // config.n_head)
        k, v = ([torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)] for _ in "kv")
        return cls(k, v)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = config.dropout
        self.resid_drop = nn.Dropout(config.dropout)

    def forward(self, x: Tensor, *, cache: KVCache | None = None, layer: int = 0) -> Tensor:
        L = x.shape[1]  # x: (B, L, C)
        q, k, v = rearrange(self.qkv(x), "b l (three h d) -> three b h l d", three=3, h=self.n_head)  # 3× (B, nh, L, hd)
        drop = self.dropout if self.training else 0.0
        if cache is None:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=drop, is_causal=True)
        else:
            start = cache.length
            cache.k[layer][:, :, start : start + L] = k
            cache.v[layer][:, :, start : start + L] = v
            keys = cache.k[layer][:, :, : start + L]  # (B, nh, start+L, hd)
            values = cache.v[layer][:, :, : start + L]
            if L == 1:  # one new query attends to every cached position
                y = F.scaled_dot_product_attention(q, keys, values, dropout_p=drop)
            else:  # query i (absolute start+i) sees keys 0..start+i
                mask = torch.ones(L, start + L, dtype=torch.bool, device=x.device).tril(diagonal=start)
                y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, dropout_p=drop)
        y = rearrange(y, "b h l d -> b l (h d)")  # (B, nh, L, hd) -> (B, L, C)
        return self.resid_drop(self.proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    """Pre-LN transformer block."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: Tensor, *, cache: KVCache | None = None, layer: int = 0) -> Tensor:
        x = x + self.attn(self.ln1(x), cache=cache, layer=layer)
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """Autoregressive prior over codebook ids; see the module docstring for the layout."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.n_embd)
        self.cls_emb = nn.Embedding(config.n_classes + 1, config.n_embd)  # last row = null class
        self.pos_emb = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.tok_emb.weight  # tied input/output embeddings
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2: scale residual projections by depth
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    # ------------------------------------------------------------------ helpers
    @property
    def device(self) -> torch.device:
        return self.tok_emb.weight.device

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())  # tied weight counted once

    def _labels(self, labels: Tensor | int | list[int] | None, batch: int) -> Tensor:
        """(B,) long class indices of ``labels`` (a tensor, an int or a list); None / negative -> null class."""
        null = self.config.null_class
        if labels is None:
            return torch.full((batch,), null, dtype=torch.long, device=self.device)
        labels = torch.as_tensor(labels, device=self.device).long().reshape(-1)
        if labels.numel() == 1 and batch > 1:
            labels = labels.expand(batch)
        if labels.shape != (batch,):
            raise ValueError(f"labels must have shape ({batch},), got {tuple(labels.shape)}")
        if bool((labels > null).any()) or bool((labels < -1).any()):
            raise ValueError(f"labels must be class ids in [0, {self.config.n_classes}) or -1 / {null} for none; "
                             f"the model has n_classes={self.config.n_classes}")
        return labels.masked_fill(labels < 0, null)

    def _embed(self, labels: Tensor, prefix: Tensor) -> Tensor:
        """The class token followed by the embedded ``prefix``: labels (B,), prefix (B, t) long -> (B, t+1, C)."""
        return torch.cat([self.cls_emb(labels)[:, None], self.tok_emb(prefix)], dim=1)

    def _run(self, x: Tensor, cache: KVCache | None = None) -> Tensor:
        """Add positions and run the blocks. x: (B, L, C) input embeddings at the positions after the cached ones
        (0.. without a cache) -> logits (B, L, V); the cache then holds L more positions."""
        L = x.shape[1]
        start = cache.length if cache is not None else 0
        if start + L > self.config.block_size:
            raise ValueError(f"sequence of {start + L} positions exceeds block_size={self.config.block_size}")
        pos = torch.arange(start, start + L, device=x.device)
        x = self.drop(x + self.pos_emb(pos))
        for i, block in enumerate(self.blocks):
            x = block(x, cache=cache, layer=i)
        if cache is not None:
            cache.length = start + L
        return self.lm_head(self.ln_f(x))

    # ------------------------------------------------------------------ forward
    def forward(self, ids: Tensor, labels: Tensor | None = None) -> Tensor:
        """Teacher-forced logits. ids: (B, T) or (B, h, w) long -> logits (B, T, V).

        ``logits[:, t]`` is the prediction of ``ids[:, t]`` from the class token and
        ``ids[:, :t]``; the last id is never an input. ``labels``: (B,) long, None or -1 = no class.
        """
        ids = ids.reshape(ids.shape[0], -1)  # (B, T)
        return self._run(self._embed(self._labels(labels, ids.shape[0]), ids[:, :-1]))

    def loss(self, ids: Tensor, labels: Tensor | None = None) -> Tensor:
        """Mean next-token cross-entropy in nats per token (scalar)."""
        ids = ids.reshape(ids.shape[0], -1)
        logits = self(ids, labels)  # (B, T, V)
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), ids.reshape(-1))

    @torch.no_grad()
    def log_prob(self, ids: Tensor, labels: Tensor | None = None) -> Tensor:
        """log p(ids | labels) in nats, summed over tokens. ids: (n, h, w) or (n, T) -> (n,).

        Bits per token: ``-log_prob / (T * ln 2)``.
        """
        ids = ids.to(self.device).reshape(ids.shape[0], -1).long()
        logits = self(ids, labels).float()  # (n, T, V)
        lp = torch.log_softmax(logits, dim=-1).gather(-1, ids[..., None])[..., 0]  # (n, T)
        return lp.sum(dim=1)

    def step(self, prev: Tensor | None, labels: Tensor, cache: KVCache) -> Tensor:
        """One incremental decoding step with a KV cache -> next-token logits (B, V).

        First call (``cache.length == 0``) feeds the class token (``prev`` ignored);
        later calls feed ``prev`` (B,) long, the token sampled last.
        """
        x = self.cls_emb(labels) if cache.length == 0 else self.tok_emb(prev)  # (B, C)
        return self._run(x[:, None], cache)[:, -1]

    def next_logits(self, prefix: Tensor, labels: Tensor) -> Tensor:
        """Full recomputation: logits of the token after ``prefix`` (B, t) -> (B, V)."""
        return self._run(self._embed(labels, prefix))[:, -1]

    def prefill(self, prefix: Tensor, labels: Tensor, cache: KVCache) -> Tensor:
        """Reset ``cache`` and fill it with the class token + ``prefix`` (B, t) -> next-token logits (B, V)."""
        cache.length = 0
        return self._run(self._embed(labels, prefix), cache)[:, -1]

    def new_cache(self, batch: int) -> KVCache:
        return KVCache.empty(self.config, batch, device=self.device, dtype=self.tok_emb.weight.dtype)

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def generate(
        self,
        n: int,
        *,
        labels: Tensor | int | list[int] | None = None,
        grid: tuple[int, int] | None = None,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        cfg_scale: float = 1.0,
        generator: torch.Generator | None = None,
        window: tuple[int, int] | None = None,
        use_cache: bool = True,
        progress: bool = False,
    ) -> Tensor:
        """Sample ``n`` token grids -> ids (n, h, w) long on the model's device (see :mod:`vqtok.prior.sampling`).

        labels: None (unconditional / null class), an int for all samples, or (n,) ids (-1 = none).
        grid: (h, w); defaults to the trained grid. Grids larger than the trained grid use the
        sliding window (shape ``window``, default ``config.train_grid``).
        temperature / top_k / top_p: logits filtering (:func:`~vqtok.prior.sampling.sample_logits`).
        cfg_scale: classifier-free guidance scale (needs labels; 1 = off).
        use_cache: False re-runs the full context every step (reference path; same tokens).
        """
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        geometry = {"block_size": self.config.block_size, "train_grid": self.config.train_grid}
        H, W = resolve_grid(grid, **geometry)
        win = resolve_window((H, W), window, **geometry)
        cond = self._labels(labels, n)  # (n,)
        guided = cfg_scale != 1.0
        if guided and (labels is None or self.config.n_classes == 0):
            raise ValueError("cfg_scale != 1 needs a class-conditional model and labels")
        lab = torch.cat([cond, torch.full_like(cond, self.config.null_class)]) if guided else cond  # (n or 2n,)

        def pick(logits: Tensor) -> Tensor:  # logits (n or 2n, V) -> (n,)
            logits = logits.float()
            if guided:
                lc, lu = logits[:n], logits[n:]
                logits = lu + cfg_scale * (lc - lu)
            return sample_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)

        def dup(x: Tensor) -> Tensor:  # batch for the (maybe doubled) model input
            return torch.cat([x, x]) if guided else x

        was_training = self.training
        self.eval()
        out = torch.zeros(n, H, W, dtype=torch.long, device=self.device)
        cache = self.new_cache(lab.shape[0]) if use_cache else None
        cached_at: tuple[int, int] | None = None  # window origin the cache holds the context of
        from vqtok._progress import Progress

        bar = Progress("sampling", total=H * W, unit="tok", enabled=progress)
        try:
            for i in range(H):
                for j in range(W):
                    ctx = window_context(out, win, i, j)  # (n, L)
                    w = window_for((H, W), win, i, j)
                    if cache is None:
                        logits = self.next_logits(dup(ctx), lab)
                    elif cached_at == (w.top, w.left) and cache.length == ctx.shape[1]:
                        logits = self.step(dup(ctx[:, -1]), lab, cache)  # same window: feed the token sampled last
                    else:  # first token, or the window moved: fill the cache with the context
                        logits = self.prefill(dup(ctx), lab, cache)
                        cached_at = (w.top, w.left)
                    out[:, i, j] = pick(logits)
                    bar.update()
        finally:
            bar.close()
            self.train(was_training)
        return out

    # ------------------------------------------------------------------ I/O
    def state_dict_for_save(self) -> dict[str, Tensor]:
        """State dict without the tied copy of the embedding (``lm_head.weight``)."""
        sd = self.state_dict()
        sd.pop("lm_head.weight", None)
        return sd

    def save_pretrained(self, directory: str | os.PathLike[str]) -> None:
        """Write ``model.safetensors`` + ``config.json`` (model_type ``gpt-prior``)."""
        from vqtok.hub import save_pretrained

        save_pretrained(directory, state_dict=self.state_dict_for_save(), config=self.config.to_dict(), model_type=MODEL_TYPE)

    def load_weights(self, state: dict[str, Tensor]) -> None:
        """Load a state dict written by :meth:`state_dict_for_save` (the head stays tied: the copy is in place)."""
        state = dict(state)
        state.pop("lm_head.weight", None)
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = [k for k in missing if k != "lm_head.weight"]
        if missing or unexpected:
            raise ValueError(f"prior weights do not match the config: missing={missing}, unexpected={unexpected}")

    @classmethod
    def from_pretrained(
        cls,
        repo_id_or_dir: str | os.PathLike[str],
        *,
        revision: str | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        local_files_only: bool = False,
        device: str | torch.device = "cpu",
    ) -> GPT:
        """Load a prior from a folder or Hub repo written by :meth:`save_pretrained` (eval mode)."""
        from vqtok.hub import load_pretrained

        cfg, state = load_pretrained(repo_id_or_dir, model_type=MODEL_TYPE, revision=revision, cache_dir=cache_dir,
                                     local_files_only=local_files_only)
        model = cls(GPTConfig.from_dict(cfg))
        model.load_weights(state)
        return model.to(device).eval()

    def push_to_hub(self, repo_id: str, *, private: bool = False, token: str | None = None) -> str:
        """Upload ``model.safetensors`` + ``config.json`` to the Hub repo ``repo_id``; returns the commit URL."""
        from vqtok.hub import push_to_hub

        return push_to_hub(self, repo_id, private=private, token=token)
