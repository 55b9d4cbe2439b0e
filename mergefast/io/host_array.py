"""A tensor's bytes in CPU memory without torch: what the torch-free CPU engine (host/)
reads into, hands to the C kernels and gives to the writer.

A `HostArray` is a flat numpy uint8 buffer (numpy is a dependency and imports in ~40 ms,
torch in ~1 s) with the tensor's dtype name (mergefast/dtypes.py) and shape; bfloat16, which
numpy lacks, is just bytes here. `to_torch()` makes a torch view of the same memory, for the
rare paths that need torch (messages about NaN/inf values).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..dtypes import ITEMSIZE


@dataclass(frozen=True)
class HostArray:
    """A contiguous tensor in `data` (a 1-D uint8 numpy array of exactly its bytes)."""

    data: np.ndarray
    dtype: str  # a dtypes.ITEMSIZE name, e.g. "bfloat16"
    shape: tuple[int, ...]

    def __post_init__(self):
        if (
            self.data.dtype != np.uint8
            or self.data.ndim != 1
            or self.data.nbytes != self.numel() * ITEMSIZE[self.dtype]
        ):
            raise ValueError(f"HostArray: {self.data.nbytes} bytes do not hold {self.dtype}{list(self.shape)}")

    def numel(self) -> int:
        """The number of elements."""
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """The size in bytes."""
        return self.data.nbytes

    def data_ptr(self) -> int:
        """The address of the first byte (0 for an empty array)."""
        return self.data.ctypes.data if self.data.nbytes else 0

    def to_torch(self):
        """A torch tensor viewing the same memory (imports torch)."""
        import torch

        flat = torch.from_numpy(self.data)
        return flat.view(getattr(torch, self.dtype)).reshape(self.shape)


def host_array(buffer: np.ndarray, dtype: str, shape: tuple[int, ...]) -> HostArray:
    """A HostArray of `dtype` and `shape` in the first bytes of the uint8 numpy `buffer`."""
    return HostArray(buffer[: math.prod(shape) * ITEMSIZE[dtype]], dtype, tuple(shape))
