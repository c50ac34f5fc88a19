"""Pre-tokenization of WebDataset image shards into token shards (``vqtok pretokenize``).

* :func:`pretokenize` — the whole job (inputs, ranks, skipping finished shards, manifest, error rate).
* :func:`tokenize_shard` — one input shard -> one token shard + its stats .json; call it from
  any distributed engine (one task per shard).

Output layout and guarantees: docs/pipeline.md.
"""

from vqtok.pipeline.driver import (
    ErrorRateExceeded,
    RunResult,
    ShardsNotFetched,
    expand_inputs,
    prepare_output,
    pretokenize,
    resolve_rank,
    shards_for_rank,
    update_manifest,
)
from vqtok.pipeline.shards import (
    DEFAULT_KEEP,
    ShardStats,
    model_fingerprint,
    output_name_for,
    stats_path_for,
    tokenize_shard,
    tokenize_shards,
)

__all__ = [
    "DEFAULT_KEEP",
    "ErrorRateExceeded",
    "RunResult",
    "ShardStats",
    "ShardsNotFetched",
    "expand_inputs",
    "model_fingerprint",
    "output_name_for",
    "prepare_output",
    "pretokenize",
    "resolve_rank",
    "shards_for_rank",
    "stats_path_for",
    "tokenize_shard",
    "tokenize_shards",
    "update_manifest",
]
