"""Draw docs/figures/var-scales.png: VAR's ten token scales and where each sits in the flat ids.

    python docs/figures/make_var_scales.py
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

from vqtok.layout import TokenLayout

PATCH_NUMS = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
CELL = 6  # pixels per token of the 16x16 scale
GAP = 14


def main() -> None:
    layout = TokenLayout.scales(4096, [(p, p) for p in PATCH_NUMS])
    side = 16 * CELL
    width = (side + GAP) * len(PATCH_NUMS) + GAP
    img = Image.new("RGB", (width, side + 64), "white")
    draw = ImageDraw.Draw(img)
    x, start = GAP, 0
    for i, p in enumerate(PATCH_NUMS):
        cell = side // p  # every scale covers the same image
        size = cell * p
        top = 8 + (side - size) // 2
        hue = (40 + 20 * i, 110 + 12 * i, 220 - 18 * i)
        for r in range(p):
            for c in range(p):
                draw.rectangle([x + c * cell, top + r * cell, x + (c + 1) * cell - 1, top + (r + 1) * cell - 1], fill=hue, outline="white")
        end = start + p * p
        draw.text((x, side + 16), f"{p}x{p}", fill="black")
        draw.text((x, side + 32), f"{start}-{end - 1}", fill="gray")
        x += size + GAP
        start = end
    draw.text((GAP, side + 48), f"ids (B, {layout.positions}): scale by scale, raster order inside each", fill="black")
    img.save(Path(__file__).with_name("var-scales.png"))


if __name__ == "__main__":
    main()
