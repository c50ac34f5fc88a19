"""Importers for checkpoints of other code bases; all read files with a restricted unpickler.

The converters are imported when first used (``from vqtok.convert import from_taming`` or
``vqtok.convert.from_taming``), not by ``import vqtok``.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> the module that defines it
_EXPORTS: dict[str, str] = {
    "from_taming": "taming",
    "infer_taming_config": "taming",
    "taming_config_from_yaml": "taming",
    "from_llamagen": "llamagen",
    "infer_llamagen_config": "llamagen",
    "from_magvit2": "magvit2",
    "infer_magvit2_config": "magvit2",
    "from_cosmos": "cosmos",
    "infer_cosmos_config": "cosmos",
    "read_torchscript_tensors": "cosmos",
    "from_ibq": "ibq",
    "infer_ibq_config": "ibq",
    "from_dalle_mini": "dalle_mini",
    "from_diffusers": "diffusers",
    "to_diffusers": "diffusers",
    "load_checkpoint": "safe_pickle",
    "Placeholder": "safe_pickle",
    "UnsafeCheckpointError": "safe_pickle",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
