"""vqtok: images to discrete tokens and back, with taming-transformers-compatible VQGANs."""

from vqtok.models.quantizer import QuantizerOutput, VectorQuantizer
from vqtok.models.vqgan import VQGAN, VQGANConfig
from vqtok.tokenizer import Tokenizer
from vqtok.convert import auto as _auto  # noqa: F401,E402  registers Tokenizer.from_pretrained's loader of other layouts

__version__ = "0.1.0"

__all__ = ["Tokenizer", "VQGAN", "VQGANConfig", "VectorQuantizer", "QuantizerOutput", "__version__"]
