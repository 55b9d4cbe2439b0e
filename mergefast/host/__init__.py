"""The torch-free CPU engine: every method mergekit 0.1.5 registers (linear, SLERP, nuslerp,
multislerp, karcher, nearswap, Model Stock, SCE, RAM / RAM+, arcee_fusion, the task-arithmetic
family and passthrough copies) on the C kernels, without importing torch.

torch's import alone takes 0.8-1.3 s on the 2-vCPU dev VM, more than reading and writing the
whole 0.3B example family (0.45-0.63 s). This engine reads inputs into pooled byte buffers
(io/host_array.py), calls the same C entry points with the same scalars as the
kernels' torch binding (kernels/cpu.py), checks values with the library's exact NaN/inf scan
and hands the bytes to the same writer: the output files are byte-identical to the torch
engine's (tests/test_host_engine.py).

Hub inputs are read through their reader as for the torch engine: a tensor whose shard still
downloads is read as its bytes come, one whose shard is in is mapped (io/hub_headers.py), and
with --stream-inputs each is read in range requests (io/hub_stream.py).

execute.py runs it when `refusal(plan, options)` is None, in a process that has torch too
(execute.torch_free says why). It refuses the plan, and the torch engine runs, for another
method, a GPU, MERGEFAST_BACKEND and .bin / FP8 inputs (with --stream-inputs its staging reads
a job's Hub ranges at once, as the torch engine's). Single tensors the C calls do not take (`torch_jobs`: vocabulary
alignment, float64 or integer merges, more models than a method's kernels take (MAX_MODELS:
DELLA 16, the Gram methods 64, RAM 255; the kernel API runs the references past them),
rescale outside DARE and DELLA, a DELLA density +- epsilon outside (0, 1) (the torch engine
says so), a passthrough scale, and the cases the fused kernels leave to the torch references:
fewer than two models, empty tensors of the spherical methods) are merged by the torch
engine's `merge_job` within this engine, torch imported once before the merge; a plan whose
every tensor needs torch runs on the torch engine. A NaN or inf found while merging
imports torch for the message (checks.py), as the torch engine reports it; a multislerp or
karcher tensor whose Gram scalars are near a degenerate configuration imports it for the
reference (host/gram_methods.py), as the torch engine runs it there (kernels/spherical.py).
"""

from __future__ import annotations

import math
import os

from .. import native
from ..io.lora_reader import LoraReader
from ..io.reader import CheckpointReader
from ..methods.registry import TASK_ARITHMETIC_FAMILY

METHODS = (
    "linear",
    "slerp",
    "nearswap",
    "model_stock",
    "nuslerp",
    "multislerp",
    "karcher",
    "sce",
    "ram",
    "ramplus_tl",
    "arcee_fusion",
    "task_arithmetic",
    "ties",
    "dare_ties",
    "dare_linear",
    "breadcrumbs",
    "breadcrumbs_ties",
    "della",
    "della_linear",
    "passthrough",
)
MERGE_DTYPES = frozenset({"float16", "bfloat16", "float32"})  # inputs and outputs the engine merges
# The most models (gram_vectors for the Gram methods, else the weighted ones) each method's
# kernels take, as the kernel API counts them (kernels/della.py, slerp_family.py, spherical.py,
# ram.py); the other methods take any number.
MAX_MODELS = {
    "della": native.MASK_WORD_MODELS,
    "della_linear": native.MASK_WORD_MODELS,
    "model_stock": native.GRAM_MAX_INPUTS,
    "multislerp": native.GRAM_MAX_INPUTS,
    "karcher": native.GRAM_MAX_INPUTS,
    "ram": native.RAM_MAX_MODELS,
    "ramplus_tl": native.RAM_MAX_MODELS,
}


def torch_free_line() -> str:
    """The line `mergefast env` prints about this engine."""
    lib, error = native.library()
    where = "safetensors inputs, local or downloaded from the Hub, no GPU"
    if lib is None:
        return f"cpu without torch: unavailable ({error})"
    merged = ", ".join(m for m in METHODS if m != "passthrough")
    return f"cpu without torch: {merged} -> cpu-ext, passthrough copies ({where})"


