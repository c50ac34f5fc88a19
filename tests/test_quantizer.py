import pytest
import torch

from vqtok.models.quantizer import VectorQuantizer, nearest_code


def test_nearest_code_matches_cdist_argmin_and_is_chunk_independent():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(1000, 8, generator=g)
    codebook = torch.randn(300, 8, generator=g)
    expected = torch.cdist(z, codebook).argmin(dim=1)
    assert torch.equal(nearest_code(z, codebook), expected)
    assert torch.equal(nearest_code(z, codebook, chunk_size=7), expected)


def test_nearest_code_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="expects z"):
        nearest_code(torch.zeros(4, 3), torch.zeros(5, 4))


def test_codes_is_the_inverse_of_lookup():
    torch.manual_seed(0)
    q = VectorQuantizer(64, 4)
    q.embedding.weight.data.normal_()
    ids = torch.randint(0, 64, (2, 5, 6))
    codes = q.codes(ids)  # (2, 4, 5, 6)
    assert codes.shape == (2, 4, 5, 6)
    assert torch.equal(q.lookup(codes), ids)


def test_l2_norm_lookup_round_trip_and_unit_codes():
    torch.manual_seed(0)
    q = VectorQuantizer(32, 8, l2_norm=True)
    ids = torch.randint(0, 32, (1, 3, 3))
    codes = q.codes(ids)
    assert torch.allclose(codes.norm(dim=1), torch.ones(1, 3, 3), atol=1e-5)
    assert torch.equal(q.lookup(codes * 3.0), ids)  # scale does not matter for cosine lookup


@pytest.mark.parametrize("legacy", [True, False])
def test_loss_terms_and_straight_through(legacy):
    torch.manual_seed(0)
    q = VectorQuantizer(16, 4, beta=0.25, legacy=legacy).train()
    q.embedding.weight.data.normal_()
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    out = q(z)
    # straight-through: d z_q / d z is the identity
    out.z_q.sum().backward(retain_graph=True)
    assert torch.allclose(z.grad, torch.ones_like(z))
    # loss: the β weights the codebook term (legacy, taming) or the commitment term (paper)
    z.grad = None
    q.embedding.weight.grad = None
    out.loss.backward()
    codes = q.codes(out.ids)
    mse_grad_z = 2 * (z - codes).detach() / z.numel()
    enc_weight = 1.0 if legacy else 0.25
    assert torch.allclose(z.grad, enc_weight * mse_grad_z, atol=1e-6)
    assert q.embedding.weight.grad is not None
    assert q.embedding.weight.grad.abs().sum() > 0


def test_eval_mode_has_zero_loss_and_no_grad_tricks():
    q = VectorQuantizer(16, 4).eval()
    out = q(torch.randn(1, 4, 2, 2))
    assert out.loss.item() == 0.0
    assert out.ids.dtype == torch.long and out.ids.shape == (1, 2, 2)


def test_nearest_code_multiplies_blocks_of_one_shape_whatever_n(monkeypatch):
    from vqtok.models import quantizer

    g = torch.Generator().manual_seed(0)
    codebook = torch.randn(300, 8, generator=g)
    shapes = []
    real_mm = torch.mm

    def spy(a, b, **kw):
        shapes.append(tuple(a.shape))
        return real_mm(a, b, **kw)

    monkeypatch.setattr(torch, "mm", spy)
    for n in (1, 5, 256, 257, 1000):
        z = torch.randn(n, 8, generator=g)
        ids = nearest_code(z, codebook)
        assert ids.shape == (n,)
        assert torch.equal(ids, torch.cdist(z, codebook).argmin(dim=1))
    # one (rows, D) shape for every product: 1 + 1 + 1 + 2 + 4 blocks, the last of each zero-padded
    assert shapes == [(quantizer.block_rows(300), 8)] * 9
    assert quantizer.block_rows(300) == 256 and quantizer.block_rows(1 << 16) == 128  # budget caps it


def test_nearest_code_and_lookup_validate_their_input():
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        nearest_code(torch.zeros(4, 3), torch.zeros(5, 3), chunk_size=0)
    q = VectorQuantizer(16, 4)
    with pytest.raises(ValueError, match=r"lookup expects features \(B, 4, h, w\)"):
        q.lookup(torch.zeros(1, 3, 2, 2))
