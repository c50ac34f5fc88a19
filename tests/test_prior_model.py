"""vqtok.prior.gpt: the GPT prior (shapes, causality, tying, I/O)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from vqtok.prior import GPT, GPTConfig


pytestmark = pytest.mark.usefixtures("one_thread")


CFG = GPTConfig(vocab_size=32, block_size=16, n_layer=2, n_head=2, n_embd=32, n_classes=3, train_grid=(4, 4))


@pytest.fixture
def model() -> GPT:
    torch.manual_seed(0)
    return GPT(CFG).eval()


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(n_embd=30, n_head=4)
    with pytest.raises(ValueError, match="train_grid"):
        GPTConfig(block_size=16, train_grid=(5, 4))
    with pytest.raises(ValueError, match="unknown"):
        GPTConfig.from_dict({"vocab": 3})
    assert GPTConfig.from_dict(CFG.to_dict()) == CFG


def test_forward_shape_and_causality(model: GPT) -> None:
    ids = torch.randint(0, 32, (2, 4, 4))
    logits = model(ids, torch.tensor([0, 2]))
    assert logits.shape == (2, 16, 32)
    changed = ids.clone().view(2, 16)
    changed[:, 9] = (changed[:, 9] + 1) % 32
    logits2 = model(changed, torch.tensor([0, 2]))
    # outputs up to position 9 predict s_0..s_9 from s_<=8: unchanged; later ones change
    torch.testing.assert_close(logits[:, :10], logits2[:, :10])
    assert not torch.allclose(logits[:, 10:], logits2[:, 10:])
    # the label changes every position (it is the first input)
    assert not torch.allclose(model(ids, torch.tensor([1, 2]))[0, 0], logits[0, 0])


def test_labels_none_and_minus_one_are_the_null_class(model: GPT) -> None:
    ids = torch.randint(0, 32, (2, 16))
    ref = model(ids, None)
    torch.testing.assert_close(model(ids, torch.tensor([-1, -1])), ref)
    torch.testing.assert_close(model(ids, torch.tensor([3, 3])), ref)  # index n_classes = null
    with pytest.raises(ValueError, match="labels must be"):
        model(ids, torch.tensor([4, 0]))


def test_too_long_sequence(model: GPT) -> None:
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_log_prob_matches_loss(model: GPT) -> None:
    ids = torch.randint(0, 32, (3, 4, 4))
    labels = torch.tensor([0, 1, -1])
    lp = model.log_prob(ids, labels)
    assert lp.shape == (3,)
    assert math.isclose(float(-lp.sum() / 48), float(model.loss(ids, labels).detach()), rel_tol=1e-5)


def test_tied_embeddings_and_roundtrip(model: GPT, tmp_path: Path) -> None:
    assert model.lm_head.weight is model.tok_emb.weight
    model.save_pretrained(tmp_path / "p")
    assert (tmp_path / "p" / "model.safetensors").is_file()
    loaded = GPT.from_pretrained(tmp_path / "p")
    assert loaded.config == CFG and not loaded.training
    assert loaded.lm_head.weight is loaded.tok_emb.weight  # re-tied
    ids = torch.randint(0, 32, (2, 16))
    torch.testing.assert_close(loaded(ids, torch.tensor([0, 1])), model(ids, torch.tensor([0, 1])), rtol=0, atol=0)
    with pytest.raises(ValueError, match="gpt-prior"):
        from vqtok.hub import load_pretrained

        load_pretrained(tmp_path / "p", model_type="vqgan")


def test_push_to_hub_uploads_config_and_weights(monkeypatch):
    import huggingface_hub

    seen = {}

    class FakeApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, private=False, exist_ok=False):
            seen["repo"] = repo_id

        def upload_folder(self, repo_id, folder_path, commit_message):
            from pathlib import Path

            seen["files"] = sorted(p.name for p in Path(folder_path).iterdir())
            seen["config"] = (Path(folder_path) / "config.json").read_text()
            return "https://huggingface.co/org/prior/commit/1"

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    GPT(CFG).push_to_hub("org/prior")
    assert seen["repo"] == "org/prior" and seen["files"] == ["config.json", "model.safetensors"]
    assert '"model_type": "gpt-prior"' in seen["config"]