def refusal(plan, options) -> str | None:
    """Why the torch-free engine cannot run `plan` with `options`, or None when it can (its
    jobs that need torch then go through torch one by one: `torch_jobs`)."""
    if options.gpu_flag or options.device not in (None, "cpu"):
        return "a GPU or --device merge"
    if os.environ.get("MERGEFAST_BACKEND"):
        return "MERGEFAST_BACKEND is set"
    if plan.spec.name not in METHODS:
        return f"{plan.spec.name} has no torch-free path"
    if native.library()[0] is None:
        return "the CPU kernels are not built"
    for ref, model in plan.models.items():
        if isinstance(model.reader, LoraReader):
            return f"{ref} applies a LoRA adapter"
        if not isinstance(model.reader, CheckpointReader) or model.reader.format != "safetensors":
            return f"{ref} is not a safetensors model"
    on_torch = torch_jobs(plan)
    if plan.jobs and len(on_torch) == len(plan.jobs):
        return f"every tensor needs torch ({on_torch[plan.jobs[0].name]})"
    return None


def torch_jobs(plan) -> dict[str, str]:
    """The plan's jobs that the C calls do not take, by name, each with why ("tensor X: ..."):
    the engine merges them with the torch engine's `merge_job` (host/merge.py), so that one
    vocabulary-aligned embedding or float64 tensor does not put every other tensor of the
    merge on the torch engine."""
    return {job.name: why for job in plan.jobs if (why := _job_refusal(plan.spec.name, job))}


def _job_refusal(method: str, job) -> str | None:
    """Why one job needs the torch engine, or None."""
    if job.vocab is not None:
        return f"tensor {job.name}: vocabulary alignment"
    if job.copy:
        return None
    if method == "passthrough":
        return f"tensor {job.name}: a passthrough scale or dtype change"
    dtypes = {job.dtype_name, *(s.info.dtype_name for s in job.sources)}
    if not dtypes <= MERGE_DTYPES:
        return f"tensor {job.name}: dtype {sorted(dtypes - MERGE_DTYPES)[0]}"
    weighted = len(job.sources) - (0 if method == "linear" else 1)
    if weighted < 1:
        return f"tensor {job.name}: no weighted model"
    models = gram_vectors(method, job) if method in GRAM_METHODS else weighted
    if models > MAX_MODELS.get(method, models):
        return f"tensor {job.name}: {models} models, more than {method}'s kernels take"
    if method in TASK_ARITHMETIC_FAMILY and job.base_index is None:
        return f"tensor {job.name}: no base model"
    if job.global_params.get("rescale") and not method.startswith(("dare", "della")):
        return f"tensor {job.name}: rescale outside DARE and DELLA"
    spherical = _spherical_refusal(method, job) if method in SPHERICAL else None
    if spherical:
        return f"tensor {job.name}: {spherical}"
    if method.startswith("della") and not all(
        _della_range(p) for i, p in enumerate(job.model_params) if i != job.base_index
    ):
        return f"tensor {job.name}: a DELLA density +- epsilon outside (0, 1)"  # the torch engine's error
    return None


SPHERICAL = ("nuslerp", "multislerp", "karcher")
GRAM_METHODS = ("model_stock", *SPHERICAL)


def model_weights(method: str, job) -> list[float]:
    """Each weighted model's `weight`, in model order: every model's for linear (a base model
    is an ordinary input there), every model's but the base's for the others."""
    return [float(p["weight"]) for i, p in enumerate(job.model_params) if method == "linear" or i != job.base_index]


def gram_vectors(method: str, job) -> int:
    """How many vectors the Gram methods' pass takes (host/gram_methods.py): every model but
    the base, every model for karcher."""
    return len(job.sources) - (method != "karcher" and job.base_index is not None)


def _spherical_refusal(method: str, job) -> str | None:
    """What of a nuslerp, multislerp or karcher job the fused kernels leave to the reference
    (kernels/slerp_family.py, kernels/spherical.py): its cases and its errors."""
    models = gram_vectors(method, job)
    if models != 2 if method == "nuslerp" else models < 2:
        return f"{method} of {models} models"
    if math.prod(job.shape) == 0:
        return "an empty tensor"
    return None


def _della_range(params: dict) -> bool:
    """DELLA's parameter rule (methods/task_arithmetic.py `check_della_range`): where 0 <
    density < 1, density +- epsilon stays inside (0, 1)."""
    d, e = params["density"], params["epsilon"]
    return not 0 < d < 1 or (d - e > 0 and d + e < 1)
