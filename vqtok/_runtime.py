"""Run-time plumbing shared by the two trainers and the CLI (private: not part of the public API).

* :func:`resolve_device`: ``"auto"`` / ``"cpu"`` / ``"cuda"`` / ``"cuda:N"`` -> a checked ``torch.device``
  (one clear ``ValueError`` for an unknown name or a device this machine does not have).
* :func:`init_distributed`: ``torchrun``'s ``RANK`` / ``WORLD_SIZE`` -> :class:`Distributed`
  (:func:`env_int` reads them, for ``pretokenize``'s ranks too).
* :func:`autocast_dtype` / :func:`autocast`: the ``precision`` option (``auto`` | ``bf16`` | ``fp32``).
* :class:`CheckpointDir`: ``OUT/checkpoints/step-NNNNNNN/`` folders plus ``OUT/checkpoints/latest``;
  :func:`write_state` / :func:`read_state`: the step, train config and optimizer states in each.
* :func:`warmup_decay_lr`, :func:`wrap_ddp`: the learning-rate schedule and the DDP wrapper of both trainers.
* :func:`append_jsonl` / :func:`read_jsonl`: the ``OUT/log.jsonl`` of a run.
* :func:`read_config_file` / :func:`write_config_file`: training configs as YAML (or JSON).
* :func:`die_with_parent`: the ``worker_init_fn`` of every vqtok DataLoader (workers never outlive their parent).
* :func:`ray_actors` / :func:`actor_pool`: start Ray actors and keep them busy over a list of items
  (pretokenize's and eval's Ray engines).
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import math
import os
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vqtok._io import atomic_write, temporary_path

logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "bf16", "fp32")
LOG_NAME = "log.jsonl"
CONFIG_NAME = "train_config.yaml"
CHECKPOINTS_DIR = "checkpoints"
LATEST_NAME = "latest"


# ---------------------------------------------------------------------------- device
def env_int(name: str, default: int) -> int:
    """The integer in ``$name`` (torchrun's ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``), ``default`` when unset or empty."""
    value = os.environ.get(name, "")
    if value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"${name}={value!r} is not an integer") from None


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """The device a run or command uses; raises ``ValueError`` (one line) when it cannot be used here.

    ``"auto"`` (or None) is ``cuda:LOCAL_RANK`` when CUDA is available, else ``cpu``; a bare ``"cuda"``
    is ``cuda:LOCAL_RANK`` (``LOCAL_RANK`` from the environment under ``torchrun``, else 0).
    """
    rank = env_int("LOCAL_RANK", 0)
    if name is None or str(name) == "auto":
        return torch.device(f"cuda:{rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f"unknown device {str(name)!r}: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(name)!r} asked for, but CUDA is not available on this machine (use cpu or auto)")
        if device.index is None:
            device = torch.device(f"cuda:{rank}")
        if device.index >= torch.cuda.device_count():
            raise ValueError(f"device {str(device)!r} asked for, but this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {str(name)!r} asked for, but MPS is not available on this machine (use cpu or auto)")
    return device


# ---------------------------------------------------------------------------- worker processes
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(worker_id: int = 0) -> None:
    """``worker_init_fn`` for DataLoaders: the worker gets SIGKILL when its parent dies, whatever killed
    the parent (SIGKILL included, which leaves it no chance to stop its workers), and ignores SIGTERM
    (the parent handles it).

    Linux only (``prctl(PR_SET_PDEATHSIG)``); elsewhere a daemon thread polls the parent's pid once a
    second and exits the worker when it changed. A parent that died before the call is caught too.
    """
    import signal
    import sys
    import threading

    parent = os.getppid()
    # SIGTERM sent to the whole process group (Slurm's scancel, `kill -- -PGID`, `pkill -f`) reaches the
    # workers too: they leave it to the parent, whose clean stop (exit 143) shuts them down (as PyTorch's
    # workers do with Ctrl-C's SIGINT); a worker killed by it would turn that stop into a traceback.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0:
                if os.getppid() != parent:  # the parent died between fork and prctl
                    os._exit(1)
                return
        except (OSError, AttributeError):  # no libc prctl: fall back to polling
            pass

    def watch() -> None:
        import time

        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="vqtok-parent-watch", daemon=True).start()


# ---------------------------------------------------------------------------- distributed
@dataclass(frozen=True)
class Distributed:
    """This process's place in a ``torchrun`` job (rank 0 of 1 without one)."""

    rank: int = 0  # global rank
    world_size: int = 1  # processes in the job
    initialized_here: bool = False  # init_distributed created the process group (close() destroys it)

    @property
    def is_main(self) -> bool:
        """Rank 0 writes the files of the run."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            torch.distributed.barrier()

    def close(self) -> None:
        """Leave the process group this run joined; objects that hold it (a dropped DDP wrapper) are collected first."""
        if self.initialized_here and torch.distributed.is_initialized():
            gc.collect()
            torch.distributed.destroy_process_group()


def init_distributed(device: torch.device) -> Distributed:
    """Join the ``torchrun`` job of the environment (NCCL on CUDA, gloo on CPU); select ``device``."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if env_int("WORLD_SIZE", 1) <= 1:
        return Distributed()
    created = not torch.distributed.is_initialized()
    if created:
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Distributed(rank=torch.distributed.get_rank(), world_size=torch.distributed.get_world_size(), initialized_here=created)


