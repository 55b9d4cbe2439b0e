"""GPU merges: inputs and results move through a bounded ring of pinned host buffers.

Reader thread: a tensor that fits a ring slot is read straight into the slot and copied to
the GPU on the copy stream; the slot is reused once that copy's event has completed. A larger
tensor is read into a pooled pageable buffer and staged through slots in chunks into one
device tensor ("staged whole"). Merge thread: the compute stream waits for the job's last H2D
event, merges, and copies the result back into a slot (or, when larger, chunk by chunk
through slots into a pageable buffer); the writer thread waits for that copy's event, writes,
and releases the slot. Passthrough copies never go to the device.

Linear merges are elementwise with per-tensor scalar parameters, so a group larger than a
slot is merged in flat chunks (inputs read whole into pageable buffers, each chunk staged,
merged and copied back on its own): bit-identical to merging whole, and GPU memory holds
only a chunk per input. TIES/DARE rank whole tensors and SLERP needs whole-tensor norms, so
they are staged whole.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch

from ..plan import MergePlan, TensorJob
from .host import HostStaging, _HostBatch, _HostResult
from .pinned_ring import RING_SLOTS, PinnedRing, ring_shape

CHUNKED_METHODS = frozenset({"linear"})


def _bytes(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor's data as a flat uint8 tensor (a view when it is contiguous)."""
    return tensor.reshape(-1).view(torch.uint8)


def _largest_tensor(plan: MergePlan) -> int:
    """Bytes of the largest input or output tensor that goes to the device."""
    sizes = [0]
    for job in plan.jobs:
        if not job.copy:
            sizes += [s.info.nbytes for s in job.sources]
            sizes.append(math.prod(job.shape) * job.dtype.itemsize)
    return max(sizes)


@dataclass
class _DeviceBatch:
    tensors: list[torch.Tensor]  # on the device once `ready` has completed
    ready: Any  # an event recorded on the copy stream after the job's last H2D copy


class _Chunked(_HostBatch):
    """A linear job's inputs, read whole into pageable buffers, merged chunk by chunk."""


@dataclass
class _SlotResult:
    """A result copied back into one ring slot; the slot returns once it is written."""

    ring: PinnedRing
    slot: torch.Tensor
    host: torch.Tensor  # a view of `slot` with the result's dtype and shape
    done: Any  # the D2H copy's event

    def write(self, sink: Callable[[torch.Tensor], None]) -> None:
        """Wait for the copy, hand the result to `sink`, free the slot."""
        try:
            self.done.synchronize()
            sink(self.host)
        finally:
            self.ring.release(self.slot)


class _ChunkedResult:
    """A result copied back through ring slots, chunk by chunk, into a pooled pageable
    buffer. At most two chunks are in flight; `add` and `settle` keep the ring's rule that a
    thread waiting for a slot holds at most one."""

    def __init__(self, staging: CudaStaging, dtype: torch.dtype, shape: tuple[int, ...]):
        self.staging = staging
        self.buffer = staging._buffer(math.prod(shape) * dtype.itemsize)
        self.host = self.buffer.view(dtype).reshape(shape)
        self._chunks: deque = deque()

    def settle(self, keep: int = 1) -> None:
        """Move finished chunks into the buffer until at most `keep` are in flight."""
        while len(self._chunks) > keep:
            slot, data, offset, done = self._chunks.popleft()
            done.synchronize()
            self.buffer[offset : offset + data.numel()].copy_(data)
            self.staging.ring.release(slot)

    def add(self, src: torch.Tensor, offset: int) -> None:
        """Start copying device bytes `src` (at most a slot) to byte `offset` of the result."""
        self.settle()
        slot = self.staging.ring.acquire()
        data = slot[: src.numel()]
        self._chunks.append((slot, data, offset, self.staging._d2h(data, src)))

    def write(self, sink: Callable[[torch.Tensor], None]) -> None:
        """Finish the copies, hand the result to `sink`, return the buffer to the pool."""
        self.settle(0)
        sink(self.host)
        self.staging._give_back([self.buffer])


