"""Recipes: TOML files whose tables are the run plan's sections.

```toml
[model]
name = "unet-tiny"
classes = 4

[geometry]
tile = 512
halo = 56

[normalization]
mode = "raster"
```

Every key belongs to a table named after a :class:`~tilesegment.plan.model.RunPlan` section
(:data:`RECIPE_KEYS`); ``-`` and ``_`` are the same in a key. ``tilesegment run --config``
fills its options from a recipe (flags on the command line win); :func:`load_recipe` turns
one into keyword arguments of ``segment()``. An unknown table or key fails as one line
naming the file, the key and the nearest known one.
"""

from __future__ import annotations

import difflib
import tomllib
from pathlib import Path
from typing import Any

from tilesegment.errors import SettingError

RECIPE_KEYS: dict[str, dict[str, str]] = {
    "source": {"level": "level", "mpp": "mpp"},
    "model": {"name": "model", "weights": "weights", "backbone_weights": "backbone_weights",
              "classes": "classes", "seed": "seed"},
    "geometry": {"tile": "tile", "halo": "halo", "pad_mode": "pad_mode",
                 "pad_value": "pad_value", "blend": "blend"},
    "normalization": {"mode": "normalization", "mean": "normalization_mean",
                      "std": "normalization_std"},
    "crf": {"enabled": "crf", "preset": "crf_preset", "iterations": "crf_iterations",
            "w1": "crf_w1", "theta_alpha": "crf_theta_alpha", "theta_beta": "crf_theta_beta",
            "w2": "crf_w2", "theta_gamma": "crf_theta_gamma"},
    "output": {"path": "output", "probabilities": "save_probabilities",
               "disagreement": "save_disagreement", "cog": "cog", "overwrite": "overwrite"},
    "execution": {"block_size": "block_size", "batch_size": "batch_size", "device": "device",
                  "channels_last": "channels_last", "scheduler": "scheduler",
                  "workers": "workers", "progress": "progress",
                  "local_cluster": "local_cluster", "dashboard": "dashboard",
                  "devices": "devices", "precision": "precision", "compile": "compile",
                  "tta": "tta"},
    "tissue": {"mode": "tissue", "mask": "tissue_mask"},
    "truth": {"path": "truth", "ignore_index": "ignore_index", "instances": "instances",
              "map": "mapping", "allow_crs_alias": "allow_crs_alias",
              "resample_truth": "resample_truth", "seam_width": "seam_width", "core": "core",
              "json": "json_out", "csv": "csv_out", "report": "report_dir"},
}
"""Table → key → the setting it gives (the name of ``run``'s parameter; ``normalization_
mean``/``_std`` and ``channels_last`` exist only in the Python API, ``[truth]``,
``local_cluster``, ``devices`` and ``dashboard`` only on the command line)."""

CLI_ONLY = frozenset(RECIPE_KEYS["truth"].values()) | {"local_cluster", "dashboard", "devices"}
PYTHON_ONLY = frozenset({"normalization_mean", "normalization_std", "channels_last"})


