"""What every architecture config dataclass shares: JSON dicts, strict loading and the corpus hash.

The config classes (:class:`~vqtok.models.vqgan.VQGANConfig`, ``IBQConfig``, ``MAGVIT2Config``,
``CosmosConfig``) are frozen dataclasses that inherit :class:`ArchConfig` and name themselves in
two class attributes (not dataclass fields):

- ``config_name``: how errors name the architecture ("unknown IBQ config keys: ...");
- ``hash_model_type``: mixed into :meth:`ArchConfig.hash` as ``"model_type"`` so that two
  architectures with the same field values hash apart; ``None`` for VQGAN, whose hash predates
  the other architectures (token corpora are tagged with it, so it must not change).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, fields
from typing import Any, ClassVar, Mapping, TypeVar

__all__ = ["ArchConfig", "HalvingLevels"]

_C = TypeVar("_C", bound="ArchConfig")


class ArchConfig:
    """Mixin for the frozen architecture config dataclasses (see the module docstring)."""

    config_name: ClassVar[str] = "model"  # the architecture in error messages
    hash_model_type: ClassVar[str | None] = None  # mixed into hash(); None keeps VQGAN's historic hash

    def _int_tuples(self, *names: str) -> None:
        """Store the named sequence fields as tuples of ints (JSON gives lists; keeps the dataclass hashable)."""
        for name in names:
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[_C], d: Mapping[str, Any]) -> _C:
        """The config of ``d`` (as :meth:`to_dict` writes it); ValueError naming any unknown key."""
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown {cls.config_name} config keys: {', '.join(unknown)}")
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
