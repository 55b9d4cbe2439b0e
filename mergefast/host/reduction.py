"""What the torch-free engine's reducing methods share (host/reducing.py,
host/gram_methods.py): a statistic of the whole tensor, a sum over its elements that the C
library adds up block by block into the caller's accumulator, then an elementwise pass that
needs it. The two are separate calls, so host/parts.py can run the first over a tensor's parts
and then the second part by part. Parts of whole C blocks (mf_block()) added in order give the
whole tensor's sums bit for bit (float64 dots and Gram sums in block order; integer counts in
any order).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..io.host_array import HostArray
from ..plan import TensorJob


@dataclass(frozen=True)
class Reduction:
    """One method's statistic: `zero(job)` a fresh accumulator, `add(job, inputs, stat)` adds
    a tensor's (or a part's) sums to it, `apply(job, inputs, out, stat)` is the elementwise
    pass with the whole tensor's statistic: whether it proved every input finite, or None when
    the statistic leaves the merge to the whole tensor's reference (SLERP's non-finite dots,
    multislerp's and karcher's degenerate configurations: host/gram_methods.py).
    `cuts(job)`: whether the job's statistic is one sum over the whole tensor."""

    zero: Callable[[TensorJob], Any]
    add: Callable[[TensorJob, list[HostArray], Any], None]
    apply: Callable[[TensorJob, list[HostArray], HostArray, Any], bool | None]
    cuts: Callable[[TensorJob], bool] = lambda job: True


def whole(reduction: Reduction, job: TensorJob, inputs: list[HostArray], out: HostArray) -> bool | None:
    """The statistic pass and the elementwise pass over a whole tensor."""
    stat = reduction.zero(job)
    reduction.add(job, inputs, stat)
    return reduction.apply(job, inputs, out, stat)
