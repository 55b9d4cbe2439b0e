"""The torch-free engine's large elementwise jobs, cut into parts of PART_ELEMENTS elements.

A method whose C call treats every element alone (linear, nearswap, task_arithmetic, and the
copies of passthrough) gives the same bytes merged whole or in parts, so its large tensors
stream through the pipeline in parts: the first part is written while the next is merged,
as the IO floor (benchmarks/io_floor.py) streams its 16 MiB buffer. A part's inputs are
slices of a mapping of a few parts of its tensor (host/staging.py), or where the tensor
cannot be mapped are read into pooled buffers that stay small. Whole, the 0.3B family's embeddings and
lm_head made the pool fault 256 MB of fresh pages, and the pipeline wait for 192 MB of
reads before its first merge.

SLERP, nuslerp (flattened), multislerp, karcher, RAM+ and Model Stock (not `filter_wise`)
need one statistic of the whole tensor before any output element. Where their inputs can be
mapped (io/mapped.py: aligned safetensors on Linux) they merge whole tensors, both passes over
the mapped page cache: 0.3B family, 2-vCPU AMD EPYC VM, 5 alternated runs, multislerp 1.09-1.28
s against 1.21-1.56 s in parts read twice, ramplus_tl 1.44-1.58 against 1.73-1.86 s,
model_stock 1.18-1.42 against 1.42-1.76 s, SLERP (two inputs) 0.98-1.18 against 1.00-1.14 s.
Elsewhere their statistic adds up part by part (host/reduction.py): their parts are read
twice, once for the statistic and once for the merge. The methods that need another statistic
of the whole tensor (a top-k, per-row ranks or quantiles, norms of the kept values) merge it
whole.

A part's checks (execute.merge_job's NaN/inf warnings and errors) are those of its tensor:
where a part finds a value that is not finite, the whole tensor is read and merged again
for the message, which then counts the whole tensor's values, once.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from .. import native
from ..dtypes import ITEMSIZE
from ..io import mapped
from ..methods.registry import TASK_ARITHMETIC_FAMILY
from ..plan import MergePlan, TensorJob
from .reducing import REDUCTIONS

# Elements per part: every part of every tensor but a tensor's last has this size, so their
# buffers pool by one size. Linear of the 0.3B family, 2-vCPU AMD EPYC VM, 5 runs each with a
# 48 MB budget: 2^18 0.77-0.94 s, 2^19 0.66-0.82 s, 2^20 0.64-0.83 s, 2^21 0.67-0.77 s.
PART_ELEMENTS = 1 << 20


def elementwise(plan: MergePlan) -> bool:
    """Whether the plan's method merges each element from the same element of its inputs
    alone, with scalars that do not depend on the tensor's values (its merges may be cut)."""
    name = plan.spec.name
    return name in ("linear", "nearswap", "ram") or TASK_ARITHMETIC_FAMILY.get(name, ("",))[0] == "none"


@dataclass(frozen=True)
class TensorPart:
    """Elements [start, stop) of the flattened output of `job`, and of each of its inputs."""

    job: TensorJob
    start: int
    stop: int
    reduces: bool = False  # a pass that adds the part to its tensor's statistic (SLERP's dots): no output
    # shared by the tensor's parts: its statistic, whether it was checked whole (host/merge.py)
    state: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)

    @property
    def name(self) -> str:
        """The output tensor's name."""
        return self.job.name

    @property
    def copy(self) -> bool:
        """Whether the part is copied unchanged (a passthrough job's)."""
        return self.job.copy

    @property
    def sources(self):
        """The job's sources (their infos are the whole tensors')."""
        return self.job.sources

    @property
    def input_bytes(self) -> tuple[int, ...]:
        """Bytes read from each input."""
        return tuple(ITEMSIZE[s.info.dtype_name] * (self.stop - self.start) for s in self.job.sources)

    @property
    def read_bytes(self) -> int:
        """Bytes read for this part."""
        return sum(self.input_bytes)

    @property
    def out_bytes(self) -> int:
        """Bytes of this part of the output (none for a reducing pass)."""
        return 0 if self.reduces else ITEMSIZE[self.job.dtype_name] * (self.stop - self.start)

    @property
    def ends_tensor(self) -> bool:
        """Whether this is the tensor's last part."""
        return not self.reduces and self.stop == math.prod(self.job.shape)

    def first_to_check(self) -> bool:
        """True once per tensor: for the first of its parts that asks (host/merge.py)."""
        first, self.state["checked"] = not self.state.get("checked"), True
        return first

    def as_job(self) -> TensorJob:
        """The job as the method's C call sees this part: its 1-D shape."""
        return dataclasses.replace(self.job, shape=(self.stop - self.start,))


def split_jobs(
    plan: MergePlan, jobs: list[TensorJob], whole: frozenset[str] = frozenset()
) -> list[TensorJob | TensorPart]:
    """`jobs` with each one of more than PART_ELEMENTS elements that an elementwise method
    merges, or a reducing one whose inputs cannot be mapped, replaced by its parts, in order
    (a reducing method's: its reducing passes over the parts first, then the merging ones);
    the others, and those named in `whole` (merged with torch), as they are."""
    reduction = REDUCTIONS.get(plan.spec.name)
    cut = elementwise(plan)
    block = native.require().mf_block() if reduction else 1  # a reducing part holds whole C blocks
    size = max(PART_ELEMENTS // block, 1) * block
    out: list[TensorJob | TensorPart] = []
    for job in jobs:
        n = math.prod(job.shape)
        same = all(math.prod(s.info.shape) == n for s in job.sources)
        mapped_whole = all(mapped.mappable(s.info) for s in job.sources)
        reducing = reduction is not None and not job.copy and reduction.cuts(job) and not mapped_whole
        if n <= size or not (job.copy or cut or reducing) or job.vocab is not None or not same or job.name in whole:
            out.append(job)
            continue
        state: dict = {}
        ranges = [(s, min(s + size, n)) for s in range(0, n, size)]
        if reducing:  # a tensor's reducing parts are merged first: one reader, merges in job order
            out += [TensorPart(job, s, e, True, state) for s, e in ranges]
        out += [TensorPart(job, s, e, False, state) for s, e in ranges]
    return out
