"""The default tokenizer shipped in vqtok/weights/default-v<N> (trained by vqtok.training)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from vqtok import Tokenizer
from vqtok.metrics import psnr
from vqtok.tokenizer import DEFAULT_VERSIONS, default_version
from vqtok.training import TrainConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# the training recipe of each shipped version (v2's GAN phase, default-tokenizer-v2-gan.yaml, has the same model block)
RECIPES = {"v1": "default-tokenizer.yaml", "v2": "default-tokenizer-v2.yaml", "v3": "default-tokenizer-v3.yaml"}
WEIGHTS = DEFAULT_VERSIONS[default_version()]
pytestmark = pytest.mark.skipif(not (WEIGHTS / "model.safetensors").is_file(), reason="no shipped default weights")


@pytest.mark.parametrize("version", list(DEFAULT_VERSIONS))
def test_default_weights_are_small_and_match_the_recipe(version: str) -> None:
    assert (DEFAULT_VERSIONS[version] / "model.safetensors").stat().st_size <= 20 * 2**20
    recipe = TrainConfig.from_yaml(CONFIGS / RECIPES[version])
    assert Tokenizer.default(version).config == recipe.model


def test_default_tokenizer_reconstructs_a_photo() -> None:
    from skimage import data

    tok = Tokenizer.default()
    img = data.astronaut()[::2, ::2][:128, :128]  # (128, 128, 3) uint8
    ids = tok.encode(img, size=None)
    assert ids.shape == (16, 16) and int(ids.max()) < tok.codebook_size
    rec = tok.decode(ids, output="pt")  # (1, 3, 128, 128) in [0, 1]
    x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].double() / 255
    assert float(psnr(rec.double().reshape(x.shape), x)) > 15.0
    assert len(torch.unique(ids)) > 32  # many distinct codes even on one small image


def test_chroma_readout_recipe_starts_from_v2() -> None:
    """configs/default-tokenizer-v3-readout.yaml (docs/model-card.md, Greens) loads, fine-tunes v2's
    architecture (its --init is v2's weights) and trains the encoder with the chroma read-out."""
    recipe = TrainConfig.from_yaml(CONFIGS / "default-tokenizer-v3-readout.yaml")
    assert recipe.model == Tokenizer.default("v2").config
    assert recipe.loss.chroma_readout_weight > 0 and not recipe.decoder_only
    assert recipe.steps == recipe.total_steps == 8000


def test_v3_recipe_is_the_readout_run_on_a_longer_cosine() -> None:
    """configs/default-tokenizer-v3.yaml continues the read-out run (--from-checkpoint its step 8000):
    the same config in every field but the length of the run and of its cosine."""
    readout = TrainConfig.from_yaml(CONFIGS / "default-tokenizer-v3-readout.yaml")
    v3 = TrainConfig.from_yaml(CONFIGS / "default-tokenizer-v3.yaml")
    assert v3.steps == v3.total_steps == 30000 and v3.lr_schedule == "cosine"
    assert v3.replace(steps=readout.steps, total_steps=readout.total_steps) == readout