def warmup_decay_lr(step: int, lr: float, warmup_steps: int, total_steps: int, min_lr: float, schedule: str = "cosine") -> float:
    """Learning rate of optimizer step ``step`` (0-based), for both trainers: linear warmup over ``warmup_steps``,
    then ``schedule`` ("constant", "cosine" or "linear") from ``lr`` down to ``min_lr`` at ``total_steps``."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return lr
    t = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))  # 0 -> 1 over the decay
    shape = 0.5 * (1.0 + math.cos(math.pi * t)) if schedule == "cosine" else 1.0 - t
    return min_lr + (lr - min_lr) * shape


def wrap_ddp(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` in DDP on ``device`` (both trainers), without the buffer broadcast before each forward:
    ``forward_sync_buffers=False`` where torch has it (``broadcast_buffers`` is deprecated there, with a
    FutureWarning on every rank), else ``broadcast_buffers=False``. Buffers are equal on every rank at
    construction (same seed), so the one sync at init that the new keyword keeps changes nothing; the
    VQGAN's codebook statistics are synchronised by CodebookTrainer itself, the prior has no buffers."""
    import inspect

    params = inspect.signature(nn.parallel.DistributedDataParallel.__init__).parameters
    no_sync = {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}
    return nn.parallel.DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None, **no_sync)


# ---------------------------------------------------------------------------- precision
def check_precision(value: str) -> str:
    if value not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {value!r}")
    return value


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 when asked for (``"bf16"``) or ``"auto"`` on a CUDA device with bf16; None = fp32.

    ``"auto"`` stays fp32 on CPUs (bf16 matmuls are emulated, slower than fp32 on most of them).
    ``"bf16"`` on a device without bf16 autocast falls back to fp32 with a warning.
    """
    check_precision(precision)
    if precision == "fp32":
        return None
    if device.type == "cuda":
        ok = torch.cuda.is_bf16_supported()
    elif precision == "auto":
        ok = False
    else:
        try:
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
                torch.ones(2, 2, device=device) @ torch.ones(2, 2, device=device)
            ok = True
        except (RuntimeError, TypeError):
            ok = False
    if precision == "bf16" and not ok:
        logger.warning("bf16 autocast is not supported on %s; training in fp32", device)
    return torch.bfloat16 if ok else None


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast`` to ``dtype`` on ``device``; a no-op context when ``dtype`` is None."""
    return contextlib.nullcontext() if dtype is None else torch.autocast(device_type=device.type, dtype=dtype)


# ---------------------------------------------------------------------------- checkpoints
class CheckpointDir:
    """``OUT/checkpoints/step-NNNNNNN/`` folders and ``OUT/checkpoints/latest`` (the newest complete one's name).

    A checkpoint is filled under a temporary name and renamed into place by :func:`vqtok._io.atomic_write`
    (:meth:`write`), then named in ``latest``, so a crash never leaves ``latest`` pointing at a partial
    folder. A folder counts as complete when it holds ``state.json`` (the file written last into it).
    """

    def __init__(self, out: str | os.PathLike[str], *, keep: int = 2) -> None:
        self.root = Path(out) / CHECKPOINTS_DIR
        self.keep = max(1, keep)  # newest step folders kept

    def path(self, step: int) -> Path:
        return self.root / f"step-{step:07d}"

    def latest(self) -> Path | None:
        """The newest complete checkpoint folder, or None."""
        pointer = self.root / LATEST_NAME
        if not pointer.is_file():
            return None
        path = self.root / pointer.read_text().strip()
        return path if (path / "state.json").is_file() else None

    @contextlib.contextmanager
    def write(self, step: int, *, main: bool = True) -> Iterator[Path]:
        """Yield the temporary folder of step ``step``'s checkpoint, to fill; on exit the main process
        renames it into place, points ``latest`` at it and deletes all but the ``keep`` newest.

        Every rank may write into the folder (``main=False`` ranks get the same path, created by the main
        rank: put a barrier between its creation and their writes). On an exception nothing is committed.
        """
        final = self.path(step)
        owner = f"step{step}"  # the same temporary name on every rank
        if not main:
            yield temporary_path(final, owner=owner)
            return
        with atomic_write(final, owner=owner) as tmp:
            tmp.mkdir(parents=True)
            yield tmp
        with atomic_write(self.root / LATEST_NAME) as pointer:
            pointer.write_text(final.name + "\n")
        steps = sorted(p for p in self.root.glob("step-???????") if p.is_dir())
        for old in steps[: max(0, len(steps) - self.keep)]:
            shutil.rmtree(old, ignore_errors=True)
        logger.info("checkpoint %s", final)


