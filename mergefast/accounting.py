"""Every input tensor is accounted for before any tensor is read: written (copied or merged)
into the output, or left out by a rule the plan states. Anything else is a ConfigError that
lists the tensors: an exit 0 must never hide a lost tensor.

The rules that leave tensors out:
- integer buffers (BatchNorm's `num_batches_tracked`) of all models but the one they are copied from;
- a layer of a sliced module that no slice takes from that model;
- the pre-weights and carried modules of a model that is not in the first slice of its
  module (they come from that slice's models), the post-weights of one not in the last slice.
"""

from __future__ import annotations

from collections import defaultdict

from .config import merged_models
from .errors import ConfigError

SHOWN = 5  # tensor names listed in an error


def _where_in_model(arch) -> dict[str, tuple[str, int | None, str]]:
    """tensor name -> (module, layer index or None, "pre" | "layer" | "post")."""
    found = {}
    for module in arch.modules:
        for name in module.pre_weights:
            found[name] = (module.name, None, "pre")
        for name in module.post_weights:
            found[name] = (module.name, None, "post")
        for i in range(module.num_layers):
            for name in module.stack.layer_tensors(i):
                found[name] = (module.name, i, "layer")
    return found


def _rule(plan_of, ref: str, module: str, layer: int | None, kind: str) -> str | None:
    """The rule that leaves this tensor of `ref` out, or None when it should have been used."""
    module_plan = plan_of.get(module)
    if module_plan is None:
        return None
    if kind == "layer":
        used = any(s.model == ref and s.start <= layer < s.end for sl in module_plan.slices for s in sl.sources)
        return None if used else f"layers of {module} that no slice takes"
    sl = module_plan.slices[0 if kind == "pre" else -1]
    if any(s.model == ref for s in sl.sources):
        return None
    which = "first" if kind == "pre" else "last"
    return f"{kind}-weights of {module}, taken from the {which} slice's models ({sl.where})"


def account_for_inputs(plan) -> list[str]:
    """Check that every tensor of every merged model is used or left out by a rule; return one
    line per (model, rule) for the plan report. ConfigError listing the unaccounted ones."""
    used = {(s.model, s.tensor) for job in plan.jobs for s in job.sources}
    not_read = {(s.model, s.tensor) for job in plan.jobs for s in job.not_read}
    plan_of = {m.name: m for m in plan.modules}
    dropped: dict[tuple[str, str], int] = defaultdict(int)
    lost: list[tuple[str, str]] = []
    for ref in merged_models(plan.config):
        model = plan.models[ref]
        where = _where_in_model(model.arch)
        for name in model.reader.names():
            if (ref, name) in used:
                continue
            if (ref, name) in not_read:
                rule = "integer buffers (never merged), copied from the base model's (else the first's)"
            else:
                rule = _rule(plan_of, ref, *where[name]) if name in where else None
            if rule is None:
                lost.append((ref, name))
            else:
                dropped[(ref, rule)] += 1
    if lost:
        shown = ", ".join(f"{name} ({ref})" for ref, name in lost[:SHOWN])
        more = f" and {len(lost) - SHOWN} more" if len(lost) > SHOWN else ""
        raise ConfigError(
            f"{plan.source}: {len(lost)} input tensor(s) would not reach the output: {shown}{more}; "
            f"the output's layout comes from {plan.donor} ({plan.models[plan.donor].arch.describe()}), "
            "which has no place for them: merge models with the same tensors, or make the model "
            "that has them the base_model"
        )
    return [f"{ref}: {count} tensor(s) left out: {rule}" for (ref, rule), count in dropped.items()]
