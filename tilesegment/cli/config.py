"""``--config FILE``: settings for ``run`` from a TOML recipe; flags on the command line win.

The recipe's ``[run]`` table (or its top level) holds option names with ``-`` or ``_``; the
values become Click's ``default_map``, so anything given on the command line overrides them.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import click


def load_recipe(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Eager Click callback: read the recipe into ``ctx.default_map``."""
    if value is None:
        return None
    path = Path(value)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise click.BadParameter(f"{path}: {' '.join(str(exc).split())}", ctx, param) from None
    table: dict[str, Any] = data.get("run", data)
    # a setting is named as its long flag (``pad-mode`` or ``pad_mode`` for ``--pad-mode``)
    known = {}
    for p in ctx.command.params:
        if p.name in ("config", "source"):
            continue
        for opt in getattr(p, "opts", []):
            if opt.startswith("--"):
                known[opt[2:].replace("-", "_")] = p.name
    settings = {}
    for key, val in table.items():
        name = known.get(key.replace("-", "_"))
        if name is None:
            raise click.BadParameter(f"{path}: unknown setting {key!r}", ctx, param)
        settings[name] = val
    ctx.default_map = {**(ctx.default_map or {}), **settings}
    return value
