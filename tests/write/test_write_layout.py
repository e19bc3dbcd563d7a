"""One module owns the on-disk layout of outputs: no other module of ``read/`` or ``write/``
spells a layer name, an attribute key, a tag or a temporary-name mark; the names it gives
are those outputs have always had."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tilesegment.write import layout

PACKAGE = Path(__file__).resolve().parents[2] / "tilesegment"

EXACT = {
    *layout.LAYERS, layout.ZARR_ATTRS_KEY, layout.COMPLETION_KEY, layout.FORMAT_NAME,
    layout.ZARR_JSON, layout.TIFF_ATTRS_TAG, layout.TIFF_LAYER_TAG, layout.TIFF_CLASS_NAMES_TAG,
    layout.TIFF_PROVENANCE_TAG, layout.TIFF_PRECISION_TAG, layout.PARTIAL_MARK, layout.OLD_MARK,
    layout.JOURNAL_SUFFIX, layout.LOCK_SUFFIX, layout.SCRATCH_SUFFIX,
}
"""String constants that may appear, whole, only in layout.py."""
MARKS = (layout.PARTIAL_MARK, layout.OLD_MARK, layout.JOURNAL_SUFFIX, layout.SCRATCH_SUFFIX,
         layout.TIFF_ATTRS_TAG, layout.ZARR_JSON, layout.FORMAT_NAME)
"""Distinctive pieces that may not appear even inside another string (an f-string's text)."""


def layout_literals(source: str) -> list[tuple[int, int, str]]:
    """``(line, column, text)`` of every string constant in ``source`` that spells the layout,
    docstrings excepted (they describe it)."""
    tree = ast.parse(source)
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            for stmt in node.body:
                if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
                    docstrings.add(id(stmt.value))
    # attribute docstrings: a bare string right after an assignment
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list):
            for stmt in body:
                if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
                    docstrings.add(id(stmt.value))
    found = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Constant) and isinstance(node.value, str)
                and id(node) not in docstrings):
            text = node.value
            if text in EXACT or any(mark in text for mark in MARKS):
                found.append((node.lineno, node.col_offset, text))
    return sorted(found)


def test_the_check_catches_a_spelled_layout() -> None:
    """The check itself can fail: each way of spelling the layout is caught."""
    source = '''
"""Docstrings may say "mask" and .x.partial-y freely."""
attrs = group.attrs["tilesegment"]
layer = root / "probabilities"
tmp = final.with_name(f".{final.name}.partial-{token}")
tag = tags.get("TILESEGMENT_LAYER", "mask")
ok = ("layers", "c", "probabilities are floats")
'''
    assert [text for _, _, text in layout_literals(source)] == [
        "tilesegment", "probabilities", ".partial-", "TILESEGMENT_LAYER", "mask"]


def test_no_module_but_layout_spells_the_layout() -> None:
    offenders = []
    for path in sorted([*PACKAGE.glob("read/*.py"), *PACKAGE.glob("write/*.py")]):
        if path.name == "layout.py":
            continue
        offenders += [f"{path.relative_to(PACKAGE)}:{line}: {text!r}"
                      for line, _, text in layout_literals(path.read_text(encoding="utf-8"))]
    assert offenders == [], "spell these through tilesegment.write.layout:\n" + "\n".join(
        offenders)


def test_layout_names_are_unchanged() -> None:
    """The names every existing output and every earlier run's leftovers have."""
    final = Path("/d/out.tif")
    assert layout.sibling_path(final, "probabilities") == Path("/d/out.probabilities.tif")
    assert layout.geotiff_layer_path(final, "mask") == final
    assert layout.partial_path(final, "ab12") == Path("/d/.out.tif.partial-ab12")
    assert layout.block_store_path(final, "ab12", scratch=True) == Path(
        "/d/.out.tif.partial-ab12.scratch.zarr")
    assert layout.block_store_path(Path("/d/o.zarr"), "ab12") == Path("/d/.o.zarr.partial-ab12")
    assert layout.staged_tiff_path(final, "ab12") == Path("/d/.out.tif.partial-ab12.tif")
    assert layout.final_of(Path("/d/.out.tif.partial-ab12.scratch.zarr")) == final
    assert layout.old_path(final, "ab12") == Path("/d/.out.tif.old-ab12")
    assert layout.journal_path(final) == Path("/d/.out.tif.publishing.json")
    assert layout.lock_path(final) == Path("/d/.out.tif.lock")
    assert layout.zarr_layer_path(Path("/d/o.zarr"), "mask") == Path("/d/o.zarr/mask")
    assert (layout.ZARR_ATTRS_KEY, layout.TIFF_ATTRS_TAG, layout.COMPLETION_KEY) == (
        "tilesegment", "TILESEGMENT", "completion")


def test_layout_imports_nothing_heavy() -> None:
    code = ("import sys, tilesegment.write.layout; print(sorted(m for m in ('zarr', "
            "'rasterio', 'tifffile', 'torch', 'dask') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"
    tree = ast.parse((PACKAGE / "write" / "layout.py").read_text(encoding="utf-8"))
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert imported <= {"__future__", "pathlib"}
