"""vqtok.training: the training loop (tiny models, a few steps on synthetic images)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.test_training_components import write_images
from vqtok import VQGAN, Tokenizer
from vqtok.models.vqgan import VQGANConfig
from vqtok.training import CodebookConfig, TrainConfig, Trainer, train
from vqtok.training.config import DataConfig, LossConfig

TINY = VQGANConfig(
    ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), z_channels=16, embed_dim=4, n_embed=32,
    resolution=32, legacy_loss=False, l2_norm_codes=True,
)


def tiny_config(**changes: object) -> TrainConfig:
    base = TrainConfig(
        model=TINY,
        codebook=CodebookConfig(kmeans_batches=1, kmeans_iters=3, dead_after=2, restart_every=1, buffer_size=256),
        loss=LossConfig(perceptual_weight=0.0, disc_weight=0.8, disc_start=2, disc_ch=8, disc_layers=2),
        data=DataConfig(crop_size=32, num_workers=0, val_size=32, val_images=3),
        steps=6, batch_size=2, grad_accum=2, lr=1e-3, warmup_steps=2, ema_decay=0.9, precision="fp32",
        log_every=1, val_every=3, checkpoint_every=3, image_every=3, threads=1,
    )
    return base.replace(**changes)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_images(tmp_path_factory.mktemp("train") / "imgs", n=6)


def _params(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def _to_v01_names(run: Path) -> None:
    """Rewrite a run folder's train_config.yaml and checkpoint state.json with vqtok 0.1's key names."""
    import yaml

    def old(d: dict) -> dict:
        d = dict(d)
        d["bf16"] = {"fp32": "off", "bf16": "on", "auto": "auto"}[d.pop("precision")]
        d["ckpt_every"] = d.pop("checkpoint_every")
        return d

    cfg_file = run / "train_config.yaml"
    cfg_file.write_text(yaml.safe_dump(old(yaml.safe_load(cfg_file.read_text())), sort_keys=False).replace("bf16: 'off'", "bf16: off"))
    for state_file in (run / "checkpoints").glob("step-*/state.json"):
        state = json.loads(state_file.read_text())
        state_file.write_text(json.dumps({**state, "config": old(state["config"])}))


def test_exact_resume(tmp_path: Path, images: Path) -> None:
    cfg = tiny_config()
    one = train(cfg, str(images), tmp_path / "one", progress=False)
    # stop after 3 steps (a new Trainer, like a new process), then resume for the rest
    Trainer(cfg, str(images), tmp_path / "two", progress=False).train(steps=3)
    two = Trainer(cfg, str(images), tmp_path / "two", progress=False).train()
    assert one.steps == two.steps == 6
    a, b = _params(one.final), _params(two.final)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    # a run folder written by vqtok 0.1 (config keys bf16 / ckpt_every) resumes exactly: same layout, old names
    Trainer(cfg, str(images), tmp_path / "old", progress=False).train(steps=3)
    _to_v01_names(tmp_path / "old")
    old_cfg = TrainConfig.from_yaml(tmp_path / "old" / "train_config.yaml")
    assert old_cfg == cfg
    three = Trainer(old_cfg, str(images), tmp_path / "old", progress=False).train()
    c = _params(three.final)
    assert three.steps == 6 and all(torch.equal(a[k], c[k]) for k in a)
    # the adversarial loss was on (disc_start=2) and the log has train + val records
    records = [json.loads(line) for line in (tmp_path / "one" / "log.jsonl").read_text().splitlines()]
    assert any(r["kind"] == "train" and r["lambda"] > 0 for r in records)
    assert (tmp_path / "one" / "images" / "step-0000006.png").is_file()


def test_chroma_readout_trains_resumes_exactly_and_is_not_exported(tmp_path: Path, images: Path) -> None:
    cfg = tiny_config(steps=4, loss=LossConfig(perceptual_weight=0.0, disc_weight=0.0, chroma_readout_weight=4.0),
                      checkpoint_every=2, val_every=100, image_every=100)
    one = train(cfg, str(images), tmp_path / "one", progress=False)
    Trainer(cfg, str(images), tmp_path / "two", progress=False).train(steps=2)
    two = Trainer(cfg, str(images), tmp_path / "two", progress=False).train()
    a, b = _params(one.final), _params(two.final)
    assert a.keys() == b.keys() == set(VQGAN(TINY).state_dict())  # the head is not in the exported model
    assert all(torch.equal(a[k], b[k]) for k in a)
    heads = [load_file(str(run / "checkpoints" / "step-0000004" / "trainer.safetensors")) for run in (tmp_path / "one", tmp_path / "two")]
    assert {"readout.head.weight", "readout.head.bias"} <= heads[0].keys()
    assert torch.equal(heads[0]["readout.head.weight"], heads[1]["readout.head.weight"])
    assert all(r["readout"] > 0 for r in one.history if r["kind"] == "train")
    # switching the read-out off or on in a run that has checkpoints is refused, naming the setting
    off = cfg.replace(loss=LossConfig(perceptual_weight=0.0, disc_weight=0.0))
    with pytest.raises(ValueError, match="written with the chroma read-out, and this run has loss.chroma_readout_weight 0.0"):
        Trainer(off, str(images), tmp_path / "one", progress=False).train(steps=6)
    Trainer(off.replace(steps=2), str(images), tmp_path / "off", progress=False).train()
    with pytest.raises(ValueError, match="written without the chroma read-out"):
        Trainer(cfg, str(images), tmp_path / "off", progress=False).train()


def test_from_checkpoint_continues_another_run_as_a_new_one(tmp_path: Path, images: Path) -> None:
    """A run forked from another run's checkpoint with the same config is that run continued, bit for bit;
    with a longer schedule it follows the new learning-rate curve from the checkpoint's step."""
    cfg = tiny_config()
    one = train(cfg, str(images), tmp_path / "one", progress=False)
    Trainer(cfg, str(images), tmp_path / "two", progress=False).train(steps=3)
    step3 = tmp_path / "two" / "checkpoints" / "step-0000003"
    fork = train(cfg, str(images), tmp_path / "fork", progress=False, from_checkpoint=step3)
    assert fork.steps == 6 and [r["step"] for r in fork.history if r["kind"] == "train"][0] == 4
    a, b = _params(one.final), _params(fork.final)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (step3 / "state.json").is_file()  # the source run is not touched

    longer = cfg.replace(steps=8, total_steps=20, lr_schedule="cosine", min_lr=1e-4)
    run = Trainer(longer, str(images), tmp_path / "long", progress=False, from_checkpoint=step3)
    result = run.train(steps=5)
    lrs = [r["lr"] for r in result.history if r["kind"] == "train"]
    assert lrs == pytest.approx([run._lr(s) for s in (3, 4)]) and lrs[0] < cfg.lr
    # re-running the same command continues the new run from its own checkpoint, not from the fork point
    again = Trainer(longer, str(images), tmp_path / "long", progress=False, from_checkpoint=step3)
    assert again.train().steps == 8 and [r["step"] for r in again.history if r["kind"] == "train"][0] == 6

    no_ema = cfg.replace(ema_decay=0.0)
    with pytest.raises(ValueError, match="written with EMA weights, and this run has ema_decay 0.0"):
        Trainer(no_ema, str(images), tmp_path / "x", progress=False, from_checkpoint=step3).train()
    with pytest.raises(ValueError, match="different model config"):
        other = cfg.replace(model=VQGANConfig(**{**TINY.to_dict(), "n_embed": 64}))
        Trainer(other, str(images), tmp_path / "y", progress=False, from_checkpoint=step3).train()
    with pytest.raises(FileNotFoundError, match="not a complete training checkpoint"):
        Trainer(cfg, str(images), tmp_path / "z", progress=False, from_checkpoint=tmp_path / "one" / "final")
    with pytest.raises(ValueError, match="not both"):
        Trainer(cfg, str(images), tmp_path / "z", progress=False, from_checkpoint=step3, init_weights=one.final)


