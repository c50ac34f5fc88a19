"""Make ``tests/data/center_crop_golden.npz``: reference outputs of ADM's ``center_crop_arr`` and of
torchvision-style resize + center crop (written out below) on a few downscaled real photos.

How it was produced (the reference code is not part of vqtok and is not committed)::

    git clone https://github.com/openai/guided-diffusion /work/ref/openai+guided-diffusion   # at 22e0df8
    python tests/make_center_crop_fixture.py --adm /work/ref/openai+guided-diffusion

``center_crop_arr`` is imported from the checkout's ``guided_diffusion/image_datasets.py`` (the module
imports mpi4py and blobfile at the top, so the function's source is extracted and executed alone). The
inputs are the first 6 of ``../shared/data/eval-photos`` (sorted by name), each downscaled with a
bicubic resize to its (width, height) in ``SHAPES`` (odd and even sides, landscape and portrait), so
the file stays small (about 150 kB) while the box-halving loop, the bicubic step and the crop offsets are all
exercised: each input is cropped at the sizes in ``SIZES``. Pillow's version is stored with the
outputs (both resize filters are Pillow's).
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

import numpy as np
import PIL
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHAPES = ((131, 97), (65, 97), (160, 101), (75, 99), (129, 64), (64, 85))  # (width, height)
SIZES = (24, 48, 72)  # 24: two or more box halvings; 72: an up-scale for the smaller inputs


def load_adm_center_crop(checkout: Path):
    """``center_crop_arr`` from guided-diffusion's source, executed on its own (with np and PIL.Image)."""
    source = (checkout / "guided_diffusion" / "image_datasets.py").read_text()
    tree = ast.parse(source)
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "center_crop_arr")
    namespace: dict = {"np": np, "Image": Image}
    exec(compile(ast.Module(body=[fn], type_ignores=[]), "image_datasets.py", "exec"), namespace)
    return namespace["center_crop_arr"]


def inputs(photos: Path) -> list[np.ndarray]:
    files = sorted(p for p in photos.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[: len(SHAPES)]
    return [np.asarray(Image.open(f).convert("RGB").resize(shape, Image.Resampling.BICUBIC)) for f, shape in zip(files, SHAPES)]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--adm", type=Path, required=True, help="a guided-diffusion checkout")
    p.add_argument("--photos", type=Path, default=REPO.parent / "shared" / "data" / "eval-photos")
    p.add_argument("--out", type=Path, default=REPO / "tests" / "data" / "center_crop_golden.npz")
    args = p.parse_args()
    adm = load_adm_center_crop(args.adm)
    arrays: dict[str, np.ndarray] = {"pillow_version": np.array(PIL.__version__), "sizes": np.array(SIZES)}
    for i, a in enumerate(inputs(args.photos)):
        arrays[f"input_{i}"] = a
        for s in SIZES:
            arrays[f"adm_{i}_{s}"] = adm(Image.fromarray(a), s)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **arrays)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes, {len(SHAPES)} inputs x {len(SIZES)} sizes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
