"""The selection pass of the two-pass scheme on the GPU: per model its threshold key T, tie
quota and per-block tie counts (rules.py), which `_task_arithmetic_kernel` then applies in a
second read of the inputs. The CPU's counterpart: csrc/cpu/select/two_pass.cpp.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ...selection import SelectionOptions
from . import histogram, rules, window


def select_magnitude(
    base: torch.Tensor | None, xs: Sequence[torch.Tensor], keep: Sequence[int], block: int, options: SelectionOptions
):
    """Thresholds (int64 [K]), tie quotas (int64 [K]) and, when some model's ties are split,
    the count of its threshold-equal elements before each block (int64 [K, nblocks]).

    base None: the xs themselves are ranked by magnitude (no subtraction), as SCE ranks its
    variances (kernels/triton/sce.py).

    options.two_pass "window": the window scan first, the histogram passes for the models it
    misses; "histogram": the histogram passes for every model."""
    n = xs[0].numel()
    active = [i for i, k in enumerate(keep) if 0 < k < n]
    if options.two_pass == "window":
        state = window.scan(base, xs, keep, active, block)
    else:
        state = window.unscanned(n, keep, block, xs[0].device)
    missed = [i for i in active if state.cases[i] is None]
    if missed:
        histogram.select_by_histograms(base, xs, keep, missed, block, state, options)
    return rules.rules(state, block, n, options)
