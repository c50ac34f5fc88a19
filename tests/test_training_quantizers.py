"""Training with each quantizer (VQ, FSQ, LFQ): config, loss, train -> export -> Tokenizer round trip on real photos."""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from tests.conftest import real_photos, training_photos, write_tar
from vqtok import Tokenizer
from vqtok.models.fsq import FSQ
from vqtok.models.lfq import LFQ
from vqtok.models.quantizer import VectorQuantizer
from vqtok.models.vqgan import VQGAN, VQGANConfig
from vqtok.training import CodebookConfig, TrainConfig, Trainer, train
from vqtok.training.codebook import CodebookTrainer, ImplicitCodebookTrainer, quantizer_trainer
from vqtok.training.config import DataConfig, LossConfig, default_model_config

ARCH = VQGANConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), z_channels=16, resolution=32)
QUANTIZERS = {
    "vq": dataclasses.replace(ARCH, embed_dim=4, n_embed=64, l2_norm_codes=True, legacy_loss=False),
    "fsq": dataclasses.replace(ARCH, quantizer="fsq", fsq_levels=(4, 4, 4)),  # 64 codes, 3 channels
    "lfq": dataclasses.replace(ARCH, quantizer="lfq", lfq_bits=6),  # 64 codes, 6 channels
}
SIZE = 32  # photos are resized + center-cropped to this side


def config(model: VQGANConfig, **changes: object) -> TrainConfig:
    base = TrainConfig(
        model=model,
        codebook=CodebookConfig(kmeans_batches=1, kmeans_iters=2, dead_after=2, restart_every=1, buffer_size=128),
        loss=LossConfig(perceptual_weight=0.0, disc_weight=0.0),
        data=DataConfig(crop_size=32, max_zoom_out=2.0, num_workers=0, val_size=SIZE, val_images=3),
        steps=3, batch_size=2, lr=1e-3, warmup_steps=1, precision="fp32",
        log_every=1, val_every=3, checkpoint_every=2, image_every=100, threads=1,
    )
    return base.replace(**changes)


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return training_photos(tmp_path_factory.mktemp("photos"), width=96)


# ---------------------------------------------------------------------- the model config
def test_vq_configs_keep_their_keys_and_hash() -> None:
    # config.json of VQ models and the config hash that tags token corpora are as before the new fields
    assert VQGANConfig().hash() == "cfbbfe8e440004f7"
    assert default_model_config().hash() == "f54fbe31ce27d9ba"
    assert not {"quantizer", "fsq_levels", "lfq_bits"} & set(VQGANConfig().to_dict())
    old = VQGANConfig().to_dict()  # an old config.json (no quantizer keys) loads as VQ
    assert VQGANConfig.from_dict(old).quantizer == "vq" and isinstance(VQGAN(QUANTIZERS["vq"]).quantize, VectorQuantizer)


def test_fsq_and_lfq_configs_derive_codes_and_round_trip() -> None:
    # the default recipe's embed_dim=8 / n_embed=4096 are replaced by what the levels / bits give
    fsq = dataclasses.replace(default_model_config(), quantizer="fsq", fsq_levels=[8, 8, 8, 5, 5, 5])  # Cosmos DI levels
    assert (fsq.embed_dim, fsq.n_embed, fsq.fsq_levels) == (6, 64000, (8, 8, 8, 5, 5, 5))
    lfq = dataclasses.replace(default_model_config(), quantizer="lfq", lfq_bits=12)
    assert (lfq.embed_dim, lfq.n_embed) == (12, 4096)
    for cfg in (fsq, lfq):
        d = json.loads(json.dumps(cfg.to_dict()))  # what config.json holds
        assert VQGANConfig.from_dict(d) == cfg and VQGANConfig.from_dict(d).hash() == cfg.hash()
    assert fsq.to_dict()["quantizer"] == "fsq" and "lfq_bits" not in fsq.to_dict()
    assert lfq.to_dict()["lfq_bits"] == 12 and "fsq_levels" not in lfq.to_dict()
    assert fsq.hash() != lfq.hash() != default_model_config().hash()
    model = VQGAN(fsq)
    assert isinstance(model.quantize, FSQ) and model.quant_conv.out_channels == 6 and model.post_quant_conv.in_channels == 6
    model = VQGAN(lfq)
    assert isinstance(model.quantize, LFQ) and model.quant_conv.out_channels == 12
    assert not any(k.startswith("quantize.") for k in model.state_dict())  # no codebook parameters


