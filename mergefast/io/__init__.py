"""Model IO: lazy checkpoint reading, streaming safetensors writing, model references.

The names below load their module on first use (PEP 562), so that importing a torch-free
module of this package (the Hub metadata prefetch, io/hub_prefetch.py) does not import torch.
"""

from importlib import import_module

_HOMES = {
    "ModelRef": "hub",
    "parse_model_ref": "hub",
    "resolve_model": "hub",
    "CheckpointReader": "reader",
    "MissingTensorError": "reader",
    "TensorInfo": "reader",
    "OutputTensor": "writer",
    "ShardedWriter": "writer",
    "plan_shards": "writer",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str):
    """The public name `name`, imported from its module on first use."""
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{_HOMES[name]}", __name__), name)
