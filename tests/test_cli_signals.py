"""Issue 13 items 6 and 7: SIGTERM is handled like Ctrl-C, DataLoader workers die with their parent,
and a closed stdout pipe (``vqtok ... | head``) ends quietly. Real subprocesses throughout."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_pipeline import good_samples, tiny_tokenizer, write_tar

ROOT = Path(__file__).resolve().parents[1]

# pretokenize with every block slowed down, so that a signal surely arrives mid-run; WORKER_SLEEP
# seconds per sample in the DataLoader worker (a worker busy elsewhere, deaf to its parent's death).
SLOW_PRETOKENIZE = """
import os, sys, time
import vqtok.pipeline.shards as shards
from vqtok.pipeline._reading import BlockStream
real = shards._write_block
def slow(*args, **kwargs):
    time.sleep(0.3)
    return real(*args, **kwargs)
shards._write_block = slow
real_prepare = BlockStream._prepare
def slow_prepare(self, *args, **kwargs):
    time.sleep(float(os.environ.get("WORKER_SLEEP", "0")))
    return real_prepare(self, *args, **kwargs)
BlockStream._prepare = slow_prepare
from vqtok.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return env


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _start_pretokenize(
    tmp_path: Path, worker_sleep: float = 0.0, *, new_session: bool = False, size: int = 64, batch: int = 2
) -> tuple[subprocess.Popen[str], Path, list[int]]:
    data = tmp_path / "data"
    data.mkdir()
    for s in range(2):
        write_tar(data / f"train-{s:06d}.tar", good_samples(s, n=12))
    model = tmp_path / "model"
    tiny_tokenizer().save_pretrained(model)
    out = tmp_path / "out"
    argv = ["pretokenize", "--model", str(model), "--input", str(data / "train-{000000..000001}.tar"), "--out", str(out),
            "--size", str(size), "--batch-size", str(batch), "--workers", "1", "--no-progress", "--device", "cpu"]
    env = dict(_env(), WORKER_SLEEP=str(worker_sleep))
    proc = subprocess.Popen([sys.executable, "-c", SLOW_PRETOKENIZE, *argv], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=new_session)
    deadline = time.monotonic() + 60
    workers: list[int] = []
    while time.monotonic() < deadline and proc.poll() is None:
        workers = [c for c in _children(proc.pid) if _alive(c)]
        if workers and (worker_sleep or any(out.glob("*.tmp-*"))):  # a worker runs (and a shard is being written)
            break
        time.sleep(0.05)
    assert workers, f"no DataLoader worker appeared: {proc.communicate()}"
    return proc, out, workers


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("to_group", [False, True], ids=["parent", "process-group"])
def test_sigterm_stops_pretokenize_cleanly(tmp_path: Path, to_group: bool) -> None:
    # to the process group: as Slurm's scancel, `kill -- -PGID` or `pkill -f` deliver it, workers included
    proc, out, workers = _start_pretokenize(tmp_path, new_session=to_group)
    if to_group:
        os.killpg(proc.pid, signal.SIGTERM)
    else:
        proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, (proc.returncode, stderr)
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1].startswith("vqtok pretokenize: terminated")
    assert not list(out.rglob("*.tmp-*")), "temporary files left behind"
    deadline = time.monotonic() + 10
    while any(_alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(w) for w in workers)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; PR_SET_PDEATHSIG")
def test_workers_die_with_a_killed_parent(tmp_path: Path) -> None:
    proc, _, workers = _start_pretokenize(tmp_path, worker_sleep=60.0)
    time.sleep(0.5)  # the worker is inside its (long) sample preparation
    proc.kill()  # SIGKILL: the parent gets no chance to stop its workers
    proc.communicate(timeout=30)
    deadline = time.monotonic() + 2.0  # PR_SET_PDEATHSIG is immediate; torch's own watchdog takes >= 5 s
    while any(_alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.02)
    survivors = [w for w in workers if _alive(w)]
    for w in survivors:  # do not leave them running when the assertion fails
        os.kill(w, signal.SIGKILL)
    assert not survivors


@pytest.mark.parametrize("argv", [["info"], ["info", "--json"]])
def test_closed_stdout_pipe_is_quiet(argv: list[str]) -> None:
    read, write = os.pipe()
    os.close(read)  # like `| head` that has already exited
    proc = subprocess.run([sys.executable, "-m", "vqtok", *argv], env=_env(), stdout=write, stderr=subprocess.PIPE,
                          text=True, timeout=120)
    os.close(write)
    assert proc.returncode in (0, 141), proc.stderr
    assert proc.stderr == "", proc.stderr


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigterm_to_the_process_group_stops_train_cleanly(tmp_path: Path) -> None:
    # `vqtok train` with a DataLoader worker, SIGTERM to the whole group (Slurm's scancel): the worker
    # leaves it to the trainer, which stops in one line; a worker killed by it was a traceback
    # ("DataLoader worker (pid N) is killed by signal: Terminated")
    from dataclasses import replace

    from tests.test_training_components import write_images
    from tests.test_training_loop import tiny_config

    images = write_images(tmp_path / "imgs", n=6)
    base = tiny_config()
    cfg = base.replace(steps=100000, val_every=100000, image_every=100000, checkpoint_every=100000,
                       data=replace(base.data, num_workers=1, crop_size=128))
    argv = ["train", "--data", str(images), "--config", str(cfg.to_yaml(tmp_path / "c.yaml")), "--out",
            str(tmp_path / "run"), "--no-progress"]
    proc = subprocess.Popen([sys.executable, "-m", "vqtok", "-v", *argv], env=_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    log = tmp_path / "run" / "log.jsonl"
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline and not (log.is_file() and log.stat().st_size):
        time.sleep(0.1)  # until steps are being logged: the worker runs
    workers = [c for c in _children(proc.pid) if _alive(c)]
    assert workers, f"no DataLoader worker: {proc.poll()}"
    os.killpg(proc.pid, signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, (proc.returncode, stderr[-2000:])
    assert "Traceback" not in stderr, stderr[-2000:]
    assert stderr.strip().splitlines()[-1].startswith("vqtok train: terminated")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("delay,second", [(0.0, None), (0.4, None), (1.0, None), (1.7, None), (0.2, 0.3), (0.8, 0.05)])
def test_ctrl_c_to_the_process_group_always_ends_pretokenize(tmp_path: Path, delay: float, second: float | None) -> None:
    # Ctrl-C in a terminal: SIGINT to the whole process group, workers included, at different moments of
    # the run, once or twice. A worker left blocked on its pipe (blocks larger than the pipe's buffer)
    # used to hang the exit-time join.
    proc, out, workers = _start_pretokenize(tmp_path, new_session=True, size=128, batch=6)
    time.sleep(delay)
    os.killpg(proc.pid, signal.SIGINT)
    if second is not None:
        time.sleep(second)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGINT)
    try:
        _, stderr = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"pretokenize hangs after Ctrl-C: {proc.communicate()[1][-2000:]}")
    if proc.returncode == 0:  # the run ended before the signal came
        return
    # -SIGINT: a second Ctrl-C during the exit, after "interrupted" (Python's own end on an uncaught one)
    assert proc.returncode in (130, -signal.SIGINT), (proc.returncode, stderr[-2000:])
    assert "Traceback" not in stderr, stderr[-2000:]
    assert stderr.strip().splitlines()[-1] == "vqtok: interrupted"
    assert not list(out.rglob("*.tmp-*")), "temporary files left behind"
    deadline = time.monotonic() + 10
    while any(_alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(w) for w in workers)
