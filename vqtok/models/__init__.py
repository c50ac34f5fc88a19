"""Model families (taming VQGAN, Open-MAGVIT2, Cosmos DI, IBQ, ...; see :mod:`vqtok.models.registry`) and quantizers (VQ, FSQ, LFQ)."""

from vqtok.models.cosmos import CosmosConfig, CosmosDI
from vqtok.models.fsq import FSQ
from vqtok.models.ibq import IBQ, IBQConfig
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
    "CosmosDI",
    "CosmosConfig",
    "IBQ",
    "IBQConfig",
    "VectorQuantizer",
    "FSQ",
    "LFQ",
    "Quantizer",
    "QuantizerOutput",
    "nearest_code",
]
