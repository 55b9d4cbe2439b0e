"""Which module, stack and layer each tensor of a model belongs to (see families.py for the
known families and resolve.py for the inference used for every other model type)."""

from .config_paths import get_path, holder_of
from .families import FAMILIES, ModuleSpec
from .layout import Architecture, LayerName, Module, Stack, split_layer_name
from .resolve import resolve_architecture

__all__ = [
    "FAMILIES",
    "Architecture",
    "LayerName",
    "Module",
    "ModuleSpec",
    "Stack",
    "get_path",
    "holder_of",
    "resolve_architecture",
    "split_layer_name",
]
