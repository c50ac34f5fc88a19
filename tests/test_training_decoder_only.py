"""TrainConfig.decoder_only: a phase that trains post_quant_conv + decoder only, so the ids never change."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import real_photos, training_photos
from tests.test_training_loop import tiny_config
from vqtok import Tokenizer
from vqtok.cli import main
from vqtok.models.vqgan import VQGANConfig
from vqtok.training import CodebookConfig, TrainConfig, Trainer, train
from vqtok.training.config import DataConfig, LossConfig
from vqtok.training.trainer import ENCODER_SIDE

FROZEN_PREFIXES = tuple(p + "." for p in ENCODER_SIDE)  # encoder., quant_conv., quantize.


def gan_config(**changes: object) -> TrainConfig:
    """A decoder-only PatchGAN phase: discriminator from step 0, EMA, and every codebook trick switched on
    (k-means, EMA codes, restarts each step), which decoder_only must all keep off."""
    base: dict[str, object] = dict(
        decoder_only=True, steps=4,
        codebook=CodebookConfig(ema=True, kmeans_init=True, kmeans_batches=1, dead_after=1, restart_every=1, buffer_size=64),
        loss=LossConfig(perceptual_weight=0.0, disc_weight=0.8, disc_start=0, disc_ch=8, disc_layers=2),
    )
    return tiny_config(**{**base, **changes})


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return training_photos(tmp_path_factory.mktemp("photos"), width=64)


@pytest.fixture(scope="module")
def init_model(tmp_path_factory: pytest.TempPathFactory, photo_dir: Path) -> Path:
    """A briefly trained tiny model (k-means codebook, a few steps of all parts): the pixel phase."""
    pixel = tiny_config(steps=3, loss=LossConfig(perceptual_weight=0.0, disc_weight=0.0))
    return train(pixel, str(photo_dir), tmp_path_factory.mktemp("pixel") / "run", progress=False).final


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def assert_encoder_side_equal(a: Path, b: Path) -> None:
    x, y = _tensors(a), _tensors(b)
    frozen = [k for k in x if k.startswith(FROZEN_PREFIXES)]
    assert frozen and any(k.startswith("quantize.") for k in frozen)
    for k in frozen:
        assert torch.equal(x[k], y[k]), k  # bitwise


def _photo_ids(folder: Path) -> torch.Tensor:
    return Tokenizer.from_pretrained(folder).encode([p.convert("RGB") for p in real_photos(4)], size=64)  # (4, 32, 32)


def test_decoder_only_gan_phase_keeps_the_ids(tmp_path: Path, photo_dir: Path, init_model: Path) -> None:
    trainer = Trainer(gan_config(), str(photo_dir), tmp_path / "gan", progress=False, init_weights=init_model)
    # frozen before DDP would wrap the model: no gradient, no optimizer state
    trained = {id(p) for g in trainer.opt.param_groups for p in g["params"]}
    for name, p in trainer.model.named_parameters():
        assert p.requires_grad == (not name.startswith(FROZEN_PREFIXES)), name
        assert (id(p) in trained) == p.requires_grad, name
    result = trainer.train()
    trainer.close()
    for name, p in trainer.model.named_parameters():
        if name.startswith(FROZEN_PREFIXES):
            assert p.grad is None, name
    with_state = {id(p) for p in trainer.opt.state}
    assert with_state == {id(p) for p in trainer.model.parameters() if p.requires_grad}  # Adam moments: decoder side only
    assert int(trainer.codebook.restarts) == 0 and not hasattr(trainer.codebook, "embed_sum")

    # the exported (EMA) model and the last checkpoint (raw weights): encoder side bitwise the init's
    ckpt = tmp_path / "gan" / "checkpoints" / (tmp_path / "gan" / "checkpoints" / "latest").read_text().strip()
    for folder in (result.final, ckpt):
        assert_encoder_side_equal(init_model, folder)
    before, after = _tensors(init_model), _tensors(result.final)
    changed = [k for k in after if not k.startswith(FROZEN_PREFIXES) and not torch.equal(before[k], after[k])]
    assert any(k.startswith("decoder.") for k in changed) and any(k.startswith("post_quant_conv.") for k in changed)
    assert torch.equal(_photo_ids(init_model), _photo_ids(result.final))
    # the discriminator was on from step 0 (adaptive λ on the decoder's last layer); no codebook loss
    train_logs = [r for r in result.history if r["kind"] == "train"]
    assert train_logs and all(r["gan"] != 0 and r["lambda"] > 0 and r["d_loss"] > 0 for r in train_logs)
    assert all(r["codebook"] == 0 and r["restarted"] == 0 for r in train_logs)


def test_decoder_only_resume_is_exact(tmp_path: Path, photo_dir: Path, init_model: Path) -> None:
    cfg = gan_config(steps=6)
    one = train(cfg, str(photo_dir), tmp_path / "one", progress=False, init_weights=init_model)
    Trainer(cfg, str(photo_dir), tmp_path / "two", progress=False, init_weights=init_model).train(steps=3)
    two = Trainer(cfg, str(photo_dir), tmp_path / "two", progress=False).train()  # no init needed to continue
    a, b = _tensors(one.final), _tensors(two.final)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert_encoder_side_equal(init_model, two.final)


def test_decoder_only_needs_weights_to_start_from(tmp_path: Path, photo_dir: Path) -> None:
    with pytest.raises(ValueError, match="decoder_only trains the decoder of an existing model"):
        Trainer(gan_config(), str(photo_dir), tmp_path / "x", progress=False)


def test_decoder_only_with_fsq(tmp_path: Path, photo_dir: Path) -> None:
    fsq = VQGANConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), z_channels=16, resolution=32,
                      quantizer="fsq", fsq_levels=(4, 4, 4))
    torch.manual_seed(0)
    init = Tokenizer.from_config(fsq).save_pretrained(tmp_path / "init")
    result = train(gan_config(model=fsq, steps=2), str(photo_dir), tmp_path / "run", progress=False, init_weights=init)
    x, y = _tensors(init), _tensors(result.final)
    assert all(torch.equal(x[k], y[k]) for k in x if k.startswith(("encoder.", "quant_conv.")))
    assert not all(torch.equal(x[k], y[k]) for k in x if k.startswith("decoder."))
    assert torch.equal(_photo_ids(init), _photo_ids(result.final))


def test_decoder_only_yaml_round_trip_and_old_configs(tmp_path: Path) -> None:
    cfg = gan_config()
    path = cfg.to_yaml(tmp_path / "c.yaml")
    assert "decoder_only: true" in path.read_text()
    assert TrainConfig.from_yaml(path) == cfg
    old = cfg.to_dict()
    del old["decoder_only"]  # a run folder written before the option existed
    assert TrainConfig.from_dict(old).decoder_only is False
    shipped = TrainConfig.from_yaml(Path(__file__).resolve().parents[1] / "configs" / "default-tokenizer-v2-gan.yaml")
    pixel = TrainConfig.from_yaml(Path(__file__).resolve().parents[1] / "configs" / "default-tokenizer-v2.yaml")
    assert shipped.decoder_only and shipped.model == pixel.model and shipped.loss.disc_weight > 0
    assert shipped.loss.disc_start == 0 and shipped.loss.perceptual_weight == 0 and shipped.ema_decay > 0
    assert dataclasses.replace(shipped, decoder_only=False) != shipped


def test_cli_continues_a_decoder_only_run(
    tmp_path: Path, photo_dir: Path, init_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg_path = gan_config(steps=2, checkpoint_every=2).to_yaml(tmp_path / "gan.yaml")
    out = tmp_path / "run"
    base = ["train", "--data", str(photo_dir), "--out", str(out), "--no-progress"]
    assert main([*base, "--config", str(cfg_path), "--init", str(init_model)]) == 0
    capsys.readouterr()
    assert main([*base, "--steps", "3"]) == 0  # continues from OUT/train_config.yaml, still decoder_only
    assert json.loads(capsys.readouterr().out)["steps"] == 3
    assert TrainConfig.from_yaml(out / "train_config.yaml").decoder_only
    assert_encoder_side_equal(init_model, out / "final")
    assert main([*base, "--steps", "4", "--set", "decoder_only=false"]) == 2  # would not continue the same run
    assert "decoder_only" in capsys.readouterr().err


def test_decoder_only_from_the_shipped_default(tmp_path: Path, photo_dir: Path) -> None:
    """--init default@v1 (a shipped version by name) starts a decoder-only phase of the real architecture."""
    from vqtok.tokenizer import DEFAULT_VERSIONS

    v1 = DEFAULT_VERSIONS["v1"]
    if not (v1 / "model.safetensors").is_file():
        pytest.skip("no shipped default weights")
    model = Tokenizer.from_pretrained(v1).config
    cfg = gan_config(model=model, steps=1, batch_size=1, grad_accum=1, ema_decay=0.0, checkpoint_every=100,
                     data=DataConfig(crop_size=32, num_workers=0))
    result = train(cfg, str(photo_dir), tmp_path / "run", progress=False, init_weights="default@v1")
    assert_encoder_side_equal(v1, result.final)


def test_frozen_encoder_side_stays_in_eval_mode(tmp_path: Path, photo_dir: Path, init_model: Path) -> None:
    """Validation (raw weights: no EMA) switches the model to eval and back: the frozen encoder side stays in eval."""
    cfg = gan_config(steps=2, ema_decay=0.0, val_every=1, image_every=1,
                     data=DataConfig(crop_size=32, num_workers=0, val_data=str(photo_dir), val_size=32, val_images=2))
    trainer = Trainer(cfg, str(photo_dir), tmp_path / "run", progress=False, init_weights=init_model)
    result = trainer.train()
    trainer.close()
    assert result.validation is not None
    assert not trainer.model.encoder.training and not trainer.model.quant_conv.training
    assert trainer.model.decoder.training and trainer.codebook.training
