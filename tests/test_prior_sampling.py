"""vqtok.prior.sampling: KV cache vs recomputation, CFG, filtering, sliding window."""

from __future__ import annotations

import pytest
import torch

from vqtok.prior import GPT, GPTConfig
from vqtok.prior.sampling import filter_logits, sample_logits, window_context, window_for


pytestmark = pytest.mark.usefixtures("one_thread")


CFG = GPTConfig(vocab_size=48, block_size=16, n_layer=2, n_head=2, n_embd=32, n_classes=3, train_grid=(4, 4))


@pytest.fixture(scope="module")
def model() -> GPT:
    torch.manual_seed(0)
    m = GPT(CFG).eval()
    with torch.no_grad():  # sharper, less uniform distributions than the 0.02-std init
        m.tok_emb.weight.mul_(8)
        m.cls_emb.weight.mul_(8)
    return m


def gen(model: GPT, seed: int = 0, **kw: object) -> torch.Tensor:
    return model.generate(6, generator=torch.Generator().manual_seed(seed), **kw)


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"labels": 1},
        {"labels": [0, 1, 2, -1, 0, 1], "top_k": 5},
        {"labels": 2, "cfg_scale": 3.0, "top_p": 0.8, "temperature": 0.7},
    ],
)
def test_kv_cache_equals_full_recomputation(model: GPT, kw: dict) -> None:
    cached = gen(model, **kw)
    full = gen(model, use_cache=False, **kw)
    assert cached.shape == (6, 4, 4) and cached.dtype == torch.long
    assert torch.equal(cached, full)
    assert not torch.equal(cached, gen(model, seed=1, **kw))  # the seed matters


def test_cache_logits_match_forward(model: GPT) -> None:
    ids = torch.randint(0, 48, (2, 16))
    labels = torch.tensor([0, 2])
    ref = model(ids, labels)  # (2, 16, V)
    cache = model.new_cache(2)
    steps = [model.step(None, labels, cache)] + [model.step(ids[:, t - 1], labels, cache) for t in range(1, 16)]
    torch.testing.assert_close(torch.stack(steps, dim=1), ref, rtol=1e-4, atol=1e-5)
    # prefill (used when the sliding window moves) = the same logits, then extending works
    torch.testing.assert_close(model.prefill(ids[:, :8], labels, cache), ref[:, 8], rtol=1e-4, atol=1e-5)
    assert cache.length == 9
    torch.testing.assert_close(model.step(ids[:, 8], labels, cache), ref[:, 9], rtol=1e-4, atol=1e-5)


def test_cfg_scale_one_is_conditional_sampling(model: GPT) -> None:
    cond = gen(model, labels=[0, 1, 2, 0, 1, 2])
    assert torch.equal(gen(model, labels=[0, 1, 2, 0, 1, 2], cfg_scale=1.0), cond)
    # the guided code path (two batches, mixed logits) at a scale of 1 (+ε) gives the same tokens
    assert torch.equal(gen(model, labels=[0, 1, 2, 0, 1, 2], cfg_scale=1.0 + 1e-9), cond)
    assert torch.equal(gen(model, labels=[0, 1, 2, 0, 1, 2], cfg_scale=1.0 + 1e-9, use_cache=False), cond)
    # scale 0 is unconditional sampling
    assert torch.equal(gen(model, labels=[0, 1, 2, 0, 1, 2], cfg_scale=0.0), gen(model))
    with pytest.raises(ValueError, match="labels"):
        gen(model, cfg_scale=2.0)


def test_filter_and_sample_logits() -> None:
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0]])
    assert torch.isinf(filter_logits(logits, top_k=2)).tolist() == [[True, False, True, False]]
    # probs ~ [.03, .64, .09, .24]: nucleus 0.7 keeps the top two
    assert torch.isinf(filter_logits(logits, top_p=0.7)).tolist() == [[True, False, True, False]]
    assert torch.isinf(filter_logits(logits, top_p=1e-6)).sum() == 3  # the best token always survives
    assert sample_logits(logits, temperature=0).item() == 1
    g = torch.Generator().manual_seed(0)
    draws = sample_logits(logits.expand(4000, 4), top_k=2, generator=g)
    assert set(draws.tolist()) == {1, 3}
    frac = (draws == 1).float().mean().item()  # p = e^3 / (e^3 + e^2) = 0.731
    assert abs(frac - 0.731) < 0.03


