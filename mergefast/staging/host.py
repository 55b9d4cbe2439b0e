"""CPU merges: the inputs of a job are read into pooled CPU buffers and merged in place.

`HostStaging` is also the base of `CudaStaging` (cuda.py), which adds the device copies."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch

from ..io.hub_stream import JOBS_AT_ONCE, SOURCES_AT_ONCE, streamed_inputs
from ..kernels.cpu import output_buffers
from ..plan import MergePlan, TensorJob
from .pool import CARVE_ALIGN, BufferPool  # noqa: F401 - CARVE_ALIGN: tests


@dataclass
class _HostBatch:
    tensors: list[torch.Tensor]
    buffers: list[torch.Tensor]  # pooled byte buffers behind `tensors`; empty when not pooled


@dataclass
class _HostResult:
    tensor: torch.Tensor
    buffer: torch.Tensor | None  # the pooled buffer behind `tensor`: back to the pool once written


def _empty_bytes(nbytes: int) -> torch.Tensor:
    return torch.empty(nbytes, dtype=torch.uint8)


def _backing(out: torch.Tensor, buffers: list[torch.Tensor]) -> torch.Tensor | None:
    """The buffer of `buffers` that `out` lives in, if any (an input a method returned
    unchanged, or a kernel output it returned as is). By address range: a buffer may be a
    slice of a larger one (`HostStaging._carve`), so storages do not tell them apart."""
    if out.device.type != "cpu" or out.numel() == 0:
        return None
    pointer = out.data_ptr()
    return next((buf for buf in buffers if buf.data_ptr() <= pointer < buf.data_ptr() + buf.numel()), None)


class HostStaging(BufferPool):
    """CPU merges: inputs are read into recycled CPU byte buffers, and the kernels write
    their outputs into recycled buffers too (given back once the writer has written them),
    pooled by size (staging/pool.py). The pool never holds more than the pipeline once had
    in flight, which its budget bounds: a kernel output that a method used only as an
    intermediate is not given back, just freed."""

    def __init__(self, plan: MergePlan, device: str = "cpu"):
        self.plan, self.device = plan, device
        # sizes are kept for CPU merges (the GPU's host buffers are its pinned ring's chunks)
        super().__init__(_empty_bytes, getattr(plan, "jobs", ()) if device == "cpu" else ())
        # With --stream-inputs a read is a few HTTP range requests (io/hub_stream.py), bound by
        # round trips and per-connection speed, not by this machine: a job's sources are read
        # at once. (Local and downloaded files are read one after the other: two cores.)
        streamed = streamed_inputs(plan)
        self._sources = ThreadPoolExecutor(SOURCES_AT_ONCE, "stream-read") if streamed else None
        # jobs the pipeline reads at once (io/pipeline.py's readers): streamed jobs overlap their
        # round trips too
        self.readers = JOBS_AT_ONCE if streamed else 1
        self.mergers = 1  # one merge thread: torch's ops and the kernel API take torch's own threads

    @staticmethod
    def runs_alone(job) -> bool:
        """Every job merges alone (one merge thread)."""
        return True

    def read(self, job: TensorJob) -> _HostBatch:
        """Read a job's source tensors (runs in the reader thread)."""
        if job.copy:  # the input is the output: it leaves with the writer, not pooled
            return _HostBatch([self.plan.models[s.model].reader.read(s.tensor) for s in job.sources], [])
        buffers = [self._buffer(s.info.nbytes) for s in job.sources]
        self._asked(s.info.nbytes for s in job.sources)

        def read(source, buffer):
            return self.plan.models[source.model].reader.read(source.tensor, out=buffer)

        if self._sources is not None and len(job.sources) > 1:
            return _HostBatch(list(self._sources.map(read, job.sources, buffers)), buffers)
        return _HostBatch([read(s, b) for s, b in zip(job.sources, buffers)], buffers)

    def inputs(self, job: TensorJob, staged: Any) -> list[torch.Tensor]:
        """The job's inputs on the math device, ready to merge (runs in the merge thread)."""
        return staged.tensors

    def recycle(self, staged: Any, out: torch.Tensor) -> None:
        """The job is merged: its input buffers go back to the pool, unless the result is
        one of the inputs itself (methods may return an input unchanged)."""
        if _backing(out, staged.buffers) is None:
            self._give_back(staged.buffers)

    def merge(self, job: TensorJob, staged: Any, merge_fn: Callable[[TensorJob, list], torch.Tensor]) -> Any:
        """Merge a job (merge thread): `merge_fn(job, inputs on the math device)` returns the
        result there; what comes back is handed to `write`."""
        lent: list[torch.Tensor] = []

        def take(nbytes: int) -> torch.Tensor:
            lent.append(self._buffer(nbytes))
            return lent[-1]

        with output_buffers(take):
            out = merge_fn(job, self.inputs(job, staged))
        if self._planned:  # (then `job` is one of the plan's)
            self._asked([job.out_bytes])
        self.recycle(staged, out)
        return _HostResult(out, _backing(out, lent))

    def write(self, pending: Any, sink: Callable[[torch.Tensor], None]) -> None:
        """Hand a merged result, on the host, to `sink` (writer thread); its buffer then goes
        back to the pool, so `sink` must not keep the tensor (the writer copies it out)."""
        sink(pending.tensor)
        if pending.buffer is not None:
            self._give_back([pending.buffer])

    def copy_seconds(self) -> tuple[float, float]:
        """(H2D, D2H) seconds spent copying; none on the CPU path."""
        return 0.0, 0.0

    def close(self) -> None:
        """The run is over (finished or failed): drop the pooled buffers."""
        if self._sources is not None:
            self._sources.shutdown(wait=True, cancel_futures=True)  # a stopped run's reads end at their next chunk
        self.drop_buffers()
