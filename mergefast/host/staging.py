"""The torch-free engine's staging: each job's inputs are mapped from the page cache
(io/mapped.py) or, where they cannot be, read into pooled byte buffers, merged into another
pooled buffer, and handed to the writer; the three pipeline stages (io/pipeline.py) call
`read`, `merge` and `write` as they call staging/host.py's, and both pool their buffers the
same way (staging/pool.py).
"""

from __future__ import annotations

import math
import mmap
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ..dtypes import ITEMSIZE
from ..io.direct import BLOCK
from ..io.host_array import HostArray
from ..io.hub_stream import JOBS_AT_ONCE, SOURCES_AT_ONCE, streamed_inputs
from ..plan import MergePlan, TensorJob
from ..staging.pool import BufferPool
from . import side_by_side
from .ops import team, threads
from .parts import TensorPart

# Parts mapped at once (host/parts.py: 2 MiB of each bf16 input per part). task_arithmetic of
# the 0.3B family, 2-vCPU Intel Xeon VM, 9 alternated runs: windows of 8 parts 0.99 s and 0.18
# GB peak RSS (the mapped pages counted), of 32 1.00 s, whole tensors 1.01 s and 0.43 GB, each
# part on its own 1.01 s (its munmaps), parts copied into pooled buffers 1.05 s and 0.10 GB.
MAP_WINDOW_PARTS = 8


def anonymous_bytes(nbytes: int) -> memoryview:
    """A fresh writable byte buffer in its own anonymous mapping. Not numpy's allocator:
    numpy asks for transparent huge pages on large arrays, and on the 2-vCPU dev VM (free
    page reporting) that cost a linear merge of the 0.3B family 0.3 s of system time (0.80
    against 0.50 s)."""
    return memoryview(mmap.mmap(-1, nbytes) if nbytes else bytearray())


@dataclass
class _Staged:
    arrays: list[HostArray]
    buffers: list[memoryview]  # pooled buffers behind `arrays`


@dataclass
class _Window:
    start: int  # the elements [start, stop) of a tensor cut into parts, mapped (`_mapped`)
    stop: int
    array: HostArray


@dataclass
class _Merged:
    array: HostArray | None  # None: a reducing part's
    buffers: list[memoryview]  # back to the pool once `array` is written


