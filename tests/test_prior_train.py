"""vqtok.prior.train and the prior CLI: overfitting, exact resume, configs, commands."""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from vqtok.hub import WEIGHTS_NAME
from vqtok.prior import GPT, PriorTrainConfig, load_train_config, train
from vqtok.prior.commands import add_commands, parse_grid
from vqtok.prior.train import StepSampler, iter_log, lr_at


pytestmark = pytest.mark.usefixtures("one_thread")


TINY_MODEL = {"n_layer": 2, "n_head": 2, "n_embd": 32, "dropout": 0.0}


def write_corpus(root: Path, grids: np.ndarray, labels: list[int | None], *, codebook_size: int = 16) -> str:
    """One shard holding `grids` (N, h, w) with optional labels."""
    root.mkdir(parents=True, exist_ok=True)
    with wds.TarWriter(str(root / "tok-000000.tar")) as w:
        for k, (g, lab) in enumerate(zip(grids, labels, strict=True)):
            buf = io.BytesIO()
            np.save(buf, g.astype(np.uint16))
            sample = {"__key__": f"{k:06d}", "ids.npy": buf.getvalue()}
            if lab is not None:
                sample["cls"] = str(lab).encode()
            w.write(sample)
    (root / "tok-000000.json").write_text(json.dumps({"codebook_size": codebook_size}))
    return str(root / "tok-{000000..000000}.tar")


@pytest.fixture
def corpus(tmp_path: Path) -> tuple[str, np.ndarray]:
    grids = np.random.default_rng(0).integers(0, 16, size=(4, 4, 4))
    return write_corpus(tmp_path / "tokens", grids, [0, 1, 2, 3]), grids


def test_overfit_tiny_corpus_and_reproduce_it(corpus: tuple[str, np.ndarray], tmp_path: Path) -> None:
    spec, grids = corpus
    cfg = PriorTrainConfig(
        tokens=spec,
        model=TINY_MODEL,
        steps=150,
        batch_size=8,
        lr=1e-2,
        warmup_steps=10,
        weight_decay=0.0,
        label_dropout=0.1,
        val_fraction=0.0,
        log_every=10,
        checkpoint_every=1000,
        precision="fp32",
        device="cpu",
    )
    result = train(cfg, out=tmp_path / "run", progress=False)
    assert result.steps == 150 and result.train_loss < 0.05, result
    model = GPT.from_pretrained(tmp_path / "run")
    assert model.config.vocab_size == 16 and model.config.n_classes == 4 and model.config.train_grid == (4, 4)
    ids = torch.from_numpy(grids).long()
    bits = -model.log_prob(ids, torch.arange(4)) / (16 * np.log(2))
    assert float(bits.max()) < 0.05  # each training grid is almost certain given its label
    samples = model.generate(4, labels=torch.arange(4), generator=torch.Generator().manual_seed(0))
    assert torch.equal(samples, ids)  # class k reproduces grid k
    # the null class (label dropout) learned the mixture: nearly all mass on the 4 grids
    assert float(model.log_prob(ids).exp().sum()) > 0.85
    log = list(iter_log(tmp_path / "run"))
    assert log[-1]["step"] == 150 and {"loss", "lr", "grad_norm", "bits_per_token", "tokens_per_s"} <= set(log[-1])


def test_resume_is_exact(corpus: tuple[str, np.ndarray], tmp_path: Path) -> None:
    spec, _ = corpus
    cfg = PriorTrainConfig(
        tokens=spec,
        model={**TINY_MODEL, "dropout": 0.1},
        steps=6,
        batch_size=4,
        grad_accum=2,
        lr=3e-3,
        warmup_steps=2,
        label_dropout=0.5,
        val_fraction=0.25,
        val_every=2,
        checkpoint_every=100,
        log_every=1,
        precision="fp32",
        device="cpu",
    )
    train(cfg, out=tmp_path / "full", progress=False)
    part = train(cfg, out=tmp_path / "split", progress=False, stop_after=4)
    assert part.steps == 4
    with pytest.raises(ValueError, match="already holds a run"):
        train(cfg, out=tmp_path / "split", progress=False, resume=False)
    done = train(cfg, out=tmp_path / "split", progress=False)  # continues from the checkpoint
    assert done.steps == 6 and done.val_bits_per_token is not None
    a = GPT.from_pretrained(tmp_path / "full").state_dict()
    b = GPT.from_pretrained(tmp_path / "split").state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    full_log = [r for r in iter_log(tmp_path / "full") if "loss" in r]
    split_log = [r for r in iter_log(tmp_path / "split") if "loss" in r]
    assert [r["loss"] for r in full_log] == [r["loss"] for r in split_log]


