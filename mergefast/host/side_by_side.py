"""Two merges at a time on the torch-free engine, each on half the OpenMP team.

A merge of a small tensor keeps its team busy only part of the time: between its parallel
loops run the serial steps of the selection (the histogram's sums, the thresholds, the
records' scan), the Python around its C calls and the unmapping of its inputs. On the 0.3B
family (tensors of 1-3 M elements), 2-vCPU AMD EPYC VM, TIES's 1024 x 1024 jobs took 4.6 ms
each on two threads inside the pipeline against 1.85 ms alone with warm inputs, and the two
threads of the team were on a core ~55% of the time. Two merge threads with one kernel thread
each fill those gaps with the other job's loops. Whole merges, alternated runs (5-8 each,
medians), against one merge thread: TIES 0.91x, breadcrumbs_ties 0.81-0.92x, SCE 0.88-0.94x,
dare_ties 0.94-0.95x, DELLA 0.95-0.97x, arcee_fusion 0.77-0.80x, RAM+ 0.94-0.95x; the same
bytes. The other methods make a few passes of a few operations per element with no serial
selection step, and gained nothing measurable (Model Stock 1.00-1.02x, nuslerp 0.96-1.02x,
multislerp and karcher 0.96-0.98x, SLERP, linear and RAM 1.02-1.03x): one merge thread.

A job runs alone, on the whole team, where its order or size asks for it (`runs_alone`).
"""

from __future__ import annotations

import math

from ..methods.registry import TASK_ARITHMETIC_FAMILY
from ..plan import MergePlan, TensorJob
from .parts import TensorPart

# Tensors of at least this many elements merge alone on the whole team: the two-thread
# kernels run them at 1.6-1.7x the one-thread speed (TIES, DELLA, dare_ties on 32000 x 1024
# bf16, base + 3, 2-vCPU AMD EPYC VM), and side by side with a small job they would leave
# one core idle once the small job ends.
ALONE_MIN_ELEMENTS = 1 << 23
# Methods with serial selection steps besides the sparsifying task-arithmetic family (see the module)
SELECTING = frozenset({"sce", "arcee_fusion", "ramplus_tl"})


def mergers(plan: MergePlan, threads: int) -> int:
    """Merge threads for the plan on a team of `threads`: two for a method with serial
    selection steps (an exact top-k, ranks, quantiles or counts) on a team of two or more."""
    name = plan.spec.name
    selects = name in SELECTING or TASK_ARITHMETIC_FAMILY.get(name, ("none",))[0] != "none"
    return 2 if threads >= 2 and selects else 1


def runs_alone(job: TensorJob | TensorPart, on_torch: frozenset[str]) -> bool:
    """Whether a job merges alone on the whole team: a part (a tensor's parts add to its
    statistic in order), a tensor merged with torch (torch's own threads) or a large one."""
    if isinstance(job, TensorPart) or job.name in on_torch:
        return True
    return math.prod(job.shape) >= ALONE_MIN_ELEMENTS
