"""Deprecated: the token-shard reader moved to :mod:`vqtok.tokens`, the shard expander to
:func:`vqtok.tars.expand_shards` (issue 12). This module re-exports them and will be removed in
vqtok 0.3.0.
"""

from __future__ import annotations

import warnings

from vqtok.tars import expand_shards
from vqtok.tokens import NO_LABEL, TokenCorpus, decode_token_sample, load_token_corpus, token_dataset

__all__ = ["expand_shards", "decode_token_sample", "token_dataset", "TokenCorpus", "load_token_corpus", "NO_LABEL"]

warnings.warn(
    "vqtok.data is deprecated and will be removed in vqtok 0.3.0: import token_dataset, load_token_corpus, "
    "TokenCorpus, decode_token_sample and NO_LABEL from vqtok.tokens, and expand_shards from vqtok.tars",
    DeprecationWarning,
    stacklevel=2,
)