class HostArrayStaging(BufferPool):
    """CPU merges without torch: pooled byte buffers for inputs and outputs. `jobs`: what
    the pipeline runs, the plan's jobs or their parts (host/parts.py)."""

    def __init__(
        self,
        plan: MergePlan,
        jobs: list[TensorJob | TensorPart],
        on_torch: frozenset[str] = frozenset(),
        out_offset: Callable[[TensorJob | TensorPart], int] | None = None,
    ):
        super().__init__(anonymous_bytes, jobs, pool_copies=True, out_pad=BLOCK)
        self.plan, self.on_torch = plan, on_torch
        self._out_offset = out_offset  # where a job's output lands in its shard file
        self._windows: dict[tuple[int, str], _Window] = {}  # each cut tensor's mapped window (`_mapped`)
        # Local and downloaded files are read one job, one source after the other (two cores);
        # --stream-inputs' range requests wait on round trips: a job's sources at once, and
        # JOBS_AT_ONCE jobs (io/pipeline.py's readers), as the torch engine's staging.
        streamed = streamed_inputs(plan)
        self._sources = ThreadPoolExecutor(SOURCES_AT_ONCE, "stream-read") if streamed else None
        self.readers = JOBS_AT_ONCE if streamed else 1
        # merge threads (io/pipeline.py), each job not run alone on its share of the team (None:
        # one merge thread, every job on the whole team)
        team_size = threads()
        self.mergers = side_by_side.mergers(plan, team_size)
        self._share = team_size // self.mergers if self.mergers > 1 else None

    def runs_alone(self, job: TensorJob | TensorPart) -> bool:
        """Whether `job` merges alone on the whole team (host/side_by_side.py)."""
        return side_by_side.runs_alone(job, self.on_torch)

    def read(self, job: TensorJob | TensorPart) -> _Staged:
        """Read a job's source tensors, or a part's elements of them (reader thread). What is
        merged (not copied) is mapped where its reader can (`_mapped`)."""
        elements = None if job.start is None else (job.start, job.stop)
        arrays: list[HostArray | None] = []
        buffers, reads = [], []
        pad, shift = (self.out_pad, self._shift(job)) if job.copy else (0, 0)  # a copy's input is its output
        for i, (source, nbytes) in enumerate(zip(job.sources, job.input_bytes)):
            reader = self.plan.models[source.model].reader
            arrays.append(None if job.copy else self._mapped(reader, source, job))
            if arrays[-1] is None:
                buffers.append(self._buffer(nbytes + pad))
                reads.append((i, reader, source.tensor, buffers[-1][shift : shift + nbytes]))

        def read(i, reader, tensor, buffer) -> None:
            arrays[i] = reader.read_into(tensor, buffer, elements)

        if self._sources is not None and len(reads) > 1:
            list(self._sources.map(lambda r: read(*r), reads))
        else:
            for r in reads:
                read(*r)
        self._asked([nbytes + pad for nbytes in job.input_bytes])
        return _Staged(arrays, buffers)

    def _mapped(self, reader, source, job: TensorJob | TensorPart) -> HostArray | None:
        """`job`'s input from `source` over a private mapping of the page cache (io/mapped.py),
        None where it is to be read. A part's is a slice of a mapping of MAP_WINDOW_PARTS parts
        of its tensor, made by the window's first part and dropped with its last: the reader
        thread copies nothing, and the window's mapping costs one munmap."""
        if job.start is None:
            return reader.map_whole(source.tensor)
        key = (source.model, source.tensor)
        window = self._windows.get(key)
        if window is None or not window.start <= job.start < job.stop <= window.stop:
            stop = min(job.start + MAP_WINDOW_PARTS * (job.stop - job.start), math.prod(source.info.shape))
            array = reader.map_whole(source.tensor, (job.start, stop))
            if array is None:  # not mappable, or a Hub shard still downloading: read
                self._windows.pop(key, None)
                return None
            window = self._windows[key] = _Window(job.start, stop, array)
        if job.stop == window.stop:
            del self._windows[key]
        size = ITEMSIZE[window.array.dtype]
        data = window.array.data[(job.start - window.start) * size : (job.stop - window.start) * size]
        return HostArray(data, window.array.dtype, (job.stop - job.start,))

    def _shift(self, job: TensorJob | TensorPart) -> int:
        """Where `job`'s output starts in its buffer: at an address congruent to its file
        offset modulo BLOCK, the writer's O_DIRECT pwrites take its aligned blocks from where
        they lie (io/direct.py), no copy."""
        return 0 if self._out_offset is None else self._out_offset(job) % BLOCK

    def merge(self, job: TensorJob | TensorPart, staged: _Staged, merge_fn: Callable) -> _Merged:
        """`merge_fn(job, inputs, take)` (merge thread), its output in a pooled buffer from
        `take(nbytes)`; the input buffers go back to the pool, but a copy's, which is its
        output and goes back once written."""
        lent: list[memoryview] = []
        shift = self._shift(job)

        def take(nbytes: int) -> memoryview:
            lent.append(self._buffer(nbytes + self.out_pad))
            return lent[-1][shift : shift + nbytes]

        try:
            with team(None if self.runs_alone(job) else self._share):
                out = merge_fn(job, staged.arrays, take)
        finally:
            if not job.copy:
                self._give_back(staged.buffers)
                staged.arrays.clear()  # mapped inputs are unmapped with their last view
        if job.copy:
            return _Merged(out, staged.buffers + lent)
        self._asked([job.out_bytes + self.out_pad])
        return _Merged(out, lent)

    def write(self, pending: _Merged, sink: Callable[[HostArray], None]) -> None:
        """Hand a merged array to `sink` (writer thread), then pool its buffer; a reducing
        part (host/parts.py) has none."""
        if pending.array is not None:
            sink(pending.array)
        self._give_back(pending.buffers)

    def copy_seconds(self) -> tuple[float, float]:
        """(H2D, D2H) seconds spent copying: none on the CPU."""
        return 0.0, 0.0

    def close(self) -> None:
        """The run is over (finished or failed): drop the pooled buffers."""
        if self._sources is not None:
            self._sources.shutdown(wait=True, cancel_futures=True)  # a stopped run's reads end at their next chunk
        self._windows.clear()
        self.drop_buffers()
