"""Config entries keyed by layer, or whose values are layers, in a sliced module's output config.

Two shapes besides the per-layer lists and layer-index lists of `rewrite.py`:

- `per_layer_config` (transformers' heterogeneous configs: Gemma 4, Step 3.7, ...): a sparse
  dict from layer index to that layer's overrides of the global config (Gemma 4's full-attention
  layers' `head_dim`). Output layer k takes its source layer's overrides, under key k.
- `LAYER_POINTER_LISTS` (`kv_source_layers`: Mistral Large 4, Kolibri): per-layer lists whose
  entries are layer indices of the same stack (the layer whose keys and values a layer reads).
  An output layer that reads its own keeps pointing at itself; one that reads another layer's
  points at the latest earlier output layer made from that same source layer, and a stack
  without one is refused (transformers would refuse to load the output, or pair the layer with
  another layer's cache).
- `PER_LAYER_STRINGS` (Nemotron-H's `hybrid_override_pattern`, "M*-": one character per layer,
  Mamba, attention or MLP; GLM-5's `index_topk_pattern`, "FSSF"): rebuilt from each output
  layer's source character.
- `ONE_BASED_INDEX_LISTS` (Kimi Linear's `linear_attn_config.full_attn_layers` / `kda_layers`):
  lists of layer numbers counted from 1, re-indexed as the other index lists are (rewrite.py).
"""

from __future__ import annotations

from ..errors import ConfigError
from .config_paths import get_path
from .layout import LayerSource

PER_LAYER_DICTS = ("per_layer_config",)
LAYER_POINTER_LISTS = ("kv_source_layers",)
PER_LAYER_STRINGS = ("hybrid_override_pattern", "index_topk_pattern")
# model type -> paths (from the config's root) of its lists of layer numbers counted from 1
ONE_BASED_INDEX_LISTS = {"kimi_linear": ("linear_attn_config.full_attn_layers", "linear_attn_config.kda_layers")}


def source_entry(path: str, source: LayerSource, kind: type = list):
    """The source layer's entry of the per-layer list (or, with `kind` str, the per-layer
    pattern string) at `path` in its model's config; a ConfigError naming that config where it
    has none as long as its stack."""
    values = get_path(source.config, path)
    count = source.module.num_layers
    if not isinstance(values, kind) or len(values) != count or count == 0:
        shape, unit = ("list", "entry") if kind is list else ("pattern", "character")
        raise ConfigError(
            f"{source.where}: {path} is a per-layer {shape} of the output (the donor's config has "
            f"one), but this source has no {count}-{unit} {path} to take layer {source.layer}'s "
            "entry from; make the sources' config.json files agree"
        )
    return values[source.layer]


def rebuilt_pattern(path: str, layers: list[LayerSource]) -> str:
    """The output's per-layer string at `path`: each output layer's source character."""
    return "".join(source_entry(path, source, str) for source in layers)


def rebuilt_per_layer_dict(path: str, layers: list[LayerSource]) -> dict:
    """The output's `per_layer_config` at `path`: each output layer's source layer's entry."""
    out = {}
    for k, source in enumerate(layers):
        entry = _per_layer_dict(path, source).get(source.layer)
        if entry is not None:
            out[str(k)] = entry
    return out


def _per_layer_dict(path: str, source: LayerSource) -> dict[int, object]:
    """The source's per-layer dict at `path` by integer layer index (empty where it has none)."""
    value = get_path(source.config, path)
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(str(key).isdigit() for key in value):
        raise ConfigError(
            f"{source.where}: {path} is {value!r:.80}: not a mapping from layer index to overrides, "
            "so the sliced layers' entries cannot be rebuilt; fix that config.json"
        )
    return {int(key): entry for key, entry in value.items()}


def repointed(path: str, layers: list[LayerSource], module: str, where: str) -> list[int]:
    """The output's `kv_source_layers`-style list at `path`: each output layer's pointer moved
    to the output index of the layer it points at (see the module docstring)."""
    out = []
    for k, source in enumerate(layers):
        target = source_entry(path, source)
        if target == source.layer:
            out.append(k)
            continue
        earlier = [i for i in range(k) if layers[i].config is source.config and layers[i].layer == target]
        if not earlier:
            raise ConfigError(
                f"{where}: {path}: output layer {k} (source layer {source.layer}) of the {module} "
                f"module reads the keys and values of its source's layer {target}, which this slice "
                "stack does not place before it; keep that layer before it, or slice elsewhere"
            )
        out.append(earlier[-1])
    return out
