"""A tensor's bytes in CPU memory without torch: what the torch-free CPU engine (host/)
reads into, hands to the C kernels and gives to the writer.

A `HostArray` is a flat, writable byte memoryview with the tensor's dtype name
(mergefast/dtypes.py) and shape. Not a numpy array: numpy's import (~30-50 ms of one core on
a 2-vCPU AMD EPYC VM) is a tenth of the IO floor of a 0.3B merge, and only Model Stock's and
nuslerp's per-row Gram arithmetic (host/gram_methods.py) imports it.
`to_torch()` makes a torch view of the same memory, for the rare paths that need torch
(messages about NaN/inf values).
"""

from __future__ import annotations

import ctypes
import math
import sys
import threading
from dataclasses import dataclass

from ..dtypes import ITEMSIZE

# torch's first import is not thread-safe: from two threads at once (merge threads reporting
# NaN inputs, the writer's stage looking for torch) it can fail with an ImportError from a
# partially initialised torch.overrides. The torch-free engine's threads import it through `import_torch`, and
# look for it through `loaded_torch`.
_TORCH_IMPORT = threading.Lock()


def import_torch():
    """The torch module, imported by one thread at a time."""
    with _TORCH_IMPORT:
        import torch
    return torch


def loaded_torch():
    """The torch module if some thread has imported it (waiting for an import in progress:
    a half-initialised torch lacks most of its names), else None."""
    return import_torch() if "torch" in sys.modules else None


@dataclass(frozen=True)
class HostArray:
    """A contiguous tensor in `data` (a 1-D writable byte memoryview of exactly its bytes)."""

    data: memoryview
    dtype: str  # a dtypes.ITEMSIZE name, e.g. "bfloat16"
    shape: tuple[int, ...]

    def __post_init__(self):
        if (
            not isinstance(self.data, memoryview)
            or self.data.format != "B"
            or self.data.ndim != 1
            or self.data.readonly
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
        return ctypes.addressof(ctypes.c_char.from_buffer(self.data)) if self.data.nbytes else 0

    def to_torch(self):
        """A torch tensor viewing the same memory (imports torch)."""
        torch = import_torch()
        flat = torch.frombuffer(self.data, dtype=torch.uint8) if self.nbytes else torch.empty(0, dtype=torch.uint8)
        return flat.view(getattr(torch, self.dtype)).reshape(self.shape)


def host_array(buffer, dtype: str, shape: tuple[int, ...]) -> HostArray:
    """A HostArray of `dtype` and `shape` in the first bytes of the writable `buffer` (a
    memoryview, an mmap, a numpy array: anything with the buffer protocol)."""
    return HostArray(memoryview(buffer).cast("B")[: math.prod(shape) * ITEMSIZE[dtype]], dtype, tuple(shape))
