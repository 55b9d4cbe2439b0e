"""Stub of the compiled CPU kernels (csrc/, built by setup.py). Call them through
mergefast.kernels, which validates arguments and computes the scalar constants."""

import torch

SPARSIFY_NONE: int
SPARSIFY_MAGNITUDE: int
BLOCK: int

def linear(xs: list[torch.Tensor], weights: list[float], divide: bool, total: float,
           out: torch.Tensor) -> None: ...
def task_arithmetic(base: torch.Tensor, xs: list[torch.Tensor], weights: list[float],
                    keep: list[int], sparsify: int, consensus: bool, normalize: bool,
                    divisor: float, lambda_: float, out: torch.Tensor) -> None: ...
def magnitude_keep(base: torch.Tensor, x: torch.Tensor, keep: int, mask: torch.Tensor) -> None: ...
def slerp_dots(a: torch.Tensor, b: torch.Tensor) -> list[float]: ...
def slerp_apply(a: torch.Tensor, b: torch.Tensor, c0: float, c1: float,
                out: torch.Tensor) -> None: ...
