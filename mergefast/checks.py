"""Checks on tensor values: non-finite inputs and outputs.

- `check_output_finite`: a merged tensor with NaN or inf is an error naming the tensor (and
  which inputs were already non-finite), never a silently broken model.
- `warn_nonfinite_inputs`: an input tensor with NaN or inf is a warning per tensor (TIES may
  drop those entries, so the output can still be fine).

The plan's parameter checks, before any tensor is read, are in plan_checks.py.

The finiteness test is one reduction (`sum`): the sum of finite values is finite unless it
overflows, so only a non-finite sum pays for the exact (much slower) elementwise check.
Measured on 45M bf16 elements, 2 cores: sum 14 ms, `isfinite(x).all()` 500 ms.
"""

from __future__ import annotations

import logging
from collections.abc import Container, Iterable, Sequence
from typing import Any

import torch

from .errors import MergeError

log = logging.getLogger("mergefast")


def all_finite(tensor: torch.Tensor) -> bool:
    """True when no element of `tensor` is NaN or +-inf (integer tensors always are)."""
    if not tensor.is_floating_point() or tensor.numel() == 0:
        return True
    try:
        if bool(torch.isfinite(tensor.sum())):
            return True
    except (RuntimeError, TypeError):  # dtypes without a sum kernel (float8 on some builds)
        pass
    return bool(torch.isfinite(tensor.float() if tensor.element_size() < 2 else tensor).all())


def count_nonfinite(tensor: torch.Tensor) -> tuple[int, int]:
    """(NaN count, inf count) of a floating tensor; the slow exact path, for messages only."""
    t = tensor.float() if tensor.element_size() < 2 else tensor
    return int(torch.isnan(t).sum()), int(torch.isinf(t).sum())


def _describe(tensor: torch.Tensor) -> str:
    nan, inf = count_nonfinite(tensor)
    parts = [f"{nan} NaN"] if nan else []
    parts += [f"{inf} inf"] if inf else []
    return f"{' and '.join(parts) or 'non-finite values'} of {tensor.numel()} values"


def _source_label(source: Any) -> tuple[str, str]:
    """(model, tensor name) of a TensorSource-like object or a (model, name) pair."""
    if isinstance(source, tuple):
        return str(source[0]), str(source[1])
    return str(source.model), str(source.tensor)


def check_output_finite(
    job_name: str, tensor: torch.Tensor, sources: Sequence[Any] = (), inputs: Sequence[torch.Tensor] = ()
) -> torch.Tensor:
    """Return `tensor`; raise MergeError naming `job_name` if it holds NaN or inf.

    `sources` (TensorSource or (model, tensor name) pairs) are named in the message; when
    `inputs` are given too, the message says which of them were already non-finite.
    """
    if all_finite(tensor):
        return tensor
    detail = ""
    if sources:
        if inputs:
            bad = [f"{m} ({n})" for (m, n), t in zip(map(_source_label, sources), inputs) if not all_finite(t)]
            detail = (
                f"; non-finite inputs: {', '.join(bad)}"
                if bad
                else "; all inputs are finite: check the merge parameters"
            )
        else:
            detail = f"; inputs: {', '.join(f'{m} ({n})' for m, n in map(_source_label, sources))}"
    raise MergeError(f"tensor {job_name}: the output has {_describe(tensor)}{detail}; refusing to write a broken model")


def warn_nonfinite_inputs(
    job_name: str, sources: Sequence[Any], tensors: Iterable[torch.Tensor], known_finite: Container[int] = ()
) -> int:
    """Log one warning per input tensor holding NaN or inf; return how many did. Tensors
    whose data pointer is in `known_finite` (proven by a kernel) are not scanned again."""
    count = 0
    for source, tensor in zip(sources, tensors):
        if tensor.data_ptr() not in known_finite and not all_finite(tensor):
            model, name = _source_label(source)
            log.warning("model %s: input tensor %s (for output %s) has %s", model, name, job_name, _describe(tensor))
            count += 1
    return count
