"""Which merges may run side by side on the pipeline's merge threads (io/pipeline.py).

A job either runs beside the other merges in progress or alone: one that runs alone waits
for the merges in progress to end and holds off later ones until it has ended. Jobs are
admitted in the order the merge threads take them, so jobs that run alone (the parts of one
tensor that add to its statistic before its merging parts, host/parts.py) keep their order.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from ..errors import PipelineStopped

_POLL = 0.1  # seconds between checks of the stop flag while waiting


class MergeGate:
    """Admits jobs to the merge threads: `alone(job)` says which run alone; `stop` ends the waits."""

    def __init__(self, alone: Callable[[Any], bool], stop: threading.Event):
        self.alone, self.stop = alone, stop
        self._cond = threading.Condition()
        self._side_by_side = 0  # merges in progress beside each other
        self._alone = False  # a merge running alone is in progress

    def enter(self, job: Any) -> bool:
        """Wait until `job` may start, and count it in; whether it runs alone. Raises
        PipelineStopped once the run has stopped."""
        alone = self.alone(job)
        with self._cond:
            while self._alone or (alone and self._side_by_side):
                if self.stop.is_set():
                    raise PipelineStopped("the merge has stopped")
                self._cond.wait(_POLL)
            if alone:
                self._alone = True
            else:
                self._side_by_side += 1
        return alone

    def leave(self, alone: bool) -> None:
        """A merge admitted by `enter` (which returned `alone`) has ended."""
        with self._cond:
            if alone:
                self._alone = False
            else:
                self._side_by_side -= 1
            self._cond.notify_all()