def test_run_folder_of_vqtok_0_1_resumes_exactly(corpus: tuple[str, np.ndarray], tmp_path: Path) -> None:
    """vqtok 0.1 kept one OUT/checkpoint/ (model, trainer_state.pt, rng_rank<r>.pt); it still resumes, bit-exact."""
    spec, _ = corpus
    cfg = PriorTrainConfig(tokens=spec, model={**TINY_MODEL, "dropout": 0.1}, steps=5, batch_size=4, warmup_steps=2,
                           label_dropout=0.5, val_fraction=0.0, log_every=1, precision="fp32", device="cpu")
    train(cfg, out=tmp_path / "full", progress=False)
    train(cfg, out=tmp_path / "old", progress=False, stop_after=3)
    # rewrite the checkpoint into the 0.1 layout
    new = tmp_path / "old" / "checkpoints" / "step-0000003"
    legacy = tmp_path / "old" / "checkpoint"
    legacy.mkdir()
    for name in (WEIGHTS_NAME, "config.json", "rng_rank0.pt"):
        (new / name).rename(legacy / name)
    state = {"step": 3, "optimizer": torch.load(new / "optim.pt", weights_only=True), "train_config": cfg.to_dict()}
    torch.save(state, legacy / "trainer_state.pt")
    shutil.rmtree(tmp_path / "old" / "checkpoints")
    with pytest.raises(ValueError, match="already holds a run"):
        train(cfg, out=tmp_path / "old", progress=False, resume=False)
    done = train(cfg, out=tmp_path / "old", progress=False)
    assert done.steps == 5 and done.step == 5  # .step: the 0.1 name
    a = GPT.from_pretrained(tmp_path / "full").state_dict()
    b = GPT.from_pretrained(tmp_path / "old").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not legacy.exists()  # superseded by checkpoints/step-0000005
    assert (tmp_path / "old" / "checkpoints" / "latest").read_text().strip() == "step-0000005"


