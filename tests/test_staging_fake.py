"""A fake device queue for the GPU staging, and the pinned ring tested against it.

`FakeQueue` has the methods of `mergefast.device_queue.CudaQueue`; its "device" tensors are
CPU tensors, and every copy runs as late as CUDA would allow: when an event recorded after it
is synchronized or waited for (or, at random, when an event is queried). So a slot reused
before its H2D copy ran, a merge that did not wait for its inputs, or a result read before
its D2H copy ran all produce wrong bytes (fresh pinned and device memory is filled with a
pattern), which the tests comparing outputs catch.
"""

from __future__ import annotations

import random
import threading
from collections import deque

import pytest
import torch

from mergefast.staging.pinned_ring import MIN_SLOT, RING_SLOTS, SLOT_CAP, PinnedRing, RingClosed, ring_shape


class FakeStream:
    """Work queued in order; it runs only when something waits for it."""

    def __init__(self):
        self._ops: deque = deque()
        self._issued = self._done = 0
        self._lock = threading.RLock()

    def enqueue(self, op) -> None:
        with self._lock:
            self._ops.append(op)
            self._issued += 1

    def mark(self) -> int:
        with self._lock:
            return self._issued

    def run_until(self, mark: int) -> None:
        with self._lock:
            while self._done < mark:
                self._ops.popleft()()
                self._done += 1

    def finished(self, mark: int) -> bool:
        with self._lock:
            return self._done >= mark


class FakeEvent:
    def __init__(self, stream: FakeStream, rng: random.Random, early: float):
        self.stream, self.mark, self._rng, self._early = stream, stream.mark(), rng, early

    def query(self) -> bool:
        if self._rng.random() < self._early:  # the device made progress on its own
            self.stream.run_until(self.mark)
        return self.stream.finished(self.mark)

    def synchronize(self) -> None:
        self.stream.run_until(self.mark)

    def elapsed_time(self, end: FakeEvent) -> float:
        return 0.0


class FakeQueue:
    """CudaQueue's interface on the CPU, with delayed copies (see the module docstring).

    `early`: the chance that a queried event finds its copies done. `fail_h2d_at`: the H2D
    copy call (1-based) that raises, like a CUDA error."""

    device = torch.device("cpu")

    def __init__(self, seed: int = 0, early: float = 0.5, fail_h2d_at: int | None = None):
        self.copy_stream, self.compute_stream = FakeStream(), FakeStream()
        self._rng, self._early, self._fail_at = random.Random(seed), early, fail_h2d_at
        self.pinned_allocs = self.h2d_calls = self.d2h_calls = 0

    def pinned(self, nbytes: int) -> torch.Tensor:
        self.pinned_allocs += 1
        return torch.full((nbytes,), 0xA5, dtype=torch.uint8)

    def empty(self, nbytes: int) -> torch.Tensor:
        return torch.full((nbytes,), 0x5A, dtype=torch.uint8)  # garbage until a copy lands

    def record(self, stream: FakeStream) -> FakeEvent:
        return FakeEvent(stream, self._rng, self._early)

    def h2d(self, dst: torch.Tensor, src: torch.Tensor) -> None:
        self.h2d_calls += 1
        if self.h2d_calls == self._fail_at:
            raise RuntimeError("CUDA error: an illegal memory access was encountered (fake)")
        self.copy_stream.enqueue(lambda: dst.copy_(src))

    def compute_waits(self, event: FakeEvent, tensors) -> None:
        event.synchronize()  # fake kernels run at once on the CPU: the wait happens here

    def d2h(self, dst: torch.Tensor, src: torch.Tensor) -> None:
        self.d2h_calls += 1
        self.compute_stream.enqueue(lambda: dst.copy_(src))

    def synchronize(self) -> None:
        for stream in (self.copy_stream, self.compute_stream):
            stream.run_until(stream.mark())


def copy_out_of(queue: FakeQueue, ring: PinnedRing, slot: torch.Tensor) -> torch.Tensor:
    """Queue an H2D copy out of `slot`, hand the slot to the ring after it; the destination."""
    dst = queue.empty(ring.slot_bytes)
    queue.h2d(dst, slot)
    ring.release_after(slot, queue.record(queue.copy_stream))
    return dst


def test_a_slot_is_reused_only_after_the_copy_out_of_it_ran():
    queue = FakeQueue(early=0.0)
    ring = PinnedRing(queue, 16, slots=2)
    first, _ = ring.acquire(), ring.acquire()
    first.fill_(1)
    dst = copy_out_of(queue, ring, first)
    again = ring.acquire()  # no free slot: waits for the pending copy, then reuses its slot
    assert again.data_ptr() == first.data_ptr() and torch.equal(dst, torch.ones(16, dtype=torch.uint8))
    again.fill_(2)
    assert torch.equal(dst, torch.ones(16, dtype=torch.uint8))
    assert queue.pinned_allocs == 2 and ring.held == 2


def test_a_completed_copy_frees_its_slot_before_a_new_one_is_pinned():
    queue = FakeQueue(early=1.0)
    ring = PinnedRing(queue, 16, slots=4)
    for _ in range(10):
        copy_out_of(queue, ring, ring.acquire())
    assert queue.pinned_allocs == 1 and ring.held == 0


def test_a_waiter_gets_the_slot_the_writer_releases():
    ring = PinnedRing(FakeQueue(), 16, slots=2)
    held = [ring.acquire(), ring.acquire()]  # both hold results the writer has not written
    got = []
    waiter = threading.Thread(target=lambda: got.append(ring.acquire()), daemon=True)
    waiter.start()
    waiter.join(0.3)
    assert waiter.is_alive() and not got
    ring.release(held[1])
    waiter.join(5)
    assert got and got[0].data_ptr() == held[1].data_ptr()


def test_close_stops_a_waiter():
    ring = PinnedRing(FakeQueue(), 16, slots=2)
    ring.acquire(), ring.acquire()
    errors = []

    def wait():
        try:
            ring.acquire()
        except RingClosed as exc:
            errors.append(exc)

    waiter = threading.Thread(target=wait, daemon=True)
    waiter.start()
    ring.close()
    waiter.join(5)
    assert not waiter.is_alive() and errors


def test_ring_shape_is_bounded_by_the_budget_and_the_largest_tensor():
    assert ring_shape(10, 10**12) == (10, RING_SLOTS)
    assert ring_shape(10**12, 10**12) == (SLOT_CAP, RING_SLOTS)
    assert ring_shape(10**12, 1) == (MIN_SLOT, RING_SLOTS)  # a tiny --max-memory still gets usable slots
    assert ring_shape(10**12, 80_000_000) == (10_000_000, RING_SLOTS)
    with pytest.raises(ValueError, match="at least 2 slots"):
        PinnedRing(FakeQueue(), 16, slots=1)