def test_exported_model_loads_in_tokenizer(tmp_path: Path, images: Path) -> None:
    cfg = tiny_config(steps=4, loss=LossConfig(perceptual_weight=0.0, disc_weight=0.0), ema_decay=0.0,
                      data=DataConfig(crop_size=32, num_workers=0, val_data=str(images), val_size=32, val_images=3))
    result = train(cfg, str(images), tmp_path / "run", progress=False)
    assert result.validation is not None and 0 < result.validation.usage <= 1 and result.validation.psnr > 0
    tok = Tokenizer.from_pretrained(result.final)
    ids = tok.encode(torch.rand(1, 3, 32, 32), size=None)
    assert ids.shape == (1, 16, 16) and int(ids.max()) < 32
    assert set(_params(result.final)) == set(tok.model.state_dict())  # no trainer state in the export
    # checkpoints are Tokenizer folders too
    latest = (tmp_path / "run" / "checkpoints" / "latest").read_text().strip()
    Tokenizer.from_pretrained(tmp_path / "run" / "checkpoints" / latest)


def test_vanilla_ema_bf16_and_fine_tune(tmp_path: Path, images: Path) -> None:
    vanilla = VQGANConfig(**{**TINY.to_dict(), "l2_norm_codes": False, "legacy_loss": True, "embed_dim": 16})
    cfg = tiny_config(model=vanilla, steps=2, grad_accum=1, precision="bf16", codebook=CodebookConfig(ema=True, kmeans_init=False, dead_after=0),
                      loss=LossConfig(perceptual_weight=0.0, disc_weight=0.0))
    first = train(cfg, str(images), tmp_path / "a", progress=False)
    second = Trainer(cfg, str(images), tmp_path / "b", progress=False, init_weights=first.final)
    torch.testing.assert_close(second.model.state_dict()["quantize.embedding.weight"], _params(first.final)["quantize.embedding.weight"])
    second.train(steps=1)


