"""Binding to the compiled CPU kernels, `mergefast._C` (sources in `csrc/`).

`ERROR` is None when the extension loaded, else why it did not (it is optional: see
setup.py). The functions take already-validated, contiguous inputs and the scalar constants
computed as the references compute them (see `mergefast/kernels/__init__.py`).
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

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

# Magnitude selection in one read of the inputs where it can (csrc/cpu/speculative.cpp);
# False forces the two-pass scheme (select.cpp, then the apply), for tests and benchmarks.
SPECULATE = True


def threads() -> int:
    """OpenMP threads the kernels use (torch's intra-op thread count)."""
    return torch.get_num_threads()


_thread = threading.local()  # per merge thread: the output allocator, the proven-finite set


@contextmanager
def output_buffers(take: Callable[[int], torch.Tensor]) -> Iterator[None]:
    """In this block, this thread's kernel outputs live in `take(nbytes)`, a uint8 CPU tensor
    of at least `nbytes` bytes, instead of fresh memory.

    Fresh memory costs its page faults on every tensor: filling a fresh 65 MB tensor took
    23 ms (16,000 faults) on the 2-core box, a recycled one 2 ms. The pipeline hands out
    recycled buffers here (staging/host.py): TIES of the 0.3B family, 5 runs alternated,
    45,000 fewer faults and 5.20 -> 5.03 s of CPU per run."""
    previous = getattr(_thread, "take", None)
    _thread.take = take
    try:
        yield
    finally:
        _thread.take = previous


@contextmanager
def finite_inputs() -> Iterator[set[int]]:
    """In this block, the data pointers of the inputs that this thread's kernels proved
    finite collect in the yielded set.

    The task-arithmetic kernel computes every delta x_i - base anyway, and a finite delta
    means finite operands: a TIES merge then needs no separate NaN/inf scan of its inputs.
    Measured on the 2-core box: the scan took 0.13 s of a 4.3 s TIES merge of the 0.3B family
    (12 runs alternated); the check in the apply pass costs it 2-3% (47 -> 48-49 ms on a 7B
    layer)."""
    previous = getattr(_thread, "finite", None)
    _thread.finite = proven = set()
    try:
        yield proven
    finally:
        _thread.finite = previous


def _empty(like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    take = getattr(_thread, "take", None)
    if take is None or like.device.type != "cpu":
        return torch.empty(like.shape, dtype=dtype, device=like.device)
    nbytes = like.numel() * dtype.itemsize
    return take(nbytes)[:nbytes].view(dtype).view(like.shape)


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
    finite = _C.task_arithmetic(base, list(xs), list(weights), list(keep or []), mode,
                                consensus, normalize, divisor, lambda_, out, SPECULATE)
    proven = getattr(_thread, "finite", None)
    if finite and proven is not None:
        proven.update(t.data_ptr() for t in (base, *xs))
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
