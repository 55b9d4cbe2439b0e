"""Binding to the compiled CPU kernels, `mergefast._C` (sources in `csrc/`).

`ERROR` is None when the extension loaded, else why it did not (it is optional: see
setup.py). The functions take already-validated, contiguous inputs and the scalar constants
computed as the references compute them (see `mergefast/kernels/__init__.py`).
"""

from __future__ import annotations

from typing import Sequence

import torch

try:
    from .. import _C
except Exception as exc:  # not built (MERGEFAST_BUILD_EXT=0, no compiler) or built for another torch
    _C = None
    ERROR: str | None = f"{type(exc).__name__}: {exc}"
else:
    ERROR = None

SPARSIFY_NONE = 0
SPARSIFY_MAGNITUDE = 1


def threads() -> int:
    """OpenMP threads the kernels use (torch's intra-op thread count)."""
    return torch.get_num_threads()


def _empty(like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(like.shape, dtype=dtype, device=like.device)


def linear(xs: Sequence[torch.Tensor], weights: Sequence[float], divide: bool, total: float,
           out_dtype: torch.dtype) -> torch.Tensor:
    out = _empty(xs[0], out_dtype)
    _C.linear(list(xs), list(weights), divide, total, out)
    return out


def task_arithmetic(base: torch.Tensor, xs: Sequence[torch.Tensor], weights: Sequence[float],
                    keep: Sequence[int] | None, consensus: bool, normalize: bool,
                    divisor: float, lambda_: float, out_dtype: torch.dtype) -> torch.Tensor:
    out = _empty(base, out_dtype)
    mode = SPARSIFY_NONE if keep is None else SPARSIFY_MAGNITUDE
    _C.task_arithmetic(base, list(xs), list(weights), list(keep or []), mode, consensus,
                       normalize, divisor, lambda_, out)
    return out


def magnitude_keep(base: torch.Tensor, x: torch.Tensor, keep: int) -> torch.Tensor:
    """Keep-mask of x - base (the selection the kernels apply); for tests."""
    mask = torch.empty(x.shape, dtype=torch.bool)
    _C.magnitude_keep(base.contiguous(), x.contiguous(), keep, mask)
    return mask


def slerp_dots(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float, float]:
    aa, bb, ab = _C.slerp_dots(a, b)
    return aa, bb, ab


def slerp_apply(a: torch.Tensor, b: torch.Tensor, c0: float, c1: float,
                out_dtype: torch.dtype) -> torch.Tensor:
    out = _empty(a, out_dtype)
    _C.slerp_apply(a, b, c0, c1, out)
    return out
