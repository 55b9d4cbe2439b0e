"""How a merge method is described: its parameters (`Param`), input rules and merge function
(`MethodSpec`), and what a merge may need besides tensors (`MergeContext`).

Parameter scopes follow mergekit 0.1.5: *global* parameters (one value per output tensor,
filters match the output tensor name) and *per-model* parameters (one value per input model,
filters match that model's input tensor name). `base_params` says whether per-model
parameters are also resolved for the base model (true where the base is an ordinary input).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

REQUIRED = object()

# Below this |sum of weights| a normalised linear merge has no sensible result (mergekit
# 0.1.5 returns inf/NaN there); the same threshold guards task arithmetic's divisor. Here,
# not in methods/linear.py, because the plan checks it without torch (plan_checks.py).
ZERO_WEIGHT_SUM = 1e-8

# The methods whose NaN/inf input always reaches the output (tests/test_nonfinite_reaches_output.py):
# a finite output proves their inputs finite, and the executors skip scanning them.
NONFINITE_REACHES_OUTPUT = frozenset({"linear", "slerp", "nearswap", "sce"})


def split_base(tensors, base_index, model_params):
    """Split a tensor group into the base and the other inputs with their parameters."""
    others = [i for i in range(len(tensors)) if i != base_index]
    return tensors[base_index], [tensors[i] for i in others], [model_params[i] for i in others]


def optional_base(tensors, base_index, model_params):
    """Like `split_base`, with base None when the group has no base."""
    if base_index is None:
        return None, list(tensors), list(model_params)
    return split_base(tensors, base_index, model_params)


@dataclass(frozen=True)
class Param:
    """One parameter of a method: its name, type ("float" or "bool") and default."""

    name: str
    kind: str = "float"
    default: Any = REQUIRED

    @property
    def required(self) -> bool:
        """True when the method has no default for this parameter."""
        return self.default is REQUIRED


@dataclass(frozen=True)
class MergeContext:
    """What a merge may need besides tensors and parameters: the random seed (from
    `--random-seed`, 0 when not given) and the output tensor's name (keys random masks)."""

    seed: int = 0
    tensor_name: str = ""


@dataclass(frozen=True)
class MethodSpec:
    """What a merge method needs and how to run it on one tensor group.

    `min_inputs`/`max_inputs` count every input of a tensor group, the base included;
    `min_non_base`/`max_non_base` count the inputs other than the base (for methods whose
    base is optional, e.g. nuslerp: exactly 2 non-base models, with or without a base).
    `merge(tensors, base_index, global_params, model_params, out_dtype, ctx)`.
    """

    name: str
    global_params: tuple[Param, ...]
    model_params: tuple[Param, ...]
    needs_base: bool
    base_params: bool
    min_inputs: int
    max_inputs: int | None
    merge: Callable[..., torch.Tensor]
    min_non_base: int = 0
    max_non_base: int | None = None

    def param(self, name: str) -> Param | None:
        """The parameter called `name`, or None."""
        for p in (*self.global_params, *self.model_params):
            if p.name == name:
                return p
        return None

    @property
    def param_names(self) -> list[str]:
        """Every parameter name this method accepts."""
        return [p.name for p in (*self.global_params, *self.model_params)]

    def input_error(self, n_inputs: int, has_base: bool) -> str | None:
        """Why a tensor group of `n_inputs` (with or without the base among them) cannot be
        merged by this method, or None when it can."""
        if self.needs_base and not has_base:
            return f"{self.name} needs a base_model among the inputs"
        if n_inputs < self.min_inputs or (self.max_inputs is not None and n_inputs > self.max_inputs):
            return (
                f"{self.name} takes {_count_text(self.min_inputs, self.max_inputs)} model(s) "
                f"including the base, got {n_inputs}"
            )
        others = n_inputs - (1 if has_base else 0)
        if others < self.min_non_base or (self.max_non_base is not None and others > self.max_non_base):
            return (
                f"{self.name} takes {_count_text(self.min_non_base, self.max_non_base)} model(s) "
                f"besides the base, got {others}"
            )
        return None


def _count_text(low: int, high: int | None) -> str:
    """'exactly 2', 'at least 3' or 'between 2 and 3'."""
    if high is None:
        return f"at least {low}"
    return f"exactly {low}" if low == high else f"between {low} and {high}"
