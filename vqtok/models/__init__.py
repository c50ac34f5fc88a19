"""Model definitions: the VQGAN autoencoder and its vector quantizer."""

from vqtok.models.quantizer import QuantizerOutput, VectorQuantizer, nearest_code
from vqtok.models.vqgan import VQGAN, Decoder, Encoder, VQGANConfig, VQGANOutput

__all__ = ["VQGAN", "VQGANConfig", "VQGANOutput", "Encoder", "Decoder", "VectorQuantizer", "QuantizerOutput", "nearest_code"]
