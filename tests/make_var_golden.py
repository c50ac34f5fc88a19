"""Make the VAR parity fixtures (tests/fixtures/var/) with FoundationVision/VAR's own code.

    git clone https://github.com/FoundationVision/VAR /work/ref/VAR
    python tests/make_var_golden.py --var-repo /work/ref/VAR

VAR's ``models/vqvae.py``, ``models/quant.py`` and ``models/basic_vae.py`` are imported by file
(as the package ``var_reference``, so ``models/__init__.py`` and its transformer are not loaded;
``quant.py``'s ``import dist`` finds the checkout's own ``dist.py``, which needs only torch).
``VQVAE(**kwargs)`` is built from ``torch.manual_seed(SEED)``; its encoder and decoder are
rebuilt from VAR's ``Encoder``/``Decoder`` at a smaller ``ch_mult`` / ``num_res_blocks`` than
``VQVAE`` hard-codes (``REFERENCE_AUTOENCODER``), so the weights fit in a few hundred kB. The
codebook is redrawn as N(0, CODE_STD²) so that the random encoder's residuals spread over many
codes. The weights are rounded to float16 and every computation below runs them in float32.

The photos: ``PHOTOS`` from the shared eval-photos, each resized (shorter side 256, bicubic,
antialiased) and center-cropped to 256 by :func:`vqtok.images.resize_center_crop`; the model input is
:func:`vqtok.images.to_model_input` (x / 127.5 − 1 in float64, then float32).

Files written:

- ``weights.safetensors``: VAR's state dict (float16; ``quantize.ema_vocab_hit_SV`` included), the
  VQVAE kwargs and autoencoder fields as JSON in the metadata ("var_kwargs");
- ``image{i}.png``: photo i as the model took it, uint8 256×256 RGB (lossless PNG, smaller than raw);
- ``decoded{i}.png``: ``round(255 · clamp((vae.idxBl_to_img(ids, same_shape=True, last_one=True) + 1) / 2, 0, 1))``
  of photo i (rounded to uint8: compare within 1/255 RMS);
- ``golden.npz``: ``ids`` int64 (N, 680) = ``torch.cat(vae.img_to_idxBl(x), 1)``; ``names``: the photo file names;
- ``meta.json``: the same kwargs, photo names, preprocessing, torch version.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

log = logging.getLogger("make_var_golden")

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "var"
EVAL_PHOTOS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "eval-photos"
SEED = 0
SIZE = 256
CODE_STD = 0.25  # std of the redrawn codebook (random features are small; N(0, 1) codes leave most unused)
PHOTOS = ("ade20k_images_ADE_val_00000125.jpg", "ade20k_images_ADE_val_00000203.jpg")
# VQVAE(**REFERENCE_KWARGS): VAR's arguments (default patch_nums, share_quant_resi 4, quant_resi 0.5).
REFERENCE_KWARGS: dict[str, Any] = {"vocab_size": 512, "z_channels": 8, "ch": 32, "share_quant_resi": 4, "quant_resi": 0.5,
                                    "v_patch_nums": [1, 2, 3, 4, 5, 6, 8, 10, 13, 16]}
# The Encoder/Decoder fields VQVAE hard-codes (its ddconfig) that the fixture makes smaller.
REFERENCE_AUTOENCODER: dict[str, Any] = {"ch_mult": [1, 1, 1, 1, 1], "num_res_blocks": 1, "using_sa": True, "using_mid_sa": True}
VAR_DDCONFIG: dict[str, Any] = {"ch_mult": [1, 1, 2, 2, 4], "num_res_blocks": 2, "using_sa": True, "using_mid_sa": True}


def load_reference(var_repo: str | Path) -> types.SimpleNamespace:
    """VAR's ``models/vqvae.py`` and ``models/basic_vae.py`` from a checkout, as modules."""
    repo = Path(var_repo)
    if not (repo / "models" / "vqvae.py").is_file():
        raise FileNotFoundError(f"{repo} is not a FoundationVision/VAR checkout (no models/vqvae.py)")
    if "var_reference" not in sys.modules:
        package = types.ModuleType("var_reference")
        package.__path__ = [str(repo / "models")]  # submodules only: models/__init__.py is not run
        sys.modules["var_reference"] = package
        if str(repo) not in sys.path:
            sys.path.append(str(repo))  # quant.py: `import dist`
    return types.SimpleNamespace(
        vqvae=importlib.import_module("var_reference.vqvae"), basic_vae=importlib.import_module("var_reference.basic_vae")
    )


def build_reference(ref: types.SimpleNamespace, kwargs: dict[str, Any], autoencoder: dict[str, Any] | None = None) -> torch.nn.Module:
    """VAR's ``VQVAE(**kwargs)`` in eval mode; with ``autoencoder``, its encoder/decoder rebuilt with those ddconfig fields."""
    kw = dict(kwargs)
    kw["v_patch_nums"] = tuple(kw["v_patch_nums"])
    vae = ref.vqvae.VQVAE(**kw, test_mode=True)
    if autoencoder is not None and autoencoder != VAR_DDCONFIG:
        dd = {"dropout": 0.0, "ch": kw["ch"], "z_channels": kw["z_channels"], "in_channels": 3, **autoencoder}
        dd["ch_mult"] = tuple(dd["ch_mult"])
        vae.encoder = ref.basic_vae.Encoder(double_z=False, **dd)
        vae.decoder = ref.basic_vae.Decoder(**dd)
    return vae.eval().requires_grad_(False)


