"""The CUDA calls the GPU staging makes, behind one small interface.

`CudaStaging` (cuda.py) talks to the GPU only through an object with these methods, so the
pipeline logic (ring slots, events, chunking) runs in tests on the CPU against a fake whose
copies are delayed (tests/test_staging_fake.py). `CudaQueue` is the real one: one torch call
per method and no logic, because nothing without a GPU can test it.

Events returned by `record` are torch.cuda.Event objects; staging calls `query()`,
`synchronize()` and `elapsed_time(end)` on them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class CudaQueue:
    """Two streams on one CUDA device: `copy_stream` for H2D copies, `compute_stream` (the
    current stream, where the kernels run) for the merges and their D2H copies."""

    def __init__(self, device: str):
        self.device = torch.device(device)
        self.copy_stream = torch.cuda.Stream(device=self.device)
        self.compute_stream = torch.cuda.current_stream(self.device)

    def pinned(self, nbytes: int) -> torch.Tensor:
        """A page-locked host byte buffer (a ring slot)."""
        return torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)

    def empty(self, nbytes: int) -> torch.Tensor:
        """Device bytes, allocated on the copy stream that fills them."""
        with torch.cuda.stream(self.copy_stream):
            return torch.empty(nbytes, dtype=torch.uint8, device=self.device)

    def record(self, stream) -> torch.cuda.Event:
        """A timing event recorded on `stream` now."""
        event = torch.cuda.Event(enable_timing=True)
        event.record(stream)
        return event

    def h2d(self, dst: torch.Tensor, src: torch.Tensor) -> None:
        """Enqueue a copy from pinned `src` into device `dst` on the copy stream."""
        with torch.cuda.stream(self.copy_stream):
            dst.copy_(src, non_blocking=True)

    def compute_waits(self, event, tensors: Sequence[torch.Tensor]) -> None:
        """Kernels enqueued from now on wait for `event`; `tensors` (allocated on the copy
        stream) are not freed before the compute stream is done with them."""
        self.compute_stream.wait_event(event)
        for tensor in tensors:
            tensor.record_stream(self.compute_stream)

    def d2h(self, dst: torch.Tensor, src: torch.Tensor) -> None:
        """Enqueue a copy from device `src` into pinned `dst` on the compute stream (after the
        kernel that produced `src`)."""
        with torch.cuda.stream(self.compute_stream):
            dst.copy_(src, non_blocking=True)

    def synchronize(self) -> None:
        """Wait for all work on the device."""
        torch.cuda.synchronize(self.device)
