"""A small ring of reused pinned host buffers (slots) for H2D and D2H copies.

A slot is taken with `acquire()` and comes back either with `release()` (a D2H result, once
the writer has written it) or with `release_after(event)` (an H2D source: reusable once the
copy out of it has completed). Slots are allocated lazily, at most `slots` of them, so pinned
memory is bounded whatever the model size; anything larger than a slot goes through it in
chunks (cuda.py).

Liveness: a thread waiting in `acquire` must hold at most one slot itself, and the ring has at
least two. Then a slot always comes free: H2D copies complete on their own (the oldest one is
waited for), and results are released by the writer, which waits on nobody.
"""

from __future__ import annotations

import threading

import torch

# 8 slots: the reader double-buffers its H2D copies (2), up to 4 results wait for or in the
# writer (one being copied back, two queued, one being written), and 2 spare let the merge
# thread stage chunks without waiting for the writer.
RING_SLOTS = 8
# A slot of 128 MiB holds every per-layer tensor of 7-8B models (the largest, an MLP weight
# of 14336 x 4096 bf16, is 117 MB), so only embeddings / lm_head take the chunked route there;
# 8 of them pin at most 1 GiB, and a chunk that size copies at full PCIe speed (2.3 ms at
# 55 GB/s against ~10 us per copy call).
SLOT_CAP = 128 << 20
# Below 1 MiB per copy the per-call cost dominates; a tiny --max-memory still gets this.
MIN_SLOT = 1 << 20
_POLL = 0.1  # seconds between checks of `close()` while waiting for a slot


def ring_shape(largest_tensor: int, budget: int) -> tuple[int, int]:
    """(slot bytes, slot count) for a run whose largest device tensor is `largest_tensor`
    bytes and whose pipeline may hold `budget` bytes in flight.

    The ring holds a share of the bytes the pipeline budget already allows in flight
    (budget / RING_SLOTS per slot, within [MIN_SLOT, SLOT_CAP]), and a slot is never larger
    than the largest tensor it will carry."""
    slot = min(SLOT_CAP, max(MIN_SLOT, budget // RING_SLOTS))
    return max(1, min(slot, largest_tensor)), RING_SLOTS


class RingClosed(RuntimeError):
    """The run has stopped; no more slots are handed out."""


class PinnedRing:
    """At most `slots` pinned byte buffers of `slot_bytes` each, reused (thread-safe)."""

    def __init__(self, queue, slot_bytes: int, slots: int = RING_SLOTS):
        if slots < 2:
            raise ValueError(f"a pinned ring needs at least 2 slots, got {slots}")
        self.queue, self.slot_bytes, self.slots = queue, slot_bytes, slots
        self.allocated = 0  # slots created so far (never more than `slots`)
        self.held = 0  # slots acquired and neither released nor handed to an event
        self._free: list[torch.Tensor] = []
        self._pending: list = []  # (slot, event of the last copy out of it)
        self._cond = threading.Condition()
        self._closed = False

    def acquire(self) -> torch.Tensor:
        """A free slot (a 1-D uint8 pinned tensor of `slot_bytes`); waits for one if needed."""
        with self._cond:
            while True:
                if self._closed:
                    raise RingClosed("the merge has stopped")
                self._reclaim()
                if self._free:
                    slot, event = self._free.pop(), None
                    break
                if self.allocated < self.slots:
                    self.allocated += 1
                    slot = event = None
                    break
                if self._pending:  # the oldest copy: the first to complete on the FIFO copy stream
                    slot, event = self._pending.pop(0)
                    break
                self._cond.wait(_POLL)  # every slot holds a result the writer has not written yet
            self.held += 1
        if slot is None:
            return self.queue.pinned(self.slot_bytes)  # outside the lock: pinning memory is slow
        if event is not None:
            event.synchronize()  # an H2D copy: it completes without anyone's help
        return slot

    def _reclaim(self) -> None:
        """Free the pending slots whose copies have completed (called with the lock held)."""
        waiting = []
        for slot, event in self._pending:
            if event.query():
                self._free.append(slot)
            else:
                waiting.append((slot, event))
        self._pending = waiting

    def release(self, slot: torch.Tensor) -> None:
        """Give a slot back now (its data has been used)."""
        with self._cond:
            self.held -= 1
            self._free.append(slot)
            self._cond.notify_all()

    def release_after(self, slot: torch.Tensor, event) -> None:
        """Give a slot back once `event` (recorded after the last copy out of it) completes."""
        with self._cond:
            self.held -= 1
            self._pending.append((slot, event))
            self._cond.notify_all()

    def close(self) -> None:
        """Stop handing out slots (waiters raise RingClosed) and drop the free ones."""
        with self._cond:
            self._closed = True
            self._free.clear()
            self._pending.clear()
            self._cond.notify_all()
