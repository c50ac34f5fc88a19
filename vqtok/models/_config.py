"""What every architecture config dataclass shares: JSON dicts, strict loading and the corpus hash.

The config classes (:class:`~vqtok.models.vqgan.VQGANConfig`, ``IBQConfig``, ``MAGVIT2Config``,
``CosmosConfig``) are frozen dataclasses that inherit :class:`ArchConfig` and name themselves in
two class attributes (not dataclass fields):

- ``config_name``: how errors name the architecture ("unknown IBQ config keys: ...");
- ``hash_model_type``: mixed into :meth:`ArchConfig.hash` as ``"model_type"`` so that two
  architectures with the same field values hash apart; ``None`` for VQGAN, whose hash predates
  the other architectures (token corpora are tagged with it, so it must not change).

:meth:`ArchConfig.from_dict` (how ``config.json`` becomes a config) checks every value against its
field's annotation before the class sees it: ``int`` fields take integers only (not ``1e7``, not
``true``), at least 1 (0 too where the default is 0) and at most :data:`MAX_INT`
(``num_res_blocks`` at most :data:`MAX_BLOCKS`); ``float`` fields take finite numbers; ``tuple[int, ...]``
fields take at most :data:`MAX_LEVELS` integers in [1, MAX_INT]. These bounds keep a hostile or broken
config from building a model that takes minutes or gigabytes before its weights are checked.
"""

from __future__ import annotations

import hashlib
import json
import math
import typing
from dataclasses import Field, asdict, fields
from typing import Any, ClassVar, Iterable, Mapping, TypeVar

from vqtok._errors import is_int

__all__ = ["ArchConfig", "HalvingLevels", "MAX_INT", "MAX_BLOCKS", "MAX_LEVELS"]

_C = TypeVar("_C", bound="ArchConfig")

MAX_INT = 2**31 - 1  # any int field: channel counts, codebook sizes, resolutions
MAX_BLOCKS = 32  # num_res_blocks (published models: 2 to 4)
MAX_LEVELS = 16  # length of any tuple field (ch_mult, attn_resolutions, levels...)


def _check_value(where: str, field: Field[Any], kind: Any, value: Any) -> None:
    """ValueError naming the field unless ``value`` fits the annotation ``kind`` (see the module docstring)."""
    name = f"{where} {field.name}"
    if kind is int:
        low = 0 if field.default == 0 else 1
        high = MAX_BLOCKS if field.name == "num_res_blocks" else MAX_INT
        if not is_int(value) or not low <= value <= high:
            raise ValueError(f"{name} must be an integer in [{low}, {high}], got {value!r:.40}")
    elif kind is float:
        if not (is_int(value) or isinstance(value, float)) or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r:.40}")
    elif kind is bool or kind is str:
        if not isinstance(value, kind):
            raise ValueError(f"{name} must be a {kind.__name__}, got {value!r:.40}")
    elif typing.get_origin(kind) is tuple and typing.get_args(kind) == (int, ...):
        if not isinstance(value, (list, tuple)) or len(value) > MAX_LEVELS or not all(
            is_int(v) and 1 <= v <= MAX_INT for v in value
        ):
            raise ValueError(f"{name} must be a list of at most {MAX_LEVELS} integers in [1, {MAX_INT}], got {value!r:.60}")


class ArchConfig:
    """Mixin for the frozen architecture config dataclasses (see the module docstring)."""

    config_name: ClassVar[str] = "model"  # the architecture in error messages
    hash_model_type: ClassVar[str | None] = None  # mixed into hash(); None keeps VQGAN's historic hash

    def _int_tuples(self, *names: str) -> None:
        """Store the named sequence fields as tuples of ints (JSON gives lists; keeps the dataclass hashable)."""
        for name in names:
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))

    def _positive_ints(self, where: str, names: Iterable[str]) -> None:
        """ValueError ``{where} {name} must be a positive int`` for the first named field that is not an int >= 1."""
        for name in names:
            value = getattr(self, name)
            if not is_int(value) or value < 1:
                raise ValueError(f"{where} {name} must be a positive int, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[_C], d: Mapping[str, Any]) -> _C:
        """The config of ``d`` (as :meth:`to_dict` writes it); ValueError naming any unknown key or bad value."""
        known = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ValueError(f"unknown {cls.config_name} config keys: {', '.join(map(str, unknown))}")
        kinds = typing.get_type_hints(cls)
        for key, value in d.items():
            _check_value(f"{cls.config_name} config", known[key], kinds[key], value)
        return cls(**dict(d))

    def hash(self) -> str:
        """Short stable hash of the architecture (used to tag token corpora)."""
        payload = self.to_dict()
        if self.hash_model_type is not None:
            payload = {"model_type": self.hash_model_type, **payload}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


class HalvingLevels:
    """``downsample_factor`` of a config whose every ``ch_mult`` level but the last halves the side."""

    ch_mult: tuple[int, ...]

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)
