"""fp32 ids on CPU do not depend on how images were batched (issue 13, "Determinism").

The probe model's codebook is the worst case of a dense codebook: two codes mirrored around each
latent of the probed image (1e-3 of its norm apart), so each id is decided by the rounding of
the features and distances. Before the fix, oneDNN's batch-size-dependent convolution kernels,
the NHWC GroupNorm kernel (batch- and thread-dependent) and the 1-row GEMV of the search flipped
ids here in every batch; now an image gives the same ids alone and at any position of any batch,
and the same features and ids at 1, 2, 3, 5 and 6 threads (before: PyTorch's SiLU split off SIMD
boundaries at 3, 5, 6 threads and 1x1 convolutions on oneDNN from 2 threads on; see
vqtok/models/thread_invariance.py and docs/performance.md). benchmarks/batch_invariance.py
measures the same on a larger model (docs/performance.md, "Batch invariance").
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import real_photos
from vqtok import Tokenizer, VQGANConfig
from vqtok.images import to_model_input, to_uint8_batch
from vqtok.models import thread_invariance
from vqtok.models.quantizer import nearest_code
from vqtok.models.vqgan import GroupNorm

# f4, attention at the 8x8 level: small enough for 152 batched encodes in a few seconds, and
# batch-variant before the fix (checked: every batch flipped ids).
PROBE = VQGANConfig(
    ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(16,), z_channels=8, embed_dim=8, n_embed=256, resolution=64
)
SIZE = 32  # 8x8 ids per image


def _mirrored_codes(latents: torch.Tensor, n_codes: int, g: torch.Generator) -> torch.Tensor:
    """latents (n, D) -> codebook (n_codes, D): codes 2i, 2i+1 mirrored around latent i, the rest far."""
    n, d = latents.shape
    assert 2 * n <= n_codes
    step = 1e-3 * latents.norm(dim=1, keepdim=True) * F.normalize(torch.randn(n, d, generator=g), dim=1)
    codes = 3 * latents.std() * torch.randn(n_codes, d, generator=g)
    codes[0 : 2 * n : 2] = latents + step
    codes[1 : 2 * n : 2] = latents - step
    return codes


@pytest.fixture(scope="module")
def probe():
    """(tokenizer with a codebook dense around the probed photo's latents, probed photo, other photos)."""
    torch.manual_seed(0)
    tok = Tokenizer.from_config(PROBE, batch_size=64)
    pixels = to_uint8_batch(real_photos(4), size=SIZE).pixels  # (4, 3, 32, 32) uint8
    model = tok.model
    with torch.inference_mode():
        z = model.quant_conv(model.encoder(to_model_input(pixels[:1])))  # (1, D, 8, 8)
    latents = z[0].permute(1, 2, 0).reshape(-1, PROBE.embed_dim)  # (64, D)
    with torch.no_grad():
        model.quantize.embedding.weight.copy_(_mirrored_codes(latents, PROBE.n_embed, torch.Generator().manual_seed(0)))
    return tok, pixels[:1], pixels[1:]


def test_image_alone_equals_it_at_every_position_of_batches_of_2_to_17(probe, one_thread):
    tok, target, others = probe
    alone = tok.encode(target)  # (1, 8, 8)
    assert len(torch.unique(alone)) > 32  # the probe really sits between many code pairs
    g = torch.Generator().manual_seed(1)
    failures = []
    for bs in range(2, 18):
        for pos in range(bs):
            companions = torch.randint(0, 256, (bs - 1, 3, SIZE, SIZE), dtype=torch.uint8, generator=g)
            real = torch.randint(0, others.shape[0], ((bs - 1) // 2,), generator=g)
            companions[: real.numel()] = others[real]  # half real photos, half noise
            ids = tok.encode(torch.cat([companions[:pos], target, companions[pos:]]))  # (bs, 8, 8)
            flipped = int((ids[pos] != alone[0]).sum())
            if flipped:
                failures.append((bs, pos, flipped))
    assert not failures, f"(batch size, position, ids flipped): {failures[:10]} ({len(failures)} of 152 batches)"


# Thread counts whose per-thread ranges end off SIMD boundaries (3, 5, 6) and 2, where PyTorch
# switches 1x1 convolutions from its own GEMM to oneDNN.
THREADS = (1, 2, 3, 5, 6)


def _encode_at_thread_counts(tok: Tokenizer, pixels: torch.Tensor) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """pixels (B, 3, S, S) uint8 -> {threads: (ids (B, h, w), features before the search (B, D, h, w))}."""
    features: list[torch.Tensor] = []
    hook = tok.model.quant_conv.register_forward_hook(lambda m, i, out: features.append(out.clone()))
    old = torch.get_num_threads()
    out = {}
    try:
        for threads in THREADS:
            torch.set_num_threads(threads)
            features.clear()
            out[threads] = (tok.encode(pixels), torch.cat(features))
    finally:
        torch.set_num_threads(old)
        hook.remove()
    assert torch.get_num_threads() == old
    return out


def _assert_thread_invariant(runs: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> None:
    ids, features = runs[1]
    failures = [
        f"{threads} threads: features differ by {(features_t - features).abs().max():.2e}, "
        f"{int((ids_t != ids).sum())} of {ids.numel()} ids differ"
        for threads, (ids_t, features_t) in runs.items()
        if not (torch.equal(features_t, features) and torch.equal(ids_t, ids))
    ]
    assert not failures, "; ".join(failures)


def test_default_model_ids_do_not_depend_on_the_thread_count():
    # The shipped f8 model on real photos at 152 px. Before the fix, at 3, 5 and 6 threads the
    # per-thread ranges of SiLU (32x152x152 = 739328 elements and smaller) ended off the vector
    # boundary, and from 2 threads on quant_conv (1x1, 64x19x19 in) ran on oneDNN instead of
    # PyTorch's GEMM: the features differed by up to 3e-6.
    tok = Tokenizer.default()
    pixels = to_uint8_batch(real_photos(2), size=152).pixels  # (2, 3, 152, 152) uint8
    _assert_thread_invariant(_encode_at_thread_counts(tok, pixels))


def test_dense_codebook_ids_do_not_depend_on_the_thread_count():
    # The probe at 104 px (26x26 ids) with a 64-channel quant_conv (1x1 on 64x26x26: oneDNN from
    # 2 threads on before the fix; SiLU ranges off the vector boundary at 3, 5 and 6 threads), its
    # codebook mirrored around the photo's latents: 181-260 of 1352 ids flipped at 2-6 threads.
    cfg = dataclasses.replace(PROBE, z_channels=64, n_embed=2048)
    torch.manual_seed(0)
    tok = Tokenizer.from_config(cfg)
    pixels = to_uint8_batch(real_photos(2), size=104).pixels  # (2, 3, 104, 104) uint8
    model = tok.model
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            z = model.quant_conv(model.encoder(to_model_input(pixels[:1])))  # (1, D, 26, 26)
    finally:
        torch.set_num_threads(old)
    latents = z[0].permute(1, 2, 0).reshape(-1, cfg.embed_dim)  # (676, D)
    with torch.no_grad():
        model.quantize.embedding.weight.copy_(_mirrored_codes(latents, cfg.n_embed, torch.Generator().manual_seed(0)))
    runs = _encode_at_thread_counts(tok, pixels)
    assert len(torch.unique(runs[1][0][0])) > 338  # the probed photo sits between many code pairs
    _assert_thread_invariant(runs)


@pytest.mark.parametrize("shape", [(1, 32, 64, 64), (1, 64, 33, 31), (2, 128, 16, 16), (1, 3, 5, 7)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_thread_invariant_silu_is_one_threads_silu(shape, channels_last):
    x = 4 * torch.randn(shape, generator=torch.Generator().manual_seed(0))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        reference = F.silu(x)
        for threads in THREADS:
            torch.set_num_threads(threads)
            with torch.no_grad():
                out = thread_invariance.silu(x)
                inplace = thread_invariance.silu(x.clone(memory_format=torch.preserve_format), inplace=True)
            leaf = x.clone().requires_grad_()
            graph = thread_invariance.silu(leaf)  # differentiable: the pieces are concatenated
            graph.sum().backward()
            for y in (out, inplace, graph.detach()):
                assert torch.equal(y, reference) and y.stride() == reference.stride(), threads
            assert leaf.grad is not None and torch.allclose(leaf.grad, torch.sigmoid(x) * (1 + x * (1 - torch.sigmoid(x))), atol=1e-6)
    finally:
        torch.set_num_threads(old)


def test_thread_invariant_conv2d_is_one_threads_conv2d():
    g = torch.Generator().manual_seed(0)
    old = torch.get_num_threads()
    try:
        for c_in, c_out, k, stride, channels_last in [(64, 8, 1, 1, True), (32, 64, 1, 1, False), (32, 32, 3, 1, True), (32, 32, 1, 2, True)]:
            x = torch.randn(1, c_in, 32, 32, generator=g)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            w, b = torch.randn(c_out, c_in, k, k, generator=g) / c_in, torch.randn(c_out, generator=g)
            torch.set_num_threads(1)
            reference = F.conv2d(x, w, b, stride, k // 2)
            for threads in THREADS:
                torch.set_num_threads(threads)
                with thread_invariance.ThreadInvariantOps():
                    out = F.conv2d(x, w, b, stride, k // 2)
                if k == 1 and stride == 1:  # the 1x1 case is the one PyTorch runs differently above 1 thread
                    assert torch.equal(out, reference) and out.stride() == reference.stride(), (c_in, c_out, threads)
                else:  # passed through to F.conv2d
                    assert torch.allclose(out, reference, atol=1e-5)
    finally:
        torch.set_num_threads(old)


def test_eval_encode_features_equal_one_image_at_a_time_and_training_stays_batched(probe):
    tok, target, others = probe
    model = tok.model
    x = to_model_input(torch.cat([others, target])).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        batched = model.encode(x)
        for i in range(x.shape[0]):
            alone = model.encode(x[i : i + 1])
            assert torch.equal(batched.z_q[i : i + 1], alone.z_q) and torch.equal(batched.ids[i], alone.ids[0])
    model.train()
    try:
        out = model.encode(x)  # default in training: the whole batch at once, with a loss to train on
        assert out.loss.requires_grad and out.ids.shape == batched.ids.shape
        one_by_one = model.encode(x, batch_invariant=True)  # asked for: the eval ids, a trainable loss
        assert torch.equal(one_by_one.ids, batched.ids)
        per_image = [model.encode(x[i : i + 1]).loss for i in range(x.shape[0])]
        assert torch.allclose(one_by_one.loss, torch.stack(per_image).mean())
        one_by_one.loss.backward()
        assert model.encoder.conv_in.weight.grad is not None
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()


def test_nearest_code_of_a_row_does_not_depend_on_the_other_rows():
    g = torch.Generator().manual_seed(0)
    for d in (8, 64, 256):
        z = 3 * torch.randn(300, d, generator=g)
        codebook = _mirrored_codes(z, 600, g)  # every row between two codes: ids decided by rounding
        together = nearest_code(z, codebook)
        # one row (a GEMV before the fix: 77-137 of 300 ids flipped) and rows in odd-sized groups
        alone = torch.cat([nearest_code(z[i : i + 1], codebook) for i in range(z.shape[0])])
        in_sevens = torch.cat([nearest_code(z[i : i + 7], codebook)[:1] for i in range(z.shape[0])])
        assert torch.equal(alone, together), f"D={d}: {int((alone != together).sum())} of 300 differ"
        assert torch.equal(in_sevens, together), f"D={d}: {int((in_sevens != together).sum())} of 300 differ"
        # taming's full-matrix expression, on this many rows, agrees bit for bit
        dist = torch.sum(z**2, dim=1, keepdim=True) + torch.sum(codebook**2, dim=1) - 2 * torch.matmul(z, codebook.t())
        assert torch.equal(together, torch.argmin(dist, dim=1))


@pytest.mark.parametrize("mean_over_std", [10.0, 30.0])
def test_groupnorm_on_channels_last_is_as_precise_as_nchw(mean_over_std):
    # PyTorch 2.13's NHWC GroupNorm kernel, before the fix: 2e-4 from float64 at mean/std 10, 1.3e-3 at 30.
    g = torch.Generator().manual_seed(0)
    norm = GroupNorm(32, 64, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.1 * torch.randn(64, generator=g))
        norm.bias.copy_(0.1 * torch.randn(64, generator=g))
    x = mean_over_std + torch.randn(2, 64, 16, 16, generator=g)  # large mean, unit spread per group
    reference = F.group_norm(x.double(), 32, norm.weight.double(), norm.bias.double(), 1e-6)
    with torch.inference_mode():
        nchw = norm(x)
        nhwc = norm(x.contiguous(memory_format=torch.channels_last))
    assert nhwc.is_contiguous(memory_format=torch.channels_last)  # the layout is kept for the next conv
    assert (nchw.double() - reference).abs().max() < 1e-5
    assert (nhwc.double() - reference).abs().max() < 1e-5


def test_channels_last_decode_matches_a_float64_decode():
    # issue 13's reproduction: 5.1e-4 (3.3e-5 on this machine) from float64 with channels_last before the fix
    cfg = VQGANConfig(ch=32, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(), z_channels=4, embed_dim=4, n_embed=64, resolution=64)
    torch.manual_seed(0)
    tok = Tokenizer.from_config(cfg)
    ids = torch.randint(0, 64, (2, 16, 16))
    with torch.no_grad():
        reference = tok.model.double().decode_ids(ids)
    tok.model.float()
    for channels_last in (False, True):
        tok.channels_last = channels_last
        with torch.inference_mode():
            ours = tok.model.decode_ids(ids, channels_last=channels_last)  # (2, 3, 16, 16), before clamping
        assert (ours.double() - reference).abs().max() < 1e-5, channels_last


def test_autocast_encode_is_the_tokenizers_fast_path_and_batch_invariant(probe, one_thread):
    tok, target, others = probe
    model = tok.model
    pixels = torch.cat([others, target])  # (4, 3, 32, 32) uint8
    x = to_model_input(pixels).contiguous(memory_format=torch.channels_last)
    tok.precision = "bf16"
    try:
        fast = tok.encode(pixels)  # the Tokenizer's bf16 path: the whole batch under autocast
    finally:
        tok.precision = "fp32"
    with torch.inference_mode():
        batched = model.encode(x, batch_invariant=False, autocast_dtype=torch.bfloat16)
        invariant = model.encode(x, autocast_dtype=torch.bfloat16)  # eval on CPU: one image at a time
        alone = [model.encode(x[i : i + 1], autocast_dtype=torch.bfloat16).ids for i in range(x.shape[0])]
    assert torch.equal(batched.ids, fast)  # same computation as the Tokenizer's fast mode
    assert batched.z_q.dtype == torch.float32  # quant_conv and the search outside autocast
    assert torch.equal(invariant.ids, torch.cat(alone))


def test_groupnorm_under_autocast_and_in_half_precision():
    g = torch.Generator().manual_seed(0)
    norm = GroupNorm(32, 64, eps=1e-6)
    x = (5 + torch.randn(1, 64, 8, 8, generator=g)).contiguous(memory_format=torch.channels_last)
    reference = F.group_norm(x.double(), 32, norm.weight.double(), norm.bias.double(), 1e-6)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = norm(x.to(torch.bfloat16))  # bf16 activations (the fast modes): PyTorch's kernel
        out32 = norm(x)  # float32 activations under autocast: vqtok's precise statistics
    assert out.dtype == torch.bfloat16 and out.is_contiguous(memory_format=torch.channels_last)
    assert (out.double() - reference).abs().max() < 0.05  # bf16 rounding of input and output
    assert out32.dtype == torch.float32 and (out32.double() - reference).abs().max() < 1e-5
    half = GroupNorm(32, 64, eps=1e-6).to(torch.bfloat16)  # a model cast to bf16: PyTorch's kernel, bf16 out
    with torch.inference_mode():
        assert half(x.to(torch.bfloat16)).dtype == torch.bfloat16


def test_pretokenize_ids_equal_encode_for_every_sample(probe, tmp_path, one_thread):
    import io
    import tarfile

    import numpy as np
    from PIL import Image

    from tests.conftest import write_tar
    from vqtok.pipeline.shards import tokenize_shard

    tok, target, others = probe
    g = torch.Generator().manual_seed(2)
    images = []  # the probed photo at keys 0, 3, 6, 9, 11 (positions 0, 3, 1, 4, 1 of batches of 5), the rest noise or photos
    for i in range(12):
        if i in (0, 3, 6, 9, 11):
            images.append(target[0])
        elif i % 2:
            images.append(others[i % others.shape[0]])
        else:
            images.append(torch.randint(0, 256, (3, SIZE, SIZE), dtype=torch.uint8, generator=g))
    members = []
    for i, img in enumerate(images):
        png = io.BytesIO()
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(png, format="PNG")  # lossless: encode sees the same pixels
        members.append((f"s{i:03d}.png", png.getvalue()))
    src = write_tar(tmp_path / "images.tar", members)
    stats = tokenize_shard(src, tmp_path / "tokens.tar", tok, size=None, batch_size=5, workers=0)
    assert stats.samples_written == 12
    with tarfile.open(tmp_path / "tokens.tar") as tf:
        got = {m.name.split(".")[0]: np.load(io.BytesIO(tf.extractfile(m).read())) for m in tf.getmembers() if m.name.endswith(".ids.npy")}
    for i, img in enumerate(images):
        want = tok.encode(img).numpy()  # (8, 8), the image alone
        np.testing.assert_array_equal(got[f"s{i:03d}"], want, err_msg=f"sample {i}")


def test_batch_invariance_can_be_turned_off_on_the_model(probe, monkeypatch):
    tok, target, others = probe
    model = tok.model
    calls = []
    real_forward = model.encoder.forward
    monkeypatch.setattr(model.encoder, "forward", lambda x: calls.append(x.shape[0]) or real_forward(x))
    batch = torch.cat([target, others])  # 4 images
    tok.encode(batch)
    assert calls == [1, 1, 1, 1]  # default in eval on CPU: one image at a time
    calls.clear()
    model.batch_invariant = False
    try:
        tok.encode(batch)
        assert calls == [4]  # the whole batch at once
        calls.clear()
        model.encode(to_model_input(batch), batch_invariant=True)  # the argument wins
        assert calls == [1, 1, 1, 1]
    finally:
        model.batch_invariant = None


def test_thread_invariant_encode_under_a_dispatch_mode() -> None:
    # FlopCounterMode (benchmarks/encode_decode.py) cannot count aten.thnn_conv2d (torch 2.13's
    # formula for _slow_conv2d_forward takes other arguments): under a dispatch mode the 1x1
    # convolutions go through F.conv2d, and the model's FLOPs are counted
    from torch.utils.flop_counter import FlopCounterMode

    from vqtok.models.thread_invariance import ThreadInvariantOps

    x, w = torch.randn(1, 8, 4, 4), torch.randn(8, 8, 1, 1)
    with ThreadInvariantOps(), FlopCounterMode(display=False) as counter:
        y = torch.nn.functional.conv2d(x, w)
    assert counter.get_total_flops() == 2 * 8 * 8 * 16
    torch.testing.assert_close(y, torch.nn.functional.conv2d(x, w))
