"""Pinned config hashes: token corpora are tagged with ``config.hash()``, so these values must never change."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vqtok.models.cosmos import CosmosConfig
from vqtok.models.ibq import IBQConfig
from vqtok.models.magvit2 import MAGVIT2Config
from vqtok.models.vqgan import VQGANConfig

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "vqtok" / "weights" / "default-v1" / "config.json"


def test_vqgan_default_config_hash_is_pinned() -> None:
    assert VQGANConfig().hash() == "cfbbfe8e440004f7"


def test_shipped_default_v1_model_hash_is_pinned() -> None:
    d = json.loads(DEFAULT_CONFIG.read_text())
    assert d.pop("model_type") == "vqgan"
    d.pop("vqtok_format")
    assert VQGANConfig.from_dict(d).hash() == "f54fbe31ce27d9ba"


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (IBQConfig(), "55596939a4ad8842"),
        (MAGVIT2Config(), "d9597decdde56a1b"),
        (CosmosConfig(), "4a684cbc284f0245"),
        (CosmosConfig.preset("DI8x8"), "e641a8e2113ee9f3"),
    ],
)
def test_other_architectures_hashes_are_pinned(config: object, expected: str) -> None:
    assert config.hash() == expected  # type: ignore[attr-defined]


@pytest.mark.parametrize("cls", [VQGANConfig, IBQConfig, MAGVIT2Config, CosmosConfig])
def test_config_dict_round_trip_and_unknown_keys(cls: type) -> None:
    cfg = cls()
    d = cfg.to_dict()
    assert all(not isinstance(v, tuple) for v in d.values())  # JSON-ready: sequences are lists
    assert json.loads(json.dumps(d)) == d
    assert cls.from_dict(d) == cfg
    with pytest.raises(ValueError, match="unknown .* config keys: bogus"):
        cls.from_dict({**d, "bogus": 1})


def test_norm_groups_reaches_every_norm_layer_and_config_json_only_when_not_32() -> None:
    import torch

    from vqtok.models.vqgan import VQGAN

    assert "norm_groups" not in VQGANConfig().to_dict()  # older config.json files and hashes unchanged
    cfg = VQGANConfig(ch=32, ch_mult=(1, 2), attn_resolutions=(128,), z_channels=8, embed_dim=4, n_embed=16, norm_groups=8)
    assert cfg.to_dict()["norm_groups"] == 8 and VQGANConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.hash() != VQGANConfig.from_dict({**cfg.to_dict(), "norm_groups": 32}).hash()
    norms = [m for m in VQGAN(cfg).modules() if isinstance(m, torch.nn.GroupNorm)]
    # encoder 2x2 ResNets + 2 attention, decoder 2x3 + 3, two mids (2 ResNets + attention), two norm_out
    assert len(norms) == 2 * 2 * 2 + 2 + 2 * 3 * 2 + 3 + 2 * 5 + 2 and {m.num_groups for m in norms} == {8}
    with pytest.raises(ValueError, match=r"GroupNorm\(12\) needs channel counts divisible by norm_groups"):
        VQGANConfig(ch=32, ch_mult=(1, 2), norm_groups=12)
