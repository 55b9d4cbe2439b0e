"""Backend selection for the kernel API: which of triton / cpu-ext / torch runs a call.

Per call, by the device of the inputs: CUDA tensors -> Triton, CPU tensors -> the C++ library
(kernels/cpu.py), anything else (float64 inputs, other devices, mixed devices, tensors that
need autograd) -> the torch reference.
`MERGEFAST_BACKEND` forces one (raising when it cannot run). An automatically chosen backend
that fails is recorded in `mergefast.kernels._broken` and the call falls back to the reference
with a one-time warning (`mergefast.kernels._warned`). Those two records live on the package,
not here, so that resetting them there (as the tests do) resets dispatch.
Importing this module neither initialises CUDA nor imports triton.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext

import torch

BACKENDS = ("triton", "cpu-ext", "torch")
# dtypes the fused kernels read and write; anything else (float64 included) uses the reference
_KERNEL_INPUTS = (torch.float32, torch.float16, torch.bfloat16)
_KERNEL_OUTPUTS = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_OUT_OF_MEMORY = (MemoryError, getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError))


def _package():
    """`mergefast.kernels`, which holds the run-time failure records `_broken` and `_warned`."""
    return sys.modules[__package__]


def _requested() -> str | None:
    """The backend forced by MERGEFAST_BACKEND, or None for automatic choice."""
    value = os.environ.get("MERGEFAST_BACKEND", "").strip().lower()
    if value in ("", "auto"):
        return None
    if value not in BACKENDS:
        raise ValueError(f"MERGEFAST_BACKEND must be one of {BACKENDS} or 'auto', got {value!r}")
    return value


def _triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "") == "1"


def _triton_missing() -> str | None:
    """Why Triton cannot be used (None when it can), without importing it."""
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    return _package()._broken.get("triton")


def _cpu_ext_missing() -> str | None:
    """Why the C++ CPU kernels cannot be used (None when they can)."""
    from . import cpu

    if cpu.ERROR is not None:
        return cpu.ERROR
    return _package()._broken.get("cpu-ext")


def backend(device: str | torch.device) -> str:
    """The backend that float32/float16/bfloat16 tensors on `device` use: "triton",
    "cpu-ext" or "torch" (float64 inputs always use the torch reference)."""
    device = torch.device(device)
    forced = _requested()
    if forced is not None:
        return forced
    if device.type == "cuda":
        return "torch" if _triton_missing() else "triton"
    if device.type == "cpu":
        return "torch" if _cpu_ext_missing() else "cpu-ext"
    return "torch"


# The YAML methods each backend runs on a fused kernel (kernels/fused.py picks the kernel per
# method; a method a backend lacks runs its torch reference there).
_FUSED_EVERYWHERE = (
    "linear",
    "task_arithmetic",
    "ties",
    "dare_ties",
    "dare_linear",
    "breadcrumbs",
    "breadcrumbs_ties",
    "della",
    "della_linear",
    "slerp",
    "nuslerp",
    "model_stock",
    "nearswap",
    "multislerp",
    "karcher",
    "ram",
    "ramplus_tl",
    "sce",
    "arcee_fusion",
)
KERNEL_METHODS = {"cpu-ext": _FUSED_EVERYWHERE, "triton": _FUSED_EVERYWHERE}


def describe_backends() -> list[str]:
    """Human-readable lines for `mergefast env`: which backend each method uses, and why."""
    lines = []
    forced = _requested()
    if forced is not None:
        lines.append(f"MERGEFAST_BACKEND={forced}: every op is forced to the {forced} backend")
    cpu_why = _cpu_ext_missing()
    from .. import native
    from . import cpu

    ops = ", ".join(KERNEL_METHODS["cpu-ext"])
    if cpu_why is None:
        paths = native.simd_paths(native.require())
        lines.append(f"cpu:  {ops} -> cpu-ext ({cpu.LIBRARY.name}, OpenMP, {cpu.threads()} threads, {paths})")
    else:
        fix = f". Fix: {cpu.FIX}" if cpu.ERROR is not None else ""
        lines.append(f"cpu:  {ops} -> torch (cpu-ext unavailable: {cpu_why}{fix})")
    tri_why = _triton_missing()
    ops = ", ".join(KERNEL_METHODS["triton"])
    if tri_why is None:
        lines.append(f"cuda: {ops} -> triton ({_triton_version()})")
    else:
        lines.append(f"cuda: {ops} -> torch ({tri_why})")
    lines.append(
        "any:  passthrough -> torch (a copy and one scale; no kernel needed); float64 inputs -> torch reference"
    )
    if _reference_only():
        lines.append(f"any:  {', '.join(_reference_only())} -> torch reference (no fused kernel)")
    return lines


def _reference_only() -> list[str]:
    """The mergekit methods that no backend runs on a fused kernel."""
    from ..methods.registry import MERGEKIT_METHODS

    fused = {m for methods in KERNEL_METHODS.values() for m in methods} | {"passthrough"}
    return [m for m in MERGEKIT_METHODS if m not in fused]


def missing_kernels(device: str | torch.device) -> str | None:
    """One line saying that merges on `device` run on the torch reference path because its
    fused kernels are unavailable, with the reason and the fix; None when they are there,
    when MERGEFAST_BACKEND picks the backend, and for devices other than the CPU."""
    device = torch.device(device)
    if device.type != "cpu" or _requested() is not None:
        return None
    why = _cpu_ext_missing()
    if why is None:
        return None
    from . import cpu

    fix = f" Fix: {cpu.FIX}." if cpu.ERROR is not None else ""
    return (
        f"this merge runs on the torch reference path (TIES ~50x slower): the C++ CPU "
        f"kernels are unavailable: {why}.{fix}"
    )


def warn_missing_kernels(device: str | torch.device) -> str | None:
    """Log missing_kernels(device) as a warning of the "mergefast" logger (the CLI prints it
    as one `mergefast: warning:` line) and return it; nothing when the kernels are there."""
    line = missing_kernels(device)
    if line is not None:
        logging.getLogger("mergefast").warning(line)
    return line


def _triton_version() -> str:
    try:
        from importlib.metadata import version

        return f"triton {version('triton')}"
    except Exception:  # pragma: no cover - metadata missing
        return "triton"


def _choose(inputs: Sequence[torch.Tensor], out_dtype: torch.dtype) -> str:
    """The backend for one call: "torch", "cpu-ext" or "triton" (raises when forced and
    impossible)."""
    device = inputs[0].device
    reference_only = (
        any(t.dtype not in _KERNEL_INPUTS for t in inputs)
        or out_dtype not in _KERNEL_OUTPUTS
        or any(t.device != device for t in inputs)
        or _needs_autograd(inputs)
    )
    forced = _requested()
    if forced == "torch" or (reference_only and forced is None):
        return "torch"
    if forced == "cpu-ext":
        return _forced_cpu_ext(device, reference_only)
    if forced == "triton":
        return _forced_triton(device, reference_only)
    return backend(device)


def _needs_autograd(inputs: Sequence[torch.Tensor]) -> bool:
    """Whether the result must carry a graph: the kernels compute without one, the reference
    with torch ops (gradients reach the tensors, not the float weights)."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in inputs)