@pytest.mark.parametrize("name", ["fsq", "lfq"])
def test_fsq_lfq_models_are_not_exported_to_diffusers(name: str, tmp_path: Path) -> None:
    from vqtok.convert import to_diffusers

    with pytest.raises(ValueError, match=f"quantizer '{name}'"):
        to_diffusers(Tokenizer.from_config(QUANTIZERS[name]), tmp_path / "d")
    assert not (tmp_path / "d" / "config.json").exists()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"quantizer": "rvq"}, "quantizer must be 'vq', 'fsq' or 'lfq'"),
        ({"quantizer": "fsq"}, "needs fsq_levels"),
        ({"quantizer": "fsq", "fsq_levels": (8, 1)}, "needs fsq_levels"),
        ({"quantizer": "lfq"}, r"lfq_bits in \[1, 31\]"),
        ({"quantizer": "lfq", "lfq_bits": 40}, r"lfq_bits in \[1, 31\]"),
        ({"fsq_levels": (8, 8)}, "fsq_levels is for quantizer 'fsq'"),
        ({"quantizer": "fsq", "fsq_levels": (8, 8), "lfq_bits": 4}, "lfq_bits is for quantizer 'lfq'"),
    ],
)
def test_bad_quantizer_configs_are_named(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(ARCH, **changes)


def test_lfq_entropy_loss_bits_limit() -> None:
    big = dataclasses.replace(ARCH, quantizer="lfq", lfq_bits=24)
    with pytest.raises(ValueError, match="at most 20"):
        config(big)
    no_entropy = config(ARCH).replace(model=big, loss=LossConfig(perceptual_weight=0.0, disc_weight=0.0, entropy_weight=0.0))
    assert no_entropy.model.n_embed == 2**24  # without the entropy term any number of bits trains


# ---------------------------------------------------------------------- the training-time quantizer
def test_wrapper_per_quantizer() -> None:
    cb, loss = CodebookConfig(), LossConfig()
    assert isinstance(quantizer_trainer(VQGAN(QUANTIZERS["vq"]).quantize, cb, loss), CodebookTrainer)
    for name in ("fsq", "lfq"):
        assert isinstance(quantizer_trainer(VQGAN(QUANTIZERS[name]).quantize, cb, loss), ImplicitCodebookTrainer)
    with pytest.raises(TypeError, match="wraps FSQ or LFQ"):
        ImplicitCodebookTrainer(VQGAN(QUANTIZERS["vq"]).quantize, cb, loss)  # type: ignore[arg-type]


def test_lfq_training_loss_is_the_magvit2_objective() -> None:
    """The wrapper's loss equals LFQ's own training loss at the same weights, and its gradient reaches z."""
    torch.manual_seed(0)
    z = torch.randn(2, 6, 4, 4, requires_grad=True)
    weights = LossConfig(entropy_weight=0.3, lfq_commitment_weight=0.5, entropy_temperature=0.05,
                         sample_entropy_weight=0.7, codebook_entropy_weight=1.3)
    ref = LFQ(6, entropy_weight=0.3, commitment_weight=0.5, temperature=0.05, sample_weight=0.7, batch_weight=1.3).train()
    wrapper = ImplicitCodebookTrainer(LFQ(6), CodebookConfig(), weights).train()
    out, expected = wrapper(z), ref(z)
    torch.testing.assert_close(out.loss, expected.loss)
    assert torch.equal(out.ids, expected.ids) and torch.equal(out.z_q, expected.z_q)
    (grad,) = torch.autograd.grad(out.loss + out.z_q.sum(), z)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    no_entropy = ImplicitCodebookTrainer(LFQ(6), CodebookConfig(), dataclasses.replace(weights, entropy_weight=0.0)).train()
    torch.testing.assert_close(no_entropy(z).loss, 0.5 * torch.mean((z - torch.where(z > 0, 1.0, -1.0)) ** 2))
    # usage tracking: every code chosen this step is active
    assert wrapper.active_fraction() == pytest.approx(torch.unique(out.ids).numel() / 64)


def test_fsq_training_has_no_loss_and_passes_gradients() -> None:
    z = torch.randn(2, 3, 4, 4, requires_grad=True)
    wrapper = ImplicitCodebookTrainer(FSQ((4, 4, 4)), CodebookConfig(), LossConfig()).train()
    out = wrapper(z)
    assert float(out.loss) == 0.0
    (grad,) = torch.autograd.grad(out.z_q.sum(), z)
    assert grad.abs().sum() > 0  # straight-through rounding
    torch.testing.assert_close(out.z_q.detach(), FSQ((4, 4, 4)).codes(out.ids))


# ---------------------------------------------------------------------- end to end on real photos
@pytest.mark.parametrize("name", list(QUANTIZERS))
def test_train_export_reload_encode(name: str, photo_dir: Path, tmp_path: Path) -> None:
    cfg = config(QUANTIZERS[name], data=dataclasses.replace(config(ARCH).data, val_data=str(photo_dir)))
    trainer = Trainer(cfg, str(photo_dir), tmp_path / "run", progress=False)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    result = trainer.train()
    assert result.steps == 3
    train_logs = [h for h in result.history if h["kind"] == "train"]
    assert len(train_logs) == 3 and all(np.isfinite(h["rec"]) and np.isfinite(h["codebook"]) for h in train_logs)
    if name == "fsq":
        assert all(h["codebook"] == 0.0 for h in train_logs)  # FSQ has no auxiliary loss
    else:
        assert all(h["codebook"] != 0.0 for h in train_logs)
    assert 0 < train_logs[-1]["active"] <= 1
    assert not torch.equal(before["encoder.conv_in.weight"], trainer.model.state_dict()["encoder.conv_in.weight"])
    assert result.validation is not None and 0 < result.validation.usage <= 1

    saved = json.loads((result.final / "config.json").read_text())
    assert saved.get("quantizer", "vq") == name
    tok = Tokenizer.from_pretrained(result.final)
    assert tok.config == cfg.model and tok.codebook_size == 64
    assert type(tok.model.quantize) is type(trainer.model.quantize)
    assert set(load_file(str(result.final / "model.safetensors"))) == set(tok.model.state_dict())  # no trainer state

    photos = real_photos(4)
    ids = tok.encode(photos, size=SIZE)  # (4, 16, 16)
    assert ids.shape == (4, 16, 16) and 0 <= int(ids.min()) and int(ids.max()) < 64
    assert torch.unique(ids).numel() > 1
    q = tok.model.quantize
    codes = q.codes(ids)  # (4, D, 16, 16)
    assert codes.shape == (4, cfg.model.embed_dim, 16, 16)
    # ids -> codes -> ids. FSQ's lookup bounds its input (tanh), so its codes are read back by the mixed radix
    if isinstance(q, FSQ):
        half = torch.tensor(q.levels).view(1, -1, 1, 1) // 2
        basis = torch.tensor([int(np.prod(q.levels[:d])) for d in range(len(q.levels))]).view(1, -1, 1, 1)
        back = ((torch.round(codes * half).long() + half) * basis).sum(dim=1)
    else:
        back = q.lookup(codes)
    assert torch.equal(q.codes(back), codes)
    if isinstance(q, (FSQ, LFQ)) or torch.unique(q.codebook(), dim=0).shape[0] == q.codebook_size:
        assert torch.equal(back, ids)  # the same ids (VQ: unless two codes are equal)
    # encode ids are the ids of the model's own quantized features
    with torch.no_grad():
        from vqtok.images import from_model_output, to_model_input, to_uint8_batch

        x = to_model_input(to_uint8_batch(photos, size=SIZE).pixels)
        enc = tok.model.encode(x)
        assert torch.equal(enc.ids, ids)
        torch.testing.assert_close(enc.z_q, codes)
        rec = from_model_output(tok.model.decode(enc.z_q))
    torch.testing.assert_close(tok.decode(ids, output="pt"), rec)  # decode(ids) decodes the codes of those ids
    # a checkpoint folder is a tokenizer folder too
    latest = (tmp_path / "run" / "checkpoints" / "latest").read_text().strip()
    assert torch.equal(Tokenizer.from_pretrained(tmp_path / "run" / "checkpoints" / latest).encode(photos, size=SIZE), ids)


@pytest.mark.parametrize("name", ["fsq", "lfq"])
def test_resume_is_exact(name: str, photo_dir: Path, tmp_path: Path) -> None:
    cfg = config(QUANTIZERS[name], steps=4, checkpoint_every=2)
    once = train(cfg, str(photo_dir), tmp_path / "once", progress=False)
    Trainer(cfg, str(photo_dir), tmp_path / "twice", progress=False).train(steps=2)
    twice = train(cfg, str(photo_dir), tmp_path / "twice", progress=False)  # resumes at step 2
    assert twice.steps == 4
    a, b = load_file(str(once.final / "model.safetensors")), load_file(str(twice.final / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_cli_trains_fsq_then_pretokenize_usage_eval(photo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from vqtok.pipeline import pretokenize
    from vqtok.training.commands import add_commands, apply_overrides

    # --set reaches the quantizer fields although VQ configs' to_dict leaves them out
    over = apply_overrides(TrainConfig(), ["model.quantizer=lfq", "model.lfq_bits=10", "loss.entropy_weight=0.2"])
    assert (over.model.quantizer, over.model.n_embed, over.loss.entropy_weight) == ("lfq", 1024, 0.2)
    with pytest.raises(ValueError, match="unknown config key"):
        apply_overrides(TrainConfig(), ["model.quantiser=fsq"])

    cfg_path = config(ARCH).to_yaml(tmp_path / "c.yaml")  # a VQ config, switched to FSQ on the command line
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers())
    out = tmp_path / "run"
    args = parser.parse_args(["train", "--data", str(photo_dir), "--out", str(out), "--config", str(cfg_path), "--steps", "2",
                              "--no-progress", "--set", "model.quantizer=fsq", "--set", "model.fsq_levels=[5,4,3]"])
    assert args.func(args) == 0
    summary = json.loads(capsys.readouterr().out)
    tok = Tokenizer.from_pretrained(summary["model"])
    assert isinstance(tok.model.quantize, FSQ) and tok.model.quantize.levels == (5, 4, 3) and tok.codebook_size == 60

    photos = real_photos(3)
    members = []
    for i, img in enumerate(photos):
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=95)
        members.append((f"s{i}.jpg", buf.getvalue()))
    shard = write_tar(tmp_path / "in-000000.tar", members)
    result = pretokenize(str(shard), tmp_path / "tokens", model=tok, size=SIZE, batch_size=2, workers=0, progress=False)
    assert result.samples_written == 3
    with tarfile.open(tmp_path / "tokens" / "in-000000.tar") as tf:
        got = {m.name.split(".")[0]: np.load(io.BytesIO(tf.extractfile(m).read())) for m in tf if m.name.endswith("ids.npy")}  # type: ignore[union-attr]
    for i, (_, data) in enumerate(members):
        np.testing.assert_array_equal(got[f"s{i}"], tok.encode(Image.open(io.BytesIO(data)), size=SIZE).numpy())
    # vqtok usage reads the token shards' histograms (60 codes); vqtok eval scores the model
    from vqtok.cli import main

    capsys.readouterr()
    assert main(["usage", str(tmp_path / "tokens"), "--json"]) == 0
    usage = json.loads(capsys.readouterr().out)
    hist = np.bincount(np.concatenate([v.ravel() for v in got.values()]), minlength=60)
    assert usage["codebook_size"] == 60 and usage["used_codes"] == int((hist > 0).sum())
    report = tmp_path / "report.json"
    assert main(["eval", "--model", summary["model"], "--data", str(photo_dir), "--size", str(SIZE), "--no-fid", "--no-lpips",
                 "--no-progress", "--out", str(report)]) == 0
    r = json.loads(report.read_text())
    assert r["image_count"] == 4 and r["codebook_usage"]["codebook_size"] == 60 and r["config_hash"] == tok.config.hash()