# ---------------------------------------------------------------------------- logs and config files
STATE_NAME = "state.json"  # step + train config of a checkpoint, written last (both trainers)
OPTIM_NAME = "optim.pt"  # optimizer state(s) of a checkpoint


def write_state(folder: Path, step: int, config: dict[str, Any], optim: Any) -> None:
    """The last files of either trainer's checkpoint: ``optim`` (optimizer states) as optim.pt, then
    state.json with the step and the train config (the file that marks the checkpoint complete)."""
    torch.save(optim, folder / OPTIM_NAME)
    (folder / STATE_NAME).write_text(json.dumps({"step": step, "config": config}, indent=1) + "\n")


def read_state(folder: Path) -> tuple[int, dict[str, Any], Any]:
    """(step, train config dict, optimizer states on the CPU) of a checkpoint written by :func:`write_state`."""
    state = json.loads((folder / STATE_NAME).read_text())
    return int(state["step"]), state["config"], torch.load(folder / OPTIM_NAME, map_location="cpu", weights_only=True)


def append_jsonl(path: str | os.PathLike[str], record: Mapping[str, Any]) -> None:
    """Append one JSON object as a line to ``path``."""
    with open(path, "a") as f:
        f.write(json.dumps(dict(record)) + "\n")


def read_jsonl(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """The JSON objects of a ``.jsonl`` file (blank lines skipped)."""
    with open(path) as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A training config mapping from YAML (``.yaml`` / ``.yml``) or JSON (any other suffix)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"training config {p} does not exist")
    text = p.read_text()
    if p.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ValueError(f"{p} is not valid YAML: {err}") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{p} is not valid JSON ({err}); YAML files need a .yaml/.yml suffix") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{p}: a training config is a mapping of keys, got {type(data).__name__}")
    return data


def write_config_file(path: str | os.PathLike[str], config: Mapping[str, Any]) -> Path:
    """Write ``config`` as YAML (keys in their given order; tuples become lists)."""
    import yaml

    p = Path(path)
    p.write_text(yaml.safe_dump(json.loads(json.dumps(dict(config))), sort_keys=False))
    return p


@contextlib.contextmanager
def ray_actors(ray: Any, cls: type, args: Sequence[Any], opts: Any, *, work: int, num_cpus: float, name: str = "") -> Iterator[list[Any]]:
    """Start Ray (at ``opts.address``) if needed and actors ``cls(*args)``, killed on exit.

    ``opts`` gives ``num_actors`` (None: as many as the cluster's GPUs / ``num_gpus``, else its CPUs /
    ``num_cpus``; at most ``work``, at least one), ``num_gpus`` and ``max_retries`` (restarts of a dead
    actor and retries of its task). ``name``: actors are named ``name-k`` so operators can find them.
    """
    if not ray.is_initialized():
        ray.init(address=opts.address, log_to_driver=False, logging_level=logging.WARNING)
    count = opts.num_actors
    if count is None:
        res = ray.cluster_resources()
        count = int(res.get("GPU", 0) // opts.num_gpus) if opts.num_gpus > 0 else int(res.get("CPU", 1) // num_cpus)
    remote = ray.remote(cls)
    actors = [
        remote.options(name=f"{name}-{k}" if name else None, num_cpus=num_cpus, num_gpus=opts.num_gpus,
                       max_restarts=opts.max_retries, max_task_retries=opts.max_retries).remote(*args)
        for k in range(max(1, min(count, work)))
    ]
    try:
        yield actors
    finally:
        for actor in actors:
            ray.kill(actor)


def actor_pool(ray: Any, actors: Sequence[Any], todo: Sequence[int], submit: Callable[[Any, int], Any]) -> Iterator[tuple[int, Any]]:
    """Keep every actor busy: ``submit(actor, i)`` starts item ``i`` on ``actor`` and returns its object ref.

    Yields ``(i, ref)`` as each item finishes (completion order) and then gives that actor the next
    item. The caller reads the result (``ray.get(ref)``, which raises for a failed task) and kills
    the actors. ``ray`` is the imported module (Ray is an optional extra).
    """
    queue = list(todo)
    pending: dict[Any, tuple[int, Any]] = {}  # object ref -> (item, actor)

    def start(actor: Any) -> None:
        if queue:
            i = queue.pop(0)
            pending[submit(actor, i)] = (i, actor)

    for actor in actors:
        start(actor)
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        i, actor = pending.pop(ready[0])
        yield i, ready[0]
        start(actor)
