"""Token layouts: what one image's ids are, owned by the model that makes them.

A tokenizer model states its layout for an image size (``model.layout((H, W))``); the
:class:`~vqtok.Tokenizer`, the token shards, the pretokenize manifest and usage scoring read it
instead of assuming one (h, w) grid from one codebook.

==========  ==================================  =======================================
kind        ids of one image (canonical shape)  examples
==========  ==================================  =======================================
``grid``    ``(h, w)``                          taming VQGAN, LlamaGen, MAGVIT-v2, IBQ, Cosmos
``sequence````(n,)``                            TiTok (32 / 64 / 128 tokens)
``scales``  ``(Σ hᵢ·wᵢ,)``: scale by scale,     VAR (1²+2²+…+16² = 680)
            raster order inside each
==========  ==================================  =======================================

``codebooks = k > 1`` adds a trailing axis: ``(h, w, k)`` / ``(n, k)`` / ``(L, k)``, one id per
sub-codebook (UniTok: 8 sub-codebooks per position). ``bits = b`` marks bitwise tokens: each id is
a ``b``-bit integer (``codebook_size = 2**b``), counted per bit, never in a dense ``2**b`` table.
A batch puts ``B`` in front. Ids are ``int64`` in torch; files store them in :attr:`TokenLayout.storage_dtype`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal, Mapping, Sequence

import numpy as np
import torch

from vqtok._errors import is_int

__all__ = ["TokenLayout", "LayoutKind", "split_scales"]

LayoutKind = Literal["grid", "sequence", "scales"]
_KINDS = ("grid", "sequence", "scales")
MAX_BITS = 63  # bitwise ids are int64 in torch: wider tokens are split into sub-codebooks
DENSE_HISTOGRAM_MAX = 1 << 20  # codebooks up to this size are counted in a dense histogram


@dataclass(frozen=True)
class TokenLayout:
    """The ids of one image: their shape, their codebook(s) and how they are stored.

    Build with :meth:`grid`, :meth:`sequence` or :meth:`scales`; ``to_dict``/``from_dict`` are
    what ``config.json``, the pretokenize manifest and each shard's stats record.
    """

    kind: LayoutKind
    codebook_size: int  # ids of each sub-codebook lie in [0, codebook_size)
    grid_shape: tuple[int, int] | None = None  # (h, w) of a grid; None: any grid (fully convolutional models)
    length: int | None = None  # n of a sequence
    scale_shapes: tuple[tuple[int, int], ...] = ()  # (hᵢ, wᵢ) of each scale, coarse to fine
    codebooks: int = 1  # k sub-codebooks per position (a trailing ids axis when > 1)
    bits: int | None = None  # bitwise tokens: ids are bits-bit integers, codebook_size = 2**bits
    _positions: int = field(default=0, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"layout kind must be one of {', '.join(_KINDS)}, got {self.kind!r}")
        if not is_int(self.codebook_size, 1):
            raise ValueError(f"codebook_size must be a positive int, got {self.codebook_size!r}")
        if not is_int(self.codebooks, 1):
            raise ValueError(f"codebooks must be a positive int, got {self.codebooks!r}")
        if self.bits is not None:
            if not isinstance(self.bits, int) or not 1 <= self.bits <= MAX_BITS:
                raise ValueError(f"bits must be an int in [1, {MAX_BITS}] (wider tokens: split into codebooks), got {self.bits!r}")
            if self.codebook_size != 1 << self.bits:
                raise ValueError(f"a {self.bits}-bit layout has codebook_size {1 << self.bits}, got {self.codebook_size}")
        elif self.codebook_size > 1 << MAX_BITS:
            raise ValueError(f"codebook_size {self.codebook_size} does not fit int64 ids")
        if self.kind == "grid":
            if self.grid_shape is not None:
                object.__setattr__(self, "grid_shape", _positive_pair(self.grid_shape, "grid_shape"))
            positions = 0 if self.grid_shape is None else self.grid_shape[0] * self.grid_shape[1]
        elif self.kind == "sequence":
            if not is_int(self.length, 1):
                raise ValueError(f"a sequence layout needs a positive length, got {self.length!r}")
            positions = self.length
        else:
            shapes = tuple(_positive_pair(s, "scale") for s in self.scale_shapes)
            if not shapes:
                raise ValueError("a scales layout needs at least one (h, w) scale")
            object.__setattr__(self, "scale_shapes", shapes)
            positions = sum(h * w for h, w in shapes)
        object.__setattr__(self, "_positions", positions)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def grid(cls, codebook_size: int, shape: tuple[int, int] | None = None, *, codebooks: int = 1, bits: int | None = None) -> TokenLayout:
        return cls("grid", codebook_size, grid_shape=shape, codebooks=codebooks, bits=bits)

    @classmethod
    def sequence(cls, codebook_size: int, length: int, *, codebooks: int = 1, bits: int | None = None) -> TokenLayout:
        return cls("sequence", codebook_size, length=length, codebooks=codebooks, bits=bits)

    @classmethod
    def scales(cls, codebook_size: int, shapes: Sequence[tuple[int, int]], *, codebooks: int = 1, bits: int | None = None) -> TokenLayout:
        return cls("scales", codebook_size, scale_shapes=tuple(tuple(s) for s in shapes), codebooks=codebooks, bits=bits)  # type: ignore[misc]

    # ------------------------------------------------------------------ shapes
    @property
    def positions(self) -> int:
        """Token positions per image (0 for a grid of unspecified size)."""
        return self._positions

    @property
    def tokens_per_image(self) -> int:
        """Ids per image: positions × codebooks."""
        return self._positions * self.codebooks

    @property
    def shape(self) -> tuple[int, ...] | None:
        """The ids shape of one image; None for a grid of unspecified size."""
        base: tuple[int, ...] | None = self.grid_shape if self.kind == "grid" else (self._positions,)  # a sequence's positions are its length
        if base is None:
            return None
        return base + ((self.codebooks,) if self.codebooks > 1 else ())

    @property
    def ndim(self) -> int:
        """Axes of one image's ids."""
        return (2 if self.kind == "grid" else 1) + (1 if self.codebooks > 1 else 0)

    def with_grid(self, shape: tuple[int, int]) -> TokenLayout:
        """This grid layout at a concrete (h, w)."""
        if self.kind != "grid":
            raise ValueError(f"a {self.kind} layout has no grid to set")
        return replace(self, grid_shape=shape)

    def describe(self) -> str:
        """One line for logs and errors: ``grid 16x16, 1024 codes`` / ``scales 1,2,...,16 (680), 4096 codes``."""
        if self.kind == "grid":
            what = "grid " + ("HxW/f" if self.grid_shape is None else f"{self.grid_shape[0]}x{self.grid_shape[1]}")
        elif self.kind == "sequence":
            what = f"sequence of {self.length}"
        else:
            sides = ",".join(str(h) if h == w else f"{h}x{w}" for h, w in self.scale_shapes)
            what = f"scales {sides} ({self._positions} tokens)"
        book = f"{self.bits}-bit ids" if self.bits else f"{self.codebook_size} codes"
        return what + (f" x {self.codebooks} codebooks" if self.codebooks > 1 else "") + f", {book}"

    # ------------------------------------------------------------------ storage
    @property
    def storage_dtype(self) -> np.dtype:
        """The numpy dtype token files store ids in: uint16 up to 65536 codes, int32 up to 2**31, else int64."""
        if self.codebook_size <= 1 << 16:
            return np.dtype(np.uint16)
        if self.codebook_size <= 1 << 31:
            return np.dtype(np.int32)
        return np.dtype(np.int64)

    @property
    def dense_histogram(self) -> bool:
        """Whether usage is one dense count per code (else per bit: bitwise or huge codebooks)."""
        return self.codebook_size <= DENSE_HISTOGRAM_MAX

    def histogram_shape(self) -> tuple[int, int]:
        """(rows, columns) of the usage counts: one row per sub-codebook; a column per code, or
        (bits, 2) per sub-codebook for bitwise / huge codebooks (rows = codebooks × bits)."""
        if self.dense_histogram:
            return (self.codebooks, self.codebook_size)
        bits = self.bits if self.bits is not None else (self.codebook_size - 1).bit_length()  # ceil(log2(size)), exact for any int
        return (self.codebooks * bits, 2)

    def count(self, ids: torch.Tensor | np.ndarray) -> np.ndarray:
        """Usage counts of ids shaped ``(..., k)`` (k = codebooks; any leading shape) -> int64 :meth:`histogram_shape`."""
        a = ids.detach().cpu().numpy() if isinstance(ids, torch.Tensor) else np.asarray(ids)
        a = a.astype(np.int64, copy=False).reshape(-1, self.codebooks)  # (N, k)
        rows, cols = self.histogram_shape()
        if self.dense_histogram:  # one bincount row per sub-codebook
            return np.stack([np.bincount(a[:, j], minlength=cols)[:cols] for j in range(rows)]).astype(np.int64, copy=False)
        bits = rows // self.codebooks
        ones = ((a[:, :, None] >> np.arange(bits, dtype=np.int64)) & 1).sum(axis=0).reshape(-1)  # (k*bits,)
        return np.stack([a.shape[0] - ones, ones], axis=1).astype(np.int64)

    # ------------------------------------------------------------------ ids
    def check(self, ids: torch.Tensor, *, batched: bool | None = None, what: str = "token ids") -> tuple[torch.Tensor, bool]:
        """Validate integer ``ids`` against this layout -> (ids (B, *shape) int64, batched).

        ``batched`` None: decided by the number of axes (one image has :attr:`ndim`, a batch one
        more); nothing else is guessed. ValueError naming the expected and the given shape, or
        the first id outside the codebook.
        """
        given = tuple(ids.shape)
        if batched is None:
            batched = len(given) == self.ndim + 1
        per_image = given[int(batched) :]
        want = self.shape
        if len(per_image) != self.ndim or (want is not None and per_image != want):
            raise ValueError(f"{what} of shape {given} do not match the layout ({self.describe()}): {self._expected()}")
        ids = ids if batched else ids.unsqueeze(0)
        if self.codebooks > 1 and per_image[-1] != self.codebooks:
            raise ValueError(f"{what}: the last axis must hold the {self.codebooks} sub-codebook ids, got shape {per_image}")
        if ids.numel() == 0:  # no images, or images of no ids
            raise ValueError(f"empty {what} of shape {tuple(ids.shape)}")
        ids = _as_int64(ids, what)
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= self.codebook_size:
            bad = lo if lo < 0 else hi
            raise ValueError(
                f"{what} must lie in [0, {self.codebook_size - 1}] (codebook size {self.codebook_size}), got {bad}"
            )
        return ids, batched

    def _expected(self) -> str:
        one = self.shape
        if one is None:
            k = f", {self.codebooks}" if self.codebooks > 1 else ""
            return f"expected (h, w{k}) for one image or (B, h, w{k}) for a batch (flat ids: pass grid=(h, w))"
        dims = ", ".join(str(d) for d in one)
        return f"expected ({dims}) for one image or (B, {dims}) for a batch"

    def split(self, ids: torch.Tensor) -> list[torch.Tensor]:
        """Multi-scale ids (B, L[, k]) -> one (B, hᵢ, wᵢ[, k]) tensor per scale (a grid or sequence: ``[ids]``)."""
        if self.kind != "scales":
            return [ids]
        return split_scales(ids, self.scale_shapes)

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.kind, "codebook_size": self.codebook_size}
        if self.kind == "grid" and self.grid_shape is not None:
            d["grid_shape"] = list(self.grid_shape)
        if self.kind == "sequence":
            d["length"] = self.length
        if self.kind == "scales":
            d["scale_shapes"] = [list(s) for s in self.scale_shapes]
        if self.codebooks != 1:
            d["codebooks"] = self.codebooks
        if self.bits is not None:
            d["bits"] = self.bits
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TokenLayout:
        """The layout of ``d`` (as :meth:`to_dict` writes it); ValueError for anything else."""
        if not isinstance(d, Mapping):
            raise ValueError(f"a token layout is a JSON object, got {type(d).__name__}")
        known = {"kind", "codebook_size", "grid_shape", "length", "scale_shapes", "codebooks", "bits"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown token layout keys: {', '.join(map(str, unknown))}")
        try:
            grid = d.get("grid_shape")
            return cls(
                kind=d.get("kind"),  # type: ignore[arg-type]
                codebook_size=d.get("codebook_size"),  # type: ignore[arg-type]
                grid_shape=tuple(grid) if isinstance(grid, list) else grid,
                length=d.get("length"),
                scale_shapes=tuple(tuple(s) if isinstance(s, list) else s for s in d.get("scale_shapes", ())),
                codebooks=d.get("codebooks", 1),
                bits=d.get("bits"),
            )
        except TypeError as err:
            raise ValueError(f"malformed token layout {dict(d)!r}: {err}") from None


def split_scales(ids: torch.Tensor, shapes: Sequence[tuple[int, int]]) -> list[torch.Tensor]:
    """(B, Σ hᵢwᵢ[, k]) ids in VAR's order (scale by scale, raster inside each) -> [(B, hᵢ, wᵢ[, k]), ...]."""
    total = sum(h * w for h, w in shapes)
    if ids.ndim < 2 or ids.shape[1] != total:
        raise ValueError(f"multi-scale ids must be (B, {total}[, k]), got {tuple(ids.shape)}")
    parts = ids.split([h * w for h, w in shapes], dim=1)  # (B, hᵢwᵢ[, k]) views
    return [part.reshape(ids.shape[0], h, w, *ids.shape[2:]) for part, (h, w) in zip(parts, shapes)]


def _positive_pair(value: Any, what: str) -> tuple[int, int]:
    if (
        not isinstance(value, (tuple, list)) or len(value) != 2
        or not all(is_int(v, 1) for v in value)
    ):
        raise ValueError(f"{what} must be two positive ints (h, w), got {value!r}")
    return (int(value[0]), int(value[1]))


def _as_int64(ids: torch.Tensor, what: str) -> torch.Tensor:
    """Integer ids of any dtype (uint16/32/64 included, which lack min/max kernels) as int64."""
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise ValueError(f"{what} must be integers, got dtype {ids.dtype}")
    if ids.dtype == torch.uint64:  # values over 2**63 would wrap negative: check them as unsigned
        arr = ids.cpu().numpy()
        hi = int(arr.max())  # check refused empty ids before this
        if hi > (1 << 63) - 1:
            raise ValueError(f"{what} must lie in int64, got {hi}")
        return torch.from_numpy(arr.astype(np.int64)).to(ids.device)
    return ids.to(torch.int64)
