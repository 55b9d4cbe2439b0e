"""The merge functions behind `MethodSpec.merge`: resolved YAML parameters -> the method's
torch reference, with `merge(tensors, base_index, global_params, model_params, out_dtype, ctx)`.

They live apart from the spec table (methods/registry.py) because they import the references,
and so torch: the registry names them (`registry.Adapter`) and planning never imports this.
"""

from __future__ import annotations

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
from .spec import optional_base, split_base  # noqa: F401 - the kernels' adapters use them from here
from .task_arithmetic import DellaRangeError, check_della_range
from .task_arithmetic import task_arithmetic as task_arithmetic_reference


def merge_linear(tensors, base_index, g, m, out_dtype, ctx):
    """linear."""
    return linear(tensors, [p["weight"] for p in m], normalize=g["normalize"], out_dtype=out_dtype)


def merge_passthrough(tensors, base_index, g, m, out_dtype, ctx):
    """passthrough."""
    return passthrough(tensors[0], m[0]["scale"], out_dtype=out_dtype)


def merge_slerp(tensors, base_index, g, m, out_dtype, ctx):
    """slerp."""
    base, others, _ = split_base(tensors, base_index, m)
    return slerp(base, others[0], g["t"], out_dtype=out_dtype)


def check_della(params, g, ctx):
    """ConfigError naming the tensor when a model's density +- epsilon leaves (0, 1)."""
    for i, p in enumerate(params):
        if 0 < p["density"] < 1:
            try:
                check_della_range(p["density"], p["epsilon"], ctx.tensor_name)
            except DellaRangeError as exc:
                raise ConfigError(f"{exc} (non-base model {i})") from None


def merge_task_arithmetic(tensors, base_index, g, m, out_dtype, ctx, *, sparsify: str, consensus: str | None):
    """The task-arithmetic family; `sparsify` and `consensus` say which member."""
    base, others, params = split_base(tensors, base_index, m)
    if sparsify == "della":
        check_della(params, g, ctx)
    return task_arithmetic_reference(
        base,
        others,
        [p["weight"] for p in params],
        densities=[p["density"] for p in params],
        sparsify=sparsify,
        consensus=consensus,
        normalize=g["normalize"],
        lambda_=g["lambda"],
        out_dtype=out_dtype,
        rescale=g["rescale"],
        seed=ctx.seed,
        tensor_name=ctx.tensor_name,
        gammas=[p.get("gamma", 0.01) for p in params],
        epsilons=[p.get("epsilon", 0.15) for p in params],
    )


def merge_model_stock(tensors, base_index, g, m, out_dtype, ctx):
    """model_stock."""
    base, others, _ = split_base(tensors, base_index, m)
    return model_stock(base, others, filter_wise=g["filter_wise"], out_dtype=out_dtype)


def merge_nuslerp(tensors, base_index, g, m, out_dtype, ctx):
    """nuslerp (the base optional)."""
    base, others, params = optional_base(tensors, base_index, m)
    return nuslerp(
        others,
        [p["weight"] for p in params],
        base,
        flatten=g["nuslerp_flatten"],
        row_wise=g["nuslerp_row_wise"],
        out_dtype=out_dtype,
    )


def merge_multislerp(tensors, base_index, g, m, out_dtype, ctx):
    """multislerp (the base optional); antipodal inputs are a MergeError naming the tensor."""
    base, others, params = optional_base(tensors, base_index, m)
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


def merge_karcher(tensors, base_index, g, m, out_dtype, ctx):
    """karcher."""
    return karcher(tensors, max_iter=int(g["max_iter"]), tol=g["tol"], out_dtype=out_dtype)


def merge_sce(tensors, base_index, g, m, out_dtype, ctx):
    """sce."""
    base, others, _ = split_base(tensors, base_index, m)
    return sce(base, others, select_topk=g["select_topk"], out_dtype=out_dtype)


def merge_nearswap(tensors, base_index, g, m, out_dtype, ctx):
    """nearswap."""
    base, others, _ = split_base(tensors, base_index, m)
    return nearswap(base, others[0], g["t"], out_dtype=out_dtype)


def merge_ram(tensors, base_index, g, m, out_dtype, ctx, *, plus: bool):
    """ram; ramplus_tl with `plus`."""
    base, others, _ = split_base(tensors, base_index, m)
    extra = {"r": g["r"], "alpha": g["alpha"]} if plus else {}
    return ram(base, others, epsilon=g["epsilon"], plus=plus, out_dtype=out_dtype, **extra)


def merge_arcee_fusion(tensors, base_index, g, m, out_dtype, ctx):
    """arcee_fusion."""
    base, others, _ = split_base(tensors, base_index, m)
    return arcee_fusion(base, others[0], out_dtype=out_dtype)
