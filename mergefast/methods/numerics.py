"""Shared numerics rules of the contract in DESIGN.md: accumulate wide, round once."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .scalars import keep_count  # noqa: F401 - here for the references; scalars.py has no torch


def accumulation_dtype(tensors: Sequence[torch.Tensor]) -> torch.dtype:
    """float64 when any input is float64, else float32 (bf16/fp16 are never used for math)."""
    if any(t.dtype == torch.float64 for t in tensors):
        return torch.float64
    return torch.float32


def ordered_sum(values: torch.Tensor) -> torch.Tensor:
    """The sum of a 1-D tensor of a few values (weights, per-model energies), added in index
    order in its own dtype, rounding after each addition: a 0-d tensor. torch's `sum()` splits
    more than 4 values into vector lanes whose order depends on the count and the CPU's vector
    width, so a merge of 5 or more models would round its weights' sum differently from
    machine to machine; this order is the same everywhere, and the torch-free engine's
    (methods/scalars.py `f32_sum`)."""
    total = torch.zeros((), dtype=values.dtype, device=values.device)
    for value in values:
        total = total + value
    return total


def result_dtype(tensors: Sequence[torch.Tensor], out_dtype: torch.dtype | None) -> torch.dtype:
    """The dtype the result is rounded to: `out_dtype`, else the promoted input dtype.

    mergekit 0.1.5 promotes a tensor group to a common dtype before merging, so a merge of
    bf16 and fp32 inputs without `dtype:` gives fp32; we do the same.
    """
    if out_dtype is not None:
        return out_dtype
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def check_same_shape(tensors: Sequence[torch.Tensor], what: str) -> None:
    """Raise ValueError unless every tensor has the shape of the first; TypeError for a
    sparse (or other non-strided) tensor, which no merge method takes."""
    for t in tensors:
        if t.layout != torch.strided:
            raise TypeError(f"{what}: {t.layout} tensors are not supported; pass tensor.to_dense()")
    shape = tensors[0].shape
    for t in tensors[1:]:
        if t.shape != shape:
            raise ValueError(f"{what}: inputs have different shapes {tuple(shape)} and {tuple(t.shape)}")


def task_vectors(
    base: torch.Tensor, tensors: Sequence[torch.Tensor], what: str, out_dtype: torch.dtype | None
) -> tuple[torch.Tensor, list[torch.Tensor], torch.dtype]:
    """The shared start of the base-relative methods: (base in the accumulation dtype,
    the exact task vectors x_i - base, the dtype the result is rounded to)."""
    all_inputs = [base, *tensors]
    check_same_shape(all_inputs, what)
    acc = accumulation_dtype(all_inputs)
    b = base.to(acc)
    return b, [x.to(acc) - b for x in tensors], result_dtype(all_inputs, out_dtype)
