"""FSQ and LFQ: round trips, the shared quantizer contract, and parity with vector-quantize-pytorch / Open-MAGVIT2."""

from __future__ import annotations

import itertools

import pytest
import torch

from vqtok.models.fsq import FSQ
from vqtok.models.lfq import LFQ, entropy_loss
from vqtok.models.quantizer import Quantizer, QuantizerOutput, VectorQuantizer


def _z(d: int, seed: int = 0, scale: float = 2.0) -> torch.Tensor:
    return torch.randn(3, d, 5, 7, generator=torch.Generator().manual_seed(seed)) * scale  # (B, D, h, w)


@pytest.mark.parametrize("make", [lambda: FSQ([8, 5, 5, 3]), lambda: LFQ(6), lambda: LFQ(6, bit_order="big"), lambda: VectorQuantizer(64, 4)])
def test_contract(make) -> None:
    q = make().eval()
    assert isinstance(q, Quantizer)
    z = _z(q.embed_dim)
    out = q(z)
    assert isinstance(out, QuantizerOutput)
    assert out.z_q.shape == z.shape and out.ids.shape == (3, 5, 7) and out.ids.dtype == torch.long
    assert int(out.ids.min()) >= 0 and int(out.ids.max()) < q.codebook_size
    assert torch.equal(q.lookup(z), out.ids)
    # eval-mode z_q is exactly the code of the id
    torch.testing.assert_close(q.codes(out.ids).to(out.z_q.dtype), out.z_q, rtol=0, atol=0)
    assert float(out.loss) == 0.0


def test_fsq_every_id_round_trips_and_codes_are_the_levels() -> None:
    levels = [8, 5, 3, 2]
    q = FSQ(levels)
    assert q.codebook_size == 8 * 5 * 3 * 2
    ids = torch.arange(q.codebook_size).view(1, 1, -1)  # (1, 1, K)
    codes = q.codes(ids)  # (1, D, 1, K)
    # every code is distinct and lies on the grid of its channel
    flat = codes[0, :, 0].t()  # (K, D)
    assert len({tuple(r.tolist()) for r in flat}) == q.codebook_size
    for d, L in enumerate(levels):
        hw = L // 2
        expected = {(i - hw) / hw for i in range(L)}
        assert set(flat[:, d].tolist()) == expected
    # mixed radix, channel 0 least significant: id 1 moves channel 0 by one level
    assert torch.equal(codes[0, :, 0, 1] - codes[0, :, 0, 0], torch.tensor([1 / 4, 0, 0, 0]))


