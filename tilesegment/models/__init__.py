"""Segmentation models: the registry, the model spec, and the networks themselves."""

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