def test_schedule_and_sampler() -> None:
    cfg = PriorTrainConfig(steps=100, warmup_steps=10, lr=1.0, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(10, cfg) == pytest.approx(1.0) and lr_at(100, cfg) == pytest.approx(0.1)
    assert lr_at(55, cfg) == pytest.approx(0.55)
    s = StepSampler(10, 4, seed=0)
    stream = torch.cat([s.indices(k) for k in range(5)])  # 20 samples = two epochs
    assert sorted(stream[:10].tolist()) == list(range(10)) and sorted(stream[10:].tolist()) == list(range(10))
    assert torch.equal(StepSampler(10, 4, seed=0).indices(3), s.indices(3))


def test_config_files(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text("steps: 7\nmodel:\n  n_layer: 3\nlr: 1.0e-3\n")
    cfg = load_train_config(tmp_path / "p.yaml")
    assert cfg.steps == 7 and cfg.model == {"n_layer": 3} and cfg.lr == 1e-3
    (tmp_path / "p.json").write_text(json.dumps({"batch_size": 4}))
    assert load_train_config(tmp_path / "p.json").batch_size == 4
    (tmp_path / "bad.json").write_text(json.dumps({"bach_size": 4}))
    with pytest.raises(ValueError, match="bach_size"):
        load_train_config(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="model config"):
        PriorTrainConfig(model={"n_layers": 2})
    with pytest.raises(ValueError, match="label_dropout"):
        PriorTrainConfig(label_dropout=1.5)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vqtok")
    add_commands(parser.add_subparsers(dest="command"))
    return parser


def run_cli(*argv: str) -> int:
    args = _parser().parse_args(list(argv))
    return args.func(args)


def test_cli_train_and_sample(
    corpus: tuple[str, np.ndarray], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from vqtok import Tokenizer, VQGANConfig

    spec, _ = corpus
    (tmp_path / "prior.json").write_text(
        json.dumps(
            {"model": TINY_MODEL, "batch_size": 4, "warmup_steps": 1, "val_fraction": 0.25, "checkpoint_every": 2}
        )
    )
    assert (
        run_cli(
            "train-prior",
            "--tokens",
            spec,
            "--out",
            str(tmp_path / "run"),
            "--config",
            str(tmp_path / "prior.json"),
            "--steps",
            "3",
            "--no-progress",
        )
        == 0
    )
    summary = capsys.readouterr().out
    assert "trained 3 steps" in summary
    assert "nats" not in summary and summary.count("bits/token") == 2  # one unit in the summary (issue 13)
    latest = (tmp_path / "run" / "checkpoints" / "latest").read_text().strip()
    assert (tmp_path / "run" / WEIGHTS_NAME).is_file() and latest == "step-0000003"
    assert {"state.json", "optim.pt", "rng_rank0.pt", WEIGHTS_NAME} <= {
        p.name for p in (tmp_path / "run" / "checkpoints" / latest).iterdir()
    }
    assert (tmp_path / "run" / "train_config.yaml").is_file()

    tok = Tokenizer.from_config(
        VQGANConfig(
            ch=32,
            ch_mult=(1, 2),
            num_res_blocks=1,
            attn_resolutions=(),
            z_channels=8,
            embed_dim=8,
            n_embed=16,
            resolution=32,
        )
    )
    tok.save_pretrained(tmp_path / "tok")
    out = tmp_path / "s.png"
    assert (
        run_cli(
            "sample",
            "--prior",
            str(tmp_path / "run"),
            "--tokenizer",
            str(tmp_path / "tok"),
            "--n",
            "3",
            "--label",
            "2",
            "--cfg-scale",
            "2",
            "--grid",
            "5x6",
            "--out",
            str(out),
            "--save-ids",
            str(tmp_path / "ids.npy"),
            "--no-progress",
        )
        == 0
    )
    assert np.load(tmp_path / "ids.npy").shape == (3, 5, 6)
    img = Image.open(out)  # f2 tokenizer: 10x12-pixel samples, 2 per row, 2 px padding
    assert img.size == (2 * 12 + 3 * 2, 2 * 10 + 3 * 2)

    with pytest.raises(ValueError, match="--label must be"):
        run_cli(
            "sample",
            "--prior",
            str(tmp_path / "run"),
            "--tokenizer",
            str(tmp_path / "tok"),
            "--label",
            "9",
            "--out",
            str(out),
        )
    big = Tokenizer.from_config(dataclasses.replace(tok.config, n_embed=32))
    big.save_pretrained(tmp_path / "tok32")
    with pytest.raises(ValueError, match="codes"):
        run_cli("sample", "--prior", str(tmp_path / "run"), "--tokenizer", str(tmp_path / "tok32"), "--out", str(out))
    with pytest.raises(FileNotFoundError):
        run_cli("train-prior", "--tokens", str(tmp_path / "none-{0..1}.tar"), "--out", str(tmp_path / "x"))
    assert parse_grid("32x16") == (32, 16) and parse_grid("8") == (8, 8)
    with pytest.raises(ValueError):
        parse_grid("3x")


def test_main_cli_integration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Through vqtok.cli.main: expected errors become one line and exit code 2."""
    import vqtok.cli

    if "vqtok.prior.commands" not in vqtok.cli.COMMAND_MODULES:
        monkeypatch.setattr(vqtok.cli, "COMMAND_MODULES", (*vqtok.cli.COMMAND_MODULES, "vqtok.prior.commands"))
    code = vqtok.cli.main(["train-prior", "--tokens", str(tmp_path / "t-{0..1}.tar"), "--out", str(tmp_path / "o")])
    assert code == 2 and "vqtok train-prior: error:" in capsys.readouterr().err
    code = vqtok.cli.main(["sample", "--prior", str(tmp_path / "nope"), "--tokenizer", "x", "--out", "s.png"])
    assert code == 2


def test_validation_keeps_val_max_samples(tmp_path: Path) -> None:
    """val_tokens larger than val_max_samples: validation uses exactly val_max_samples of them (the last)."""
    from vqtok.prior.train import _load_data

    rng = np.random.default_rng(1)
    train_spec = write_corpus(tmp_path / "train", rng.integers(0, 16, size=(4, 4, 4)), [None] * 4)
    val_grids = rng.integers(0, 16, size=(7, 4, 4))
    val_spec = write_corpus(tmp_path / "val", val_grids, [None] * 7)
    cfg = PriorTrainConfig(tokens=train_spec, val_tokens=val_spec, val_max_samples=5)
    _, val = _load_data(cfg, progress=False)
    assert val is not None and len(val) == 5
    np.testing.assert_array_equal(np.asarray(val.ids), val_grids[2:])
