"""Checks on a plan's resolved per-job parameters, before any tensor is read (no torch)."""

from __future__ import annotations

from typing import Any

from .errors import ConfigError
from .methods.spec import ZERO_WEIGHT_SUM


def check_plan(plan: Any) -> None:
    """Checks on resolved per-job parameters, before any tensor is read (ConfigError)."""
    spec_name = plan.spec.name
    for job in plan.jobs:
        if job.copy:
            continue
        models = [s.model for s in job.sources]
        for model, params in zip(models, job.model_params):
            density = params.get("density")
            if density is not None and not 0.0 <= density <= 1.0:
                raise ConfigError(
                    f"{plan.source}: model {model}, tensor {job.name}: density {density:g} "
                    "must be between 0 and 1 (the fraction of the task vector kept)"
                )
        if spec_name == "linear" and job.global_params.get("normalize"):
            weights = [p.get("weight") for p in job.model_params]
            if all(isinstance(w, (int, float)) for w in weights) and abs(sum(weights)) < ZERO_WEIGHT_SUM:
                pairs = ", ".join(f"{m}: {w:g}" for m, w in zip(models, weights))
                raise ConfigError(
                    f"{plan.source}: tensor {job.name}: linear weights ({pairs}) sum to zero "
                    "with normalize: true; change the weights or set normalize: false"
                )
