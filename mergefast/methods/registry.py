"""YAML method names -> their parameters, input rules and merge function (`METHODS`).

Each method is a `MethodSpec` (see `methods/spec.py` for parameter scopes and input rules)
whose merge function adapts resolved parameters to the method's torch reference. This package
is the spec and imports no kernel: where a fused kernel exists, the executor runs it instead
(the table in kernels/fused.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mergefast.errors import ConfigError, MergeError

from .arcee_fusion import arcee_fusion
from .karcher import karcher
from .linear import linear
from .model_stock import model_stock
from .multislerp import AntipodalError, multislerp
from .nearswap import nearswap
from .nuslerp import nuslerp
from .passthrough import passthrough
from .ram import ram
from .sce import sce
from .slerp import slerp
from .spec import MergeContext, MethodSpec, Param  # noqa: F401 - re-exported for importers
from .task_arithmetic import DellaRangeError, check_della_range
from .task_arithmetic import task_arithmetic as task_arithmetic_reference


def split_base(tensors, base_index, model_params):
    """Split a tensor group into the base and the other inputs with their parameters."""
    others = [i for i in range(len(tensors)) if i != base_index]
    return tensors[base_index], [tensors[i] for i in others], [model_params[i] for i in others]


def _optional_base(tensors, base_index, model_params):
    """Like `split_base`, with base None when the group has no base."""
    if base_index is None:
        return None, list(tensors), list(model_params)
    return split_base(tensors, base_index, model_params)


# --- linear, passthrough, slerp (fused kernels in kernels/fused.py) ------------------------------


def _merge_linear(tensors, base_index, g, m, out_dtype, ctx):
    return linear(tensors, [p["weight"] for p in m], normalize=g["normalize"], out_dtype=out_dtype)


def _merge_passthrough(tensors, base_index, g, m, out_dtype, ctx):
    return passthrough(tensors[0], m[0]["scale"], out_dtype=out_dtype)


def _merge_slerp(tensors, base_index, g, m, out_dtype, ctx):
    base, others, _ = split_base(tensors, base_index, m)
    return slerp(base, others[0], g["t"], out_dtype=out_dtype)


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


def _check_della(params, g, ctx):
    """ConfigError naming the tensor when a model's density +- epsilon leaves (0, 1)."""
    for i, p in enumerate(params):
        if 0 < p["density"] < 1:
            try:
                check_della_range(p["density"], p["epsilon"], ctx.tensor_name)
            except DellaRangeError as exc:
                raise ConfigError(f"{exc} (non-base model {i})") from None


def _task_arithmetic_merger(sparsify: str, consensus: str | None):
    def merge(tensors, base_index, g, m, out_dtype, ctx):
        base, others, params = split_base(tensors, base_index, m)
        common = dict(
            densities=[p["density"] for p in params],
            sparsify=sparsify,
            consensus=consensus,
            normalize=g["normalize"],
            lambda_=g["lambda"],
            out_dtype=out_dtype,
        )
        weights = [p["weight"] for p in params]
        if sparsify == "della":
            _check_della(params, g, ctx)
        return task_arithmetic_reference(
            base,
            others,
            weights,
            **common,
            rescale=g["rescale"],
            seed=ctx.seed,
            tensor_name=ctx.tensor_name,
            gammas=[p.get("gamma", 0.01) for p in params],
            epsilons=[p.get("epsilon", 0.15) for p in params],
        )

    return merge


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
        merge=_task_arithmetic_merger(sparsify, consensus),
    )


# --- reference-only methods ------------------------------------------------------------------


def _merge_model_stock(tensors, base_index, g, m, out_dtype, ctx):
    base, others, _ = split_base(tensors, base_index, m)
    return model_stock(base, others, filter_wise=g["filter_wise"], out_dtype=out_dtype)


def _merge_nuslerp(tensors, base_index, g, m, out_dtype, ctx):
    base, others, params = _optional_base(tensors, base_index, m)
    return nuslerp(
        others,
        [p["weight"] for p in params],
        base,
        flatten=g["nuslerp_flatten"],
        row_wise=g["nuslerp_row_wise"],
        out_dtype=out_dtype,
    )


