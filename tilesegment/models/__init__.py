"""Segmentation models: the registry, the model spec, and the networks themselves.

Importing this package imports :mod:`tilesegment.models.catalog`, which registers the
built-in models (no torch) and installs the plugin loader into the registry.
"""

from tilesegment.models import catalog  # noqa: F401  (registers the built-in models)
from tilesegment.models.registry import (
    ModelEntry,
    create_model,
    get_entry,
    get_spec,
    list_models,
    register_model,
)
from tilesegment.models.spec import ModelSpec, Normalization

__all__ = ["ModelEntry", "ModelSpec", "Normalization", "create_model", "get_entry",
           "get_spec", "list_models", "register_model"]
