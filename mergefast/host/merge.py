"""One job of the torch-free engine: the method's C calls (host/ops.py,
host/task_arithmetic.py), then the value checks of execute.merge_job.

Bit-exact with the torch engine because both call the same entry points with the same
scalars: the weights' float32 sum is sequential here (methods/scalars.py `f32_sum`), as the
references' (methods/numerics.py `ordered_sum`); the counts, DARE's stream keys and L1 scales
come from the same torch-free functions. The jobs the C calls do not take go through the
torch engine's own `merge_job` (host.torch_jobs).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from .. import native
from ..dtypes import ITEMSIZE
from ..errors import ConfigError, MergeError
from ..io.host_array import HostArray, host_array, import_torch
from ..methods.registry import TASK_ARITHMETIC_FAMILY
from ..methods.spec import NONFINITE_REACHES_OUTPUT
from ..plan import MergePlan, TensorJob
from . import gram_methods, ops, reducing
from .parts import TensorPart
from .staging import anonymous_bytes
from .task_arithmetic import task_arithmetic

# method -> its C calls into `out`, which return whether they proved every input finite
CALLS = {
    "linear": ops.linear,
    "slerp": reducing.slerp,
    "nearswap": ops.nearswap,
    "sce": ops.sce,
    "ram": ops.ram,
    "ramplus_tl": reducing.ram_plus,
    "arcee_fusion": ops.arcee_fusion,
}
CALLS.update((name, gram_methods.merge_whole) for name in gram_methods.GRAM_REDUCTIONS)
CALLS.update((name, task_arithmetic) for name in TASK_ARITHMETIC_FAMILY)


def merge_host_job(
    plan: MergePlan,
    job: TensorJob | TensorPart,
    inputs: list[HostArray],
    take: Callable[[int], memoryview],
    seed: int | None = None,
    on_torch: frozenset[str] = frozenset(),
    torch_merge: Callable | None = None,
):
    """Merge (or, for a copy job, check) one job's inputs, or a part's (host/parts.py); the
    output lives in `take(nbytes)`. `seed` is `--random-seed` (None means 0): with the
    output name it keys DARE's masks. The jobs named in `on_torch` (host.torch_jobs, never
    cut into parts) are merged by `torch_merge` (the torch engine's execute.merge_job)."""
    if isinstance(job, TensorPart):
        return _merge_part(plan, job, inputs, take, seed)
    if job.name in on_torch:
        return _merged_on_torch(torch_merge, plan, job, inputs, take, seed)
    if job.copy:
        if not _finite(inputs[0]):
            _raise_nonfinite(job, inputs[0], ())
        return inputs[0]
    out, proven = _merged(plan, job, inputs, take, seed)
    output_finite = _output_finite(out)
    if not output_finite or plan.spec.name not in NONFINITE_REACHES_OUTPUT:
        _warn_nonfinite_inputs(job, inputs, proven)
    if not output_finite:
        _raise_nonfinite(job, out, inputs)
    return out


def _merged(plan: MergePlan, job: TensorJob, inputs: list[HostArray], take: Callable, seed: int | None):
    """(output, whether the C call proved every input finite) of a job that is no copy."""
    _check_inputs(plan, job, inputs)
    out = host_array(take(job.out_bytes), job.dtype_name, job.shape)
    ops.library().mf_output_check()  # from here on: this job's C calls (`_output_finite`)
    return out, CALLS[plan.spec.name](plan, job, inputs, out, 0 if seed is None else int(seed))


def _merged_on_torch(
    merge_job: Callable, plan: MergePlan, job: TensorJob, inputs: list[HostArray], take: Callable, seed: int | None
):
    """A job the C calls do not take: the torch engine's `merge_job`, with its checks, on torch
    views of the inputs (so the torch engine's bytes), copied into `take(nbytes)`."""
    result = merge_job(plan, job, [array.to_torch() for array in inputs], seed)
    out = host_array(take(job.out_bytes), job.dtype_name, job.shape)
    out.to_torch().copy_(result)
    return out


def _check_inputs(plan: MergePlan, job: TensorJob, inputs: list[HostArray]) -> None:
    """The method's ConfigError for a job whose inputs it cannot merge (their count, a base)."""
    problem = plan.spec.input_error(len(inputs), job.base_index is not None)
    if problem:
        raise ConfigError(f"tensor {job.name}: {problem}")


def _merge_part(plan: MergePlan, part: TensorPart, inputs: list[HostArray], take: Callable, seed: int | None):
    """One part of a tensor, checked as its tensor is: where the part holds NaN or inf that
    the whole tensor's checks would report, the whole tensor is read and merged again, once,
    for its warnings or its error (a part's messages would count the part's values only). A
    reducing part adds to its tensor's statistic (host/reducing.py) and has no output (None)."""
    job, reduction = part.as_job(), reducing.REDUCTIONS.get(plan.spec.name)
    if part.reduces:
        _check_inputs(plan, job, inputs)
        reduction.add(job, inputs, part.state.setdefault("stat", reduction.zero(job)))
        return None
    if job.copy:
        out, proven = inputs[0], False
    elif "stat" in part.state:
        out, proven = _apply_part(plan, part, inputs, take, seed)
    else:
        out, proven = _merged(plan, job, inputs, take, seed)
    output_finite = _finite(out) if job.copy else _output_finite(out)
    inputs_warned = not job.copy and plan.spec.name not in NONFINITE_REACHES_OUTPUT and not proven
    if not output_finite or (inputs_warned and not all(map(_finite, inputs))):
        if part.first_to_check():
            _merge_whole(plan, part, seed)  # warns, or raises
        if not output_finite:  # the whole tensor's output was finite: a part of it cannot be not
            raise MergeError(f"tensor {job.name}: the output has NaN or inf; refusing to write a broken model")
    return out


def _apply_part(plan: MergePlan, part: TensorPart, inputs: list[HostArray], take: Callable, seed: int | None):
    """(output, proven) of a reducing method's part: its elementwise pass with its tensor's
    statistic; where the statistic leaves the merge to the reference (SLERP's non-finite
    dots, multislerp's and karcher's degenerate configurations), the part's slice of the whole
    tensor's merge (made once, by its first part)."""
    job = part.as_job()
    out = host_array(take(job.out_bytes), job.dtype_name, job.shape)
    ops.library().mf_output_check()  # from here on: this part's C calls (`_output_finite`)
    proven = reducing.REDUCTIONS[plan.spec.name].apply(job, inputs, out, part.state["stat"])
    if proven is not None:
        return out, proven
    if "whole" not in part.state:
        part.state["whole"] = _merge_whole(plan, part, seed)
    size = ITEMSIZE[job.dtype_name]
    out.data[:] = part.state["whole"].data[part.start * size : part.stop * size]
    if part.ends_tensor:
        del part.state["whole"]
    return out, False


def _merge_whole(plan: MergePlan, part: TensorPart, seed: int | None) -> HostArray:
    """The part's whole tensor read again and merged, with its checks (warnings, errors)."""
    job = part.job
    inputs = [plan.models[s.model].reader.read_into(s.tensor, anonymous_bytes(s.info.nbytes)) for s in job.sources]
    return merge_host_job(plan, job, inputs, anonymous_bytes, seed)


def _output_finite(out: HostArray) -> bool:
    """No NaN or inf in `out`, which the job's C calls have just written: their stores' own
    check (csrc/cpu/common.h OutputWatch) when it found none, else `_finite`'s pass (a value it
    found may have been written over since, and a job whose calls wrote nothing is scanned)."""
    return ops.library().mf_output_check() == 0 or _finite(out)


def _finite(array: HostArray) -> bool:
    """No NaN or inf in `array` (integer arrays always: copy jobs of integer buffers)."""
    if array.dtype not in native.DTYPE_CODES or array.numel() == 0:
        return True
    return native.all_finite(array.data_ptr(), array.dtype, array.numel(), ops.threads())


def _warn_nonfinite_inputs(job: TensorJob, inputs: list[HostArray], proven: bool) -> None:
    """checks.warn_nonfinite_inputs for the inputs the kernel did not prove finite: torch
    is imported only when one of them holds NaN or inf, for the message."""
    if proven:
        return
    bad = [i for i, x in enumerate(inputs) if not _finite(x)]
    if bad:
        import_torch()  # before mergefast.checks imports it: one thread at a time
        from ..checks import warn_nonfinite_inputs

        warn_nonfinite_inputs(job.name, [job.sources[i] for i in bad], [inputs[i].to_torch() for i in bad])


def _raise_nonfinite(job: TensorJob, out: HostArray, inputs: Sequence[HostArray]) -> None:
    """checks.check_output_finite's MergeError for a non-finite output (imports torch)."""
    import_torch()  # before mergefast.checks imports it: one thread at a time
    from ..checks import check_output_finite

    check_output_finite(job.name, out.to_torch(), job.sources, [x.to_torch() for x in inputs])
    raise MergeError(f"tensor {job.name}: the output has NaN or inf; refusing to write a broken model")
