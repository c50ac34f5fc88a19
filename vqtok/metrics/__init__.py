"""Scores of a tokenizer: codebook usage, rFID/KID (FID Inception-v3), PSNR, SSIM, LPIPS.

See ``docs/metrics.md`` for definitions, weights sources and measured agreement with
pytorch-fid, torch-fidelity and scikit-image.
"""

from vqtok.metrics.fid import (
    FIDStats,
    KIDResult,
    RunningStats,
    fid_from_features,
    frechet_distance,
    kernel_inception_distance,
)
from vqtok.metrics.image import psnr, ssim
from vqtok.metrics.inception import (
    FIDInceptionV3,
    InceptionWeights,
    load_fid_inception,
    torchscript_to_state_dict,
)
from vqtok.metrics.lpips import LPIPS, LPIPSWeights, load_lpips
from vqtok.metrics.usage import (
    CodebookUsage,
    codebook_usage,
    merge_histograms,
    read_histograms,
    token_histogram,
)

__all__ = [
    "LPIPS",
    "CodebookUsage",
    "FIDInceptionV3",
    "FIDStats",
    "InceptionWeights",
    "KIDResult",
    "LPIPSWeights",
    "RunningStats",
    "codebook_usage",
    "fid_from_features",
    "frechet_distance",
    "kernel_inception_distance",
    "load_fid_inception",
    "load_lpips",
    "merge_histograms",
    "psnr",
    "read_histograms",
    "ssim",
    "token_histogram",
    "torchscript_to_state_dict",
]
