"""Config keys that give layers a kind by position: a rule over the layer index, not a list.

transformers reads these keys as rules: `first_k_dense_replace: 3` makes layers 0-2 dense and
every later layer a mixture of experts. The output config.json keeps the donor's keys, so in a
sliced model the rule is read at each *output* index and over the *output* layer count: it can
give a layer another kind than its source layer had (a MoE layer's tensors under a dense layer's
config: a checkpoint that does not load, or loads with random weights). `check_layer_kinds`
evaluates each rule for every output layer and for its source layer in the source's own config,
and refuses the slice stack where any kind differs; a stack that keeps every layer's kind
(DeepSeek's dense layers 0-2 kept at 0-2) merges.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..errors import ConfigError
from .config_paths import get_path


@dataclass(frozen=True)
class PositionalRule:
    """`keys` (any of them in a config dict makes the rule apply; transformers' `defaults` for
    the others), `kind(values, layer, layer count, holder) -> bool`, and the two kinds' names."""

    keys: tuple[str, ...]
    defaults: tuple[int, ...]
    kind: Callable[[tuple[int, ...], int, int, dict], bool]
    names: tuple[str, str]
    # keys that are divisors (steps, periods): they must be positive
    divisors: tuple[str, ...] = ()
    # whether the rule reads the holder (config dict) for the module of this name (default: any)
    applies: Callable[[dict, str], bool] = lambda holder, module: True


def _ernie_moe(v, i, n, _):
    start, end, interval = v
    return start <= i <= (n - 1 if end == -1 else end) and (i + 1) % interval == 0


def _qwen_sliding(v, i, n, h):
    switched = h.get("use_sliding_window") is True or h.get("model_type") == "dots1"  # dots1 has no switch
    sliding = switched and h.get("sliding_window") is not None
    return sliding and not isinstance(h.get("layer_types"), list) and i >= v[0]


def _listed(holder: dict, *keys: str) -> bool:
    """Whether the config lists the layers' kinds under one of `keys` (the rule is not read)."""
    return any(holder.get(key) is not None for key in keys)


def _switch_sparse(v, i, n, _):
    # v: (sparse layers, saved step or -1). transformers derives the step from the layer count
    # when it loads the config, but a step that config.json holds (transformers saves it) wins
    step = v[1] if v[1] >= 0 else n // v[0] if v[0] > 0 else n
    return (i % step == 1 or step == 1) if step > 0 else False


def _module_is(name: str, switch: bool = False) -> Callable[[dict, str], bool]:
    """A rule's `applies` for the `encoder` or `decoder` module (any but `encoder` for
    `decoder`), of Switch Transformers (`switch`) or of any other family."""

    def applies(holder: dict, module: str) -> bool:
        if (holder.get("model_type") == "switch_transformers") != switch:
            return False
        return module == "encoder" if name == "encoder" else module != "encoder"

    return applies


