"""vqtok.training: losses, discriminator, codebook tricks, config, data stream (fast, no training loop)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import write_tar
from vqtok.models.quantizer import VectorQuantizer
from vqtok.models.vqgan import VQGAN
from vqtok.training import CodebookConfig, TrainConfig
from vqtok.training.codebook import CodebookTrainer, kmeans
from vqtok.training.discriminator import NLayerDiscriminator
from vqtok.training.config import DataConfig, LossConfig, default_model_config
from vqtok.training.data import TrainImages, make_loader, random_crop
from vqtok.training.losses import ChromaReadout, VQGANLoss, adaptive_weight, chroma_loss, hinge_d_loss


def write_images(folder: Path, n: int = 5, size: tuple[int, int] = (80, 64), seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        w, h = size
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([(xx * (i + 1)) % 256, (yy * 3) % 256, ((xx + yy) * 2) % 256], -1)
        img = (base + rng.integers(0, 30, (h, w, 3))).clip(0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / f"img{i}.png")
    return folder


# -- losses / discriminator ------------------------------------------------------------
def test_hinge_loss_values() -> None:
    real = torch.tensor([2.0, 0.5])  # relu(1 - real) = [0, 0.5]
    fake = torch.tensor([-2.0, 0.0])  # relu(1 + fake) = [0, 1]
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.5 * (0.25 + 0.5))


def test_adaptive_weight_is_gradient_norm_ratio() -> None:
    w = torch.randn(4, 3, requires_grad=True)
    x = torch.randn(5, 3)
    rec = (x @ w.t()).abs().mean()
    g = -(x @ w.t()).mean() * 3.0
    gr = torch.autograd.grad(rec, w, retain_graph=True)[0]
    gg = torch.autograd.grad(g, w, retain_graph=True)[0]
    expected = gr.norm() / (gg.norm() + 1e-4)
    assert adaptive_weight(rec, g, w).item() == pytest.approx(expected.item(), rel=1e-5)
    assert adaptive_weight(rec, g * 0, w, max_lambda=7.0).item() == pytest.approx(7.0)  # clamped


def test_chroma_loss_prices_patch_mean_colour_not_lightness_or_detail() -> None:
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    assert chroma_loss(x, x, patch=8).item() == 0.0
    assert chroma_loss(x, x + 0.3, patch=8).item() < 1e-6  # a lightness shift has no chroma
    detail = torch.randn(2, 1, 8, 8).sign().repeat_interleave(2, 2).repeat_interleave(2, 3).repeat(1, 3, 1, 1) * 0.1
    assert chroma_loss(x, x + detail, patch=8).item() < 1e-6  # grey detail that averages out per patch
    green = torch.tensor([-0.4, 0.2, -0.5]).view(1, 3, 1, 1).expand(1, 3, 8, 8)
    grey = green.mean(1, keepdim=True).expand(1, 3, 8, 8)  # the same lightness, no colour
    # green -> grey: |R-G|/sqrt2 and |R+G-2B|/sqrt6 of the patch mean, averaged over the two axes
    expected = (0.6 / 2**0.5 + 0.8 / 6**0.5) / 2
    assert chroma_loss(green, grey, patch=8).item() == pytest.approx(expected, rel=1e-5)
    # one wrong patch of four costs a quarter: the mean runs over patches
    two = torch.cat([torch.cat([green, grey], 3), torch.cat([grey, grey], 3)], 2)
    assert chroma_loss(two, two.new_full(two.shape, 0.0) + grey.mean(), patch=8).item() == pytest.approx(expected / 4, rel=1e-5)


def test_chroma_readout_reads_patch_chroma_from_z_and_trains_the_encoder_side() -> None:
    """The read-out's target is each patch's mean opponent chroma; its loss is 0 when z holds that chroma
    linearly and the head reads it, and its gradient reaches z (so the encoder learns to keep both axes)."""
    torch.manual_seed(0)
    colours = torch.rand(2, 3, 2, 2) * 2 - 1  # (B, 3, h, w): one colour per 8×8 patch
    x = colours.repeat_interleave(8, 2).repeat_interleave(8, 3)  # (B, 3, 16, 16)
    basis = torch.tensor([[1 / 2**0.5, -1 / 2**0.5, 0.0], [1 / 6**0.5, 1 / 6**0.5, -2 / 6**0.5]])
    chroma = torch.einsum("kc,bchw->bkhw", basis, colours)  # (B, 2, h, w)
    readout = ChromaReadout(4, 8)
    # z carries the chroma scaled to a unit vector: (0.1·c, sqrt(1 − |0.1·c|²), 0) is already normalised
    scaled = 0.1 * chroma
    z = torch.cat([scaled, (1 - scaled.pow(2).sum(1, keepdim=True)).sqrt(), torch.zeros(2, 1, 2, 2)], 1)  # (B, 4, h, w)
    with torch.no_grad():  # the head reads channels 0 and 1 back at 10×
        readout.head.weight.zero_()
        readout.head.weight[0, 0] = readout.head.weight[1, 1] = 10.0
        readout.head.bias.zero_()
    assert readout(z, x).item() < 1e-5
    assert readout(z, x.flip(1)).item() > 0.05  # a different colour is priced
    # a free z learns to carry the chroma: the loss falls from its start, and z gets the gradient
    free = torch.zeros(2, 4, 2, 2).normal_().requires_grad_(True)
    head = ChromaReadout(4, 8)
    opt = torch.optim.Adam([free, *head.parameters()], lr=0.05)
    start = head(free, x).item()
    for _ in range(300):
        opt.zero_grad()
        loss = head(free, x)
        loss.backward()
        opt.step()
    assert free.grad is not None and loss.item() < 0.1 * start


def test_chroma_weight_enters_the_generator_loss() -> None:
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    rec = x.flip(1)  # channels swapped: a colour change
    last = torch.zeros(1, requires_grad=True)
    off = VQGANLoss(LossConfig(perceptual_weight=0, disc_weight=0)).generator(x, rec, torch.tensor(0.0), step=0, last_layer=last)
    on = VQGANLoss(LossConfig(perceptual_weight=0, disc_weight=0, chroma_weight=2.0)).generator(
        x, rec, torch.tensor(0.0), step=0, last_layer=last
    )
    assert off.chroma.item() == 0
    assert on.chroma.item() == pytest.approx(chroma_loss(x, rec, patch=8).item())
    assert on.total.item() == pytest.approx(off.total.item() + 2.0 * on.chroma.item(), rel=1e-6)
    with pytest.raises(ValueError, match="chroma_patch"):
        TrainConfig(loss=LossConfig(chroma_weight=1.0, chroma_patch=7))
    with pytest.raises(ValueError, match="chroma_readout_weight must be >= 0"):
        TrainConfig(loss=LossConfig(chroma_readout_weight=-1.0))
    with pytest.raises(ValueError, match="cannot be used with decoder_only"):
        TrainConfig(loss=LossConfig(chroma_readout_weight=1.0), decoder_only=True)


def test_discriminator_matches_taming_layout() -> None:
    taming = pytest.importorskip("taming.modules.discriminator.model")
    ref = taming.NLayerDiscriminator(input_nc=3, ndf=16, n_layers=3)
    ours = NLayerDiscriminator(3, 16, 3)
    ref_sd = ref.state_dict()
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == {k: tuple(v.shape) for k, v in ref_sd.items()}
    ours.load_state_dict(ref_sd, strict=True)
    x = torch.randn(2, 3, 64, 64)
    ours.eval(), ref.eval()
    torch.testing.assert_close(ours(x), ref(x))


def test_generator_loss_terms_and_gan_switch() -> None:
    cfg = LossConfig(perceptual_weight=0.5, disc_weight=0.8, disc_start=10, disc_ch=8, disc_layers=2)
    calls = []

    def fake_perceptual(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return (x - y).pow(2).flatten(1).mean(1)

    loss = VQGANLoss(cfg, perceptual=fake_perceptual)
    last = torch.randn(3, 4, 3, 3, requires_grad=True)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    rec = torch.tanh(torch.nn.functional.conv2d(torch.randn(2, 4, 16, 16), last, padding=1))
    q = torch.tensor(0.1)
    before = loss.generator(x, rec, q, step=9, last_layer=last)
    assert before.gan.item() == 0 and before.lam.item() == 0 and calls
    expected = (x - rec).abs().mean() + 0.5 * (x - rec).pow(2).mean() + 0.1
    assert before.total.item() == pytest.approx(expected.item(), rel=1e-5)
    after = loss.generator(x, rec, q, step=10, last_layer=last)
    assert after.lam.item() > 0 and after.total.item() != pytest.approx(before.total.item())
    d = loss.discriminator_loss(x, rec, step=10)
    assert d.item() > 0


def test_perceptual_without_weights_is_a_clear_error(tmp_path: Path) -> None:
    cfg = LossConfig(perceptual_weight=1.0, vgg_weights=str(tmp_path / "missing-vgg16.pth"))
    with pytest.raises(FileNotFoundError, match="perceptual_weight: 0"):
        VQGANLoss(cfg)
    assert VQGANLoss(LossConfig(perceptual_weight=0.0, disc_weight=0.0)).perceptual is None


# -- codebook tricks -------------------------------------------------------------------
def test_kmeans_recovers_clusters() -> None:
    g = torch.Generator().manual_seed(0)
    centers = torch.tensor([[5.0, 0.0], [-5.0, 0.0], [0.0, 5.0]])
    x = torch.cat([c + 0.1 * torch.randn(50, 2, generator=g) for c in centers])
    found = kmeans(x, 3, iters=10, generator=g)
    dist = torch.cdist(centers, found).min(dim=1).values
    assert dist.max() < 0.2


def test_kmeans_init_then_dead_code_restart() -> None:
    torch.manual_seed(0)
    q = VectorQuantizer(16, 4, beta=0.25, legacy=False, l2_norm=True)
    cfg = CodebookConfig(kmeans_init=True, kmeans_batches=2, dead_after=3, restart_every=1, buffer_size=64)
    cb = CodebookTrainer(q, cfg).train()
    before = q.embedding.weight.detach().clone()
    z = torch.randn(2, 4, 4, 4)
    out = cb(z)
    assert out.z_q.shape == z.shape and out.loss.item() > 0
    cb.end_step()
    assert not bool(cb.initialised)
    cb(torch.randn(2, 4, 4, 4))
    assert bool(cb.initialised) and not torch.equal(before, q.embedding.weight)  # k-means replaced the init
    cb.end_step()
    # from now on only feed features near one direction: most codes go unused, then get re-seeded
    direction = torch.tensor([1.0, 0.0, 0.0, 0.0]).view(1, 4, 1, 1)
    restarted = 0
    for _ in range(8):
        cb(direction + 0.05 * torch.randn(2, 4, 4, 4))
        restarted += cb.end_step()
    assert restarted > 0 and int(cb.restarts) == restarted
    # re-seeded codes come from recent features: the codebook now points mostly along that direction
    codes = torch.nn.functional.normalize(q.embedding.weight, dim=1)
    assert (codes[:, 0] > 0.8).float().mean() > 0.5
    # statistics live in the trainer, never in the quantizer's state dict
    assert set(q.state_dict()) == {"embedding.weight"}
    assert "embedding.weight" not in cb.state_dict()


def test_ema_codebook_moves_codes_to_assigned_means() -> None:
    q = VectorQuantizer(2, 2, l2_norm=False)
    with torch.no_grad():
        q.embedding.weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
    cb = CodebookTrainer(q, CodebookConfig(ema=True, ema_decay=0.5, kmeans_init=False, dead_after=0)).train()
    assert not q.embedding.weight.requires_grad
    z = torch.tensor([[[[3.0], [-3.0]], [[0.0], [0.0]]]])  # (B=1, D=2, h=2, w=1): features (3,0) and (-3,0)
    out = cb(z)
    assert out.ids.flatten().tolist() == [0, 1]
    w = q.embedding.weight
    assert w[0, 0].item() == pytest.approx(2.0, rel=1e-3) and w[1, 0].item() == pytest.approx(-2.0, rel=1e-3)
    # loss has only the commitment term (the codebook gets no gradient)
    assert out.loss.item() == pytest.approx(0.25 * torch.mean((z - torch.tensor([[[[1.0], [-1.0]], [[0.0], [0.0]]]])) ** 2).item())


def test_codebook_trainer_eval_is_plain_quantizer() -> None:
    model = VQGAN(default_model_config())
    cb = CodebookTrainer(model.quantize, CodebookConfig()).eval()
    z = torch.randn(1, 8, 3, 3)
    assert torch.equal(cb(z).ids, model.quantize(z).ids)


# -- config ----------------------------------------------------------------------------
def test_config_yaml_roundtrip_and_unknown_keys(tmp_path: Path) -> None:
    cfg = TrainConfig(steps=7, codebook=CodebookConfig(ema=True))
    path = cfg.to_yaml(tmp_path / "c.yaml")
    back = TrainConfig.from_yaml(path)
    assert back == cfg
    path.write_text("steps: 3\ncodebook: {deadafter: 5}\n")
    with pytest.raises(ValueError, match="codebook.deadafter"):
        TrainConfig.from_yaml(path)


def test_repo_default_config_loads() -> None:
    repo = Path(__file__).resolve().parents[1]
    cfg = TrainConfig.from_yaml(repo / "configs" / "default-tokenizer.yaml")
    assert cfg.model == default_model_config()
    assert cfg.loss.perceptual_weight == 0 and cfg.model.l2_norm_codes
    experiment = TrainConfig.from_yaml(repo / "configs" / "taming-layout-f16-small.yaml")
    assert experiment.model.downsample_factor == 16 and not experiment.model.l2_norm_codes
    assert (experiment.model.n_embed, experiment.model.embed_dim) == (1024, 256)  # taming's codebook


# -- data ------------------------------------------------------------------------------
def test_random_crop_shapes_and_scales() -> None:
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 300, 3), dtype=np.uint8))
    crop = random_crop(img, 64, np.random.default_rng(1), max_zoom_out=4.0)
    assert crop.shape == (3, 64, 64) and crop.dtype == torch.uint8  # short side 50 < 64: upscaled first


def test_hue_rotation_turns_hues_and_keeps_greys() -> None:
    from vqtok.training.data import hue_rotation

    turn = hue_rotation(2 * np.pi / 3)
    np.testing.assert_allclose(turn @ turn.T, np.eye(3), atol=1e-12)  # a rotation
    np.testing.assert_allclose(turn @ [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], atol=1e-12)  # red -> green
    np.testing.assert_allclose(turn @ [0.5, 0.5, 0.5], [0.5, 0.5, 0.5], atol=1e-12)  # greys stay


def test_random_crop_hue_rotate(tmp_path: Path) -> None:
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 96, 3), dtype=np.uint8))
    plain = random_crop(photo, 64, np.random.default_rng(3))
    never = random_crop(photo, 64, np.random.default_rng(3), hue_rotate=0.0)
    always = random_crop(photo, 64, np.random.default_rng(3), hue_rotate=1.0)
    assert torch.equal(plain, never)  # hue_rotate 0 draws nothing: older runs keep their crops
    assert not torch.equal(plain, always)
    # the same crop, hues turned: lightness (R+G+B) kept up to rounding and clipping
    lum = (plain.float().sum(0) - always.float().sum(0)).abs()
    assert float(lum.median()) <= 2.0
    with pytest.raises(ValueError, match="hue_rotate"):
        TrainConfig(data=DataConfig(hue_rotate=1.5))
    cfg = TrainConfig(data=DataConfig(hue_rotate=0.5))
    assert TrainConfig.from_yaml(cfg.to_yaml(tmp_path / "c.yaml")).data.hue_rotate == 0.5


def test_stream_is_deterministic_resumable_and_worker_independent(tmp_path: Path) -> None:
    folder = write_images(tmp_path / "imgs")
    kw = {"batch_size": 3, "crop_size": 32, "seed": 5}
    full = [b for _, b in zip(range(6), make_loader(TrainImages(str(folder), **kw), num_workers=0))]
    resumed = [b for _, b in zip(range(2), make_loader(TrainImages(str(folder), start_batch=4, **kw), num_workers=0))]
    workers = [b for _, b in zip(range(6), make_loader(TrainImages(str(folder), **kw), num_workers=2))]
    assert all(torch.equal(a, b) for a, b in zip(full[4:], resumed))
    assert all(torch.equal(a, b) for a, b in zip(full, workers))
    assert not torch.equal(full[0], full[1])
    # two DDP ranks see disjoint halves of the same global stream
    r0 = next(iter(TrainImages(str(folder), rank=0, world_size=2, **kw)))
    r1 = next(iter(TrainImages(str(folder), rank=1, world_size=2, **kw)))
    assert not torch.equal(r0, r1)


def test_shards_source(tmp_path: Path) -> None:
    folder = write_images(tmp_path / "imgs", n=4)
    shard_dir = tmp_path / "shards"
    shard_dir.mkdir()
    for s in range(2):
        members = [(f"sample{2 * s + i:04d}.png", (folder / f"img{2 * s + i}.png").read_bytes()) for i in range(2)]
        write_tar(shard_dir / f"train-{s:06d}.tar", members)
    spec = str(shard_dir / "train-{000000..000001}.tar")
    kw = {"batch_size": 3, "crop_size": 32, "seed": 1}
    full = [b for _, b in zip(range(4), make_loader(TrainImages(spec, **kw), num_workers=0))]
    resumed = [b for _, b in zip(range(1), make_loader(TrainImages(spec, start_batch=3, **kw), num_workers=2))]
    assert full[0].shape == (3, 3, 32, 32)
    assert torch.equal(full[3], resumed[0])


def test_unreadable_images_are_skipped_and_the_stream_stays_resumable(tmp_path: Path, caplog) -> None:
    folder = write_images(tmp_path / "imgs", n=4)
    (folder / "img1.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    kw = {"batch_size": 4, "crop_size": 32, "seed": 3}
    with caplog.at_level("WARNING", logger="vqtok.training.data"):
        full = [b for _, b in zip(range(4), TrainImages(str(folder), **kw))]
    # each batch is one epoch of 4 images: the bad one leaves 3 crops; it is named once
    assert [b.shape[0] for b in full] == [3, 3, 3, 3]
    warned = [r.getMessage() for r in caplog.records if "img1.png" in r.getMessage()]
    assert len(warned) == 1 and "not a readable image" in warned[0]
    resumed = next(iter(TrainImages(str(folder), start_batch=2, **kw)))
    assert torch.equal(resumed, full[2])

    for i in (0, 2, 3):
        (folder / f"img{i}.png").write_bytes(b"junk")
    with pytest.raises(ValueError, match="every image of training batch 0 is unreadable"):
        next(iter(TrainImages(str(folder), **kw)))


def test_bad_shard_members_and_truncated_shards_are_skipped(tmp_path: Path, caplog) -> None:
    folder = write_images(tmp_path / "imgs", n=4)
    good = [(folder / f"img{i}.png").read_bytes() for i in range(4)]
    shard_dir = tmp_path / "shards"
    shard_dir.mkdir()
    members = [("a.png", good[0]), ("a.json", b"{}"), ("b.png", b"broken"), ("meta.json", b"{}"), ("c.png", good[1])]
    write_tar(shard_dir / "train-000000.tar", members)
    cut = write_tar(shard_dir / "train-000001.tar", [("d.png", good[2]), ("e.png", good[3])])
    cut.write_bytes(cut.read_bytes()[: 512 + -(-len(good[2]) // 512) * 512 + 512 + 100])  # inside e.png's data
    kw = {"batch_size": 4, "crop_size": 32, "seed": 0}
    spec = str(shard_dir / "train-{000000..000001}.tar")
    with caplog.at_level("WARNING", logger="vqtok.training.data"):
        batches = [b for _, b in zip(range(3), TrainImages(spec, **kw))]
    # per epoch: a, b (unreadable), c, d are the image samples (meta.json has no image; e is cut off)
    assert [b.shape[0] for b in batches] == [3, 3, 3]
    messages = " | ".join(r.getMessage() for r in caplog.records)
    assert "train-000000.tar:b" in messages and "not a readable image" in messages
    assert "skipped the rest of shard" in messages and "truncated or corrupt tar" in messages
    resumed = next(iter(TrainImages(spec, start_batch=2, **kw)))
    assert torch.equal(resumed, batches[2])


def test_remote_shards_are_refused_up_front() -> None:
    with pytest.raises(ValueError, match="training reads local shard files; pipe:cat x.tar is remote"):
        TrainImages("pipe:cat x.tar", batch_size=2, crop_size=32)


def test_lr_schedules_warmup_then_decay_to_min_lr() -> None:
    from types import SimpleNamespace

    from vqtok.training.config import TrainConfig
    from vqtok.training.trainer import Trainer

    def lr(cfg: TrainConfig, step: int) -> float:
        return Trainer._lr(SimpleNamespace(config=cfg), step)  # type: ignore[arg-type]

    const = TrainConfig(lr=1e-3, warmup_steps=10, steps=100)
    assert lr(const, 0) == pytest.approx(1e-4) and lr(const, 9) == pytest.approx(1e-3) and lr(const, 99) == 1e-3
    cos = TrainConfig(lr=1e-3, min_lr=1e-5, warmup_steps=10, steps=50, total_steps=110, lr_schedule="cosine")
    assert lr(cos, 10) == pytest.approx(1e-3)
    assert lr(cos, 60) == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5)  # half-way through the decay
    assert lr(cos, 110) == pytest.approx(1e-5) and lr(cos, 500) == pytest.approx(1e-5)  # total_steps, not steps
    lin = TrainConfig(lr=1e-3, warmup_steps=0, steps=100, lr_schedule="linear")
    assert lr(lin, 25) == pytest.approx(0.75e-3) and lr(lin, 100) == 0.0
    values = [lr(cos, s) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))  # monotone after warmup
    with pytest.raises(ValueError, match="lr_schedule"):
        TrainConfig(lr_schedule="step")
