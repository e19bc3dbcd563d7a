"""ruff stays clean (its configuration is in pyproject.toml)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_is_clean():
    if shutil.which("ruff") is None:
        pytest.skip("ruff is not installed (pip install -e '.[test]')")
    result = subprocess.run(["ruff", "check", "--no-cache", str(ROOT)], capture_output=True,
                            text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-1000:]


def test_plain_pytest_collects_every_module():
    """One helper convention (``from tests.… import``): the suite collects under the plain
    ``pytest`` command as under ``python -m pytest`` (which also puts the cwd on sys.path)."""
    if shutil.which("pytest") is None:
        pytest.skip("the pytest command is not on PATH")
    result = subprocess.run(["pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-1000:]
    assert "error" not in result.stdout.splitlines()[-1]


def test_every_option_and_parameter_is_documented():
    """docs/cli.md names every long option of every command, docs/python-api.md every
    parameter of segment(): a new option without its documentation fails here."""
    import inspect
    import re

    import click

    from tilesegment import segment
    from tilesegment.cli.main import cli

    cli_doc = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    missing = [f"{name} {opt}" for name, command in cli.commands.items()
               for param in command.params if isinstance(param, click.Option)
               for opt in param.opts if opt.startswith("--") and opt not in cli_doc]
    api_doc = (ROOT / "docs" / "python-api.md").read_text(encoding="utf-8")
    missing += [f"segment({name})" for name in inspect.signature(segment).parameters
                if not re.search(rf"`{name}`", api_doc)]
    assert not missing, missing