def _forced_cpu_ext(device: torch.device, reference_only: bool) -> str:
    """MERGEFAST_BACKEND=cpu-ext: "cpu-ext", or "torch" for reference-only inputs; raises when
    the tensors are not on the CPU or the C++ kernels are unusable."""
    if device.type != "cpu":
        raise RuntimeError(f"MERGEFAST_BACKEND=cpu-ext but the tensors are on {device}")
    if reference_only:
        return "torch"  # float64, autograd and the like are the reference's by contract
    why = _cpu_ext_missing()
    if why is not None:
        raise RuntimeError(f"MERGEFAST_BACKEND=cpu-ext but the C++ CPU kernels are unusable: {why}")
    return "cpu-ext"


def _forced_triton(device: torch.device, reference_only: bool) -> str:
    """MERGEFAST_BACKEND=triton: "triton", or "torch" for reference-only inputs; raises when
    the tensors are not on CUDA (or CPU under TRITON_INTERPRET=1) or triton is unusable."""
    if device.type != "cuda" and not (device.type == "cpu" and _triton_interpret()):
        raise RuntimeError(
            f"MERGEFAST_BACKEND=triton but the tensors are on {device} (CPU tensors need TRITON_INTERPRET=1)"
        )
    if reference_only:
        return "torch"
    why = _triton_missing()
    if why is not None:
        raise RuntimeError(f"MERGEFAST_BACKEND=triton but triton is unusable: {why}")
    return "triton"


def _impl(name: str):
    """The module implementing backend `name`'s ops: `kernels.cpu` or `kernels.triton.ops`."""
    if name == "cpu-ext":
        from . import cpu

        return cpu
    from .triton import ops

    return ops


def device_guard(device: torch.device) -> AbstractContextManager:
    """Make `device` the current CUDA device for a kernel launch (nothing for other devices).

    Triton launches on the calling thread's current device, not on the tensors' one, and the
    merge thread starts on cuda:0: with `--device cuda:1` its kernels would get pointers into
    another GPU's memory."""
    return torch.cuda.device(device) if device.type == "cuda" else nullcontext()


def _dispatch(
    inputs: Sequence[torch.Tensor],
    out_dtype: torch.dtype,
    reference: Callable[[], torch.Tensor],
    run: Callable[[object], torch.Tensor],
):
    """`run(impl)` on the chosen backend, or `reference()`; an automatically chosen backend
    that raises is marked broken and the call (and later ones) use the reference."""
    name = _choose(inputs, out_dtype)
    if name == "torch":
        return reference()
    try:
        with device_guard(inputs[0].device):
            return run(_impl(name))
    except _OUT_OF_MEMORY:
        raise  # not a broken backend, and the reference needs more memory still
    except Exception as exc:
        if _requested() is not None:
            raise
        package = _package()
        package._broken[name] = f"{type(exc).__name__}: {exc}"
        if name not in package._warned:
            package._warned.add(name)
            warnings.warn(
                f"mergefast: the {name} kernels failed ({exc}); using the torch reference from now on",
                RuntimeWarning,
                stacklevel=3,
            )
        return reference()
