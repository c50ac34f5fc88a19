"""``pretokenize``: run :func:`~vqtok.pipeline.shards.tokenize_shard` over many shards, on one or many ranks.

Layout of the output folder (see docs/pipeline.md)::

    tokens/
      manifest.json          model id / fingerprint / config hash, size, input, shards done, totals
      train-000000.tar       <key>.ids.npy (+ <key>.cls/.txt/.json kept from the input)
      train-000000.json      samples written, failed (key, reason), histogram of codes  <- completion marker
      .manifest.lock         (empty; serialises manifest updates between ranks)
      .run.lock              (empty; byte r locked by the run of rank r: a second one is refused)

Ranks: input shard i (in expansion order) goes to rank ``i % WORLD_SIZE``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import glob
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from vqtok._errors import listing, reason
from vqtok._io import atomic_write, remove_stale_tmp
from vqtok._progress import Progress
from vqtok._runtime import env_int, resolve_device
from vqtok.pipeline._naming import completed_output, fingerprint_matches, model_fingerprint, output_name_for
from vqtok.pipeline.remote import fetch, shard_name
from vqtok.pipeline.shards import TokenizeOptions, tokenize_shards
from vqtok.tars import SHARD_SUFFIXES, expand_shards, is_remote
from vqtok.tokens import DEFAULT_KEEP, ShardStats, read_shard_stats

if TYPE_CHECKING:
    import torch

    from vqtok.tokenizer import Tokenizer

logger = logging.getLogger(__name__)

__all__ = [
    "MANIFEST_FORMAT",
    "MANIFEST_NAME",
    "ErrorRateExceeded",
    "FetchFailure",
    "RunResult",
    "SampleFailure",
    "ShardsNotFetched",
    "expand_inputs",
    "load_tokenizer",
    "prepare_output",
    "pretokenize",
    "resolve_rank",
    "run_lock",
    "shards_for_rank",
    "update_manifest",
]

MANIFEST_NAME = "manifest.json"
INCOMING_DIR = ".incoming"  # local copies of remote shards while they are tokenized
MANIFEST_FORMAT = "vqtok-pretokenize-manifest/1"
_LOCK_NAME = ".manifest.lock"
_RUN_LOCK_NAME = ".run.lock"
_TOTALS = ("shards", "samples_written", "samples_failed", "tokens")  # the manifest's "totals", summed over shards


class ErrorRateExceeded(RuntimeError):
    """Raised by :func:`pretokenize` at the end of a run whose failure rate is above ``max_error_rate``.

    All outputs are written; ``.result`` holds the :class:`RunResult`.
    """

    def __init__(self, result: RunResult, max_error_rate: float) -> None:
        self.result = result
        self.max_error_rate = max_error_rate
        super().__init__(
            f"{result.samples_failed} of {result.samples_total} samples failed "
            f"({100 * result.error_rate:.2f}% > max_error_rate {100 * max_error_rate:.2f}%)"
        )


class ShardsNotFetched(RuntimeError):
    """Raised by :func:`pretokenize` at the end of a run in which some remote shards could not be fetched.

    Everything else is written; those shards have no output, so a re-run fetches them again.
    ``.result`` holds the :class:`RunResult` (``result.fetch_failures``: (shard, reason)).
    """

    def __init__(self, result: RunResult) -> None:
        self.result = result
        n = len(result.fetch_failures)
        super().__init__(f"{n} remote shard(s) could not be fetched; re-run to retry them")


# ---------------------------------------------------------------------- inputs and ranks
def expand_inputs(
    inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], *, exclude: str | os.PathLike[str] | None = None
) -> list[Path | str]:
    """Input shard specs -> shards, in order (:func:`vqtok.tars.expand_shards`: brace patterns, globs,
    folders, paths, remote shards); local shards come back as Paths, remote ones (fetched when their
    turn comes, see :mod:`vqtok.pipeline.remote`) as strings. Shards inside the folder ``exclude``
    (the output folder, e.g. ``--input data --out data/tokens``) are left out. No two shards may share
    a file name (outputs are named after inputs). Image files and folders of images are refused with
    a word on what pretokenize takes."""
    from vqtok.images import IMAGE_SUFFIXES
    from vqtok.tars import _folder_files

    how = ("pretokenize takes WebDataset tar shards (.tar, .tar.gz, .tgz) of images: pack the images into "
           "shards (e.g. cd photos && tar cf ../train-000000.tar *.jpg), or encode image files with `vqtok encode`")
    for spec in [inputs] if isinstance(inputs, (str, os.PathLike)) else inputs:
        if is_remote(spec):
            continue
        p = Path(os.path.expanduser(os.fspath(spec)))
        if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES):
            raise ValueError(f"{spec} is an image; {how}")
        if p.is_dir() and not _folder_files(p, SHARD_SUFFIXES) and _folder_files(p, IMAGE_SUFFIXES):
            raise ValueError(f"folder {spec} holds images but no tar shards; {how}")
        if glob.has_magic(str(p)):
            found = [m.lower() for m in glob.glob(str(p), recursive=True)]
            if found and not any(m.endswith(SHARD_SUFFIXES) for m in found) and any(m.endswith(IMAGE_SUFFIXES) for m in found):
                raise ValueError(f"{spec} matches images but no tar shards; {how}")
    out: list[Path | str] = [s if is_remote(s) else Path(s) for s in expand_shards(inputs)]
    if exclude is not None and Path(exclude).is_dir():
        skip = Path(exclude).resolve()
        out = [p for p in out if isinstance(p, str) or skip not in p.resolve().parents]
        if not out:
            raise FileNotFoundError(f"no input shards outside the output folder {exclude}")
    names: dict[str, Path | str] = {}
    for p in out:
        name = output_name_for(p)
        if name in names:
            raise ValueError(f"input shards {names[name]} and {p} would both be written to {name}; rename one")
        names[name] = p
    return out


def resolve_rank(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """(rank, world_size) from the arguments, else from $RANK / $WORLD_SIZE (torchrun, Slurm wrappers...), else (0, 1)."""
    rank = env_int("RANK", 0) if rank is None else rank
    world_size = env_int("WORLD_SIZE", 1) if world_size is None else world_size
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    return rank, world_size


def shards_for_rank(shards: Sequence[Any], rank: int, world_size: int) -> list[Any]:
    """Shard i goes to rank i % world_size: disjoint, deterministic, and the union is everything."""
    return list(shards[rank::world_size])


# ---------------------------------------------------------------------- model
def load_tokenizer(
    model: Tokenizer | str | os.PathLike[str] | None = None,
    *,
    device: str | torch.device | None = None,
    batch_size: int = 32,
    precision: str = "fp32",
) -> tuple[Tokenizer, str]:
    """(Tokenizer, model id for the manifest) from a Tokenizer, a folder / Hub id, or None (the default model)."""
    from vqtok.tokenizer import Tokenizer, model_id

    if isinstance(model, Tokenizer):
        if device is not None:
            model.to(device)
        return model, "<in-memory Tokenizer>"
    tok = Tokenizer.load(model, device=device, batch_size=batch_size, precision=precision)
    return tok, model_id(model)  # "default@v1" for the built-in tokenizer


# ---------------------------------------------------------------------- manifest
@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """An exclusive flock on ``folder/.manifest.lock`` (no-op where flock does not exist)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(folder / _LOCK_NAME, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


@contextlib.contextmanager
def run_lock(output: str | os.PathLike[str], rank: int = 0, world_size: int = 1) -> Iterator[None]:
    """Hold byte ``rank`` of ``output/.run.lock`` (an exclusive, non-blocking POSIX record lock) for a
    run: a second run of the same rank on the same folder is refused in one line (it would delete the
    first one's temporary files); the other ranks of a run lock other bytes. No-op without fcntl."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    path = Path(output) / _RUN_LOCK_NAME
    with open(path, "a+") as fh:
        try:
            fcntl.lockf(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB, 1, rank)
        except OSError as err:
            if err.errno not in (errno.EACCES, errno.EAGAIN):
                raise
            where = f" (rank {rank} of {world_size})" if world_size > 1 else ""
            raise ValueError(
                f"another pretokenize run{where} is writing to {output} (it holds {path.name}); "
                "wait for it to end, or use another output folder"
            ) from None
        try:
            yield
        finally:
            fcntl.lockf(fh.fileno(), fcntl.LOCK_UN, 1, rank)


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _read_manifest(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); delete it to start over") from None


def _continue_hint(manifest: dict[str, Any]) -> str:
    """``"continue with --model default@v1, or "`` when a shipped default tokenizer version made the folder's
    tokens (``"default"`` moves to newer versions; manifests written before versioning say ``"default"``)."""
    from vqtok.tokenizer import DEFAULT_NAME, DEFAULT_VERSIONS, Tokenizer, is_default_name

    name, precision = manifest.get("model"), manifest.get("precision", "fp32")
    if not isinstance(name, str) or not is_default_name(name) or precision not in ("fp32", "bf16", "fp16"):
        return ""
    candidates = [name] if "@" in name else [f"{DEFAULT_NAME}@{v}" for v in reversed(DEFAULT_VERSIONS)]
    for candidate in candidates:  # only on this error path: load each and compare the fingerprints
        try:
            tok = Tokenizer.from_pretrained(candidate, precision=precision)
        except (ValueError, FileNotFoundError):
            continue
        if fingerprint_matches(tok, manifest.get("model_fingerprint")):
            flags = f"model={candidate!r}" + (f", precision={precision!r}" if precision != "fp32" else "")
            return f"continue with {flags} (Tokenizer.default({candidate.partition('@')[2]!r})), or "
    return ""


def prepare_output(
    output: str | os.PathLike[str],
    tokenizer: Tokenizer,
    *,
    model_id: str = "<in-memory Tokenizer>",
    size: int | None = 256,
    keep: Sequence[str] = DEFAULT_KEEP,
    inputs: Any = "",
    fingerprint: str | None = None,
    decode: str = "exact",
    exif_transpose: bool = False,
) -> dict[str, Any]:
    """Create ``output/manifest.json`` (first caller wins) or check that it was made by this model, size, decode
    mode and EXIF orientation rule.

    Raises ValueError when the folder belongs to another model or size. Returns the manifest; its
    ``"model_fingerprint"`` is the one to tag shards with (a folder made by vqtok 0.1 keeps its own,
    :func:`~vqtok.pipeline._naming.legacy_fingerprint`). Call this once before dispatching
    :func:`tokenize_shard` tasks yourself (e.g. with Ray).
    """
    folder = Path(output)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"output {folder} exists and is not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    fingerprint = fingerprint or model_fingerprint(tokenizer)
    path = folder / MANIFEST_NAME
    with _locked(folder):
        if not path.exists():
            # what pretokenize puts in an output folder before its manifest: locks and the fetch folder
            foreign = sorted(p.name for p in folder.iterdir() if p.name not in (_LOCK_NAME, _RUN_LOCK_NAME, INCOMING_DIR))
            if foreign:
                raise ValueError(
                    f"output folder {folder} is not empty ({listing(foreign, 3)}) and has no {MANIFEST_NAME}: "
                    "it is not a pretokenize output folder, and its files could be overwritten; "
                    "choose a new or empty folder"
                )
            # this run's identity; decode and EXIF settings are recorded only when not the defaults
            extra: dict[str, Any] = {"decode": decode} if decode != "exact" else {}
            if exif_transpose:
                extra["exif_transpose"] = True
            layout = tokenizer.layout(size)
            manifest = {
                **extra,
                "format": MANIFEST_FORMAT,
                "model": model_id,
                "model_fingerprint": fingerprint,
                "config_hash": tokenizer.config.hash(),
                "config": tokenizer.config.to_dict(),
                "precision": getattr(tokenizer, "precision", "fp32"),
                "model_type": tokenizer.model_type,
                "layout": layout.to_dict(),
                "codebook_size": int(layout.codebook_size),
                "ids_dtype": layout.storage_dtype.name,
                "size": size,
                "keep": list(keep),
                "input": inputs,
                "shards_done": [],
                "totals": dict.fromkeys(_TOTALS, 0),
            }
            _write_json_atomic(path, manifest)
            return manifest
        manifest = _read_manifest(path)
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"{path} is not a vqtok pretokenize manifest; choose an empty output folder")
    if manifest.get("model_fingerprint") != fingerprint and not fingerprint_matches(tokenizer, manifest.get("model_fingerprint"), current=fingerprint):
        raise ValueError(
            f"{folder} holds tokens of another model ({manifest.get('model')!r}, fingerprint "
            f"{manifest.get('model_fingerprint')}, config hash {manifest.get('config_hash')}); this run's model "
            f"{model_id!r} has fingerprint {fingerprint} (config hash {tokenizer.config.hash()}). "
            f"Token ids of different models must not be mixed: {_continue_hint(manifest)}use another output folder"
        )
    if manifest.get("size") != size:
        raise ValueError(
            f"{folder} holds tokens made at size {manifest.get('size')}, this run uses size {size}; "
            "use the same size or another output folder"
        )
    if manifest.get("decode", "exact") != decode:
        raise ValueError(
            f"{folder} holds tokens of images decoded {manifest.get('decode', 'exact')!r}, this run decodes {decode!r}; "
            "the ids differ slightly: use the same decode mode or another output folder"
        )
    if bool(manifest.get("exif_transpose", False)) != exif_transpose:
        made, now = ("turned upright by EXIF", "ignoring EXIF") if manifest.get("exif_transpose") else ("ignoring EXIF", "turned upright by EXIF")
        raise ValueError(
            f"{folder} holds tokens of images {made} orientation, this run takes them {now} orientation; "
            "use the same exif_transpose setting or another output folder"
        )
    return manifest


def update_manifest(output: str | os.PathLike[str]) -> dict[str, Any]:
    """Refresh ``shards_done`` and ``totals`` of ``output/manifest.json`` from the shards' .json files.

    Runs under the folder's lock and reads every completed shard, so whichever rank finishes last
    leaves a manifest that lists all shards. The per-shard .json files stay the source of truth.
    """
    folder = Path(output)
    path = folder / MANIFEST_NAME
    with _locked(folder):
        manifest = _read_manifest(path)
        fp = manifest.get("model_fingerprint") if isinstance(manifest, dict) else None
        if not isinstance(fp, str):
            raise ValueError(f"{path} is not a vqtok pretokenize manifest (no model_fingerprint); delete it to start over")
        done: list[str] = []
        totals = dict.fromkeys(_TOTALS, 0)
        for stats_file in sorted(folder.glob("*.json")):
            st = read_shard_stats(stats_file)  # None for manifest.json (another format)
            if st is None or st.get("model_fingerprint") != fp:
                continue
            try:
                shard = st["shard"]
                counts = (1, int(st["samples_written"]), len(st["samples_failed"]), int(st.get("tokens", 0)))  # as totals
                complete = isinstance(shard, str) and (folder / shard).is_file()
            except (KeyError, TypeError, ValueError) as err:
                logger.warning("ignoring %s: %s", stats_file, reason(err))
                continue
            if not complete:
                continue
            done.append(shard)
            for key, count in zip(totals, counts):
                totals[key] += count
        manifest.update(shards_done=done, totals=totals)
        remove_stale_tmp(path)  # under the lock: no other rank is writing it
        _write_json_atomic(path, manifest)
    return manifest


# ---------------------------------------------------------------------- the run
class SampleFailure(NamedTuple):
    """A sample that was not tokenized (also in its shard's .json)."""

    shard: str  # the token shard's file name
    key: str  # the sample's key (``<rest of shard>`` for the unreadable tail of a tar)
    reason: str


class FetchFailure(NamedTuple):
    """A remote shard that could not be fetched (its shard has no output; a re-run retries it)."""

    shard: str  # the remote spec
    reason: str


@dataclass
class RunResult:
    """Outcome of :func:`pretokenize` on this rank."""

    output: Path
    rank: int
    world_size: int
    shards: list[ShardStats]  # this rank's shards, in order (skipped ones included, skipped=True)
    seconds: float
    failures: list[SampleFailure] = field(default_factory=list)  # every failed sample of this rank's shards
    fetch_failures: list[FetchFailure] = field(default_factory=list)  # shards left undone: not fetched (or, on Ray, failed)

    @property
    def samples_written(self) -> int:
        return sum(s.samples_written for s in self.shards)

    @property
    def samples_failed(self) -> int:
        return sum(s.num_failed for s in self.shards)

    @property
    def samples_total(self) -> int:
        return self.samples_written + self.samples_failed

    @property
    def error_rate(self) -> float:
        return self.samples_failed / self.samples_total if self.samples_total else 0.0

    @property
    def shards_processed(self) -> int:
        return sum(not s.skipped for s in self.shards)

    @property
    def images_per_second(self) -> float:
        n = sum(s.num_samples for s in self.shards if not s.skipped)
        return n / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        where = f" (rank {self.rank} of {self.world_size})" if self.world_size > 1 else ""
        skipped = len(self.shards) - self.shards_processed
        return (
            f"pretokenize{where}: {len(self.shards)} shards ({self.shards_processed} done now, {skipped} already complete), "
            f"{self.samples_written} samples written, {self.samples_failed} failed ({100 * self.error_rate:.2f}%), "
            f"{self.images_per_second:.1f} img/s, {self.seconds:.1f} s -> {self.output}"
            + (f"; {len(self.fetch_failures)} shard(s) left undone (not fetched or failed)" if self.fetch_failures else "")
        )


class _Progress(Progress):
    """Progress over images (:mod:`vqtok._progress`'s rule) with an estimated total (known counts + mean per shard × shards not yet read)."""

    def __init__(self, enabled: bool, pending_shards: int) -> None:
        super().__init__("pretokenize", unit="img", enabled=enabled)
        self.pending, self.known, self.indexed = pending_shards, 0, 0

    def _retotal(self) -> None:
        if not self.indexed:
            return
        rest = max(0, self.pending - self.indexed)
        self.set_total(self.known + round(self.known / self.indexed * rest))

    def on_index(self, n: int) -> None:
        self.known += n
        self.indexed += 1
        self._retotal()

    def skipped(self) -> None:
        self.pending -= 1
        self._retotal()


def _run_jobs(
    jobs: Sequence[tuple[Path | str, Path]],
    tokenize: Callable[[list[tuple[Path, Path]]], Iterator[ShardStats]],
    incoming: Path,
    *,
    fingerprint: str,
    size: int | None,
    failures: list[FetchFailure],
) -> Iterator[ShardStats]:
    """Stats of every job, in order. Runs of local shards go to ``tokenize`` together (one
    DataLoader); each remote shard not yet complete is fetched into ``incoming`` (the next one
    downloads while the current one is tokenized), tokenized, and its copy deleted. A shard whose
    fetch fails is appended to ``failures`` and left without output."""
    remote_todo = [
        i for i, (src, dst) in enumerate(jobs) if isinstance(src, str) and completed_output(dst, fingerprint, size) is None
    ]
    if incoming.is_dir():  # copies left by a crashed run of this rank (its shards only: others may be fetching)
        for src, _ in jobs:
            if isinstance(src, str):
                (incoming / shard_name(src)).unlink(missing_ok=True)
                remove_stale_tmp(incoming / shard_name(src))
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vqtok-fetch")
    futures: dict[int, Future[Path]] = {}

    def prefetch(after: int) -> None:
        nxt = next((i for i in remote_todo if i > after and i not in futures), None)
        if nxt is not None:
            futures[nxt] = pool.submit(fetch, str(jobs[nxt][0]), incoming)

    try:
        prefetch(-1)
        run: list[tuple[Path, Path]] = []
        for i, (src, dst) in enumerate(jobs):
            if isinstance(src, Path):
                run.append((src, dst))
                continue
            if run:
                yield from tokenize(run)
                run = []
            if i not in futures:  # complete already
                done = completed_output(dst, fingerprint, size)
                assert done is not None
                yield done
                continue
            prefetch(i)
            try:
                local = futures.pop(i).result()
            except Exception as err:  # noqa: BLE001 - a failed download must not stop the other shards
                logger.error("could not fetch %s: %s: %s (its shard is left undone)", src, type(err).__name__, err)
                failures.append(FetchFailure(src, reason(err)))
                continue
            try:
                yield from tokenize([(local, dst)])
            finally:
                local.unlink(missing_ok=True)
        if run:
            yield from tokenize(run)
    finally:
        # The (empty) folder stays: other ranks may be fetching into it.
        pool.shutdown(wait=False, cancel_futures=True)


def pretokenize(
    input: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    *,
    model: Tokenizer | str | os.PathLike[str] | None = None,
    options: TokenizeOptions | None = None,
    device: str | None = None,
    precision: str = "fp32",
    max_error_rate: float | None = 0.01,
    rank: int | None = None,
    world_size: int | None = None,
    progress: bool = True,
    **changes: Any,
) -> RunResult:
    """Tokenize every input shard into ``output`` (one token shard + one .json per input shard).

    ``model``: a :class:`~vqtok.Tokenizer`, a model folder or Hub id, or None for ``Tokenizer.default()``.
    ``options`` / keyword arguments: :class:`~vqtok.pipeline.TokenizeOptions` (``size``,
    ``batch_size``, ``workers`` (default: CPUs - 1, at most 4), ``keep``, ...).
    Rank and world size come from the arguments or $RANK/$WORLD_SIZE; this process handles input
    shards ``i`` with ``i % world_size == rank``. Finished shards are skipped, so a run can be
    restarted after any crash. When more than ``max_error_rate`` of this rank's samples failed,
    :class:`ErrorRateExceeded` is raised at the end (after all outputs are written).
    """
    t0 = time.perf_counter()
    if max_error_rate is not None and not 0.0 <= max_error_rate <= 1.0:
        raise ValueError(f"max_error_rate must be in [0, 1], got {max_error_rate}")
    opts = TokenizeOptions.make(options, **changes)
    if opts.workers is None:
        opts = dataclasses.replace(opts, workers=min(4, max(0, (os.cpu_count() or 1) - 1)))
    rank, world_size = resolve_rank(rank, world_size)
    shards = expand_inputs(input, exclude=output)
    mine = shards_for_rank(shards, rank, world_size)
    # a bare "cuda" under a launcher with several local processes is cuda:$LOCAL_RANK
    run_device = None if device is None else resolve_device(device)
    tokenizer, model_id = load_tokenizer(model, device=run_device, batch_size=opts.batch_size, precision=precision)
    folder, fingerprint = open_output(output, input, tokenizer, model_id, opts)
    with run_lock(folder, rank, world_size):  # a second run of this rank on this folder is refused
        logger.info("rank %d/%d: %d of %d shards, model %s (%s)", rank, world_size, len(mine), len(shards), model_id, fingerprint)

        bar = _Progress(progress and rank == 0, len(mine))
        results: list[ShardStats] = []
        jobs = [(src, folder / output_name_for(src)) for src in mine]
        fetch_failures: list[FetchFailure] = []
        run_opts = dataclasses.replace(opts, fingerprint=fingerprint, on_samples=bar.update, on_index=bar.on_index)
        stream = _run_jobs(jobs, lambda run: tokenize_shards(run, tokenizer, run_opts), folder / INCOMING_DIR,
                           fingerprint=fingerprint, size=opts.size, failures=fetch_failures)
        try:
            for stats in stream:
                if stats.skipped:
                    bar.skipped()
                results.append(stats)
                bar.set_postfix(f"shards {len(results)}/{len(mine)}")
        finally:
            stream.close()  # after an exception here (Ctrl-C) the DataLoader workers stop now, not when it is collected
            bar.close()
        return finish_run(folder, results, t0, fetch_failures, max_error_rate, rank, world_size)


def open_output(
    output: str | os.PathLike[str],
    input: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    tokenizer: Tokenizer,
    model_id: str,
    opts: TokenizeOptions,
) -> tuple[Path, str]:
    """Check ``opts`` against the model and create (or check) ``output``'s manifest -> (folder, model fingerprint).

    The first step of :func:`pretokenize` and of the Ray engine.
    """
    opts.check(tokenizer)
    fingerprint = opts.fingerprint or model_fingerprint(tokenizer)
    inputs = os.fspath(input) if isinstance(input, (str, os.PathLike)) else list(map(os.fspath, input))
    manifest = prepare_output(
        output, tokenizer, model_id=model_id, size=opts.size, keep=opts.keep, inputs=inputs, fingerprint=fingerprint,
        decode=opts.decode, exif_transpose=opts.exif_transpose,
    )
    return Path(output), str(manifest["model_fingerprint"])  # a 0.1 folder continues under its own fingerprint


def finish_run(
    folder: Path, shards: list[ShardStats], t0: float, undone: list[FetchFailure], max_error_rate: float | None,
    rank: int = 0, world_size: int = 1, *, error: type[ShardsNotFetched] = ShardsNotFetched,
) -> RunResult:
    """Refresh ``folder``'s manifest and log the summary of the run begun at ``t0`` (every failed sample of
    ``shards`` listed); then raise ``error`` when shards were left ``undone``, or :class:`ErrorRateExceeded`
    above ``max_error_rate``; else return the :class:`RunResult`."""
    update_manifest(folder)
    result = RunResult(output=folder, rank=rank, world_size=world_size, shards=shards, seconds=time.perf_counter() - t0,
                       failures=[SampleFailure(s.shard, f["key"], f["reason"]) for s in shards for f in s.samples_failed],
                       fetch_failures=undone)
    logger.info(result.summary())
    if result.fetch_failures:
        raise error(result)
    if max_error_rate is not None and result.error_rate > max_error_rate:
        raise ErrorRateExceeded(result, max_error_rate)
    return result

