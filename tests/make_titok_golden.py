"""Make ``tests/fixtures/titok``: a tiny TiTok written by ByteDance's own code, and its ids and pixels on real photos.

Needs a checkout of https://github.com/bytedance/1d-tokenizer (its code is read from there, never
copied here) and ``omegaconf``, ``einops``, ``huggingface_hub``, ``accelerate`` (imported by its
quantizer; a stand-in is used when missing)::

    python tests/make_titok_golden.py --repo /work/ref/1d-tokenizer            # writes tests/fixtures/titok
    python tests/make_titok_golden.py --repo ... --released s128 --photos 8     # parity report, released size
    python tests/make_titok_golden.py --repo ... --shapes                       # released state-dict digests

What the fixture is:

* ``config.json`` + ``model.safetensors``: ``TiTok.save_pretrained`` of TiTok's own model
  (``modeling/titok.py``), VQ with the MaskGIT pixel decoder (``finetune_decoder``), built from
  seed 0 at a tiny size. TiTok names only the ViT sizes small / base / large and fixes
  MaskGIT's VQGAN in code, so the script loads ``modeling/modules/blocks.py`` with one more size,
  ``"tiny"`` (width 32, 2 layers, 1 head; :data:`EXTRA_VIT`), and swaps the 1024 x 256 pixel
  codebook and the 128-channel pixel decoder for TiTok's own classes at 1024 x 32 and 32
  channels (``TINY_PIXEL``). The random weights are re-drawn so that ids and pixels depend on
  the image (with TiTok's init every photo gets nearly the same ids: see
  :func:`image_sensitive`). The weights
  are rounded to float16 and saved as ``save_pretrained`` of ``model.half()`` writes them
  (half the bytes); the reference ran in float32 on those exact values.
* ``reference.safetensors``: ``photo_sha256`` (3, 32) uint8, the sha256 of each input crop, and
  ``ids`` (3, 32) int64 = ``encode(x)[1]["min_encoding_indices"]`` (B, 1, 32) flattened, for
  the first three eval photos (sorted by name), resized (shorter side 256, bicubic) and
  center-cropped to 256 x 256 by :func:`vqtok.images.resize_center_crop`, as x / 255.
* ``reference_pixels.png``: ``decode_tokens(ids)`` of those ids, clamped to [0, 1] and rounded
  to uint8 (``round(x * 255)``), the three images side by side (256 x 768, lossless).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import logging
import sys
import tempfile
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vqtok.images import resize_center_crop  # noqa: E402

logger = logging.getLogger("make_titok_golden")

FIXTURE = ROOT / "tests" / "fixtures" / "titok"
PHOTOS = ROOT.parent / "shared" / "data" / "eval-photos"
# ViT sizes added to TiTok's tables (name: width, layers, heads): "tiny" for the fixture (one head:
# what convert_titok gives a size TiTok does not name, width // 64 heads but at least one, so the
# fixture converts without help), "tiny_mh" for the multi-head tests (heads set by the test)
EXTRA_VIT = {"tiny": (32, 2, 1), "tiny_mh": (64, 1, 4)}
TINY_PIXEL = {"channel_mult": [1, 1, 1, 2, 1], "num_resolutions": 5, "dropout": 0.0, "hidden_channels": 32,
              "num_channels": 3, "num_res_blocks": 1, "resolution": 256, "z_channels": 32}
RELEASED = {  # configs/infer/TiTok/*.yaml of the released VQ tokenizers
    "l32": "titok_l32.yaml", "b64": "titok_b64.yaml", "s128": "titok_s128.yaml",
    "bl64_vq8k": "titok_bl64_vq8k.yaml", "bl128_vq8k": "titok_bl128_vq8k.yaml", "sl256_vq8k": "titok_sl256_vq8k.yaml",
}


def tiny_config(size: str = "tiny", *, pixels: bool = False) -> dict[str, Any]:
    """TiTok's nested config (as its yaml files and ``save_pretrained``'s config.json hold it) at a size of
    :data:`EXTRA_VIT`; ``pixels``: the VQ-8k variant (``is_legacy`` false, the ViT predicts pixels)."""
    vq = {
        "codebook_size": 1024, "token_size": 12, "use_l2_norm": True, "commitment_cost": 0.25,
        "vit_enc_model_size": size, "vit_dec_model_size": size, "vit_enc_patch_size": 16,
        "vit_dec_patch_size": 16, "num_latent_tokens": 32, "finetune_decoder": not pixels,
    }
    if pixels:
        vq.update(is_legacy=False, use_l2_norm=False)
    return {
        "experiment": {"tokenizer_checkpoint": f"tokenizer_titok_{size}.bin", "output_dir": f"titok_{size}"},
        "model": {"vq_model": vq},
        "dataset": {"preprocessing": {"crop_size": 256}},
    }


def import_reference(repo: Path) -> types.SimpleNamespace:
    """TiTok's modules from a 1d-tokenizer checkout, without the packages' ``__init__`` (they import
    the training losses, which need torchvision), with the ViT sizes of :data:`EXTRA_VIT` added to ``blocks.py``."""
    repo = Path(repo)
    if "modeling.titok" in sys.modules:
        m = sys.modules["modeling.titok"]
        return types.SimpleNamespace(TiTok=m.TiTok, PixelQuantizer=m.Pixel_Quantizer, PixelDecoder=m.Pixel_Decoder, OmegaConf=m.OmegaConf)
    try:
        import accelerate.utils.operations  # noqa: F401  (TiTok's quantizer imports gather, used in training only)
    except ImportError:
        for name in ("accelerate", "accelerate.utils", "accelerate.utils.operations"):
            sys.modules[name] = types.ModuleType(name)
        sys.modules["accelerate.utils.operations"].gather = lambda t: t  # type: ignore[attr-defined]
    for name in ("modeling", "modeling.modules", "modeling.quantizer"):
        pkg = types.ModuleType(name)
        pkg.__path__ = [str(repo / name.replace(".", "/"))]  # type: ignore[attr-defined]
        sys.modules[name] = pkg
    source = (repo / "modeling/modules/blocks.py").read_text()
    for i, attr in enumerate(("width", "num_layers", "num_heads")):
        pattern = f"self.{attr} = {{"
        if source.count(pattern) < 2:
            raise RuntimeError(f"{repo}/modeling/modules/blocks.py no longer sets {pattern}...}} in the encoder and decoder")
        extra = "".join(f'"{name}": {size[i]}, ' for name, size in EXTRA_VIT.items())
        source = source.replace(pattern, pattern + extra)
    blocks = types.ModuleType("modeling.modules.blocks")
    blocks.__file__ = str(repo / "modeling/modules/blocks.py")
    sys.modules["modeling.modules.blocks"] = blocks
    exec(compile(source, blocks.__file__, "exec"), blocks.__dict__)
    sys.path.insert(0, str(repo))
    titok = importlib.import_module("modeling.titok")
    return types.SimpleNamespace(TiTok=titok.TiTok, PixelQuantizer=titok.Pixel_Quantizer, PixelDecoder=titok.Pixel_Decoder,
                                 OmegaConf=titok.OmegaConf)


def build_reference(ref: types.SimpleNamespace, config: dict[str, Any], *, seed: int = 0, tiny_pixel: bool = False) -> torch.nn.Module:
    """TiTok's model from ``config`` at seed ``seed``, made image-sensitive (:func:`image_sensitive`)."""
    torch.manual_seed(seed)
    model = ref.TiTok(config)
    if tiny_pixel:
        model.pixel_quantize = ref.PixelQuantizer(num_embeddings=1024, embedding_dim=TINY_PIXEL["z_channels"], commitment_cost=0.25)
        model.pixel_decoder = ref.PixelDecoder(ref.OmegaConf.create(TINY_PIXEL))
    image_sensitive(model, seed=seed)
    return model.eval()


