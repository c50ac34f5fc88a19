"""Named protocols: the preprocessing equals the reference code pixel for pixel; the card; comparability."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import EVAL_PHOTOS, real_photos
from vqtok.metrics.protocols import (
    IMAGENET_VAL_50K_SHA256,
    PROTOCOLS,
    center_crop_arr,
    check_comparable,
    get_protocol,
    image_list_sha256,
    protocol_card,
    torchvision_resize_center_crop,
)

GOLDEN = Path(__file__).parent / "data" / "center_crop_golden.npz"
# a guided-diffusion checkout (tests/make_center_crop_fixture.py says how it was used); optional
ADM_CHECKOUT = Path(os.environ.get("VQTOK_ADM_CHECKOUT", "/work/ref/openai+guided-diffusion"))


def test_center_crop_arr_equals_adm_golden_fixture() -> None:
    """ADM's own center_crop_arr outputs (made by tests/make_center_crop_fixture.py) on downscaled real photos."""
    data = np.load(GOLDEN)
    inputs = sorted(k for k in data.files if k.startswith("input_"))
    assert len(inputs) == 6
    for key in inputs:
        i = key.split("_")[1]
        for s in data["sizes"]:
            want = data[f"adm_{i}_{s}"]
            got = center_crop_arr(Image.fromarray(data[key]), int(s))
            assert got.shape == (s, s, 3) and got.dtype == np.uint8
            np.testing.assert_array_equal(got, want, err_msg=f"{key} at {s}")
            via_protocol = PROTOCOLS["imagenet-256-adm"].prepare(Image.fromarray(data[key]), size=int(s))
            np.testing.assert_array_equal(via_protocol, want)


@pytest.mark.skipif(not (ADM_CHECKOUT / "guided_diffusion" / "image_datasets.py").is_file(), reason="no guided-diffusion checkout")
def test_center_crop_arr_equals_local_adm_checkout_on_full_size_photos() -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from make_center_crop_fixture import load_adm_center_crop

    adm = load_adm_center_crop(ADM_CHECKOUT)
    photos = [Image.open(p).convert("RGB") for p in sorted(EVAL_PHOTOS.glob("*.jpg"))[:4]] or real_photos(4)
    for img in photos:
        for s in (256, 128):
            np.testing.assert_array_equal(PROTOCOLS["imagenet-256-adm"].prepare(img, size=s), adm(img, s))


def test_resize_choices_differ_and_torchvision_rules() -> None:
    big = real_photos(1)[0].resize((1100, 700), Image.Resampling.BICUBIC)  # shorter side >= 512: ADM box-halves once
    a, b = PROTOCOLS["vqtok"].prepare(big), PROTOCOLS["imagenet-256-adm"].prepare(big)
    assert a.shape == b.shape == (256, 256, 3) and not np.array_equal(a, b)
    img = big.resize((517, 389), Image.Resampling.BICUBIC)  # no box step: ADM = one bicubic resize, as vqtok
    np.testing.assert_array_equal(PROTOCOLS["vqtok"].prepare(img), PROTOCOLS["imagenet-256-adm"].prepare(img))
    c = PROTOCOLS["imagenet-256-titok"].prepare(img)
    # torchvision: long side int(256 * 517 / 389) = 340 (vqtok rounds: 340 too), crop left round(84 / 2) = 42
    manual = np.asarray(img.resize((340, 256), Image.Resampling.BICUBIC))[:, 42:298]
    np.testing.assert_array_equal(c, manual)
    # truncation vs rounding of the long side: 256 * 301 / 200 = 385.28 -> 385; 256 * 203 / 100 = 519.68 -> 519
    odd = img.resize((203, 100))
    assert torchvision_resize_center_crop(odd, 256).shape == (256, 256, 3)
    manual = np.asarray(odd.resize((519, 256), Image.Resampling.BICUBIC))
    left = int(round((519 - 256) / 2.0))  # 131.5 -> 132 (half to even)
    np.testing.assert_array_equal(torchvision_resize_center_crop(odd, 256), manual[:, left : left + 256])


def test_image_list_hash_is_location_and_order_free() -> None:
    a = image_list_sha256(["/data/val/n01/ILSVRC2012_val_00000002.JPEG", "/x/ILSVRC2012_val_00000001.JPEG"])
    b = image_list_sha256(["val-000000.tar:ILSVRC2012_val_00000001", "val-000003.tar:ILSVRC2012_val_00000002"])
    assert a == b
    assert image_list_sha256(f"ILSVRC2012_val_{i:08d}.JPEG" for i in range(50_000, 0, -1)) == IMAGENET_VAL_50K_SHA256


def test_card_conformance_and_comparability() -> None:
    p = get_protocol("imagenet-256-adm")
    ok = protocol_card(p, size=256, n=50_000, image_list_sha=IMAGENET_VAL_50K_SHA256, model="m",
                       model_fingerprint="f", inception_sha256="6726825d" + "0" * 56)
    assert ok["conforms"] and ok["deviations"] == [] and ok["fid_preprocess"] == "torch-fidelity"
    small = protocol_card(p, size=256, n=65, image_list_sha="abc", inception_sha256="deadbeef")
    assert not small["conforms"]
    assert any("n = 65" in d for d in small["deviations"]) and any("image list" in d for d in small["deviations"])
    assert any("Inception weights" in d for d in small["deviations"])
    other = protocol_card(get_protocol("vqtok"), size=256, n=50_000, image_list_sha=IMAGENET_VAL_50K_SHA256,
                          inception_sha256="6726825d" + "0" * 56)
    check_comparable([{"card": ok}, {"card": dict(ok, model="other", model_fingerprint="g")}])  # models may differ
    with pytest.raises(ValueError, match="another protocol.*resize"):
        check_comparable([{"card": ok}, {"card": other}])
    with pytest.raises(ValueError, match="no protocol card"):
        check_comparable([{"card": ok}, {"model": "old"}])
    with pytest.raises(ValueError, match="unknown protocol 'x'; known: vqtok"):
        get_protocol("x")
