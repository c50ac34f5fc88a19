"""Importers for checkpoints of other code bases; all read files with a restricted unpickler."""

from vqtok.convert.safe_pickle import Placeholder, UnsafeCheckpointError, load_checkpoint
from vqtok.convert.cosmos import from_cosmos, infer_cosmos_config, read_torchscript_tensors
from vqtok.convert.dalle_mini import from_dalle_mini
from vqtok.convert.diffusers import from_diffusers, to_diffusers
from vqtok.convert.ibq import from_ibq, infer_ibq_config
from vqtok.convert.llamagen import from_llamagen, infer_llamagen_config
from vqtok.convert.magvit2 import from_magvit2, infer_magvit2_config
from vqtok.convert.taming import from_taming, infer_taming_config, taming_config_from_yaml

__all__ = [
    "from_taming",
    "infer_taming_config",
    "taming_config_from_yaml",
    "from_llamagen",
    "infer_llamagen_config",
    "from_magvit2",
    "infer_magvit2_config",
    "from_cosmos",
    "infer_cosmos_config",
    "read_torchscript_tensors",
    "from_ibq",
    "infer_ibq_config",
    "from_dalle_mini",
    "from_diffusers",
    "to_diffusers",
    "load_checkpoint",
    "Placeholder",
    "UnsafeCheckpointError",
]
