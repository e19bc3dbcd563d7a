"""``--config FILE``: settings for ``run`` and ``plan`` from a TOML recipe; flags win.

A recipe's tables are the run plan's sections (``[model] name = "unet-tiny"``,
``[geometry] tile = 512``...; see :mod:`tilesegment.plan.recipe`). Its values become
Click's ``default_map``, so anything given on the command line overrides them. An unknown
table or key is a :class:`~tilesegment.errors.SettingError` (one line, exit 1) naming the
file, the key and the nearest known one.
"""

from __future__ import annotations

import click


def load_recipe(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Eager Click callback: read the recipe into ``ctx.default_map``."""
    if value is None:
        return None
    from tilesegment.errors import SettingError
    from tilesegment.plan.recipe import PYTHON_ONLY, read_recipe

    settings = read_recipe(value)  # a SettingError: one line, exit 1, like any setting
    if settings.get("normalization") == "explicit":
        raise SettingError(f"{value}: [normalization] mode \"explicit\" (mean, std) is for "
                           "the Python API; the command line takes spec, raster or none")
    python_only = sorted(PYTHON_ONLY & settings.keys())
    if python_only:
        raise SettingError(f"{value}: {', '.join(python_only)} only apply to the Python API "
                           "(segment())")
    # `plan` has no scoring options: the [truth] keys it does not use are left out
    known = {p.name for p in ctx.command.params}
    settings = {name: val for name, val in settings.items() if name in known}
    ctx.default_map = {**(ctx.default_map or {}), **settings}
    return value
