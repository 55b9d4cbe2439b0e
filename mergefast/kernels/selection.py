"""How the fused kernels find each model's magnitude threshold: `SelectionOptions`.

Every choice gives the same, exact selection (the reference's kept set, ties lowest flat
index first) and so bit-identical merges; the options only pick the way there, for
benchmarks and tests. `kernels.task_arithmetic(..., selection=)` and `kernels.ties(...,
selection=)` take them and pass them down to the backend (`kernels/cpu.py` and
`kernels/triton/select/`); the defaults are what production runs. The schemes themselves are
described in `csrc/cpu/select/README.md` and `mergefast/kernels/triton/select/__init__.py`.
"""

from __future__ import annotations

from dataclasses import dataclass

TWO_PASS_SCHEMES = ("window", "histogram")
CANDIDATE_SCHEMES = ("histogram", "topk")


@dataclass(frozen=True)
class SelectionOptions:
    """Options of the magnitude selection of task arithmetic / TIES and of breadcrumbs' cuts
    (whose one read is the CPU's only: the GPU runs its two passes).

    Attributes:
        one_read: try the one-read scheme first (each element read once; the two passes run
            when it cannot decide every element). False: always the two passes. CPU and GPU.
        one_read_min: the smallest tensor (elements) that tries the one-read scheme; None:
            the backend's own (2^20 on the CPU and on a GPU, 2^12 under TRITON_INTERPRET=1,
            where the second read of smaller tensors hits the cache). CPU and GPU.
        two_pass: how the two passes' selection finds a threshold on the GPU: "window" (the
            sampled window, then the histogram passes for the models it misses) or
            "histogram" (the histogram passes only). The CPU always runs "window".
        candidates: how a GPU model whose threshold is one of its window's candidates finds
            it: "histogram" (a radix select over the candidate slots, on the device) or
            "topk" (torch.topk per model).
        one_read_block: elements per program of the GPU's one-read pass and fix-up (the
            interpreter uses its own small block, utils.INTERPRET_BLOCK).
        hist_programs_per_sm: programs per SM of the GPU's histogram passes (a persistent
            grid, each program looping over blocks).
    """

    one_read: bool = True
    one_read_min: int | None = None
    two_pass: str = "window"
    candidates: str = "histogram"
    # GPU sizes, from the sm_90 cubins (cuobjdump, Triton 3.9): the one-read pass with 3 bf16
    # models and 8 warps takes 173 registers a thread at 2048 elements (one program per SM),
    # 97 at 1024 (two) and 62 at 512 (four); the histogram passes 74-80 with 3 models, so 3
    # programs of 8 warps fit an SM. `python benchmarks/bench_kernels.py` sweeps both on a GPU.
    one_read_block: int = 1024
    hist_programs_per_sm: int = 3

    def __post_init__(self):
        if self.two_pass not in TWO_PASS_SCHEMES:
            raise ValueError(f"two_pass must be one of {TWO_PASS_SCHEMES}, got {self.two_pass!r}")
        if self.candidates not in CANDIDATE_SCHEMES:
            raise ValueError(f"candidates must be one of {CANDIDATE_SCHEMES}, got {self.candidates!r}")
        if self.one_read_min is not None and self.one_read_min < 1:
            raise ValueError(f"one_read_min must be None or >= 1, got {self.one_read_min}")
        if self.one_read_block < 16 or self.one_read_block & (self.one_read_block - 1):
            raise ValueError(f"one_read_block must be a power of two >= 16, got {self.one_read_block}")
        if self.hist_programs_per_sm < 1:
            raise ValueError(f"hist_programs_per_sm must be >= 1, got {self.hist_programs_per_sm}")


DEFAULT = SelectionOptions()