def our_config_fields(kwargs: dict[str, Any], autoencoder: dict[str, Any]) -> dict[str, Any]:
    """The VARConfig fields of a reference model (kwargs + ddconfig)."""
    return {"vocab_size": kwargs["vocab_size"], "z_channels": kwargs["z_channels"], "ch": kwargs["ch"],
            "share_quant_resi": kwargs["share_quant_resi"], "quant_resi": kwargs["quant_resi"],
            "patch_nums": tuple(kwargs["v_patch_nums"]), "ch_mult": tuple(autoencoder["ch_mult"]),
            "num_res_blocks": autoencoder["num_res_blocks"], "using_sa": autoencoder["using_sa"],
            "using_mid_sa": autoencoder["using_mid_sa"]}


def load_photos(names: tuple[str, ...], size: int = SIZE, folder: Path = EVAL_PHOTOS) -> np.ndarray:
    """uint8 (N, size, size, 3): each photo resized (shorter side) and center-cropped as the Tokenizer does."""
    from vqtok.images import load_image, pil_to_rgb, resize_center_crop

    return np.stack([np.asarray(resize_center_crop(pil_to_rgb(load_image(folder / n)), size)) for n in names])


def to_input(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float32 (N, 3, H, W) in [-1, 1] (vqtok.images.to_model_input)."""
    from vqtok.images import to_model_input

    return to_model_input(torch.from_numpy(images).permute(0, 3, 1, 2))


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float (N, 3, H, W) in [-1, 1] -> uint8 (N, H, W, 3), rounded."""
    return torch.round(((x.float() + 1) / 2).clamp(0, 1) * 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


@torch.no_grad()
def reference_ids_and_pixels(vae: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """VAR's ``cat(img_to_idxBl(x), 1)`` (N, Σ pn²) and ``idxBl_to_img(..., same_shape=True, last_one=True)``."""
    idx_bl = vae.img_to_idxBl(x)
    return torch.cat(idx_bl, 1), vae.idxBl_to_img(idx_bl, same_shape=True, last_one=True)


def read_fixture(folder: Path = FIXTURES) -> tuple[dict[str, Any], np.ndarray, np.ndarray, np.ndarray]:
    """(meta, images uint8 (N, H, W, 3), reference ids int64 (N, L), reference decoded uint8 (N, H, W, 3))."""
    meta = json.loads((folder / "meta.json").read_text())
    n = len(meta["photos"])
    images = np.stack([np.asarray(Image.open(folder / f"image{i}.png").convert("RGB")) for i in range(n)])
    decoded = np.stack([np.asarray(Image.open(folder / f"decoded{i}.png").convert("RGB")) for i in range(n)])
    with np.load(folder / "golden.npz") as golden:
        ids = golden["ids"]
    return meta, images, ids, decoded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--var-repo", required=True, help="a FoundationVision/VAR checkout")
    parser.add_argument("--out", type=Path, default=FIXTURES)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from safetensors.torch import save_file

    ref = load_reference(args.var_repo)
    torch.manual_seed(SEED)
    vae = build_reference(ref, REFERENCE_KWARGS, REFERENCE_AUTOENCODER)
    with torch.no_grad():
        vae.quantize.embedding.weight.normal_(0.0, CODE_STD)
        for p in vae.state_dict().values():  # the float16 values are the fixture's weights
            if p.is_floating_point():
                p.copy_(p.half().float())
    images = load_photos(PHOTOS)
    ids, pixels = reference_ids_and_pixels(vae, to_input(images))
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"var_kwargs": REFERENCE_KWARGS, "autoencoder": REFERENCE_AUTOENCODER, "seed": SEED, "code_std": CODE_STD,
            "photos": list(PHOTOS), "size": SIZE, "torch": torch.__version__,
            "preprocessing": "vqtok.images.resize_center_crop(photo, 256) -> to_model_input (x / 127.5 - 1)",
            "decoded": "uint8 round(255 * clamp((x + 1) / 2, 0, 1)) of idxBl_to_img(same_shape=True, last_one=True)"}
    state = {k: v.half().contiguous() if v.is_floating_point() else v.contiguous() for k, v in vae.state_dict().items()}
    save_file(state, str(args.out / "weights.safetensors"), metadata={"var_kwargs": json.dumps(meta)})
    np.savez_compressed(args.out / "golden.npz", ids=ids.numpy().astype(np.int64), names=np.array(PHOTOS))
    for i, (image, decoded) in enumerate(zip(images, to_uint8(pixels))):
        Image.fromarray(image).save(args.out / f"image{i}.png", optimize=True)
        Image.fromarray(decoded).save(args.out / f"decoded{i}.png", optimize=True)
    (args.out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    used = [len(torch.unique(i)) for i in ids]
    log.info("wrote %s: %d photos, %d ids each (%s distinct), decoded std %.3f", args.out, len(PHOTOS), ids.shape[1], used,
             float(pixels.std()))
    for f in sorted(args.out.iterdir()):
        log.info("  %s %d bytes", f.name, f.stat().st_size)


if __name__ == "__main__":
    main()
