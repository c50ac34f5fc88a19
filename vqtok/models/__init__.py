"""Model definitions: architectures (taming VQGAN, Open-MAGVIT2) and the quantizer family (VQ, FSQ, LFQ)."""

from vqtok.models.fsq import FSQ
from vqtok.models.lfq import LFQ
from vqtok.models.magvit2 import MAGVIT2, MAGVIT2Config
from vqtok.models.quantizer import Quantizer, QuantizerOutput, VectorQuantizer, nearest_code
from vqtok.models.vqgan import VQGAN, Decoder, Encoder, VQGANConfig, VQGANOutput

__all__ = [
    "VQGAN",
    "VQGANConfig",
    "VQGANOutput",
    "Encoder",
    "Decoder",
    "MAGVIT2",
    "MAGVIT2Config",
    "VectorQuantizer",
    "FSQ",
    "LFQ",
    "Quantizer",
    "QuantizerOutput",
    "nearest_code",
]
