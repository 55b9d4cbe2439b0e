"""The YAML methods that run on a fused kernel: the one table the executor consults.

`mergefast.methods` is the spec: every `MethodSpec.merge` runs the method's torch reference,
and that package imports no kernel. A method listed in `FUSED` runs its kernel op from the
kernel API instead (which still picks the backend per call and falls back to the reference,
kernels/dispatch.py). An entry may decline a tensor group by returning None, where the kernel
does not cover the parameters (the rescale of methods other than DARE, breadcrumbs' included): the reference runs then.

Giving another method a fused kernel is one entry in `FUSED`: an adapter from the resolved
YAML parameters to the kernel op, with `MethodSpec.merge`'s signature.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .. import kernels
from ..errors import MergeError
from ..methods import adapters, registry
from ..methods.adapters import optional_base, split_base
from ..methods.multislerp import AntipodalError
from ..methods.registry import TASK_ARITHMETIC_FAMILY, MethodSpec


def _linear(tensors, base_index, g, m, out_dtype, ctx):
    return kernels.linear(tensors, [p["weight"] for p in m], normalize=g["normalize"], out_dtype=out_dtype)


def _passthrough(tensors, base_index, g, m, out_dtype, ctx):
    return kernels.passthrough(tensors[0], m[0]["scale"], out_dtype=out_dtype)


def _slerp(tensors, base_index, g, m, out_dtype, ctx):
    base, others, _ = split_base(tensors, base_index, m)
    return kernels.slerp(base, others[0], g["t"], out_dtype=out_dtype)


# the sparsifiers whose kernels take the L1 rescale, the seed and the tensor name
_RANDOM = ("random", "della")


def _task_arithmetic(method: str):
    """The kernel adapter of one task-arithmetic method (its sparsify/consensus from the spec)."""
    sparsify, consensus = TASK_ARITHMETIC_FAMILY[method][:2]

    def merge(tensors, base_index, g, m, out_dtype, ctx):
        if g["rescale"] and sparsify not in _RANDOM:
            return None  # only the DARE and DELLA kernels rescale (kernels/dare.py): the reference runs
        base, others, params = split_base(tensors, base_index, m)
        extra = dict(rescale=g["rescale"], seed=ctx.seed, tensor_name=ctx.tensor_name) if sparsify in _RANDOM else {}
        if sparsify == "della":
            adapters.check_della(params, g, ctx)  # the reference's ConfigError, naming the model
            extra["epsilons"] = [p["epsilon"] for p in params]
        if sparsify == "magnitude_outliers":
            extra = dict(gammas=[p["gamma"] for p in params])
        return kernels.task_arithmetic(
            base,
            others,
            [p["weight"] for p in params],
            densities=[p["density"] for p in params],
            sparsify=sparsify,
            consensus=consensus,
            normalize=g["normalize"],
            lambda_=g["lambda"],
            out_dtype=out_dtype,
            **extra,
        )

    return merge


def _nuslerp(tensors, base_index, g, m, out_dtype, ctx):
    base, others, params = optional_base(tensors, base_index, m)
    flatten, row_wise = g["nuslerp_flatten"], g["nuslerp_row_wise"]
    weights = [p["weight"] for p in params]
    return kernels.nuslerp(others, weights, base, flatten=flatten, row_wise=row_wise, out_dtype=out_dtype)


def _model_stock(tensors, base_index, g, m, out_dtype, ctx):
    base, others, _ = split_base(tensors, base_index, m)
    return kernels.model_stock(base, others, filter_wise=g["filter_wise"], out_dtype=out_dtype)


def _nearswap(tensors, base_index, g, m, out_dtype, ctx):
    base, others, _ = split_base(tensors, base_index, m)
    return kernels.nearswap(base, others[0], g["t"], out_dtype=out_dtype)


def _sce(tensors, base_index, g, m, out_dtype, ctx):
    base, others, _ = split_base(tensors, base_index, m)
    return kernels.sce(base, others, select_topk=g["select_topk"], out_dtype=out_dtype)


def _arcee_fusion(tensors, base_index, g, m, out_dtype, ctx):
    base, others, _ = split_base(tensors, base_index, m)
    return kernels.arcee_fusion(base, others[0], out_dtype=out_dtype)


def _multislerp(tensors, base_index, g, m, out_dtype, ctx):
    base, others, params = optional_base(tensors, base_index, m)
    weights = [p["weight"] for p in params]
    try:
        return kernels.multislerp(
            others, weights, base, normalize_weights=g["normalize_weights"], eps=g["eps"], out_dtype=out_dtype
        )
    except AntipodalError as exc:  # the reference's MergeError, naming the tensor
        raise MergeError(f"tensor {ctx.tensor_name}: {exc}") from None


def _karcher(tensors, base_index, g, m, out_dtype, ctx):
    return kernels.karcher(tensors, max_iter=int(g["max_iter"]), tol=g["tol"], out_dtype=out_dtype)


def _ram(plus: bool):
    """The kernel adapter of ram (ramplus_tl with `plus`)."""

    def merge(tensors, base_index, g, m, out_dtype, ctx):
        base, others, _ = split_base(tensors, base_index, m)
        extra = dict(r=g["r"], alpha=g["alpha"]) if plus else {}
        return kernels.ram(base, others, epsilon=g["epsilon"], plus=plus, out_dtype=out_dtype, **extra)

    return merge


# method name -> kernel adapter; a method not here runs its torch reference (spec.merge)
FUSED: dict[str, Callable[..., torch.Tensor | None]] = {
    "linear": _linear,
    "passthrough": _passthrough,
    "slerp": _slerp,
    "task_arithmetic": _task_arithmetic("task_arithmetic"),
    "ties": _task_arithmetic("ties"),
    "dare_ties": _task_arithmetic("dare_ties"),
    "dare_linear": _task_arithmetic("dare_linear"),
    "nuslerp": _nuslerp,
    "model_stock": _model_stock,
    "nearswap": _nearswap,
    "sce": _sce,
    "breadcrumbs": _task_arithmetic("breadcrumbs"),
    "breadcrumbs_ties": _task_arithmetic("breadcrumbs_ties"),
    "della": _task_arithmetic("della"),
    "della_linear": _task_arithmetic("della_linear"),
    "arcee_fusion": _arcee_fusion,
    "multislerp": _multislerp,
    "karcher": _karcher,
    "ram": _ram(False),
    "ramplus_tl": _ram(True),
}


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
) -> torch.Tensor:
    """`methods.registry.merge_group` with the method's fused kernel where `FUSED` has one:
    what the executor runs for every tensor group."""
    return registry.merge_group(
        spec,
        tensors,
        base_index,
        global_params,
        model_params,
        out_dtype,
        seed=seed,
        tensor_name=tensor_name,
        fast=FUSED.get(spec.name),
    )