def _merge_multislerp(tensors, base_index, g, m, out_dtype, ctx):
    base, others, params = _optional_base(tensors, base_index, m)
    try:
        return multislerp(
            others,
            [p["weight"] for p in params],
            base,
            normalize_weights=g["normalize_weights"],
            eps=g["eps"],
            out_dtype=out_dtype,
        )
    except AntipodalError as exc:
        raise MergeError(f"tensor {ctx.tensor_name}: {exc}") from None


def _merge_karcher(tensors, base_index, g, m, out_dtype, ctx):
    return karcher(tensors, max_iter=int(g["max_iter"]), tol=g["tol"], out_dtype=out_dtype)


def _merge_sce(tensors, base_index, g, m, out_dtype, ctx):
    base, others, _ = split_base(tensors, base_index, m)
    return sce(base, others, select_topk=g["select_topk"], out_dtype=out_dtype)


def _merge_nearswap(tensors, base_index, g, m, out_dtype, ctx):
    base, others, _ = split_base(tensors, base_index, m)
    return nearswap(base, others[0], g["t"], out_dtype=out_dtype)


def _ram_merger(plus: bool):
    def merge(tensors, base_index, g, m, out_dtype, ctx):
        base, others, _ = split_base(tensors, base_index, m)
        extra = {"r": g["r"], "alpha": g["alpha"]} if plus else {}
        return ram(base, others, epsilon=g["epsilon"], plus=plus, out_dtype=out_dtype, **extra)

    return merge


def _merge_arcee_fusion(tensors, base_index, g, m, out_dtype, ctx):
    base, others, _ = split_base(tensors, base_index, m)
    return arcee_fusion(base, others[0], out_dtype=out_dtype)


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
        merge=_merge_linear,
    ),
    "passthrough": MethodSpec(
        "passthrough",
        (),
        (Param("scale", "float", None),),
        needs_base=False,
        base_params=True,
        min_inputs=1,
        max_inputs=1,
        merge=_merge_passthrough,
    ),
    "slerp": MethodSpec(
        "slerp", (Param("t"),), (), needs_base=True, base_params=False, min_inputs=2, max_inputs=2, merge=_merge_slerp
    ),
    **{name: _task_arithmetic_spec(name, *modes) for name, modes in TASK_ARITHMETIC_FAMILY.items()},
    # a base plus at least 2 others; the base is not an ordinary input
    "model_stock": _spec(
        "model_stock", _merge_model_stock, (Param("filter_wise", "bool", False),), needs_base=True, min_inputs=3
    ),
    # exactly 2 non-base models; an optional base (a third model) turns them into task vectors
    "nuslerp": _spec(
        "nuslerp",
        _merge_nuslerp,
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
        _merge_multislerp,
        (Param("normalize_weights", "bool", True), Param("eps", "float", 1e-8)),
        (Param("weight"),),
        needs_base=False,
        min_non_base=1,
    ),
    # no base handling at all: a base_model is one more input with equal weight
    "karcher": _spec(
        "karcher",
        _merge_karcher,
        (Param("max_iter", "float", 10), Param("tol", "float", 1e-5)),
        needs_base=False,
        base_params=True,
    ),
    # `weight` is accepted and ignored (mergekit's sce does not use it)
    "sce": _spec(
        "sce",
        _merge_sce,
        (Param("select_topk", "float", 1.0), Param("int8_mask", "bool", False)),
        (Param("weight", "float", None),),
        needs_base=True,
    ),
    "ram": _spec("ram", _ram_merger(False), (Param("epsilon", "float", 1e-5),), needs_base=True),
    "ramplus_tl": _spec(
        "ramplus_tl",
        _ram_merger(True),
        (Param("epsilon", "float", 1e-5), Param("r", "float", 0.1), Param("alpha", "float", 0.2)),
        needs_base=True,
    ),
    "nearswap": _spec("nearswap", _merge_nearswap, (Param("t"),), needs_base=True, min_inputs=2, max_inputs=2),
    "arcee_fusion": _spec("arcee_fusion", _merge_arcee_fusion, needs_base=True, min_inputs=2, max_inputs=2),
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
