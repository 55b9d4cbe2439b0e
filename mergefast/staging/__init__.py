"""Moving job data between the input files, the math device and the writer.

A staging object serves the three pipeline stages (execute.py): `read(job)` in the reader
thread, `merge(job, staged, merge_fn)` in the merge thread, `write(pending, sink)` in the
writer thread.

- host.py: `HostStaging`, CPU merges: inputs read into pooled CPU buffers.
- cuda.py: `CudaStaging`, GPU merges through a bounded ring of pinned host buffers
  (pinned_ring.py) on two CUDA streams; every CUDA call it makes is in device_queue.py, so
  tests drive it on the CPU with a fake queue. Reads and H2D copies of job i+1, the merge of
  job i and the D2H copy and write of job i-1 overlap; inputs never go through
  `safe_open(device="cuda")`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..plan import MergePlan

if TYPE_CHECKING:
    from .host import HostStaging


def staging_for(plan: MergePlan, device: str, budget: int) -> HostStaging:
    """The staging strategy for a math device; `budget` is the pipeline's bytes in flight.
    (Imported here, not at the top: both import torch, which the torch-free engine skips.)"""
    import torch

    from .host import HostStaging

    if torch.device(device).type == "cuda":
        from .cuda import CudaStaging
        from .device_queue import CudaQueue

        return CudaStaging(plan, CudaQueue(device), budget)
    return HostStaging(plan, device)