def test_fsq_lookup_of_preimages_inverts_codes() -> None:
    # a pre-image of every code: invert the bound at the integer level
    levels = [7, 6, 5]
    q = FSQ(levels)
    ids = torch.arange(q.codebook_size).view(1, 1, -1)
    level = q.codes(ids) * (q._levels // 2).view(1, -1, 1, 1)  # integer levels (1, D, 1, K)
    L = q._levels.view(1, -1, 1, 1).float()
    half_l = (L - 1) * (1 + q.eps) / 2
    offset = torch.where(L % 2 == 0, 0.5, 0.0)
    z = torch.atanh((level + offset) / half_l) - torch.atanh(offset / half_l)
    assert torch.equal(q.lookup(z), ids)


def test_fsq_straight_through_gradient_and_bad_input() -> None:
    q = FSQ([5, 5]).train()
    z = _z(2).requires_grad_()
    out = q(z)
    out.z_q.sum().backward()
    assert z.grad is not None and bool((z.grad > 0).all())  # d tanh > 0 everywhere
    with pytest.raises(ValueError, match="levels"):
        FSQ([5, 1])
    with pytest.raises(ValueError, match="channels"):
        q.lookup(torch.zeros(1, 3, 2, 2))


@pytest.mark.parametrize("order", ["little", "big"])
def test_lfq_every_id_round_trips(order: str) -> None:
    q = LFQ(5, bit_order=order)
    ids = torch.arange(32).view(2, 4, 4)
    codes = q.codes(ids)
    assert set(codes.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(q.lookup(codes), ids)
    assert torch.equal(q.codebook(), q.codes(torch.arange(32).view(1, 1, 32))[0, :, 0].t())
    one = q.codes(torch.ones(1, 1, 1, dtype=torch.long))[0, :, 0, 0]  # id 1: only the lowest bit set
    lowest = 0 if order == "little" else 4
    assert one[lowest] == 1 and int((one > 0).sum()) == 1


def test_lfq_zero_is_negative_and_limits() -> None:
    q = LFQ(3)
    assert int(q.lookup(torch.zeros(1, 3, 1, 1))) == 0
    with pytest.raises(ValueError, match="bits"):
        LFQ(32)
    with pytest.raises(ValueError, match="bit_order"):
        LFQ(4, bit_order="middle")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="integers"):
        q.codes(torch.zeros(1, 1, 1))


def test_lfq_training_loss_and_gradient() -> None:
    q = LFQ(4, entropy_weight=0.1, commitment_weight=0.25).train()
    z = _z(4, scale=0.5).requires_grad_()
    out = q(z)
    terms = q.losses(z.detach())
    torch.testing.assert_close(out.loss.detach(), 0.1 * terms["entropy"] + 0.25 * terms["commitment"])
    # the entropies are bounded by log K
    assert 0 <= float(terms["per_sample_entropy"]) <= float(torch.log(torch.tensor(16.0))) + 1e-5
    assert 0 <= float(terms["codebook_entropy"]) <= float(torch.log(torch.tensor(16.0))) + 1e-5
    (out.z_q.sum() + out.loss).backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()
    # a batch all on one code has zero codebook entropy: the penalty is then positive-ish
    same = torch.ones(2, 4, 3, 3)
    assert float(q.losses(same)["codebook_entropy"]) < 1e-3


def test_entropy_loss_uniform_and_peaked() -> None:
    k = 8
    uniform = torch.zeros(10, k)  # every token spread over all codes
    s, b, loss = entropy_loss(uniform, temperature=1.0)
    torch.testing.assert_close(s, torch.log(torch.tensor(8.0)))
    torch.testing.assert_close(b, torch.log(torch.tensor(8.0)), atol=1e-4, rtol=0)
    peaked = torch.eye(k).repeat(2, 1) * 100  # each token sure of a different code, all codes used
    s, b, loss = entropy_loss(peaked, temperature=1.0)
    assert float(s) < 1e-6 and abs(float(b) - float(torch.log(torch.tensor(8.0)))) < 1e-3 and float(loss) < -2.0


# ------------------------------------------------------------------ reference parity (optional)


def test_fsq_matches_vector_quantize_pytorch() -> None:
    vqp = pytest.importorskip("vector_quantize_pytorch")
    for levels in ([8, 8, 8, 5, 5, 5], [7, 5, 5, 5], [8, 6, 5]):
        ref = vqp.FSQ(levels=levels).eval()
        ours = FSQ(levels).eval()
        z = _z(len(levels), seed=len(levels), scale=3.0)
        ref_out, ref_ids = ref(z)
        out = ours(z)
        assert torch.equal(out.ids, ref_ids.long())
        torch.testing.assert_close(out.z_q, ref_out, rtol=0, atol=1e-6)
        torch.testing.assert_close(ours.codes(out.ids), ref.indices_to_codes(ref_ids), rtol=0, atol=0)


def test_lfq_matches_vector_quantize_pytorch() -> None:
    vqp = pytest.importorskip("vector_quantize_pytorch")
    ref = vqp.LFQ(dim=10, codebook_size=2**10).eval()
    ours = LFQ(10, bit_order="big").eval()
    z = _z(10, seed=3)
    ref_out, ref_ids, _ = ref(z)
    out = ours(z)
    assert torch.equal(out.ids, ref_ids.long())
    torch.testing.assert_close(out.z_q, ref_out, rtol=0, atol=0)
    torch.testing.assert_close(ours.codes(out.ids), ref.indices_to_codes(ref_ids), rtol=0, atol=0)


def test_lfq_matches_open_magvit2() -> None:
    pytest.importorskip("einops")
    ref_mod = pytest.importorskip("open_magvit2.taming.modules.vqvae.lookup_free_quantize")
    ref = ref_mod.LFQ(dim=6, codebook_size=2**6).eval()
    ours = LFQ(6).eval()
    z = _z(6, seed=4)
    quant, _, ref_ids = ref(z)
    out = ours(z)
    assert torch.equal(out.ids.flatten(), ref_ids.long())
    torch.testing.assert_close(out.z_q, quant, rtol=0, atol=1e-6)  # the reference keeps x + (q - x)
    # the training loss terms (entropy penalty + commitment) in training mode
    ref.train()
    ours.train()
    (_, ref_entropy, _), breakdown = ref(z, return_loss_breakdown=True)
    terms = ours.losses(z)
    torch.testing.assert_close(terms["entropy"], ref_entropy, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(terms["per_sample_entropy"], breakdown.per_sample_entropy, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(terms["codebook_entropy"], breakdown.codebook_entropy, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(terms["commitment"], breakdown.commitment, rtol=1e-6, atol=1e-7)
    # ids -> codes: the reference's get_codebook_entry
    b, h, w = out.ids.shape
    ref_codes = ref.get_codebook_entry(out.ids.reshape(b, h * w), (b, h, w, 6), None)
    torch.testing.assert_close(ours.codes(out.ids), ref_codes.float(), rtol=0, atol=0)


def test_all_ids_distinct_over_grid_of_signs() -> None:
    q = LFQ(4)
    signs = torch.tensor(list(itertools.product([-1.0, 1.0], repeat=4))).t().reshape(1, 4, 4, 4)  # every code once
    assert sorted(q.lookup(signs).flatten().tolist()) == list(range(16))