@torch.no_grad()
def image_sensitive(model: torch.nn.Module, *, seed: int) -> None:
    """Re-draw a random TiTok so that its ids and pixels depend on the image.

    With TiTok's init (0.02-wide weights) every photo gets nearly the same ids and pixels, which
    would make a weak test. Here: every ViT matrix N(0, 1/fan_in), query and key rows 3x wider
    (attention that picks patches), the token codebook N(0, 1), the code logits 3x, and the pixel
    decoder's output convolution halved around 0.5 (images mostly inside [0, 1]).
    """
    g = torch.Generator().manual_seed(seed + 1)
    for vit in (model.encoder, model.decoder):
        for name, p in vit.named_parameters():
            if p.ndim >= 2 and "embedding" not in name and "mask_token" not in name:
                p.copy_(torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5)
        for block in vit.transformer:
            w = block.attn.in_proj_weight  # (3W, W): q, k, v rows
            w[: 2 * w.shape[1]].mul_(3)
    model.quantize.embedding.weight.copy_(torch.randn(model.quantize.embedding.weight.shape, generator=g))
    if hasattr(model, "pixel_decoder"):
        model.decoder.ffn[2].weight.mul_(3)
        model.pixel_decoder.conv_out.weight.mul_(0.5)
        model.pixel_decoder.conv_out.bias.fill_(0.5)


def photos(n: int, folder: Path = PHOTOS) -> tuple[torch.Tensor, list[str]]:
    """The first ``n`` eval photos (by name) as 256 x 256 center crops -> (x (n, 3, 256, 256) in [0, 1], sha256 of each crop)."""
    from PIL import Image

    files = sorted(folder.glob("*.jpg"))[:n]
    if len(files) < n:
        raise FileNotFoundError(f"{folder} has {len(files)} photos, {n} wanted")
    crops = [np.asarray(resize_center_crop(Image.open(f).convert("RGB"), 256)) for f in files]
    x = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255.0
    return x, [hashlib.sha256(c.tobytes()).hexdigest() for c in crops]


