"""vqtok: images to discrete tokens and back, with taming-transformers-compatible VQGANs."""

from vqtok.models.quantizer import QuantizerOutput, VectorQuantizer
from vqtok.models.vqgan import VQGAN, VQGANConfig
from vqtok.tokenizer import Tokenizer

__version__ = "0.1.0"

__all__ = ["Tokenizer", "VQGAN", "VQGANConfig", "VectorQuantizer", "QuantizerOutput", "__version__"]
