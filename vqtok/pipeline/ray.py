"""Pre-tokenization on a Ray cluster (``pip install "vqtok[ray]"``): same outputs as one process.

``pretokenize_ray`` (also ``pretokenize(..., engine="ray")`` and ``vqtok pretokenize --engine ray``)
keeps everything that makes :func:`vqtok.pipeline.pretokenize` safe and swaps only the loop:

* The unit of work is still the input shard: each task is :func:`tokenize_shard` on one
  ``(input, output)`` pair, which writes under temporary names and renames when complete (the
  stats ``.json`` last), so a retried task, a killed worker or a second run leaves exactly the
  bytes a clean single-process run leaves. Complete shards are skipped before anything is sent.
* The model lives in long-lived actors (one per GPU when ``num_gpus`` is set, else ``num_actors``
  CPU actors), loaded once per actor, not once per shard. Each actor checks that it loaded the
  same model (fingerprint) as the driver, so nodes with another version of the weights refuse to
  write into the folder.
* Decoding and resizing run in each actor's own DataLoader worker processes (``workers`` per actor,
  with their own CPUs reserved through ``num_cpus``) while the actor's main thread runs the encoder:
  this is the same reader as the local engine (so the same bytes), it needs nothing but Ray core,
  and a node's CPU cores feed its GPUs without an extra cross-process hop per image. Ray Data's
  ``map_batches`` would split decoding into a separate CPU stage, but then ordering, per-shard
  completeness and the exactly-once rename would have to be rebuilt on top of it.
* The driver shows progress (shards done, images/s, ETA) and reports failed shards with reasons at
  the end; the manifest is written by the driver only.

Inputs must be readable from every node under the same path (a shared file system); remote
specs (URLs, ``pipe:``) are refused here (use the local engine per node, or torchrun ranks).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vqtok._errors import reason
from vqtok._progress import Progress
from vqtok._runtime import actor_pool, ray_actors, resolve_device
from vqtok.pipeline._naming import completed_output, fingerprint_matches, model_fingerprint, output_name_for
from vqtok.pipeline.driver import (
    FetchFailure,
    RunResult,
    ShardsNotFetched,
    expand_inputs,
    finish_run,
    load_tokenizer,
    open_output,
    run_lock,
)
from vqtok.pipeline.shards import TokenizeOptions, tokenize_shard
from vqtok.tokens import ShardStats

if TYPE_CHECKING:
    from vqtok.tokenizer import Tokenizer

logger = logging.getLogger(__name__)

__all__ = ["RayOptions", "ShardFailed", "pretokenize_ray"]


class ShardFailed(ShardsNotFetched):
    """Some shards could not be tokenized on the cluster: left undone, with their reasons in ``result.fetch_failures``."""

    def __init__(self, result: RunResult) -> None:
        self.result = result
        listed = "; ".join(f"{f.shard}: {f.reason}" for f in result.fetch_failures[:3])
        RuntimeError.__init__(self, f"{len(result.fetch_failures)} shard(s) failed and were left undone ({listed}); re-run to retry them")


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide :func:`pretokenize_ray` runs."""

    address: str | None = None  # a running cluster ("auto", "ray://head:10001"); None: $RAY_ADDRESS or a local Ray
    num_actors: int | None = None  # model replicas (default: GPUs / num_gpus, else CPUs / num_cpus; at most the shards to do)
    num_gpus: float = 0.0  # GPUs per actor (1 = one actor per GPU); the device defaults to CUDA then
    num_cpus: float | None = None  # CPUs reserved per actor (default 1 + workers: the encoder thread + its decoders)
    threads: int = 0  # torch intra-op threads per actor (0 = torch's default)
    max_retries: int = 2  # how often a shard whose actor died is retried, on a restarted actor

    def __post_init__(self) -> None:
        if self.num_gpus < 0 or self.max_retries < 0 or self.threads < 0:
            raise ValueError("num_gpus, max_retries and threads must be >= 0")
        if self.num_actors is not None and self.num_actors < 1:
            raise ValueError(f"num_actors must be >= 1, got {self.num_actors}")
        if self.num_cpus is not None and self.num_cpus <= 0:
            raise ValueError(f"num_cpus must be > 0, got {self.num_cpus}")


class ShardWorker:
    """One Ray actor: a tokenizer loaded once, tokenizing whole shards on request."""

    def __init__(self, model: Any, options: TokenizeOptions, device: str, precision: str, threads: int) -> None:
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.options = options
        self.tokenizer, _ = load_tokenizer(model, device=resolve_device(device), batch_size=options.batch_size, precision=precision)
        fingerprint = model_fingerprint(self.tokenizer)
        if not fingerprint_matches(self.tokenizer, options.fingerprint, current=fingerprint):
            raise ValueError(f"this Ray worker loaded a different model (fingerprint {fingerprint}) than the driver "
                             f"({options.fingerprint}); every node must see the same weights")

    def tokenize(self, src: str, dst: str) -> ShardStats:
        return tokenize_shard(src, dst, self.tokenizer, self.options)