@torch.no_grad()
def reference_outputs(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """TiTok's ids (B, n) and decoded images (B, 3, H, W), unclamped."""
    ids = model.encode(x)[1]["min_encoding_indices"]  # (B, 1, n)
    assert ids.shape == (x.shape[0], 1, model.num_latent_tokens), ids.shape
    return ids.reshape(x.shape[0], -1), model.decode_tokens(ids)


def write_fixture(repo: Path, out: Path, n_photos: int) -> None:
    from PIL import Image
    from safetensors.torch import save_file

    ref = import_reference(repo)
    model = build_reference(ref, tiny_config(), tiny_pixel=True)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())  # the values float16 stores exactly
    x, digests = photos(n_photos)
    ids, pixels = reference_outputs(model, x)
    out.mkdir(parents=True, exist_ok=True)
    model.half().save_pretrained(out)
    (out / "README.md").unlink(missing_ok=True)  # the generated model card
    save_file({
        "ids": ids.contiguous(),
        "photo_sha256": torch.tensor([list(bytes.fromhex(d)) for d in digests], dtype=torch.uint8),
    }, str(out / "reference.safetensors"), metadata={"photos": json.dumps([f.name for f in sorted(PHOTOS.glob("*.jpg"))[:n_photos]])})
    strip = (pixels.clamp(0, 1) * 255).round().to(torch.uint8).permute(2, 0, 3, 1).reshape(pixels.shape[2], -1, 3)  # (H, B*W, 3)
    Image.fromarray(strip.numpy()).save(out / "reference_pixels.png", optimize=True)
    sizes = {p.name: p.stat().st_size for p in out.iterdir()}
    logger.info("wrote %s: %s (%.2f MB); distinct ids per photo %s", out, sizes, sum(sizes.values()) / 1e6,
                [len(set(r.tolist())) for r in ids])


def released_config(repo: Path, name: str) -> dict[str, Any]:
    """A released tokenizer's config (its infer yaml) as a plain dict, interpolations left as strings
    (``OmegaConf.to_container``, as TiTok's ``_save_pretrained`` writes config.json)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(repo / "configs/infer/TiTok" / RELEASED[name]))  # type: ignore[return-value]


def state_shapes(model: torch.nn.Module) -> list[str]:
    return sorted(f"{k}:{tuple(v.shape)}" for k, v in model.state_dict().items())


def released_shapes(repo: Path) -> dict[str, Any]:
    """Per released config: its ``model.vq_model`` / ``dataset`` sections, and the number of tensors and
    sha256 of the sorted ``name:shape`` lines of TiTok's state dict (built on the meta device)."""
    ref = import_reference(repo)
    out = {}
    for name in RELEASED:
        config = released_config(repo, name)
        with torch.device("meta"):
            model = ref.TiTok(config)
        lines = state_shapes(model)
        out[name] = {
            "config": {"model": {"vq_model": config["model"]["vq_model"]}, "dataset": config["dataset"]},
            "tensors": len(lines), "sha256": hashlib.sha256("\n".join(lines).encode()).hexdigest(),
        }
    return out


def released_parity(repo: Path, name: str, n_photos: int) -> None:
    """Ids / pixels of TiTok and vqtok at a released size (random init, seed 0) on ``n_photos`` eval photos."""
    from vqtok.hub import load_strict
    from vqtok.models.titok import TiTok, convert_titok

    ref = import_reference(repo)
    model = build_reference(ref, released_config(repo, name))
    x, _ = photos(n_photos)
    ids, pixels = reference_outputs(model, x)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        cfg, state = convert_titok([Path(tmp) / "config.json", Path(tmp) / "model.safetensors"])
    del model
    ours = TiTok(cfg).eval()
    load_strict(ours, state, source=name)
    with torch.no_grad():
        our_ids = ours.encode_ids(x)
        our_pixels = ours.decode_ids(ids)
    equal = (our_ids == ids).float().mean().item() * 100
    rms = ((our_pixels.clamp(0, 1) - pixels.clamp(0, 1)) * 255).pow(2).mean().sqrt().item()
    logger.info("%s, %d photos: ids equal %.2f %% (%d / %d), decode RMS %.4f / 255 (max |diff| %.4f / 255); distinct ids %s",
                name, n_photos, equal, int((our_ids == ids).sum()), ids.numel(), rms,
                (our_pixels.clamp(0, 1) - pixels.clamp(0, 1)).abs().max().item() * 255, [len(set(r.tolist())) for r in ids])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repo", type=Path, required=True, help="checkout of bytedance/1d-tokenizer")
    parser.add_argument("--out", type=Path, default=FIXTURE, help="fixture folder (default: tests/fixtures/titok)")
    parser.add_argument("--photos", type=int, default=3, help="eval photos to run")
    parser.add_argument("--released", choices=sorted(RELEASED), help="report parity at this released size instead of writing the fixture")
    parser.add_argument("--shapes", action="store_true", help="print the released state-dict digests (tests/fixtures/titok/released_shapes.json)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    if args.shapes:
        text = json.dumps(released_shapes(args.repo), indent=1, sort_keys=True) + "\n"
        (args.out / "released_shapes.json").write_text(text)
        logger.info("%s", text)
    elif args.released:
        released_parity(args.repo, args.released, args.photos)
    else:
        write_fixture(args.repo, args.out, args.photos)


if __name__ == "__main__":
    main()
