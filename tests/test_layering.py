"""The layering rules, enforced: which modules may import torch, Click, and the I/O libraries."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "tilesegment"

RULES = {
    "click": ("cli/",),
    "torch": ("models/", "infer.py", "workers.py", "train/"),
    "torchvision": ("models/",),
    "rasterio": ("read/", "write/", "export/"),
    "tifffile": ("read/", "write/"),
    "zarr": ("read/", "write/"),
    "openslide": ("read/",),
    "segmentation_models_pytorch": ("models/smp_models.py",),
    "shapely": ("export/", "read/"),
    "pyogrio": ("export/", "read/"),
}
# The registry's spec side must load without torch (``tilesegment models`` stays fast).
TORCH_FREE = ("models/registry.py", "models/spec.py", "models/unet_geometry.py",
              "models/__init__.py", "models/catalog.py", "models/plugins.py",
              "models/identity.py", "models/unet_spec.py", "models/deeplab_spec.py",
              "models/fcn_spec.py", "models/tv.py", "models/pretrained/__init__.py",
              "models/geometry.py", "models/resnet_unet_spec.py", "models/smp_models.py",
              "models/resnet_unet_geometry.py", "models/deeplab_geometry.py")


def _imports(path: Path, top_level_only: bool = False) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in (tree.body if top_level_only else ast.walk(tree)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(
    p.relative_to(PACKAGE)))
def test_module_respects_layering(path):
    rel = path.relative_to(PACKAGE).as_posix()
    found = _imports(path)
    for lib, allowed in RULES.items():
        if lib in found:
            assert rel.startswith(allowed), f"{rel} imports {lib}; only {allowed} may"
    if rel in TORCH_FREE:
        top = _imports(path, top_level_only=True)
        assert "torch" not in top, f"{rel} must not import torch at module level"


def _fresh(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_import_and_help_stay_light():
    """``import tilesegment`` and the CLI's --help load no torch, rasterio, zarr or dask."""
    code = ("import sys, tilesegment, tilesegment.cli.main as m; "
            "from click.testing import CliRunner; "
            "r = CliRunner().invoke(m.cli, ['run', '--help']); assert r.exit_code == 0; "
            "r = CliRunner().invoke(m.cli, ['train', '--help']); assert r.exit_code == 0; "
            "import tilesegment.train; "
            "r = CliRunner().invoke(m.cli, ['models']); assert r.exit_code == 0, r.output; "
            "print(sorted(x for x in ('torch', 'rasterio', 'zarr', 'dask', 'tifffile') "
            "if x in sys.modules))")
    assert _fresh(code) == "[]"
