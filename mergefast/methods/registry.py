"""YAML method names -> their parameters, input rules and merge function.

Parameter scopes follow mergekit 0.1.5: *global* parameters (one value per output tensor,
filters match the output tensor name) and *per-model* parameters (one value per input model,
filters match that model's input tensor name). `base_params` says whether per-model
parameters are also resolved for the base model (true where the base is an ordinary input).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

REQUIRED = object()


@dataclass(frozen=True)
class Param:
    """One parameter of a method: its name, type ("float" or "bool") and default."""

    name: str
    kind: str = "float"
    default: Any = REQUIRED

    @property
    def required(self) -> bool:
        """True when the method has no default for this parameter."""
        return self.default is REQUIRED


@dataclass(frozen=True)
class MethodSpec:
    """What a merge method needs and how to run it on one tensor group."""

    name: str
    global_params: tuple[Param, ...]
    model_params: tuple[Param, ...]
    needs_base: bool
    base_params: bool
    min_inputs: int
    max_inputs: int | None
    merge: Callable[..., torch.Tensor]

    def param(self, name: str) -> Param | None:
        """The parameter called `name`, or None."""
        for p in (*self.global_params, *self.model_params):
            if p.name == name:
                return p
        return None

    @property
    def param_names(self) -> list[str]:
        """Every parameter name this method accepts."""
        return [p.name for p in (*self.global_params, *self.model_params)]


def _ops():
    """The kernel API (fused backends), imported lazily so `import mergefast` stays light."""
    from mergefast import kernels

    return kernels


def _non_base(tensors, base_index, model_params):
    """Split a tensor group into the base and the other inputs with their parameters."""
    others = [i for i in range(len(tensors)) if i != base_index]
    return tensors[base_index], [tensors[i] for i in others], [model_params[i] for i in others]


def _merge_linear(tensors, base_index, g, m, out_dtype):
    return _ops().linear(tensors, [p["weight"] for p in m], normalize=g["normalize"], out_dtype=out_dtype)


def _merge_passthrough(tensors, base_index, g, m, out_dtype):
    return _ops().passthrough(tensors[0], m[0]["scale"], out_dtype=out_dtype)


def _merge_slerp(tensors, base_index, g, m, out_dtype):
    base, others, _ = _non_base(tensors, base_index, m)
    return _ops().slerp(base, others[0], g["t"], out_dtype=out_dtype)


def _task_arithmetic_merger(sparsify: str, consensus: str | None):
    def merge(tensors, base_index, g, m, out_dtype):
        base, others, params = _non_base(tensors, base_index, m)
        return _ops().task_arithmetic(
            base, others, [p["weight"] for p in params],
            densities=[p["density"] for p in params], sparsify=sparsify, consensus=consensus,
            normalize=g["normalize"], lambda_=g["lambda"], out_dtype=out_dtype,
        )
    return merge


def _task_arithmetic_spec(name: str, sparsify: str, consensus: str | None, normalize: bool) -> MethodSpec:
    return MethodSpec(
        name=name,
        global_params=(Param("normalize", "bool", normalize), Param("lambda", "float", 1.0),
                       Param("int8_mask", "bool", False), Param("rescale", "bool", False)),
        model_params=(Param("weight"), Param("density", "float", 1.0)),
        needs_base=True, base_params=False, min_inputs=1, max_inputs=None,
        merge=_task_arithmetic_merger(sparsify, consensus),
    )


METHODS: dict[str, MethodSpec] = {
    "linear": MethodSpec(
        "linear", (Param("normalize", "bool", True),), (Param("weight"),),
        needs_base=False, base_params=True, min_inputs=1, max_inputs=None, merge=_merge_linear),
    "passthrough": MethodSpec(
        "passthrough", (), (Param("scale", "float", None),),
        needs_base=False, base_params=True, min_inputs=1, max_inputs=1, merge=_merge_passthrough),
    "slerp": MethodSpec(
        "slerp", (Param("t"),), (),
        needs_base=True, base_params=False, min_inputs=2, max_inputs=2, merge=_merge_slerp),
    "task_arithmetic": _task_arithmetic_spec("task_arithmetic", "none", None, False),
    "ties": _task_arithmetic_spec("ties", "magnitude", "sum", True),
}

# Every method name mergekit 0.1.5 registers; those not in METHODS are recognised so that a
# config using them gets "not supported yet" instead of "unknown method".
MERGEKIT_METHODS = (
    "linear", "slerp", "nuslerp", "multislerp", "karcher", "passthrough", "task_arithmetic",
    "ties", "dare_ties", "dare_linear", "breadcrumbs", "breadcrumbs_ties", "della",
    "della_linear", "sce", "ram", "ramplus_tl", "nearswap", "model_stock", "arcee_fusion",
)


def merge_group(spec: MethodSpec, tensors: Sequence[torch.Tensor], base_index: int | None,
                global_params: dict, model_params: Sequence[dict], out_dtype) -> torch.Tensor:
    """Run `spec`'s merge on one tensor group with resolved parameters."""
    return spec.merge(list(tensors), base_index, global_params, list(model_params), out_dtype)
