"""Build the training / validation folders of the default tokenizer (see docs/model-card.md).

    bash ../shared/data/get-training-images.sh /work/data/train-images     # ~222 photos (PYTHON=python, root)
    python configs/default-tokenizer-data.py /work/data/train-images /work/data

Writes DEST/corpus (symlinks to all but 8 photos + the scikit-image sample photos) and DEST/val
(symlinks to the 8 held-back photos, used only for validation during training).
The held-out evaluation set ../shared/data/eval-photos is never used.
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import numpy as np
from PIL import Image

SKIMAGE = ("astronaut", "chelsea", "coffee", "rocket", "camera", "immunohistochemistry", "hubble_deep_field",
           "cat", "retina", "page", "moon", "text", "clock", "coins")


def main(src: str, dest: str) -> int:
    names = sorted(os.listdir(src))
    random.Random(0).shuffle(names)
    corpus, val = Path(dest) / "corpus", Path(dest) / "val"
    corpus.mkdir(parents=True, exist_ok=True)
    val.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        (val if i < 8 else corpus).joinpath(name).symlink_to(Path(src).resolve() / name)
    from skimage import data

    for name in SKIMAGE:
        a = np.asarray(getattr(data, name)())
        if a.ndim == 2:
            a = np.stack([a] * 3, -1)
        a = a[..., :3]
        if min(a.shape[:2]) >= 256:
            Image.fromarray(a.astype(np.uint8)).save(corpus / f"skimage_{name}.png")
    print(f"{len(os.listdir(corpus))} training images in {corpus}, {len(os.listdir(val))} validation images in {val}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
