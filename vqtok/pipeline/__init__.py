"""Pre-tokenization of WebDataset image shards into token shards (``vqtok pretokenize``).

* :func:`pretokenize` — the whole job (inputs, ranks, skipping finished shards, manifest, error rate).
* :func:`tokenize_shard` — one input shard -> one token shard + its stats .json; call it from
  any distributed engine (one task per shard), with :func:`prepare_output` before and
  :func:`update_manifest` after. Options of both: :class:`TokenizeOptions`.

The names exported here are the public surface; the modules' other names (and the private
``_naming`` / ``_reading`` modules) may change without notice. The token-shard format itself is
:mod:`vqtok.tokens`.

Output layout and guarantees: docs/pipeline.md.
"""

from vqtok.pipeline._naming import model_fingerprint, output_name_for
from vqtok.pipeline.driver import (
    ErrorRateExceeded,
    FetchFailure,
    RunResult,
    SampleFailure,
    ShardsNotFetched,
    expand_inputs,
    prepare_output,
    pretokenize,
    update_manifest,
)
from vqtok.pipeline.shards import TokenizeOptions, tokenize_shard, tokenize_shards
from vqtok.tokens import DEFAULT_KEEP, ShardStats, stats_path_for

__all__ = [
    "DEFAULT_KEEP",
    "ErrorRateExceeded",
    "FetchFailure",
    "RunResult",
    "SampleFailure",
    "ShardStats",
    "ShardsNotFetched",
    "expand_inputs",
    "model_fingerprint",
    "output_name_for",
    "prepare_output",
    "pretokenize",
    "stats_path_for",
    "TokenizeOptions",
    "tokenize_shard",
    "tokenize_shards",
    "update_manifest",
]
