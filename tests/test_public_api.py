"""docs/api.md lists exactly the public surface: every name in a public module's ``__all__`` is on the
page, and every name the page's tables give for a module is exported by it."""

from __future__ import annotations

import importlib
import re
import warnings
from pathlib import Path

import pytest

API = (Path(__file__).resolve().parents[1] / "docs" / "api.md").read_text()
PUBLIC = [
    "vqtok", "vqtok.hub", "vqtok.convert", "vqtok.convert.auto", "vqtok.metrics", "vqtok.pipeline",
    "vqtok.tars", "vqtok.tokens", "vqtok.images", "vqtok.prior", "vqtok.training", "vqtok.models",
    "vqtok.models.registry",
]  # fmt: skip


def _module(name: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return importlib.import_module(name)


def _identifiers(text: str) -> set[str]:
    return {w for code in re.findall(r"`([^`]+)`", text) for w in re.findall(r"[A-Za-z_][A-Za-z_0-9]*", code)}


@pytest.mark.parametrize("name", PUBLIC)
def test_every_exported_name_is_documented(name: str) -> None:
    exported = _module(name).__all__
    assert len(set(exported)) == len(exported), f"{name}.__all__ repeats a name"
    missing = [n for n in exported if n not in _identifiers(API)]
    assert not missing, f"{name} exports {missing}, which docs/api.md does not mention"


def _leading(codes: list[str]) -> list[str]:
    """`name(args) -> T` -> name; dotted paths into other modules and non-names (`"x"`, `$VAR`) are skipped."""
    return [m.group(0) for c in codes if not c.startswith("vqtok.") and (m := re.match(r"[A-Za-z_]\w*", c))]


def _tables() -> dict[str, list[str]]:
    """module -> leading names of its table rows: the sections headed ``## `vqtok.hub` `` and
    ``**`vqtok.tars`**``, and the rows of the "Other modules" table (module, names)."""
    out: dict[str, list[str]] = {}
    module = None
    for line in API.splitlines():
        head = re.match(r"^(?:## `|\*\*`)(vqtok[.\w]*)`", line)
        if head:
            module = head.group(1)
            continue
        if line.startswith("## "):
            module = None
        if not line.startswith("| `") or not line.endswith("|"):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        row = re.fullmatch(r"`(vqtok\.\w+)`", cells[0])
        if row and row.group(1) in PUBLIC:  # "Other modules": | `vqtok.images` | `a`, `b` | docs |
            out.setdefault(row.group(1), []).extend(_leading(re.findall(r"`([^`]+)`", cells[1])))
        elif module in PUBLIC:  # | `name(args) -> T`, `other` | what |
            out.setdefault(module, []).extend(_leading(re.findall(r"`([^`]+)`", cells[0])))
    return out


def test_tables_name_only_exported_names() -> None:
    tables = _tables()
    assert {"vqtok.hub", "vqtok.tars", "vqtok.tokens", "vqtok.pipeline", "vqtok.metrics", "vqtok.images"} <= set(tables)
    wrong = {m: [n for n in names if n not in _module(m).__all__] for m, names in tables.items()}
    assert not any(wrong.values()), f"docs/api.md tables name what these modules do not export: {wrong}"