def test_cli_train(tmp_path: Path, images: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from vqtok.training.commands import add_commands

    cfg_path = tiny_config(steps=2, grad_accum=1, loss=LossConfig(perceptual_weight=0.0, disc_weight=0.0)).to_yaml(tmp_path / "c.yaml")
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers())
    out = tmp_path / "run"
    args = parser.parse_args(["train", "--data", str(images), "--out", str(out), "--config", str(cfg_path), "--no-progress"])
    assert args.func(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 2 and Path(summary["model"]).is_dir()
    args = parser.parse_args(["train", "--data", str(images), "--out", str(out), "--config", str(cfg_path), "--no-resume"])
    with pytest.raises(ValueError, match="already holds a run"):
        args.func(args)
    # a new run from the checkpoint: the source run's config unless --set changes it
    fork = tmp_path / "fork"
    args = parser.parse_args(["train", "--data", str(images), "--out", str(fork), "--from-checkpoint",
                              str(out / "checkpoints" / "step-0000002"), "--set", "steps=3", "--no-progress"])
    assert args.func(args) == 0 and json.loads(capsys.readouterr().out)["steps"] == 3
    assert TrainConfig.from_yaml(fork / "train_config.yaml") == TrainConfig.from_yaml(cfg_path).replace(steps=3)
    args = parser.parse_args(["train", "--data", str(images), "--out", str(tmp_path / "x"), "--from-checkpoint", str(out / "final")])
    with pytest.raises(FileNotFoundError, match=r"^--from-checkpoint '.*final' is not a complete training checkpoint"):
        args.func(args)
    args = parser.parse_args(["train", "--data", str(images), "--out", str(tmp_path / "x"), "--from-checkpoint", str(out), "--init", str(out / "final")])
    with pytest.raises(ValueError, match="give --init .* or --from-checkpoint"):
        args.func(args)
    args = parser.parse_args(["train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "x"), "--config", str(cfg_path)])
    with pytest.raises(FileNotFoundError):
        args.func(args)


def test_cli_set_overrides() -> None:
    from vqtok.training.commands import apply_overrides

    cfg = apply_overrides(TrainConfig(), ["data.max_zoom_out=8", "steps=12", "precision=bf16", "model.n_embed=256"])
    assert cfg.data.max_zoom_out == 8 and cfg.steps == 12 and cfg.precision == "bf16" and cfg.model.n_embed == 256
    old = apply_overrides(TrainConfig(), ["bf16=off", "ckpt_every=7"])  # vqtok 0.1 names still work
    assert old.precision == "fp32" and old.checkpoint_every == 7
    with pytest.raises(ValueError, match="unknown config key"):
        apply_overrides(TrainConfig(), ["data.zoom=8"])


def test_cli_resume_without_config_uses_the_run_folder(tmp_path: Path, images: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 13 item 2: re-running with --data/--out continues the run with its own train_config.yaml
    (a discriminator unlike the default recipe's: the default config gave a state_dict error)."""
    from vqtok.cli import main

    cfg_path = tiny_config(steps=2, grad_accum=1, checkpoint_every=2).to_yaml(tmp_path / "c.yaml")
    out = tmp_path / "run"
    base = ["train", "--data", str(images), "--out", str(out), "--no-progress"]
    assert main([*base, "--config", str(cfg_path)]) == 0
    capsys.readouterr()
    _to_v01_names(out)  # a run folder written by vqtok 0.1 (bf16, ckpt_every) still continues
    assert main([*base, "--steps", "3"]) == 0
    assert json.loads(capsys.readouterr().out)["steps"] == 3
    for extra, named in ((["--lr", "0.5"], "--lr 0.5 sets lr to 0.5, but the run in"),
                         (["--set", "loss.disc_ch=16"], "--set loss.disc_ch=16 sets loss.disc_ch to 16"),
                         (["--config", str(tiny_config(steps=4, batch_size=3).to_yaml(tmp_path / "d.yaml"))],
                          f"--config {tmp_path / 'd.yaml'} sets batch_size to 3")):
        assert main([*base, "--steps", "4", *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and named in err[0], err
    assert main([*base, "--steps", "4", "--config", str(cfg_path)]) == 0  # same config, longer: fine