RULES = (
    # DeepSeek V2/V3, GLM-4 MoE, dots1, Kimi: the first k layers dense
    PositionalRule(("first_k_dense_replace",), (0,), lambda v, i, n, h: i >= v[0], ("dense", "MoE")),
    # DeepSeek's own modelling code: every freq-th layer (after the dense ones) MoE
    PositionalRule(("moe_layer_freq",), (1,), lambda v, i, n, h: i % v[0] == 0, ("dense", "MoE"), ("moe_layer_freq",)),
    # Qwen2/3 MoE, NLLB-MoE's decoder: layer i MoE when (i + 1) % step == 0
    PositionalRule(
        ("decoder_sparse_step",),
        (1,),
        lambda v, i, n, h: (i + 1) % v[0] == 0,
        ("dense", "MoE"),
        ("decoder_sparse_step",),
        _module_is("decoder"),
    ),
    # Llama 4: the same, where config.json has no `moe_layers` list (an index list, rewritten)
    PositionalRule(
        ("interleave_moe_layer_step",),
        (1,),
        lambda v, i, n, h: isinstance(h.get("moe_layers"), list) or (i + 1) % v[0] == 0,
        ("dense", "MoE"),
        ("interleave_moe_layer_step",),
    ),
    # NLLB-MoE's encoder: the same rule (step 0: every layer dense)
    PositionalRule(
        ("encoder_sparse_step",),
        (4,),
        lambda v, i, n, h: v[0] > 0 and (i + 1) % v[0] == 0,
        ("dense", "MoE"),
        (),
        _module_is("encoder"),
    ),
    # Switch Transformers: step = layers // sparse layers (or the saved step), layer i MoE when
    # i % step == 1
    *(
        PositionalRule(
            (key, f"{part}_sparse_step"), (3, -1), _switch_sparse, ("dense", "MoE"), (), _module_is(part, True)
        )
        for part, key in (("encoder", "num_sparse_encoder_layers"), ("decoder", "num_sparse_decoder_layers"))
    ),
    # AFMoE, LFM2-MoE: the first n layers dense
    PositionalRule(("num_dense_layers",), (0,), lambda v, i, n, h: i >= v[0], ("dense", "MoE")),
    # ERNIE 4.5 MoE: MoE from start to end (-1: the last layer), every interval-th layer
    PositionalRule(
        ("moe_layer_start_index", "moe_layer_end_index", "moe_layer_interval"),
        (1, -1, 1),
        _ernie_moe,
        ("dense", "MoE"),
        ("moe_layer_interval",),
    ),
    # Jamba: attention where i % period == offset, Mamba elsewhere; experts likewise (Zamba's
    # keys of the same names count from layer 3: its stacks are refused: layer_blocks.py)
    PositionalRule(
        ("attn_layer_period", "attn_layer_offset"),
        (8, 4),
        lambda v, i, n, h: i % v[0] == v[1],
        ("Mamba", "attention"),
        ("attn_layer_period",),
        lambda holder, module: holder.get("model_type") != "zamba",
    ),
    PositionalRule(
        ("expert_layer_period", "expert_layer_offset"),
        (2, 1),
        lambda v, i, n, h: i % v[0] == v[1],
        ("dense", "MoE"),
        ("expert_layer_period",),
    ),
    # Qwen2/3 configs without layer_types: sliding attention from max_window_layers on, where
    # use_sliding_window is set (Qwen2.5's configs leave it off: every layer full attention);
    # dots1 slides there whenever it has a sliding_window
    PositionalRule(("max_window_layers",), (28,), _qwen_sliding, ("full attention", "sliding attention")),
    # GLM-5 (GLM-MoE-DSA), Mistral Large 4: the sparse-attention indexer runs every freq-th layer
    # from the offset on ("shared" layers reuse the last one's mask), where config.json has no
    # `indexer_types` list (a per-layer list, rebuilt) or `index_topk_pattern` (a string, rebuilt)
    PositionalRule(
        ("index_topk_freq", "index_skip_topk_offset"),
        (1, 2),
        lambda v, i, n, h: _listed(h, "indexer_types", "index_topk_pattern") or max(i - v[1] + 1, 0) % v[0] == 0,
        ("shared indexer", "own indexer"),
        ("index_topk_freq",),
    ),
    # DeepSeek V4's Hub config: the first num_hash_layers layers route by token hash, where
    # config.json has no `mlp_layer_types` list (a per-layer list, rebuilt)
    PositionalRule(
        ("num_hash_layers",),
        (3,),
        lambda v, i, n, h: _listed(h, "mlp_layer_types") or i >= v[0],
        ("hash-routed MoE", "MoE"),
    ),
    # Gemma 3n / Gemma 4: the last s layers reuse earlier layers' keys and values
    PositionalRule(("num_kv_shared_layers",), (0,), lambda v, i, n, h: i >= n - v[0], ("own KV", "shared KV")),
)


def rule_values(rule: PositionalRule, holder: dict, where: str, path: str) -> tuple[int, ...] | None:
    """The rule's values in `holder` (defaults for absent or null keys), or None when the
    holder sets none of its keys; a value that is no integer is a ConfigError."""
    if all(holder.get(key) is None for key in rule.keys):
        return None
    values = []
    for key, default in zip(rule.keys, rule.defaults):
        value = holder.get(key)
        value = default if value is None else value
        bad = isinstance(value, bool) or not isinstance(value, int) or (key in rule.divisors and value <= 0)
        if bad:
            raise ConfigError(
                f"{where}: {path}{key} is {value!r}: not a layer rule transformers could apply "
                f"({'a positive' if key in rule.divisors else 'an'} integer); fix that config.json"
            )
        values.append(value)
    return tuple(values)


def check_layer_kinds(holder: dict, parent: str, layers: list, module_name: str, where: str) -> None:
    """Refuse (ConfigError) an output stack in which a positional rule of the output config's
    `holder` (at dotted `parent`) gives output layer k another kind than its source layer has
    in its own config (transformers' defaults where that config lacks the keys). `layers`: per
    output layer, its LayerSource (architecture.layout)."""
    prefix = f"{parent}." if parent else ""
    holders = [get_path(source.config, parent) if parent else source.config for source in layers]
    holders = [found if isinstance(found, dict) else {} for found in holders]
    for rule in RULES:
        if not rule.applies(holder, module_name):
            continue
        values = rule_values(rule, holder, where, prefix)
        if values is None:
            continue
        for k, (source, found) in enumerate(zip(layers, holders)):
            source_values = rule_values(rule, found, source.where, prefix) or rule.defaults
            out_kind = rule.kind(values, k, len(layers), holder)
            if out_kind != rule.kind(source_values, source.layer, source.module.num_layers, found):
                setting = ", ".join(f"{prefix}{key}: {holder[key]}" for key in rule.keys if holder.get(key) is not None)
                raise ConfigError(
                    f"{where}: {setting} gives the {module_name} module's layers a kind by position: this "
                    f"slice stack makes output layer {k} ({rule.names[out_kind]} by that rule) from "
                    f"source layer {source.layer} ({rule.names[not out_kind]}); keep such layers at their "
                    "positions (and the layer count), or merge models without the rule"
                )