class CudaStaging(HostStaging):
    """GPU merges through `queue` (device_queue.CudaQueue, or a fake in tests) and a pinned
    ring sized by `ring_shape` from the pipeline `budget` unless `slot_bytes` is given."""

    def __init__(self, plan: MergePlan, queue, budget: int, *, slot_bytes: int | None = None, slots: int = RING_SLOTS):
        super().__init__(plan, str(queue.device))
        self.queue = queue
        if slot_bytes is None:
            slot_bytes, slots = ring_shape(_largest_tensor(plan), budget)
        self.ring = PinnedRing(queue, slot_bytes, slots)
        self.readers = 1  # the ring's slots are taken in job order by one reader
        self.h2d_events: list[tuple] = []
        self.d2h_events: list[tuple] = []

    def _chunked(self, job: TensorJob) -> bool:
        if self.plan.spec.name not in CHUNKED_METHODS or job.vocab is not None:
            return False
        numel = math.prod(job.shape)
        if any(math.prod(s.info.shape) != numel for s in job.sources):
            return False
        largest = max([s.info.nbytes for s in job.sources] + [numel * job.dtype.itemsize])
        return largest > self.ring.slot_bytes

    def read(self, job: TensorJob) -> Any:
        """Read a job's inputs and start their H2D copies (reader thread)."""
        if job.copy:  # passthrough: the input is the output, it never visits the device
            return super().read(job)
        if self._chunked(job):
            return _Chunked(**vars(super().read(job)))
        tensors = [self._read_to_device(s) for s in job.sources]
        return _DeviceBatch(tensors, self.queue.record(self.queue.copy_stream))

    def _read_to_device(self, source) -> torch.Tensor:
        info, reader = source.info, self.plan.models[source.model].reader
        if info.nbytes <= self.ring.slot_bytes:
            slot = self.ring.acquire()
            dev = self.queue.empty(info.nbytes)
            self._h2d(dev, _bytes(reader.read(source.tensor, out=slot)), slot)
        else:  # staged whole, through slot-sized chunks
            buffer = self._buffer(info.nbytes)
            dev = _bytes(self._upload(reader.read(source.tensor, out=buffer)))
            self._give_back([buffer])  # its chunks were copied into slots synchronously
        return dev.view(info.dtype).reshape(info.shape)

    def _upload(self, host: torch.Tensor) -> torch.Tensor:
        """A device copy of `host`, staged through ring slots one chunk at a time."""
        src, step = _bytes(host), self.ring.slot_bytes
        dev = self.queue.empty(src.numel())
        for start in range(0, src.numel(), step):
            part = src[start : start + step]
            slot = self.ring.acquire()
            slot[: part.numel()].copy_(part)
            self._h2d(dev[start : start + part.numel()], slot[: part.numel()], slot)
        return dev.view(host.dtype).reshape(host.shape)

    def _h2d(self, dst: torch.Tensor, src: torch.Tensor, slot: torch.Tensor) -> None:
        """Copy `src` (in `slot`) to `dst`; the slot returns to the ring when the copy is done."""
        start = self.queue.record(self.queue.copy_stream)
        self.queue.h2d(dst, src)
        end = self.queue.record(self.queue.copy_stream)
        self.h2d_events.append((start, end))
        self.ring.release_after(slot, end)

    def _d2h(self, dst: torch.Tensor, src: torch.Tensor) -> Any:
        """Copy device `src` into slot memory `dst` after the kernels so far; its event."""
        start = self.queue.record(self.queue.compute_stream)
        self.queue.d2h(dst, src)
        end = self.queue.record(self.queue.compute_stream)
        self.d2h_events.append((start, end))
        return end

    def merge(self, job: TensorJob, staged: Any, merge_fn: Callable[[TensorJob, list], torch.Tensor]) -> Any:
        """Merge on the device and start copying the result back (merge thread)."""
        if isinstance(staged, _Chunked):
            return self._merge_chunks(job, staged, merge_fn)
        if isinstance(staged, _HostBatch):
            return super().merge(job, staged, merge_fn)
        self.queue.compute_waits(staged.ready, staged.tensors)
        return self._download(merge_fn(job, staged.tensors))

    def _download(self, out: torch.Tensor) -> Any:
        nbytes = out.numel() * out.element_size()
        if nbytes <= self.ring.slot_bytes:
            slot = self.ring.acquire()
            host = slot[:nbytes].view(out.dtype).reshape(out.shape)
            return _SlotResult(self.ring, slot, host, self._d2h(host, out))
        result, src = _ChunkedResult(self, out.dtype, tuple(out.shape)), _bytes(out)
        for start in range(0, nbytes, self.ring.slot_bytes):
            result.add(src[start : start + self.ring.slot_bytes], start)
        return result

    def _merge_chunks(self, job: TensorJob, staged: _Chunked, merge_fn) -> _ChunkedResult:
        flats = [t.reshape(-1) for t in staged.tensors]
        itemsize = max([t.element_size() for t in flats] + [job.dtype.itemsize])
        step, numel = max(1, self.ring.slot_bytes // itemsize), flats[0].numel()
        result = _ChunkedResult(self, job.dtype, job.shape)
        for start in range(0, numel, step):
            end = min(numel, start + step)
            result.settle()
            parts = [self._upload(flat[start:end]) for flat in flats]
            self.queue.compute_waits(self.queue.record(self.queue.copy_stream), parts)
            out = merge_fn(replace(job, name=f"{job.name}[{start}:{end}]", shape=(end - start,)), parts)
            result.add(_bytes(out), start * job.dtype.itemsize)
        self._give_back(staged.buffers)  # every chunk was copied into a slot synchronously
        return result

    def write(self, pending: Any, sink: Callable[[torch.Tensor], None]) -> None:
        """Wait for a result's D2H copy, hand it to `sink`, free its slots (writer thread)."""
        if isinstance(pending, _HostResult):  # a passthrough copy: never left the host
            super().write(pending, sink)
        else:
            pending.write(sink)

    def copy_seconds(self) -> tuple[float, float]:
        """(H2D, D2H) seconds the copy engines spent, from the copies' event pairs."""
        self.queue.synchronize()

        def total(events):
            return sum(a.elapsed_time(b) for a, b in events) / 1000

        return total(self.h2d_events), total(self.d2h_events)

    def close(self) -> None:
        """Stop the ring (a stage still waiting for a slot raises) and drop the buffers."""
        self.ring.close()
        super().close()
