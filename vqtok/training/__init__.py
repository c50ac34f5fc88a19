"""Training VQGAN tokenizers: the VQGAN objective, codebook-usage tricks, data, and the loop.

>>> from vqtok.training import TrainConfig, train
>>> result = train(TrainConfig.from_yaml("configs/default-tokenizer.yaml"), "photos/", "runs/x")
>>> Tokenizer.from_pretrained(result.final)
"""

from vqtok.training.codebook import CodebookTrainer, kmeans
from vqtok.training.config import (
    CodebookConfig,
    DataConfig,
    LossConfig,
    TrainConfig,
    default_model_config,
    vanilla_codebook,
)
from vqtok.training.discriminator import NLayerDiscriminator
from vqtok.training.losses import VQGANLoss, adaptive_weight, hinge_d_loss
from vqtok.training.trainer import Trainer, TrainResult, ValidationResult, train

__all__ = [
    "CodebookConfig",
    "CodebookTrainer",
    "DataConfig",
    "LossConfig",
    "NLayerDiscriminator",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "VQGANLoss",
    "ValidationResult",
    "adaptive_weight",
    "default_model_config",
    "hinge_d_loss",
    "kmeans",
    "train",
    "vanilla_codebook",
]
