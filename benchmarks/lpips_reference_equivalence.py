"""Compare vqtok LPIPS with the `lpips` package (random VGG backbone, its real v0.1 heads).

Run with a Python that has torchvision and `pip install --no-deps lpips==0.1.4`, e.g.
`/tmp/refvenv/bin/python benchmarks/lpips_reference_equivalence.py`.
"""
import os
import sys

import lpips
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from vqtok.metrics.lpips import LPIPS

torch.manual_seed(0)
ref = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False).eval()
vgg = {}
# lpips slices hold torchvision indices as names: net.sliceK.<idx>.weight
for k, v in ref.net.state_dict().items():
    _, idx, leaf = k.split(".")
    vgg[f"features.{idx}.{leaf}"] = v
lin = {k: v for k, v in ref.state_dict().items() if k.startswith("lin") and not k.startswith("lins")}
ours = LPIPS(); ours.load_weights(vgg, lin)
x = torch.rand(3, 3, 64, 64); y = (x + 0.1 * torch.randn_like(x)).clamp(0, 1)
a = ours(x, y); b = ref(x, y, normalize=True).flatten()
print("ours", a.tolist()); print("ref ", b.tolist()); print("max rel", ((a - b).abs() / b.abs()).max().item())
