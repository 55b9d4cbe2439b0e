"""Parameter settings: validation, filters, gradients and precedence (mergekit 0.1.5 rules).

A setting is a scalar, a gradient (list of numbers), a `{filter, value}` conditional or a
list of conditionals. Filters are plain substrings (`*` or null match everything) and the
first match wins. Gradients are interpolated piecewise-linearly at the layer position t.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .errors import ConfigError
from .methods.registry import MERGEKIT_METHODS, METHODS, MethodSpec, Param
from .suggest import did_you_mean


def _is_conditional(value: Any) -> bool:
    return isinstance(value, dict)


def _check_value(value: Any, where: str) -> None:
    """A conditional's `value`: a scalar or a gradient, of finite numbers."""
    if isinstance(value, list):
        if not value or any(isinstance(v, (list, dict)) or v is None for v in value):
            raise ConfigError(f"{where}: a gradient must be a non-empty list of numbers")
    elif isinstance(value, dict) or value is None:
        raise ConfigError(f"{where}: expected a number, a gradient list or a list of {{filter, value}}")
    for number in value if isinstance(value, list) else [value]:
        # YAML's .nan/.inf, or float('nan') from the Python API: found before any file is read
        if isinstance(number, float) and not math.isfinite(number):
            raise ConfigError(f"{where}: must be a finite number, got {number}")


def check_setting(setting: Any, where: str) -> None:
    """Raise ConfigError unless `setting` has one of the four accepted shapes."""
    items = setting if isinstance(setting, list) else [setting]
    if isinstance(setting, list) and any(_is_conditional(v) for v in setting):
        if not all(_is_conditional(v) for v in setting):
            raise ConfigError(f"{where}: a list mixes {{filter, value}} entries and plain values")
    for item in items:
        if _is_conditional(item):
            unknown = set(item) - {"filter", "value"}
            if unknown or "value" not in item:
                raise ConfigError(
                    f"{where}: a conditional needs exactly `value` and an optional `filter`, got {sorted(item)}"
                )
            _check_value(item["value"], where)
        elif not isinstance(setting, list):
            _check_value(item, where)
    if isinstance(setting, list) and not any(_is_conditional(v) for v in setting):
        _check_value(setting, where)


def method_spec(name: str, source: str) -> MethodSpec:
    """The method spec for the config's `merge_method` `name`, or a ConfigError with a suggestion."""
    if name in METHODS:
        return METHODS[name]
    if name in MERGEKIT_METHODS:
        raise ConfigError(f"{source}: merge_method: '{name}' is not supported yet; supported: {', '.join(METHODS)}")
    raise ConfigError(f"{source}: merge_method: unknown method '{name}'{did_you_mean(name, MERGEKIT_METHODS)}")


def check_parameters(merge_method: str, blocks: Iterable[tuple[str, Mapping[str, Any], bool]], source: str) -> None:
    """Validate method name, parameter names and setting shapes before any IO.

    `blocks`: (YAML location, parameters dict, is a per-model block) for every parameters
    block of the config (`MergeConfig.parameter_blocks()`), so that this module needs no schema.
    """
    spec = method_spec(merge_method, source)
    for where, block, per_model in blocks:
        for name, setting in block.items():
            loc = f"{source}: {where}.{name}"
            param = spec.param(name)
            if param is None:
                raise ConfigError(
                    f"{loc}: unknown parameter '{name}' for {spec.name}"
                    f"{did_you_mean(name, spec.param_names)}; "
                    f"{spec.name} takes {', '.join(spec.param_names) or 'no parameters'}"
                )
            if per_model and param in spec.global_params:
                raise ConfigError(
                    f"{loc}: '{name}' applies to the whole merge, not to one model; "
                    "move it to the top-level or slice `parameters`"
                )
            check_setting(setting, loc)


def interpolate(gradient: Sequence[Any], t: float) -> Any:
    """Value of a gradient at position t in [0, 1] (piecewise-linear; index if non-numeric)."""
    k = len(gradient)
    pos = t * (k - 1)
    i0 = min(k - 1, int(math.floor(pos)))
    if not all(isinstance(g, (int, float)) and not isinstance(g, bool) for g in gradient):
        return gradient[i0]
    i1 = min(k - 1, i0 + 1)
    frac = pos - i0
    return (1 - frac) * gradient[i0] + frac * gradient[i1]


def _filter_matches(flt: Any, tensor_name: str) -> bool:
    return flt is None or flt == "*" or str(flt) in tensor_name


def evaluate_setting(setting: Any, tensor_name: str, t: float) -> Any:
    """The value of a setting for one tensor at gradient position t, or None if no filter matches."""
    if setting is None:
        return None
    if _is_conditional(setting):
        setting = [setting]
    if isinstance(setting, list) and setting and _is_conditional(setting[0]):
        for cond in setting:
            if _filter_matches(cond.get("filter"), tensor_name):
                return evaluate_setting(cond["value"], tensor_name, t)
        return None
    if isinstance(setting, list):
        return interpolate(setting, t)
    return setting


def coerce(param: Param, value: Any, where: str) -> Any:
    """Convert a resolved value to the parameter's type (YAML 1.1 reads `1e-3` as a string)."""
    if value is None:
        return None
    if param.kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, (int, float)) and value in (0, 1):
            return bool(value)
        raise ConfigError(f"{where}: '{param.name}' must be true or false, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: '{param.name}' must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ConfigError(f"{where}: '{param.name}' must be finite, got {value!r}")
    return number


def resolve(
    param: Param,
    levels: Sequence[Mapping[str, Any] | None],
    tensor_name: str,
    t: float,
    where: str,
    names: Sequence[str] | None = None,
) -> Any:
    """First non-None value over precedence `levels` (highest first), else the default.
    `names`: the YAML place of each level, named in a bad value's error."""
    for k, block in enumerate(levels):
        if block and param.name in block:
            value = evaluate_setting(block[param.name], tensor_name, t)
            if value is not None:
                return coerce(param, value, f"{where}, from {names[k]}" if names else where)
    if param.required:
        raise ConfigError(f"{where}: missing required parameter '{param.name}'")
    return param.default
