"""IBQ: model layout, inner-product lookup, Lightning checkpoint import, CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import real_photos
from vqtok import Tokenizer
from vqtok.cli import main
from vqtok.convert.ibq import from_ibq, infer_ibq_config
from vqtok.models.ibq import IBQ, IBQConfig, IndexQuantizer, max_inner_product
from vqtok.models.quantizer import nearest_code
from vqtok.models.registry import build_model, model_type_of
from vqtok.models.vqgan import VQGAN

SMALL = IBQConfig(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(16,), z_channels=16, embed_dim=16,
                  n_embed=256, resolution=64)


def _model(seed: int, cfg: IBQConfig = SMALL) -> IBQ:
    torch.manual_seed(seed)
    return IBQ(cfg).eval()


def ibq_checkpoint(path: Path, model: IBQ, *, ema: IBQ | None = None) -> Path:
    """A file shaped like IBQ's Lightning checkpoints: loss.*, LitEma's model_ema.* (dots removed)."""
    state = dict(model.state_dict())
    state["loss.discriminator.main.0.weight"] = torch.randn(8, 3, 4, 4)
    state["loss.perceptual_loss.lin0.model.1.weight"] = torch.randn(1, 64, 1, 1)
    if ema is not None:
        state["model_ema.decay"] = torch.tensor(0.999)
        state["model_ema.num_updates"] = torch.tensor(-1, dtype=torch.int)
        state.update({"model_ema." + k.replace(".", ""): v for k, v in ema.state_dict().items()})
        state["model_ema.lossdiscriminatormain0weight"] = torch.randn(8, 3, 4, 4)
    torch.save({"state_dict": state, "epoch": 7, "global_step": 100, "pytorch-lightning_version": "2.2.1"}, path)
    return path


def test_layout_is_tamings_and_registered(tmp_path: Path) -> None:
    model = _model(0)
    assert set(model.state_dict()) == set(VQGAN(SMALL.vqgan_config()).state_dict())
    assert not isinstance(model, VQGAN)  # the diffusers exporter and VQGAN tools must not take it for one
    assert model_type_of(model) == "ibq"
    assert isinstance(build_model("ibq", SMALL.to_dict()), IBQ)
    assert SMALL.hash() != SMALL.vqgan_config().hash()
    tok = Tokenizer(model)
    tok.save_pretrained(tmp_path / "m")
    again = Tokenizer.from_pretrained(tmp_path / "m")
    assert isinstance(again.model, IBQ) and again.config == SMALL
    photos = real_photos(2)
    assert torch.equal(again.encode(photos, size=64), tok.encode(photos, size=64))
    with pytest.raises(ValueError, match="GroupNorm"):
        IBQConfig(ch=40)
    with pytest.raises(ValueError, match="unknown IBQ config keys: l2_norm_codes"):
        IBQConfig.from_dict({**SMALL.to_dict(), "l2_norm_codes": True})


def test_lookup_is_the_largest_inner_product_not_the_nearest_code() -> None:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(500, 16, generator=g)
    codebook = torch.randn(300, 16, generator=g) * torch.rand(300, 1, generator=g) * 3  # unequal norms
    expected = torch.softmax(z @ codebook.t(), dim=1).max(dim=1).indices  # IBQ: argmax softmax(z·e)
    assert torch.equal(max_inner_product(z, codebook), expected)
    assert torch.equal(max_inner_product(z, codebook, chunk_size=7), expected)
    assert torch.equal(max_inner_product(z, codebook, exact=False), (z @ codebook.t()).argmax(dim=1))
    assert (nearest_code(z, codebook) != expected).float().mean() > 0.2  # a different rule, really
    assert max_inner_product(z[:0], codebook).shape == (0,)
    with pytest.raises(ValueError, match=r"z \(N, D\) and codebook \(K, D\)"):
        max_inner_product(z, codebook[:, :8])


def test_quantizer_round_trip_and_training_gradients() -> None:
    torch.manual_seed(0)
    q = IndexQuantizer(64, 8)
    z = torch.randn(2, 8, 4, 4)
    ids = q.lookup(z)
    assert ids.shape == (2, 4, 4) and ids.dtype == torch.long
    out = q.eval()(z)
    assert torch.equal(out.z_q, q.codes(ids)) and float(out.loss) == 0.0
    q.train()
    z.requires_grad_(True)
    out = q(z)
    assert torch.allclose(out.z_q, q.codes(ids), atol=1e-5)
    out.loss.backward()
    grads = q.embedding.weight.grad
    assert z.grad is not None and grads is not None
    used = torch.zeros(64, dtype=torch.bool)
    used[ids.unique()] = True
    assert (grads[~used].abs().sum(dim=1) > 0).all()  # index backpropagation: unused codes learn too


def test_from_ibq_picks_ema_and_infers_config(tmp_path: Path) -> None:
    raw, ema = _model(1), _model(2)
    path = ibq_checkpoint(tmp_path / "imagenet256_262144.ckpt", raw, ema=ema)
    tok = from_ibq(path)
    assert isinstance(tok.model, IBQ)
    assert tok.config == IBQConfig(**{**SMALL.to_dict(), "resolution": 256, "attn_resolutions": (64,)})
    w = "quantize.embedding.weight"
    assert torch.equal(tok.model.state_dict()[w], ema.state_dict()[w])
    assert torch.equal(from_ibq(path, ema=False).model.state_dict()[w], raw.state_dict()[w])
    assert infer_ibq_config(raw.state_dict(), resolution=64) == SMALL
    photos = real_photos(2)
    ids = tok.encode(photos, size=64)
    assert torch.equal(ids, Tokenizer(ema).encode(photos, size=64))
    no_ema = ibq_checkpoint(tmp_path / "raw.ckpt", raw)
    with pytest.raises(ValueError, match="no model_ema"):
        from_ibq(no_ema, ema=True)


def test_from_ibq_refuses_other_checkpoints(tmp_path: Path) -> None:
    from vqtok.models.magvit2 import MAGVIT2, MAGVIT2Config

    torch.save({"state_dict": MAGVIT2(MAGVIT2Config(ch=32, ch_mult=(1, 2), num_res_blocks=1, z_channels=6)).state_dict()},
               tmp_path / "lfq.ckpt")
    with pytest.raises(ValueError, match="not an IBQ checkpoint.*from_magvit2"):
        from_ibq(tmp_path / "lfq.ckpt")


def test_cli_convert_ibq(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = ibq_checkpoint(tmp_path / "m.ckpt", _model(1), ema=_model(3))
    assert main(["convert", "ibq", str(path), "--out", str(tmp_path / "out"), "--resolution", "64"]) == 0
    assert "256 codes, f4" in capsys.readouterr().out
    tok = Tokenizer.from_pretrained(tmp_path / "out")
    assert isinstance(tok.model, IBQ) and tok.config == SMALL
    photos = real_photos(2)
    assert torch.equal(tok.encode(photos, size=64), Tokenizer(_model(3)).encode(photos, size=64))


def test_cli_pretokenize_usage_eval_with_262144_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The pipeline runs unchanged on an IBQ folder: ids above 65535 go to int32 shards."""
    import io
    import json
    import tarfile

    import numpy as np

    cfg = IBQConfig(**{**SMALL.to_dict(), "embed_dim": 8, "n_embed": 2**18})
    Tokenizer(_model(5, cfg)).save_pretrained(tmp_path / "m")
    photos = real_photos(3)
    (tmp_path / "data").mkdir()
    with tarfile.open(tmp_path / "data" / "train-000000.tar", "w") as tf:
        for i, img in enumerate(photos):
            buf = io.BytesIO()
            img.save(buf, format="PNG")
            info = tarfile.TarInfo(f"s{i:03d}.png")
            info.size = len(buf.getvalue())
            tf.addfile(info, io.BytesIO(buf.getvalue()))
    assert main(["pretokenize", "--model", str(tmp_path / "m"), "--input", str(tmp_path / "data" / "train-000000.tar"),
                 "--out", str(tmp_path / "tokens"), "--size", "64", "--workers", "0", "--no-progress"]) == 0
    with tarfile.open(tmp_path / "tokens" / "train-000000.tar") as tf:
        arrays = [np.load(io.BytesIO(tf.extractfile(m).read())) for m in tf if m.name.endswith(".npy")]
    want = Tokenizer.from_pretrained(tmp_path / "m").encode(photos, size=64).numpy()
    assert [a.dtype for a in arrays] == [np.int32] * 3
    np.testing.assert_array_equal(np.stack(arrays), want)
    assert int(want.max()) > 65535
    capsys.readouterr()
    assert main(["usage", str(tmp_path / "tokens"), "--json"]) == 0
    usage = json.loads(capsys.readouterr().out)
    assert usage["codebook_size"] == 2**18 and usage["used_codes"] == len(np.unique(want))
    for i, img in enumerate(photos):
        img.save(tmp_path / f"{i}.png")
    report = tmp_path / "report.json"
    assert main(["eval", "--model", str(tmp_path / "m"), "--data", str(tmp_path), "--size", "64", "--no-fid", "--no-lpips",
                 "--no-progress", "--out", str(report)]) == 0
    r = json.loads(report.read_text())
    assert r["image_count"] == 3 and r["codebook_usage"]["codebook_size"] == 2**18 and r["config_hash"] == cfg.hash()