def test_window_geometry_keeps_causal_neighbours() -> None:
    H, W, wh, ww = 9, 11, 4, 4
    ids = torch.arange(H * W).view(1, H, W)
    for i in range(H):
        for j in range(W):
            win = window_for((H, W), (wh, ww), i, j)
            assert 0 <= win.top <= i < win.top + wh and 0 <= win.left <= j < win.left + ww
            ctx = window_context(ids, (wh, ww), i, j)[0].tolist()
            assert len(ctx) <= CFG.block_size
            # the context is exactly the window in raster order up to (i, j) ...
            expected = [
                int(ids[0, r, c])
                for r in range(win.top, i + 1)
                for c in range(win.left, win.left + ww)
                if (r, c) < (i, j)
            ]
            assert ctx == expected
            # ... so it holds every causal neighbour that exists in the grid
            for di, dj in ((0, -1), (-1, -1), (-1, 0), (-1, 1)):
                r, c = i + di, j + dj
                if 0 <= r < H and 0 <= c < W:
                    assert int(ids[0, r, c]) in ctx, (i, j, r, c)


def test_sliding_window_sampling(model: GPT, monkeypatch: pytest.MonkeyPatch) -> None:
    # with window == grid the sliding path must reproduce plain sampling
    assert torch.equal(gen(model, labels=1, window=(4, 4)), gen(model, labels=1))
    # a 7x9 grid from a 4x4 model: every call stays within block_size and sees the sampled neighbours
    calls: list[tuple[int, torch.Tensor]] = []
    real = GPT.next_logits

    def spy(self: GPT, prefix: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        calls.append((prefix.shape[1], prefix.clone()))
        return real(self, prefix, labels)

    monkeypatch.setattr(GPT, "next_logits", spy)
    out = model.generate(2, labels=0, grid=(7, 9), generator=torch.Generator().manual_seed(0), use_cache=False)
    assert out.shape == (2, 7, 9) and 0 <= int(out.min()) and int(out.max()) < 48
    assert len(calls) == 63 and max(n for n, _ in calls) < CFG.block_size
    for t, (_, prefix) in enumerate(calls):
        i, j = divmod(t, 9)
        assert torch.equal(prefix, window_context(out, (4, 4), i, j))  # the final grid's tokens were the context
    # the cached window path (extend while the window stays, refill when it moves) gives the same tokens
    monkeypatch.setattr(GPT, "next_logits", real)
    cached = model.generate(2, labels=0, grid=(7, 9), generator=torch.Generator().manual_seed(0))
    assert torch.equal(cached, out)
    guided = dict(labels=[1, 2], grid=(9, 7), cfg_scale=2.0, top_k=8)
    assert torch.equal(
        model.generate(2, **guided, generator=torch.Generator().manual_seed(3)),
        model.generate(2, **guided, generator=torch.Generator().manual_seed(3), use_cache=False),
    )


# Tokens the three separate sampling loops (KV cache, recomputation, sliding window) drew before they
# became one windowed loop (vqtok 0.1.0 main, a1fb06d), for model(), 3 samples, seed 7: the one loop
# must draw exactly these, with and without the cache.
REFERENCE_TOKENS = {
    'plain': [[[15,15,15,15],[15,25,20,20],[28,28,28,28],[23,23,23,23]],[[15,33,33,12],[8,3,45,45],[45,11,11,11],[11,11,11,11]],[[40,40,40,9],[9,34,37,37],[37,37,37,12],[20,30,20,20]]],
    'labels_topk': [[[23,23,23,23],[23,23,23,23],[25,25,25,25],[25,25,25,25]],[[17,26,26,16],[16,16,39,39],[39,39,27,27],[27,27,27,27]],[[35,35,35,21],[21,35,35,35],[35,35,35,21],[21,21,21,21]]],
    'cfg_topp': [[[23,23,23,23],[23,23,23,23],[23,23,23,23],[23,23,23,23]],[[23,23,23,23],[23,23,23,23],[23,23,23,23],[23,23,23,23]],[[25,25,25,25],[25,25,25,25],[25,25,25,25],[25,25,25,25]]],
    'top_rows': [[[14,14,14,14],[14,27,26,34]],[[13,42,42,8],[8,3,45,45]],[[37,37,37,12],[12,44,44,44]]],
    'window_7x9': [[[12,13,13,30,16,16,16,16,24],[37,37,37,37,37,37,37,37,37],[37,37,37,37,37,37,37,37,37],[37,2,29,29,29,29,13,20,20],[29,29,29,34,37,2,36,36,1],[46,46,27,27,27,27,27,8,19],[27,41,43,6,6,6,6,6,32]],[[12,41,37,14,7,2,47,47,47],[14,9,9,9,9,9,9,9,9],[25,25,25,25,25,25,25,25,25],[25,25,25,25,25,28,28,39,39],[25,25,25,38,33,19,11,11,11],[28,28,28,28,23,23,23,23,23],[23,23,23,23,18,18,18,18,18]],[[41,41,41,4,4,36,39,39,39],[36,36,4,4,22,22,22,1,38],[36,36,36,20,20,20,20,20,36],[47,33,33,33,33,33,33,33,33],[33,33,33,33,33,47,10,10,10],[33,33,33,33,31,31,31,31,26],[37,37,37,37,37,9,9,9,9]]],
    'window_9x7_cfg': [[[17,17,17,17,17],[20,20,20,20,20],[20,20,20,20,20],[20,20,20,20,20],[20,20,20,20,20],[36,20,20,4,4]],[[23,28,28,17,17],[12,47,47,47,13],[12,12,12,12,12],[31,31,31,31,31],[31,31,31,31,31],[31,31,31,31,31]],[[31,31,31,12,12],[47,47,39,39,39],[39,25,25,25,25],[25,9,9,25,25],[25,25,25,25,25],[25,25,39,39,39]]],
    'greedy': [[[27,27,27,27],[27,27,27,27],[27,27,27,27],[27,27,27,27]],[[27,27,27,27],[27,27,27,27],[27,27,27,27],[27,27,27,27]],[[27,27,27,27],[27,27,27,27],[27,27,27,27],[27,27,27,27]]],
}

REFERENCE_CASES = {
    "plain": {},
    "labels_topk": {"labels": [0, 1, 2], "top_k": 5},
    "cfg_topp": {"labels": 2, "cfg_scale": 3.0, "top_p": 0.8, "temperature": 0.7},
    "top_rows": {"grid": (2, 4), "labels": 1},
    "window_7x9": {"labels": 0, "grid": (7, 9)},
    "window_9x7_cfg": {"labels": [1, 2, 0], "grid": (6, 5), "cfg_scale": 2.0, "top_k": 8},
    "greedy": {"labels": 1, "temperature": 0.0},
}


@pytest.mark.parametrize("use_cache", [True, False])
@pytest.mark.parametrize("case", sorted(REFERENCE_CASES))
def test_one_loop_draws_the_tokens_of_the_three_old_loops(model: GPT, case: str, use_cache: bool) -> None:
    ids = model.generate(3, generator=torch.Generator().manual_seed(7), use_cache=use_cache, **REFERENCE_CASES[case])
    assert ids.tolist() == REFERENCE_TOKENS[case]


def test_generate_is_one_function() -> None:
    import vqtok.prior
    import vqtok.prior.sampling

    import ast
    from pathlib import Path

    assert vqtok.prior.generate is GPT.generate  # generate(model, n, ...) and model.generate(n, ...): one sampler
    assert not hasattr(vqtok.prior.sampling, "generate")
    # the model imports the sampler's pieces, never the other way round (no import cycle, not even a lazy one)
    tree = ast.parse(Path(vqtok.prior.sampling.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not any(m and m.startswith("vqtok") for m in imported), imported


def test_grid_errors(model: GPT) -> None:
    assert gen(model, grid=(2, 4)).shape == (6, 2, 4)  # top rows of a trained-width grid
    with pytest.raises(ValueError, match="smaller than the window"):
        gen(model, grid=(8, 3))
    unknown = GPT(GPTConfig(vocab_size=8, block_size=12, n_layer=1, n_head=1, n_embd=8))
    with pytest.raises(ValueError, match="grid"):
        unknown.generate(1)  # block_size 12 is not square and no train_grid
