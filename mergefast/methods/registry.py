"""YAML method names -> their parameters, input rules and merge function (`METHODS`).

Each method is a `MethodSpec` (see `methods/spec.py` for parameter scopes and input rules)
whose merge function (methods/adapters.py, named here by an `Adapter`) adapts resolved
parameters to the method's torch reference. This module imports neither torch nor a
reference, so planning runs without torch (mergefast/dtypes.py); nor any kernel: where a fused
kernel exists, the executor runs it instead (the table in kernels/fused.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mergefast.errors import ConfigError

from .spec import MergeContext, MethodSpec, Param  # noqa: F401 - re-exported for importers

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Adapter:
    """`MethodSpec.merge`: the function `name` of methods/adapters.py, imported on the first
    call, with the keyword arguments `options` ((name, value) pairs) after the six of a merge."""

    name: str
    options: tuple[tuple[str, Any], ...] = ()

    def __call__(self, tensors, base_index, g, m, out_dtype, ctx):
        from . import adapters

        return getattr(adapters, self.name)(tensors, base_index, g, m, out_dtype, ctx, **dict(self.options))


# --- the task-arithmetic family ----------------------------------------------------------------

# name -> (sparsify, consensus, normalize default, rescale default), mergekit 0.1.5's family
TASK_ARITHMETIC_FAMILY: dict[str, tuple[str, str | None, bool, bool]] = {
    "task_arithmetic": ("none", None, False, False),
    "ties": ("magnitude", "sum", True, False),
    "dare_ties": ("random", "sum", False, True),
    "dare_linear": ("random", None, False, True),
    "breadcrumbs": ("magnitude_outliers", None, False, False),
    "breadcrumbs_ties": ("magnitude_outliers", "sum", False, False),
    "della": ("della", "sum", True, True),
    "della_linear": ("della", None, False, True),
}


def _task_arithmetic_spec(
    name: str, sparsify: str, consensus: str | None, normalize: bool, rescale: bool = False
) -> MethodSpec:
    extra = {"magnitude_outliers": (Param("gamma", "float", 0.01),), "della": (Param("epsilon", "float", 0.15),)}.get(
        sparsify, ()
    )
    return MethodSpec(
        name=name,
        global_params=(
            Param("normalize", "bool", normalize),
            Param("lambda", "float", 1.0),
            Param("int8_mask", "bool", False),
            Param("rescale", "bool", rescale),
        ),
        model_params=(Param("weight"), Param("density", "float", 1.0), *extra),
        needs_base=True,
        base_params=False,
        min_inputs=1,
        max_inputs=None,
        merge=Adapter("merge_task_arithmetic", (("sparsify", sparsify), ("consensus", consensus))),
    )


# --- reference-only methods ------------------------------------------------------------------


def _spec(
    name,
    merge,
    global_params=(),
    model_params=(),
    *,
    needs_base,
    base_params=False,
    min_inputs=1,
    max_inputs=None,
    min_non_base=0,
    max_non_base=None,
) -> MethodSpec:
    """A reference-only MethodSpec (keyword-only rules, defaults for the common case)."""
    return MethodSpec(
        name,
        tuple(global_params),
        tuple(model_params),
        needs_base=needs_base,
        base_params=base_params,
        min_inputs=min_inputs,
        max_inputs=max_inputs,
        merge=merge,
        min_non_base=min_non_base,
        max_non_base=max_non_base,
    )


METHODS: dict[str, MethodSpec] = {
    "linear": MethodSpec(
        "linear",
        (Param("normalize", "bool", True),),
        (Param("weight"),),
        needs_base=False,
        base_params=True,
        min_inputs=1,
        max_inputs=None,
        merge=Adapter("merge_linear"),
    ),
    "passthrough": MethodSpec(
        "passthrough",
        (),
        (Param("scale", "float", None),),
        needs_base=False,
        base_params=True,
        min_inputs=1,
        max_inputs=1,
        merge=Adapter("merge_passthrough"),
    ),
    "slerp": MethodSpec(
        "slerp",
        (Param("t"),),
        (),
        needs_base=True,
        base_params=False,
        min_inputs=2,
        max_inputs=2,
        merge=Adapter("merge_slerp"),
    ),
    **{name: _task_arithmetic_spec(name, *modes) for name, modes in TASK_ARITHMETIC_FAMILY.items()},
    # a base plus at least 2 others; the base is not an ordinary input
    "model_stock": _spec(
        "model_stock",
        Adapter("merge_model_stock"),
        (Param("filter_wise", "bool", False),),
        needs_base=True,
        min_inputs=3,
    ),
    # exactly 2 non-base models; an optional base (a third model) turns them into task vectors
    "nuslerp": _spec(
        "nuslerp",
        Adapter("merge_nuslerp"),
        (Param("nuslerp_flatten", "bool", True), Param("nuslerp_row_wise", "bool", False)),
        (Param("weight"),),
        needs_base=False,
        min_inputs=2,
        max_inputs=3,
        min_non_base=2,
        max_non_base=2,
    ),
    "multislerp": _spec(
        "multislerp",
        Adapter("merge_multislerp"),
        (Param("normalize_weights", "bool", True), Param("eps", "float", 1e-8)),
        (Param("weight"),),
        needs_base=False,
        min_non_base=1,
    ),
    # no base handling at all: a base_model is one more input with equal weight
    "karcher": _spec(
        "karcher",
        Adapter("merge_karcher"),
        (Param("max_iter", "float", 10), Param("tol", "float", 1e-5)),
        needs_base=False,
        base_params=True,
    ),
    # `weight` is accepted and ignored (mergekit's sce does not use it)
    "sce": _spec(
        "sce",
        Adapter("merge_sce"),
        (Param("select_topk", "float", 1.0), Param("int8_mask", "bool", False)),
        (Param("weight", "float", None),),
        needs_base=True,
    ),
    "ram": _spec("ram", Adapter("merge_ram", (("plus", False),)), (Param("epsilon", "float", 1e-5),), needs_base=True),
    "ramplus_tl": _spec(
        "ramplus_tl",
        Adapter("merge_ram", (("plus", True),)),
        (Param("epsilon", "float", 1e-5), Param("r", "float", 0.1), Param("alpha", "float", 0.2)),
        needs_base=True,
    ),
    "nearswap": _spec(
        "nearswap", Adapter("merge_nearswap"), (Param("t"),), needs_base=True, min_inputs=2, max_inputs=2
    ),
    "arcee_fusion": _spec("arcee_fusion", Adapter("merge_arcee_fusion"), needs_base=True, min_inputs=2, max_inputs=2),
}

# Every method name mergekit 0.1.5 registers (all of them are in METHODS).
MERGEKIT_METHODS = (
    "linear",
    "slerp",
    "nuslerp",
    "multislerp",
    "karcher",
    "passthrough",
    "task_arithmetic",
    "ties",
    "dare_ties",
    "dare_linear",
    "breadcrumbs",
    "breadcrumbs_ties",
    "della",
    "della_linear",
    "sce",
    "ram",
    "ramplus_tl",
    "nearswap",
    "model_stock",
    "arcee_fusion",
)


def merge_group(
    spec: MethodSpec,
    tensors: Sequence[torch.Tensor],
    base_index: int | None,
    global_params: dict,
    model_params: Sequence[dict],
    out_dtype,
    *,
    seed: int | None = 0,
    tensor_name: str = "",
    fast=None,
) -> torch.Tensor:
    """Run `spec`'s merge on one tensor group with resolved parameters.

    `seed` (`--random-seed`; None means 0) and `tensor_name` (the output tensor) key the
    counter-based masks of the random methods (DARE, DELLA), see `methods/random.py`.
    `fast`: a merge function with `spec.merge`'s signature (the executor passes the fused
    kernel's, kernels/fused.py) that returns None where it does not cover the parameters;
    the torch reference `spec.merge` runs then, and when `fast` is None.
    Raises ConfigError naming the tensor when the group breaks the method's input rules.
    """
    problem = spec.input_error(len(tensors), base_index is not None)
    if problem:
        raise ConfigError(f"tensor {tensor_name}: {problem}")
    ctx = MergeContext(0 if seed is None else int(seed), tensor_name)
    tensors, model_params = list(tensors), list(model_params)
    if fast is not None:
        out = fast(tensors, base_index, global_params, model_params, out_dtype, ctx)
        if out is not None:
            return out
    return spec.merge(tensors, base_index, global_params, model_params, out_dtype, ctx)
