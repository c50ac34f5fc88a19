"""Make tests/fixtures/legacy_corpus: a token corpus written by vqtok 0.1 before token layouts (commit 3f19179).

Run from the repository root at that commit: ``python tests/make_legacy_corpus.py``. It writes a tiny
VQGAN (seed 0, 64 codes) as a model folder, a WebDataset shard of three 32x32 images cut from
scikit-image's astronaut, and pretokenizes it with that model (manifest, token shard, stats .json).
tests/test_token_layouts.py reads, validates and resumes it with today's code.
"""

from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vqtok import Tokenizer
from vqtok.models.vqgan import VQGANConfig
from vqtok.pipeline import pretokenize

OUT = Path(__file__).resolve().parent / "fixtures" / "legacy_corpus"
CONFIG = VQGANConfig(ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), z_channels=8, embed_dim=4, n_embed=64,
                     resolution=32, norm_groups=8)


def main() -> None:
    from skimage import data

    shutil.rmtree(OUT, ignore_errors=True)
    (OUT / "data").mkdir(parents=True)
    torch.manual_seed(0)
    tok = Tokenizer.from_config(CONFIG)
    with torch.no_grad():
        w = tok.model.quantize.embedding.weight
        w.copy_(torch.randn(w.shape, generator=torch.Generator().manual_seed(0)) * 0.5)
    tok.save_pretrained(OUT / "model")
    photo = np.asarray(data.astronaut())  # (512, 512, 3)
    with tarfile.open(OUT / "data" / "train-000000.tar", "w", format=tarfile.PAX_FORMAT) as tf:
        for i, (y, x) in enumerate([(0, 0), (200, 200), (300, 100)]):
            buf = io.BytesIO()
            Image.fromarray(photo[y : y + 128, x : x + 128]).save(buf, format="PNG")
            info = tarfile.TarInfo(f"s{i:03d}.png")
            info.size = len(buf.getvalue())
            tf.addfile(info, io.BytesIO(buf.getvalue()))
    pretokenize(str(OUT / "data" / "train-000000.tar"), OUT / "tokens", model=str(OUT / "model"), size=32, workers=0,
                progress=False, keep=())


if __name__ == "__main__":
    main()
