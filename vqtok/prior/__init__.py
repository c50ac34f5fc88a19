"""The second stage: an autoregressive transformer prior over VQGAN codebook ids.

``GPT`` / ``GPTConfig`` (model, save/load, ``GPT.generate``: KV-cached or full-recompute,
whole-grid or sliding-window sampling with classifier-free guidance; ``generate`` is the same
function), ``train`` / ``PriorTrainConfig`` / ``PriorTrainResult``. See docs/prior.md.
"""

from vqtok.prior.gpt import GPT, MODEL_TYPE, GPTConfig, KVCache
from vqtok.prior.train import PriorTrainConfig, PriorTrainResult, TrainResult, load_train_config, train

generate = GPT.generate  # ``generate(model, n, ...)``: the same function as ``model.generate(n, ...)``

__all__ = [
    "GPT",
    "GPTConfig",
    "KVCache",
    "MODEL_TYPE",
    "generate",
    "PriorTrainConfig",
    "PriorTrainResult",
    "TrainResult",
    "load_train_config",
    "train",
]
