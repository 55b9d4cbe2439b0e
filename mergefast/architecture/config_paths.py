"""Dotted paths into a config.json dict (`vision_config.depth`), and the layer-count checks
that keep planning on the tensors' numbers, never config.json's."""

from __future__ import annotations

from typing import Any

from ..errors import ModelError

# Where a single-stack model's layer count lives when its family is unknown.
TEXT_COUNT_PATHS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers", "text_config.num_hidden_layers")


def join_path(parent: str, key: str) -> str:
    """The dotted path of `key` in the config dict at `parent` ("" for the top level)."""
    return f"{parent}.{key}" if parent else key


def get_path(config: Any, path: str) -> Any:
    """The value at dotted `path` in `config`, or None where any step is missing or no dict."""
    for key in path.split("."):
        if not isinstance(config, dict):
            return None
        config = config.get(key)
    return config


def holder_of(config: Any, path: str) -> tuple[dict, str] | None:
    """(the dict holding the last key, the key) of `path`, or None when the path is absent."""
    *parents, key = path.split(".")
    holder = get_path(config, ".".join(parents)) if parents else config
    if isinstance(holder, dict) and key in holder:
        return holder, key
    return None


def present_counts(config: dict, paths, tensors: int, stack: str | None, where: str) -> tuple[str, ...]:
    """The paths of `paths` that config.json sets; each must equal the `tensors` layer count
    (ModelError naming both numbers otherwise, before any tensor is read)."""
    found = []
    for path in paths:
        value = get_path(config, path)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ModelError(f"{where}: {path} is {value!r}, not a layer count; fix config.json")
        if value != tensors:
            what = f"{tensors} layers of {stack}N" if stack else "no layer stack"
            raise ModelError(
                f"{where}: {path} is {value} but the weights have {what}; config.json and the "
                "weights disagree: fix config.json or re-download the model"
            )
        found.append(path)
    return tuple(found)