def read_recipe(path: str | Path) -> dict[str, Any]:
    """The settings of the recipe at ``path`` as ``{setting: value}`` (setting names as
    in :data:`RECIPE_KEYS`); :class:`SettingError` naming the file for an unreadable file,
    a key outside a table, an unknown table or key (with the nearest known one)."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SettingError(f"{path}: {' '.join(str(exc).split())}") from None
    settings: dict[str, Any] = {}
    for table, body in data.items():
        section = table.replace("-", "_")
        if not isinstance(body, dict):
            raise SettingError(f"{path}: {table!r} is not in a table{_top_level_hint(table)}")
        if section not in RECIPE_KEYS:
            raise SettingError(f"{path}: unknown table [{table}]"
                               f"{_hint(section, RECIPE_KEYS, '[{}]')}; tables: "
                               f"{', '.join(RECIPE_KEYS)}")
        keys = RECIPE_KEYS[section]
        for key, value in body.items():
            name = keys.get(key.replace("-", "_"))
            if name is None:
                raise SettingError(f"{path}: unknown key {key!r} in [{table}]"
                                   f"{_hint(key.replace('-', '_'), keys, '{}')}; keys: "
                                   f"{', '.join(keys)}")
            settings[name] = value
    return settings


def _hint(word: str, known: Any, form: str) -> str:
    close = difflib.get_close_matches(word, list(known), n=1, cutoff=0.5)
    return f" (did you mean {form.format(close[0])}?)" if close else ""


_LEGACY = {"normalize": ("normalization", "mode"), "model": ("model", "name"),
           "output": ("output", "path"), "save_probabilities": ("output", "probabilities"),
           "save_disagreement": ("output", "disagreement"), "truth": ("truth", "path"),
           "crf": ("crf", "enabled")}


def _top_level_hint(key: str) -> str:
    """The table and key a flat (old-style) setting now lives under."""
    key = key.replace("-", "_")
    if key in _LEGACY:
        table, name = _LEGACY[key]
        return f" (did you mean [{table}] {name}?)"
    for table, keys in RECIPE_KEYS.items():
        for name, setting in keys.items():
            if key in (name, setting) or f"{table}_{name}" == key:
                return f" (did you mean [{table}] {name}?)"
    return f"; settings go in tables: {', '.join(f'[{t}]' for t in RECIPE_KEYS)}"


def load_recipe(path: str | Path) -> dict[str, Any]:
    """The recipe at ``path`` as keyword arguments of :func:`tilesegment.segment` (and
    :func:`tilesegment.plan.build_plan`): ``segment(src, **load_recipe("r.toml"))``; merge
    your own over it (``{**load_recipe(p), "tile": 256}``) to override. The command-line-only
    settings (``[truth]``, ``local_cluster``, ``dashboard``) are refused."""
    settings = read_recipe(path)
    cli_only = sorted(CLI_ONLY & settings.keys())
    if cli_only:
        raise SettingError(f"{path}: {', '.join(cli_only)} only apply to `tilesegment run`, "
                           "not to segment()")
    mean, std = settings.pop("normalization_mean", None), settings.pop("normalization_std",
                                                                        None)
    if (mean is None) != (std is None):
        raise SettingError(f"{path}: [normalization] needs both mean and std")
    if mean is not None:
        if settings.get("normalization") not in (None, "explicit"):
            raise SettingError(f"{path}: [normalization] mean and std go with mode "
                               "\"explicit\" (or no mode)")
        settings["normalization"] = (mean, std)
    elif settings.get("normalization") == "explicit":
        raise SettingError(f"{path}: [normalization] mode \"explicit\" needs mean and std")
    crf = {k: settings.pop(k) for k in list(settings) if k.startswith("crf")}
    if crf.pop("crf", bool(crf)):
        # enabled alone: the model card's tuned setting, else Krähenbühl's (build_plan)
        settings["crf"] = True if not crf else crf_params(
            crf.pop("crf_preset", "krahenbuhl"), crf.pop("crf_iterations", 10),
            **{k.removeprefix("crf_"): v for k, v in crf.items()})
    return settings


def crf_params(preset: str, iterations: int, **overrides: Any):
    """:class:`~tilesegment.models.crf.CRFParams` of ``preset`` (``krahenbuhl`` or
    ``deeplab``) with ``iterations`` and the kernel values given (``None``: the preset's)."""
    import dataclasses

    from tilesegment.models.crf import CRFParams

    if preset not in ("krahenbuhl", "deeplab"):
        raise SettingError(f"CRF preset {preset!r} unknown; use krahenbuhl or deeplab")
    base = (CRFParams.deeplab(iterations) if preset == "deeplab"
            else CRFParams.krahenbuhl(iterations))
    return dataclasses.replace(base, **{k: v for k, v in overrides.items() if v is not None})