class _ShardProgress(Progress):
    """Shards done, with images/s and ETA as postfix, by :mod:`vqtok._progress`'s rule (bar or log lines)."""

    def __init__(self, total: int, enabled: bool) -> None:
        super().__init__("pretokenize (ray)", total=total, unit="shard", enabled=enabled)
        self.shards, self.images, self.t0 = total, 0, time.perf_counter()

    def shard_done(self, images: int) -> None:
        self.images += images
        elapsed = time.perf_counter() - self.t0
        rate = self.images / elapsed if elapsed > 0 else 0.0
        done = self.n + 1
        eta = elapsed / done * (self.shards - done)
        self.set_postfix(f"{rate:.1f} images/s, ETA {eta:.0f} s")
        self.update(1)


def pretokenize_ray(
    input: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    *,
    model: Tokenizer | str | os.PathLike[str] | None = None,
    options: TokenizeOptions | None = None,
    ray_options: RayOptions | None = None,
    device: str | None = None,
    precision: str = "fp32",
    max_error_rate: float | None = 0.01,
    progress: bool = True,
    **changes: Any,
) -> RunResult:
    """Tokenize every input shard into ``output`` on Ray; the outputs equal :func:`~vqtok.pipeline.pretokenize`'s byte for byte.

    ``model``, ``options`` / keyword arguments (:class:`~vqtok.pipeline.TokenizeOptions`; ``workers``
    are each actor's decoding processes, default 1), ``device`` (default: CUDA when
    ``ray_options.num_gpus`` > 0, else CPU), ``precision``, ``max_error_rate``: as in
    :func:`~vqtok.pipeline.pretokenize`. ``ray_options``: :class:`RayOptions`.

    Shards that still fail after the retries (a worker crash each time, an output that cannot be
    written) are left undone and raise :class:`ShardFailed` at the end, after everything else is
    written; run again to retry them. Per-sample failures are recorded in the stats as usual.
    """
    try:
        import ray
    except ImportError as err:  # pragma: no cover - exercised only without the extra
        raise ImportError('the Ray engine needs Ray: pip install "vqtok[ray]"') from err
    t0 = time.perf_counter()
    if max_error_rate is not None and not 0.0 <= max_error_rate <= 1.0:
        raise ValueError(f"max_error_rate must be in [0, 1], got {max_error_rate}")
    ropts = ray_options or RayOptions()
    opts = TokenizeOptions.make(options, **changes)
    if opts.workers is None:
        opts = dataclasses.replace(opts, workers=1)
    shards = expand_inputs(input, exclude=output)
    remote = [s for s in shards if isinstance(s, str)]
    if remote:
        raise ValueError(f"the Ray engine reads inputs from a shared file system; {remote[0]!r} is remote "
                         "(use the local engine, or torchrun ranks, for URLs and pipe: inputs)")
    # The driver loads the model once (CPU) for the fingerprint and the manifest.
    tokenizer, model_id = load_tokenizer(model, device="cpu", batch_size=opts.batch_size, precision=precision)
    folder, fingerprint = open_output(output, input, tokenizer, model_id, opts)
    with run_lock(folder):  # a second run on this folder is refused
        opts = dataclasses.replace(opts, fingerprint=fingerprint, on_samples=None, on_index=None)
        jobs = [(Path(src), folder / output_name_for(src)) for src in shards]
        results = {i: done for i, (_, dst) in enumerate(jobs)
                   if (done := completed_output(dst, fingerprint, opts.size, overwrite=opts.overwrite)) is not None}
        todo = [i for i in range(len(jobs)) if i not in results]
        logger.info("ray: %d shards, %d to do, model %s (%s)", len(jobs), len(todo), model_id, fingerprint)
        failures: list[FetchFailure] = []
        if todo:  # start the actors, keep each busy with one shard at a time, collect stats into results
            cpus = float(ropts.num_cpus) if ropts.num_cpus is not None else 1.0 + (opts.workers or 0)
            device = device or ("cuda" if ropts.num_gpus > 0 else "cpu")
            # Our own in-memory Tokenizer travels through Ray's object store (between our processes only);
            # a folder / Hub id / None is loaded by each actor itself.
            model_ref = ray.put(tokenizer) if model is not None and not isinstance(model, (str, os.PathLike)) else model
            args = (model_ref, opts, device, precision, ropts.threads)
            name = f"vqtok-{uuid.uuid4().hex[:8]}"  # actors vqtok-<run>-<k>, for operators to find
            with _ShardProgress(len(todo), progress) as bar, \
                    ray_actors(ray, ShardWorker, args, ropts, work=len(todo), num_cpus=cpus, name=name) as actors:
                for i, ref in actor_pool(ray, actors, todo,
                                         lambda actor, i: actor.tokenize.remote(str(jobs[i][0]), str(jobs[i][1]))):
                    try:
                        results[i] = ray.get(ref)
                        bar.shard_done(results[i].num_samples)
                    except Exception as err:  # noqa: BLE001 - one failed shard must not stop the others
                        cause = getattr(err, "cause", None)  # the original exception when Ray wraps one
                        why = reason(cause if isinstance(cause, BaseException) else err)  # one line, address-free
                        logger.error("shard %s failed: %s (left undone)", jobs[i][0], why)
                        failures.append(FetchFailure(str(jobs[i][0]), why))
                        bar.shard_done(0)
        return finish_run(folder, [results[i] for i in sorted(results)], t0, failures, max_error_rate, error=ShardFailed)
