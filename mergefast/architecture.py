"""Where a tensor sits in a decoder: before the layers, in layer N, or after the layers.

Works from tensor names alone, so any decoder whose layers are numbered as `<prefix>.N.<rest>`
is understood (Llama, Mistral, Qwen2/3, Gemma, Phi-3: `model.layers.N.`; GPT-2: `transformer.h.N.`;
GPT-NeoX: `gpt_neox.layers.N.`): the first `.<digits>.` in a name is the layer index, and the
prefix used by most numbered tensors is the decoder stack. Loose tensors whose name marks a
final norm or an output head are post-weights; every other loose tensor is a pre-weight.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Iterable

LAYER_PATTERN = re.compile(r"^(?P<prefix>.*?\.)(?P<index>\d+)\.(?P<suffix>.+)$")
# Loose tensors that come after the layers: the final norm and the output head.
POST_PATTERN = re.compile(
    r"(^|\.)(lm_head|embed_out|output|score|classifier)(\.|$)|(^|\.)(norm|final_layernorm|ln_f|final_norm|norm_f)\.")
NUM_LAYERS_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
TIED_HEADS = {"lm_head.weight": "model.embed_tokens.weight"}


@dataclass(frozen=True)
class LayerName:
    """A tensor name split around its layer index."""

    prefix: str
    index: int
    suffix: str

    def with_index(self, index: int) -> str:
        """The same tensor in another layer."""
        return f"{self.prefix}{index}.{self.suffix}"


def split_layer_name(name: str) -> LayerName | None:
    """LayerName for `name`, or None when the name carries no layer index."""
    match = LAYER_PATTERN.match(name)
    if not match:
        return None
    return LayerName(match["prefix"], int(match["index"]), match["suffix"])


@dataclass(frozen=True)
class Architecture:
    """The layout of one model's tensors."""

    layer_prefix: str | None
    num_layers: int
    pre_weights: tuple[str, ...]
    post_weights: tuple[str, ...]
    layer_suffixes: dict[int, tuple[str, ...]]

    def layer_tensors(self, index: int) -> list[str]:
        """Names of the tensors of layer `index`, in checkpoint order."""
        return [f"{self.layer_prefix}{index}.{s}" for s in self.layer_suffixes.get(index, ())]


def infer_architecture(names: Iterable[str], config: dict | None = None) -> Architecture:
    """Split tensor `names` into pre-weights, per-layer tensors and post-weights."""
    names = list(names)
    split = {n: split_layer_name(n) for n in names}
    prefixes = Counter(s.prefix for s in split.values() if s)
    stack = prefixes.most_common(1)[0][0] if prefixes else None
    suffixes: dict[int, list[str]] = {}
    pre, post = [], []
    for name in names:
        s = split[name]
        if s and s.prefix == stack:
            suffixes.setdefault(s.index, []).append(s.suffix)
        elif POST_PATTERN.search(name):
            post.append(name)
        else:
            pre.append(name)
    num_layers = config_num_layers(config) if config else None
    if num_layers is None:
        num_layers = max(suffixes) + 1 if suffixes else 0
    return Architecture(stack, num_layers, tuple(pre), tuple(post),
                        {i: tuple(v) for i, v in suffixes.items()})


def num_layers_key(config: dict) -> tuple[dict, str] | None:
    """(the dict holding it, the key) of the layer count in a HF config, or None."""
    for holder in (config, config.get("text_config") or {}):
        for key in NUM_LAYERS_KEYS:
            if isinstance(holder.get(key), int):
                return holder, key
    return None


def config_num_layers(config: dict) -> int | None:
    """The layer count a HF config.json declares, or None."""
    found = num_layers_key(config)
    return found[0][found[1]] if found else None
