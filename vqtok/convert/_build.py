"""Build a Tokenizer from a source format's files: the one step every converter shares.

Kept apart from :mod:`vqtok.convert.auto` (recognition, Hub files, the cache) so that the
converter modules' ``from_*`` functions can use it without importing the recogniser.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

from vqtok.hub import load_strict
from vqtok.models import registry
from vqtok.tokenizer import Tokenizer

logger = logging.getLogger(__name__)

__all__ = ["convert_files"]


def convert_files(layout: str, paths: Sequence[Path], *, source: str, **options: Any) -> tuple[str, Tokenizer]:
    """Convert local files of ``layout`` (as :class:`~vqtok.convert.auto.Recognised` lists them) -> ``(format, Tokenizer)``.

    For a ``|``-joined layout the checkpoint is read once, each format's ``accepts`` picks the one
    it belongs to, and that format's converter is handed the loaded checkpoint. ``options`` are
    the converter's keywords (``ema=``, ``resolution=``, ...); the model is loaded strictly.
    """
    pairs = [registry.source_format(name) for name in layout.split("|")]
    if len(pairs) > 1:
        from vqtok.convert.safe_pickle import load_checkpoint

        options["checkpoint"] = checkpoint = load_checkpoint(paths[0])
        pairs = [(fam, fmt) for fam, fmt in pairs if fmt.accepts is None or fmt.accepts(checkpoint, source)][:1]
        if not pairs:
            raise ValueError(f"{source} is no checkpoint of {' / '.join(layout.split('|'))}")
    fam, fmt = pairs[0]
    config, state = fmt.run(paths, **options)
    model = fam.model_class(config)
    load_strict(model, state, source=source)
    logger.info("converted %s (%s): %s", source, fmt.name, config)
    return fmt.name, Tokenizer(model)
