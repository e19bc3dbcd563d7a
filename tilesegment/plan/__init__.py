"""The run plan: every setting of a run in one frozen dataclass tree, with a fingerprint.

``build_plan(source, output, **settings)`` (the arguments of ``segment()``) checks and
gathers them without reading a pixel; ``segment()`` executes the plan; ``tilesegment plan``
prints it (:func:`describe_plan`). ``load_recipe`` reads a TOML recipe whose tables are the
plan's sections into ``segment()`` keyword arguments.
"""

from __future__ import annotations

from tilesegment.plan.build import build_plan, complete_plan
from tilesegment.plan.describe import describe_plan
from tilesegment.plan.fingerprint import fingerprint, fingerprint_fields, flat_fields
from tilesegment.plan.model import (
    CRFPlan,
    ExecutionPlan,
    GeometryPlan,
    ModelPlan,
    NormalizationPlan,
    OutputPlan,
    RunPlan,
    SourcePlan,
    TissuePlan,
)
from tilesegment.plan.recipe import RECIPE_KEYS, load_recipe, read_recipe

__all__ = ["RECIPE_KEYS", "CRFPlan", "ExecutionPlan", "GeometryPlan", "ModelPlan",
           "NormalizationPlan", "OutputPlan", "RunPlan", "SourcePlan", "TissuePlan", "build_plan",
           "complete_plan", "describe_plan", "fingerprint", "fingerprint_fields", "flat_fields",
           "load_recipe", "read_recipe"]
