"""vqtok._runtime (device, precision, checkpoint folders, logs, config files) and the CLI conventions built on it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vqtok._runtime import (
    CheckpointDir,
    append_jsonl,
    autocast_dtype,
    read_config_file,
    read_jsonl,
    resolve_device,
    write_config_file,
)
from vqtok.cli import build_parser, main

NO_CUDA = not torch.cuda.is_available()


def test_resolve_device(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == (torch.device("cpu") if NO_CUDA else torch.device("cuda:0"))
    assert resolve_device(None) == resolve_device("auto")
    for bad in ("gpu", "cuda:x", ""):
        with pytest.raises(ValueError, match="unknown device") as info:
            resolve_device(bad)
        assert "\n" not in str(info.value)
    if NO_CUDA:
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")
        monkeypatch.setenv("LOCAL_RANK", "1")
        assert resolve_device("auto") == torch.device("cpu")
    else:
        monkeypatch.setenv("LOCAL_RANK", "0")
        assert resolve_device("cuda") == torch.device("cuda:0")  # a bare cuda is cuda:$LOCAL_RANK
        with pytest.raises(ValueError, match="CUDA device"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")


def test_precision() -> None:
    cpu = torch.device("cpu")
    assert autocast_dtype("fp32", cpu) is None
    assert autocast_dtype("auto", cpu) is None  # bf16 on CPUs only when asked for
    assert autocast_dtype("bf16", cpu) == torch.bfloat16
    with pytest.raises(ValueError, match="precision must be one of auto, bf16, fp32"):
        autocast_dtype("on", cpu)


def test_checkpoint_dir(tmp_path: Path) -> None:
    ckpts = CheckpointDir(tmp_path, keep=2)
    assert ckpts.latest() is None
    for step in (1, 2, 3):
        with ckpts.write(step) as tmp:
            assert tmp.name == f"step-{step:07d}.tmp-step{step}" and tmp.is_dir()
            with ckpts.write(step, main=False) as other_rank:
                assert other_rank == tmp
            (tmp / "state.json").write_text("{}")
            assert ckpts.latest() != ckpts.path(step)  # not visible before commit
        assert (ckpts.path(step) / "state.json").is_file()
    with pytest.raises(RuntimeError), ckpts.write(4) as tmp:  # a failure inside commits nothing
        (tmp / "state.json").write_text("{}")
        raise RuntimeError("disk full")
    assert not ckpts.path(4).exists() and not tmp.exists()
    assert ckpts.latest() == ckpts.path(3)
    assert sorted(p.name for p in ckpts.root.iterdir()) == ["latest", "step-0000002", "step-0000003"]
    # a folder without its marker file (a crash inside it) is not a checkpoint
    (ckpts.path(3) / "state.json").unlink()
    assert ckpts.latest() is None


def test_jsonl_and_config_files(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    append_jsonl(log, {"step": 1, "loss": 0.5})
    append_jsonl(log, {"step": 2})
    assert list(read_jsonl(log)) == [{"step": 1, "loss": 0.5}, {"step": 2}]
    path = write_config_file(tmp_path / "c.yaml", {"b": 1, "a": (1, 2), "model": {"x": None}})
    assert path.read_text().splitlines()[0] == "b: 1"  # keys in order, tuples as lists
    assert read_config_file(path) == {"b": 1, "a": [1, 2], "model": {"x": None}}
    (tmp_path / "c.json").write_text(json.dumps({"steps": 3}))
    assert read_config_file(tmp_path / "c.json") == {"steps": 3}
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="mapping"):
        read_config_file(tmp_path / "list.yaml")
    (tmp_path / "bad.json").write_text("steps: 3")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_config_file(tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError):
        read_config_file(tmp_path / "none.yaml")


# One command of each family with a --device (convert/export only rewrite weights, on the CPU):
# an unusable --device is one line on stderr and exit status 2, before any model, data or output is touched.
FAMILIES = {
    "core": ["encode", "x.png", "--out", "ids.npy"],
    "pipeline": ["pretokenize", "--input", "shards-{0..1}.tar", "--out", "tokens"],
    "metrics": ["eval", "--data", "photos", "--out", "r.json"],
    "training": ["train", "--data", "photos", "--out", "run"],
    "prior-train": ["train-prior", "--tokens", "t-{0..1}.tar", "--out", "run"],
    "prior-sample": ["sample", "--prior", "p", "--out", "s.png"],
}


@pytest.mark.parametrize("device", ["gpu", pytest.param("cuda", marks=pytest.mark.skipif(not NO_CUDA, reason="has CUDA"))])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_bad_device_is_one_line_exit_2(
    family: str, device: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main([*FAMILIES[family], "--device", device]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"device '{device}'" in err and err.startswith("vqtok "), err
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_cli_conventions() -> None:
    parser = build_parser()
    pretok = parser.parse_args(["pretokenize", "--input", "a.tar", "--out", "o"])
    assert pretok.out == "o" and pretok.device == "auto" and pretok.batch_size == 32 and pretok.model is None
    assert parser.parse_args(["pretokenize", "--input", "a.tar", "--output", "o"]).out == "o"  # 0.1 spelling
    ev = parser.parse_args(["eval", "--data", "d"])
    assert ev.out == "report.json" and ev.device == "auto" and ev.batch_size == 8 and ev.precision == "fp32"
    assert parser.parse_args(["encode", "a.png", "-o", "x.npy"]).device == "auto"
    assert parser.parse_args(["sample", "--prior", "p", "--out", "s.png"]).device == "auto"
    convert = parser.parse_args(["convert", "taming", "m.ckpt", "--out", "m"])
    assert convert.func.__module__ == "vqtok.convert.commands"
    with pytest.raises(SystemExit):
        parser.parse_args(["pretokenize", "--input", "a.tar", "--batch-size", "0", "--out", "o"])
    sub = next(a for a in parser._actions if a.dest == "command").choices  # type: ignore[attr-defined]
    helps = sub["pretokenize"].format_help()
    assert "--out" in helps and "--output" not in helps  # the old spelling works but is not listed
