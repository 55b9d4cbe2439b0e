"""Public kernel API: fused merge kernels with the signatures of the torch references.

```python
from mergefast import kernels
kernels.linear(tensors, weights, *, normalize=True, out_dtype=None)
kernels.task_arithmetic(base, tensors, weights, *, densities=None, sparsify="none",
                        consensus=None, normalize=False, lambda_=1.0, out_dtype=None,
                        selection=None, rescale=False, seed=0, tensor_name="", gammas=None,
                        epsilons=None)
                                 # sparsify "none" | "magnitude" (TIES) | "random" (DARE)
                                 # | "della" (DELLA, per-model epsilons)
                                 # | "magnitude_outliers" (breadcrumbs, per-model gammas)
kernels.ties(base, tensors, weights, densities, *, normalize=True, lambda_=1.0, out_dtype=None,
             selection=None)
kernels.slerp(a, b, t, *, out_dtype=None)
kernels.passthrough(tensor, scale=None, *, out_dtype=None)
kernels.nuslerp(tensors, weights, base=None, *, flatten=True, row_wise=False, out_dtype=None)
kernels.model_stock(base, tensors, *, filter_wise=False, out_dtype=None)
kernels.nearswap(base, other, t, *, out_dtype=None)    # SLERP family: kernels/slerp_family.py
kernels.sce(base, tensors, *, select_topk=1.0, out_dtype=None)
kernels.arcee_fusion(base, other, *, out_dtype=None)   # kernels/arcee_fusion.py
kernels.multislerp(tensors, weights, base=None, *, normalize_weights=True, eps=1e-8, out_dtype=None)
kernels.karcher(tensors, *, max_iter=10, tol=1e-5, out_dtype=None)   # kernels/spherical.py
kernels.ram(base, tensors, *, epsilon=1e-5, plus=False, r=0.1, alpha=0.2, out_dtype=None)
kernels.ramplus_tl(base, tensors, *, epsilon=1e-5, r=0.1, alpha=0.2, out_dtype=None)  # kernels/ram.py
kernels.backend(device)          # "triton" | "cpu-ext" | "torch"
kernels.describe_backends()      # lines for `mergefast env`
kernels.missing_kernels(device)  # one line when `device`'s merges lose their kernels, else None
kernels.warn_missing_kernels(device)   # logs that line (a merge calls it at its start)
```

`selection` (a `SelectionOptions`, kernels/selection.py) picks how the magnitude selection
finds its thresholds, for benchmarks and tests; every choice selects the same elements.

Results follow the numerics contract of DESIGN.md and equal the references in
`mergefast.methods` (bit-exact where the order of operations is the same, which is every op
but SLERP's reduction, the L1 rescale norms of DARE and DELLA (kernels/dare.py), the float64 reductions of
nuslerp and model_stock (kernels/slerp_family.py), SCE's energies (kernels/sce.py), multislerp
and karcher (float64 math on the Gram matrix, kernels/spherical.py) and RAM's shared mean of
5 models or more (kernels/ram.py);
magnitude and variance selection keep exactly the same elements, DARE and DELLA draw exactly
the same masks).

Dispatch, per call, by the device of the inputs:
- CUDA tensors -> the Triton kernels (`kernels/triton/`);
- CPU tensors -> the C++/OpenMP library `libmergefast_cpu` (`csrc/`, loaded with ctypes by
  `kernels/cpu.py`);
- anything else, float64 inputs, or `MERGEFAST_BACKEND=torch` -> the torch reference.
`MERGEFAST_BACKEND=cpu-ext|triton|torch` forces a backend: if it cannot run, the call raises.
An automatically chosen backend that fails falls back to the reference with a one-time
warning (the backend choice is `kernels/dispatch.py`). Where the CPU kernels are missing (no
compiler when mergefast was installed), `warn_missing_kernels` says so in one line at the
start of a merge, with the reason and the fix. Importing this module neither initialises CUDA
nor imports triton.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..methods import linear as _linear_ref
from ..methods import passthrough as _passthrough_ref
from ..methods import sce as _sce_ref
from ..methods import slerp as _slerp_ref
from ..methods import task_arithmetic as _ta_ref
from ..methods.linear import ZERO_WEIGHT_SUM, ZeroWeightSumError
from ..methods.numerics import check_same_shape, keep_count, result_dtype
from ..methods.scalars import f32_sum, slerp_coefficients_from_dots
from ..methods.task_arithmetic import DEFAULT_EPSILON, check_della_range
from . import breadcrumbs as _breadcrumbs
from . import dare as _dare
from . import della as _della
from . import sce as _sce
from .arcee_fusion import arcee_fusion
from .dispatch import (  # noqa: F401 - _impl: tests
    BACKENDS,
    _choose,
    _dispatch,
    _impl,
    backend,
    describe_backends,
    missing_kernels,
    warn_missing_kernels,
)
from .ram import ram, ramplus_tl
from .selection import DEFAULT as _DEFAULT_SELECTION
from .selection import SelectionOptions
from .slerp_family import model_stock, nearswap, nuslerp
from .spherical import karcher, multislerp

__all__ = [
    "BACKENDS",
    "SelectionOptions",
    "backend",
    "describe_backends",
    "linear",
    "missing_kernels",
    "passthrough",
    "slerp",
    "task_arithmetic",
    "ties",
    "warn_missing_kernels",
    "nuslerp",
    "model_stock",
    "nearswap",
    "sce",
    "arcee_fusion",
    "multislerp",
    "karcher",
    "ram",
    "ramplus_tl",
]

# task arithmetic's sparsifiers, all fused: each a template / constexpr slot in the kernels
_SPARSIFY = ("none", "magnitude", "random", "magnitude_outliers", "della")

# Run-time failure records, read and written by `dispatch` through this package (tests reset them here).
_broken: dict[str, str] = {}  # backend -> why it failed at run time (auto mode falls back)
_warned: set[str] = set()


def _contiguous(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return [t.contiguous() for t in tensors]


def _numbers(values, what: str) -> list[float]:
    """Weights, lambda, t as floats. The kernels (and the references' divisors) read numbers:
    a tensor that wants a gradient would silently lose it, so it is an error."""
    if torch.is_grad_enabled() and any(isinstance(v, torch.Tensor) and v.requires_grad for v in values):
        raise TypeError(
            f"{what} must be numbers: a tensor that requires grad would get no "
            "gradient; pass float(value), or tensors that require grad as inputs"
        )
    return [float(v) for v in values]


# ----------------------------------------------------------------------------- ops


def linear(
    tensors: Sequence[torch.Tensor],
    weights: Sequence[float],
    *,
    normalize: bool = True,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """sum(w_i * x_i) [/ sum(w_i) when `normalize`], float32 arithmetic, one rounding.

    Same semantics as `mergefast.methods.linear` (raises ZeroWeightSumError when `normalize`
    is on and the weights sum to zero).
    """
    tensors, weights = list(tensors), _numbers(weights, "linear weights")
    if len(tensors) != len(weights) or not tensors:
        raise ValueError(f"linear: got {len(tensors)} tensors and {len(weights)} weights")
    check_same_shape(tensors, "linear")
    out = result_dtype(tensors, out_dtype)

    def reference():
        return _linear_ref(tensors, weights, normalize=normalize, out_dtype=out_dtype)

    name = _choose(tensors, out)
    if name == "torch":
        return reference()
    total = f32_sum(weights)
    if normalize and abs(total) < ZERO_WEIGHT_SUM:
        raise ZeroWeightSumError(
            f"linear weights {weights} sum to zero with normalize: true; change the weights or set normalize: false"
        )
    if tensors[0].numel() == 0:
        return torch.empty(tensors[0].shape, dtype=out, device=tensors[0].device)
    xs = _contiguous(tensors)
    return _dispatch(tensors, out, reference, lambda impl: impl.linear(xs, weights, normalize, total, out))


def task_arithmetic(
    base: torch.Tensor,
    tensors: Sequence[torch.Tensor],
    weights: Sequence[float],
    *,
    densities: Sequence[float] | None = None,
    sparsify: str = "none",
    consensus: str | None = None,
    normalize: bool = False,
    lambda_: float = 1.0,
    out_dtype: torch.dtype | None = None,
    selection: SelectionOptions | None = None,
    rescale: bool = False,
    seed: int = 0,
    tensor_name: str = "",
    gammas: Sequence[float] | None = None,
    epsilons: Sequence[float] | None = None,
) -> torch.Tensor:
    """Task arithmetic over task vectors `tensors[i] - base`: the semantics of
    `mergefast.methods.task_arithmetic` for sparsify "none" / "magnitude" / "random" (DARE,
    with `rescale`, `seed`, `tensor_name`: kernels/dare.py) / "magnitude_outliers"
    (breadcrumbs, with per-model `gammas`, default 0.01: kernels/breadcrumbs.py) / "della"
    (also `epsilons`, default 0.15: kernels/della.py; more than 16 models run the reference)
    and consensus None / "sum" (TIES), fused: no K x N temporaries, no sorts over whole
    tensors. `rescale` is fused for "random" and "della": with another sparsifier it runs the
    reference.

    Magnitude selection keeps exactly keep_count(density, numel) elements per model (ties at
    the threshold lowest flat index first), found by an exact histogram top-k around a
    sampled window; `selection` (SelectionOptions, production defaults when None) picks the
    way, never the result.
    """
    _check_task_arithmetic_modes(sparsify, consensus)
    if selection is None:
        selection = _DEFAULT_SELECTION
    elif not isinstance(selection, SelectionOptions):
        raise TypeError(f"selection must be a SelectionOptions, got {type(selection).__name__}")
    tensors, weights = list(tensors), _numbers(weights, "task arithmetic weights")
    (lambda_,) = _numbers([lambda_], "lambda_")
    if len(tensors) != len(weights):
        raise ValueError(f"task arithmetic: got {len(tensors)} tensors and {len(weights)} weights")
    for name, values in (("densities", densities), ("gammas", gammas)):
        if values is not None and len(values) != len(tensors):
            raise ValueError(f"task arithmetic: got {len(tensors)} tensors and {len(values)} {name}")
    all_inputs = [base, *tensors]
    check_same_shape(all_inputs, "task arithmetic")
    out = result_dtype(all_inputs, out_dtype)
    if not tensors:
        return base.to(out, copy=True)

    def reference():
        return _ta_ref(
            base,
            tensors,
            weights,
            densities=densities,
            sparsify=sparsify,
            consensus=consensus,
            normalize=normalize,
            lambda_=lambda_,
            out_dtype=out_dtype,
            rescale=rescale,
            seed=seed,
            tensor_name=tensor_name,
            gammas=gammas,
            epsilons=epsilons,
        )

    if sparsify == "della":
        epsilons = _della_epsilons(tensors, densities, epsilons)
        if len(tensors) > _della.MAX_MODELS:
            return reference()
    if _choose(all_inputs, out) == "torch" or (rescale and sparsify not in ("none", "random", "della")):
        return reference()
    n = base.numel()
    if n == 0:
        return torch.empty(base.shape, dtype=out, device=base.device)
    dens = [1.0] * len(tensors) if densities is None else [float(d) for d in densities]
    keep = [keep_count(d, n) for d in dens] if sparsify == "magnitude" else None
    divisor = f32_sum(weights)
    if abs(divisor) < ZERO_WEIGHT_SUM:
        divisor = 1.0
    b, xs = base.contiguous(), _contiguous(tensors)
    elect = consensus == "sum"

    def fused(impl):
        """The sparsifier's kernel on backend `impl`."""
        if sparsify == "della":
            return _della.run(
                impl,
                b,
                xs,
                weights,
                dens,
                epsilons,
                elect,
                normalize,
                divisor,
                lambda_,
                rescale,
                seed,
                tensor_name,
                out,
            )
        if sparsify == "magnitude_outliers":
            return _breadcrumbs.run(
                impl, b, xs, weights, dens, gammas, elect, normalize, divisor, lambda_, out, selection
            )
        if sparsify == "random":
            return _dare.run(
                impl, b, xs, weights, dens, elect, normalize, divisor, lambda_, rescale, seed, tensor_name, out
            )
        return impl.task_arithmetic(b, xs, weights, keep, elect, normalize, divisor, lambda_, out, selection)

    return _dispatch(all_inputs, out, reference, fused)


def _della_epsilons(tensors, densities, epsilons) -> list[float]:
    """DELLA's epsilons (default 0.15 each), checked as the reference checks them: one per
    model, density +- epsilon inside (0, 1) where 0 < density < 1 (DellaRangeError)."""
    if epsilons is None:
        epsilons = [DEFAULT_EPSILON] * len(tensors)
    if len(epsilons) != len(tensors):
        raise ValueError(f"task arithmetic: got {len(tensors)} tensors and {len(epsilons)} epsilons")
    epsilons = [float(e) for e in epsilons]
    for d, e in zip(densities if densities is not None else [1.0] * len(tensors), epsilons):
        if 0 < d < 1:
            check_della_range(d, e)
    return epsilons


def _check_task_arithmetic_modes(sparsify: str, consensus: str | None) -> None:
    """Raise for a sparsifier or consensus that task arithmetic does not have."""
    if sparsify not in _SPARSIFY:
        raise ValueError(f"sparsify must be one of {_SPARSIFY}, got {sparsify!r}")
    if consensus not in (None, "sum"):
        raise ValueError(f"consensus must be one of (None, 'sum'), got {consensus!r}")


def ties(
    base: torch.Tensor,
    tensors: Sequence[torch.Tensor],
    weights: Sequence[float],
    densities: Sequence[float],
    *,
    normalize: bool = True,
    lambda_: float = 1.0,
    out_dtype: torch.dtype | None = None,
    selection: SelectionOptions | None = None,
) -> torch.Tensor:
    """TIES: magnitude trim to each model's density, sum sign election, disjoint mean."""
    return task_arithmetic(
        base,
        tensors,
        weights,
        densities=densities,
        sparsify="magnitude",
        consensus="sum",
        normalize=normalize,
        lambda_=lambda_,
        out_dtype=out_dtype,
        selection=selection,
    )


def slerp(
    a: torch.Tensor,
    b: torch.Tensor,
    t: float,
    *,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Spherical interpolation of the whole tensors `a` (t=0) and `b` (t=1): one fused
    reduction pass (<a,b>, |a|^2, |b|^2) and one elementwise pass, same rules as
    `mergefast.methods.slerp` (1e-8 norm rule, lerp above |cos| 0.9995)."""
    check_same_shape([a, b], "slerp")
    out = result_dtype([a, b], out_dtype)
    (t,) = _numbers([t], "slerp t")  # here: a bad t must not mark the backend broken

    def reference():
        return _slerp_ref(a, b, t, out_dtype=out_dtype)

    if _choose([a, b], out) == "torch":
        return reference()
    if a.numel() == 0:
        return torch.empty(a.shape, dtype=out, device=a.device)
    x, y = a.contiguous(), b.contiguous()

    def run(impl):
        coefficients = slerp_coefficients_from_dots(*impl.slerp_dots(x, y), t)
        if coefficients is None:
            return reference()
        return impl.slerp_apply(x, y, *coefficients, out)

    return _dispatch([a, b], out, reference, run)


def passthrough(
    tensor: torch.Tensor,
    scale: float | None = None,
    *,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """A copy of `tensor` (times `scale`) in `out_dtype`: the reference (no kernel needed),
    never `tensor` itself (the reference returns it when there is nothing to change)."""
    out = _passthrough_ref(tensor, scale, out_dtype=out_dtype)
    return out.clone() if out is tensor else out


def sce(
    base: torch.Tensor,
    tensors: Sequence[torch.Tensor],
    *,
    select_topk: float = 1.0,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """SCE over task vectors `tensors[i] - base` (`mergefast.methods.sce`): the positions of
    largest variance across the models by an exact histogram top-k (ties lowest flat index
    first), energy weights, TIES sign election, weighted disjoint merge; no K x N
    temporaries, no sort. The weights' energies are float64 sums (kernels/sce.py)."""
    (select_topk,) = _numbers([select_topk], "select_topk")
    tensors = list(tensors)
    all_inputs = [base, *tensors]
    check_same_shape(all_inputs, "sce")
    out = result_dtype(all_inputs, out_dtype)

    def reference():
        return _sce_ref(base, tensors, select_topk=select_topk, out_dtype=out_dtype)

    if not tensors or _choose(all_inputs, out) == "torch":
        return reference()
    if base.numel() == 0:
        return torch.empty(base.shape, dtype=out, device=base.device)
    b, xs = base.contiguous(), _contiguous(tensors)

    def run(impl):
        if not hasattr(impl, "sce_select"):  # a backend without SCE kernels
            return reference()
        return _sce.run(impl, b, xs, select_topk, out)

    return _dispatch(all_inputs, out, reference, run)
