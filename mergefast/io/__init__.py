"""Model IO: lazy checkpoint reading, streaming safetensors writing, model references."""

from .hub import ModelRef, parse_model_ref, resolve_model
from .reader import CheckpointReader, MissingTensorError, TensorInfo
from .writer import OutputTensor, ShardedWriter, parse_size, plan_shards

__all__ = [
    "CheckpointReader",
    "MissingTensorError",
    "ModelRef",
    "OutputTensor",
    "ShardedWriter",
    "TensorInfo",
    "parse_model_ref",
    "parse_size",
    "plan_shards",
    "resolve_model",
]
