"""DDP under torchrun (2 CPU processes, gloo): training runs, and resume is exact across processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from tests.conftest import TINY
from tests.test_prior_train import TINY_MODEL, write_corpus
from tests.test_training_loop import tiny_config
from tests.test_training_components import write_images
from vqtok import VQGAN
from vqtok.training.trainer import grads_in_param_strides


def torchrun(*argv: str, cwd: Path) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "vqtok", *argv]
    run = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stderr


def assert_same_weights(a: Path, b: Path) -> None:
    x, y = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert x.keys() == y.keys()
    for k in x:
        torch.testing.assert_close(x[k], y[k], rtol=0, atol=0, msg=k)


def test_prior_ddp_resume_is_exact(tmp_path: Path) -> None:
    grids = np.random.default_rng(0).integers(0, 16, size=(8, 4, 4))
    spec = write_corpus(tmp_path / "tokens", grids, [0, 1, 2, 3, 0, 1, 2, 3])
    cfg = tmp_path / "prior.json"
    cfg.write_text(json.dumps({"model": TINY_MODEL, "batch_size": 4, "warmup_steps": 1, "val_fraction": 0.0,
                               "checkpoint_every": 100, "precision": "fp32", "device": "cpu"}))
    common = ["train-prior", "--tokens", spec, "--config", str(cfg), "--no-progress"]
    torchrun(*common, "--out", str(tmp_path / "straight"), "--steps", "6", cwd=tmp_path)
    torchrun(*common, "--out", str(tmp_path / "resumed"), "--steps", "6", "--stop-after", "3", cwd=tmp_path)
    torchrun(*common, "--out", str(tmp_path / "resumed"), "--steps", "6", cwd=tmp_path)
    assert_same_weights(tmp_path / "straight", tmp_path / "resumed")
    log = [json.loads(line) for line in (tmp_path / "resumed" / "log.jsonl").read_text().splitlines()]
    assert max(r.get("step", 0) for r in log) == 6


def test_vqgan_ddp_resume_is_exact(tmp_path: Path) -> None:
    images = write_images(tmp_path / "imgs", n=8)
    cfg = tiny_config(steps=4, val_every=100, image_every=100, checkpoint_every=2).to_yaml(tmp_path / "c.yaml")
    common = ["train", "--data", str(images), "--config", str(cfg), "--no-progress"]
    stderr = torchrun(*common, "--out", str(tmp_path / "straight"), cwd=tmp_path)
    assert "FutureWarning" not in stderr and "grad strides" not in stderr  # issue 13: DDP warnings on every rank
    torchrun(*common, "--out", str(tmp_path / "resumed"), "--steps", "2", cwd=tmp_path)
    torchrun(*common, "--out", str(tmp_path / "resumed"), cwd=tmp_path)
    assert_same_weights(tmp_path / "straight" / "final", tmp_path / "resumed" / "final")


def test_vqgan_ddp_decoder_only(tmp_path: Path) -> None:
    """decoder_only under DDP with the discriminator on: frozen parameters have requires_grad=False before DDP
    wraps the model (no unused-parameter error), the encoder side stays bitwise, and resume is exact."""
    from vqtok import Tokenizer
    from vqtok.models.vqgan import VQGANConfig
    from vqtok.training.config import LossConfig

    images = write_images(tmp_path / "imgs", n=8)
    base = tiny_config()
    torch.manual_seed(0)
    init = Tokenizer.from_config(VQGANConfig(**base.model.to_dict())).save_pretrained(tmp_path / "init")
    cfg = base.replace(decoder_only=True, steps=4, val_every=100, image_every=100, checkpoint_every=2,
                       loss=LossConfig(perceptual_weight=0.0, disc_weight=0.8, disc_start=0, disc_ch=8, disc_layers=2))
    common = ["train", "--data", str(images), "--config", str(cfg.to_yaml(tmp_path / "c.yaml")), "--no-progress"]
    torchrun(*common, "--out", str(tmp_path / "straight"), "--init", str(init), cwd=tmp_path)
    torchrun(*common, "--out", str(tmp_path / "resumed"), "--init", str(init), "--steps", "2", cwd=tmp_path)
    torchrun(*common, "--out", str(tmp_path / "resumed"), cwd=tmp_path)
    assert_same_weights(tmp_path / "straight" / "final", tmp_path / "resumed" / "final")
    x, y = load_file(str(init / "model.safetensors")), load_file(str(tmp_path / "straight" / "final" / "model.safetensors"))
    frozen = [k for k in x if k.startswith(("encoder.", "quant_conv.", "quantize."))]
    assert frozen and all(torch.equal(x[k], y[k]) for k in frozen)
    assert not all(torch.equal(x[k], y[k]) for k in x if k.startswith("decoder."))


def _bf16_grads_not_in_param_strides(model: VQGAN) -> list[str]:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    (out.reconstruction.float().abs().mean() + out.codebook_loss.float()).backward()
    return [n for n, p in model.named_parameters() if p.grad is not None and p.grad.stride() != p.stride()]


def test_bf16_grads_are_handed_over_in_the_parameters_strides() -> None:
    # oneDNN's bf16 backward gives the attention proj_out (1x1, input a channels_last view) a
    # weight gradient with channels_last strides: (64, 1, 64, 64) for a (64, 1, 1, 1) parameter
    torch.manual_seed(0)
    plain = VQGAN(TINY).train()
    assert "encoder.mid.attn_1.proj_out.weight" in _bf16_grads_not_in_param_strides(plain)
    torch.manual_seed(0)
    hooked = VQGAN(TINY).train()
    grads_in_param_strides(hooked)
    assert _bf16_grads_not_in_param_strides(hooked) == []
    for p, q in zip(plain.parameters(), hooked.parameters()):  # the same gradients, only the strides differ
        assert torch.equal(p.grad, q.grad)


def test_vqgan_ddp_in_bf16_prints_no_grad_strides_warning(tmp_path: Path) -> None:
    # issue 13: DDP `vqtok train` in bf16 (the default recipe's precision) warned "Grad strides do
    # not match bucket view strides" on every rank
    images = write_images(tmp_path / "imgs", n=4)
    cfg = tiny_config(steps=1, grad_accum=1, precision="bf16", val_every=100, image_every=100, checkpoint_every=100)
    argv = ["train", "--data", str(images), "--config", str(cfg.to_yaml(tmp_path / "c.yaml")), "--no-progress"]
    stderr = torchrun(*argv, "--out", str(tmp_path / "run"), cwd=tmp_path)
    assert "grad strides" not in stderr.lower() and "FutureWarning" not in stderr
