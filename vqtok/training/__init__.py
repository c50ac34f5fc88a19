"""Training VQGAN tokenizers: the VQGAN objective, codebook-usage tricks, data, and the loop.

>>> from vqtok.training import TrainConfig, train
>>> result = train(TrainConfig.from_yaml("configs/default-tokenizer.yaml"), "photos/", "runs/x")
>>> Tokenizer.from_pretrained(result.final)

The names below are the public surface. The parts of the objective and the codebook tricks
(``vqtok.training.codebook``, ``.losses``, ``.discriminator``, ``.data``) are importable from their
modules for experiments, without a stability promise.
"""

from vqtok.training.config import (
    CodebookConfig,
    DataConfig,
    LossConfig,
    TrainConfig,
    default_model_config,
    vanilla_codebook,
)
from vqtok.training.trainer import Trainer, TrainResult, ValidationResult, checkpoint_config, train

__all__ = [
    "CodebookConfig",
    "DataConfig",
    "LossConfig",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "ValidationResult",
    "checkpoint_config",
    "default_model_config",
    "train",
    "vanilla_codebook",
]
