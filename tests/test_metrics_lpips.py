"""LPIPS-VGG with random backbone weights saved in the published key layouts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vqtok.metrics import LPIPS, load_lpips
from vqtok.metrics import lpips as lp


def _save_random_weights(folder: Path) -> tuple[Path, Path]:
    """torchvision vgg16-397923af.pth layout (features.<i>.*, plus a classifier key that must be
    ignored) and LPIPS v0.1 vgg.pth layout (lin<k>.model.1.weight)."""
    g = torch.Generator().manual_seed(0)
    vgg: dict[str, torch.Tensor] = {}
    lin: dict[str, torch.Tensor] = {}
    for k, v in LPIPS().state_dict().items():
        if k.startswith("features.") and k.endswith("weight"):
            vgg[k] = torch.randn(v.shape, generator=g) * (2.0 / v[0].numel()) ** 0.5
        elif k.startswith("features."):
            vgg[k] = torch.randn(v.shape, generator=g) * 0.01
        else:
            lin[k] = torch.rand(v.shape, generator=g)  # published heads are non-negative
    vgg["classifier.6.bias"] = torch.zeros(1000)
    vgg_path, lin_path = folder / "vgg16-397923af.pth", folder / "vgg.pth"
    torch.save(vgg, vgg_path)
    torch.save(lin, lin_path)
    return vgg_path, lin_path


def test_lpips_properties(tmp_path) -> None:
    vgg_path, lin_path = _save_random_weights(tmp_path)
    model, info = load_lpips(vgg_weights=vgg_path, lin_weights=lin_path)
    assert info.vgg_path == str(vgg_path)
    torch.manual_seed(0)
    x = torch.rand(3, 3, 32, 32)
    y_small = (x + 0.02 * torch.randn_like(x)).clamp(0, 1)
    y_big = (x + 0.3 * torch.randn_like(x)).clamp(0, 1)
    d_small, d_big = model(x, y_small), model(x, y_big)
    assert d_small.shape == (3,)
    assert torch.allclose(model(x, x), torch.zeros(3), atol=1e-7)
    assert (d_small > 0).all() and (d_big > d_small).all()
    assert torch.allclose(model(y_big, x), d_big, rtol=1e-5)  # symmetric
    assert torch.allclose(model(x[1:2], y_big[1:2]), d_big[1:2], rtol=1e-5)  # per image


def test_lpips_matches_formula_for_one_layer(tmp_path) -> None:
    """Check the scaling layer, unit normalisation, head and spatial mean against a direct computation."""
    vgg_path, lin_path = _save_random_weights(tmp_path)
    model, _ = load_lpips(vgg_weights=vgg_path, lin_weights=lin_path)
    for k in range(1, 5):  # keep only the first head
        getattr(model, f"lin{k}").model[1].weight.data.zero_()
    x, y = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16)
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
    f = lambda t: model.features[:4](((2 * t - 1) - shift) / scale)
    a, b = f(x), f(y)
    a = a / (a.norm(dim=1, keepdim=True) + 1e-10)
    b = b / (b.norm(dim=1, keepdim=True) + 1e-10)
    w = model.lin0.model[1].weight.view(1, -1, 1, 1)
    expected = ((a - b) ** 2 * w).sum(1).mean()
    assert float(model(x, y)) == pytest.approx(float(expected), rel=1e-5)


def test_missing_lpips_weights_error(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("VQTOK_CACHE", str(tmp_path))
    with pytest.raises(FileNotFoundError) as err:
        load_lpips(allow_download=False)
    assert lp.VGG16_URL in str(err.value) and str(tmp_path / lp.VGG16_FILENAME) in str(err.value)
    vgg_path, lin_path = _save_random_weights(tmp_path)
    bad = torch.load(lin_path, weights_only=True)
    bad.pop("lin4.model.1.weight")
    torch.save(bad, lin_path)
    with pytest.raises(ValueError, match="missing"):
        load_lpips(vgg_weights=vgg_path, lin_weights=lin_path)
