"""The layout of one model's tensors: modules, each with an optional layer stack and loose
(pre/post) weights. Built by `resolve.py` from tensor names and config.json; read by the planner."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import NamedTuple

LAYER_PATTERN = re.compile(r"^(?P<prefix>.*?\.)(?P<index>\d+)\.(?P<suffix>.+)$")


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
    """LayerName for `name` at its first `.<digits>.`, or None when it has none."""
    match = LAYER_PATTERN.match(name)
    if not match:
        return None
    return LayerName(match["prefix"], int(match["index"]), match["suffix"])


@dataclass(frozen=True)
class Stack:
    """A numbered layer stack: `<prefix><index>.<suffix>` for index 0..num_layers-1."""

    prefix: str
    layer_suffixes: dict[int, tuple[str, ...]]

    @property
    def num_layers(self) -> int:
        """Layers present (the indices are contiguous from 0)."""
        return len(self.layer_suffixes)

    def layer_tensors(self, index: int) -> list[str]:
        """Names of the tensors of layer `index`, in checkpoint order."""
        return [f"{self.prefix}{index}.{s}" for s in self.layer_suffixes.get(index, ())]


@dataclass(frozen=True)
class Module:
    """One module of a model: text decoder, vision tower, projector, encoder, decoder, ...

    `count_keys`: config.json paths (dotted, e.g. `vision_config.depth`) that hold this
    module's layer count in this model's config; `index_keys`: config paths of lists of layer
    indices (e.g. `vision_config.fullatt_block_indexes`), rewritten when the stack is sliced."""

    name: str
    stack: Stack | None
    pre_weights: tuple[str, ...]
    post_weights: tuple[str, ...]
    count_keys: tuple[str, ...] = ()
    index_keys: tuple[str, ...] = ()

    @property
    def num_layers(self) -> int:
        """Layer count (0 for a module without a stack)."""
        return self.stack.num_layers if self.stack else 0

    @property
    def layer_prefix(self) -> str | None:
        """The stack's name prefix, e.g. `model.layers.`."""
        return self.stack.prefix if self.stack else None

    def tensor_names(self) -> list[str]:
        """Every tensor of the module: pre-weights, layers, post-weights."""
        names = list(self.pre_weights)
        for i in range(self.num_layers):
            names += self.stack.layer_tensors(i)
        return names + list(self.post_weights)


class LayerSource(NamedTuple):
    """Where an output layer of a sliced module comes from: its source model's `config`
    (config.json), that model's `module`, the source `layer` index, and `where` that config is
    (for errors: the source's config.json path)."""

    config: dict
    module: Module
    layer: int
    where: str


@dataclass(frozen=True)
class Architecture:
    """A model's modules. `text` names the module that a plain `slices:` config slices (None
    when the model has several stacks and none is the text decoder, e.g. T5). `tied_heads`
    maps an output head's name to the embedding it is tied to (the head may be absent)."""

    family: str | None
    modules: tuple[Module, ...]
    text: str | None
    tied_heads: dict[str, str] = field(default_factory=dict)

    def module(self, name: str) -> Module | None:
        """The module called `name` (`default` also names the text module), or None."""
        for m in self.modules:
            if m.name == name:
                return m
        return self.module(self.text) if name == "default" and self.text and self.text != "default" else None

    @property
    def text_module(self) -> Module | None:
        """The module a plain `slices:` config slices."""
        return self.module(self.text) if self.text else None

    @property
    def layer_prefix(self) -> str | None:
        """The text stack's prefix (None without a text stack)."""
        text = self.text_module
        return text.layer_prefix if text else None

    @property
    def num_layers(self) -> int:
        """The text stack's layer count (0 without a text stack)."""
        text = self.text_module
        return text.num_layers if text else 0

    @property
    def pre_weights(self) -> tuple[str, ...]:
        """Pre-weights of every module."""
        return tuple(n for m in self.modules for n in m.pre_weights)

    @property
    def post_weights(self) -> tuple[str, ...]:
        """Post-weights of every module."""
        return tuple(n for m in self.modules for n in m.post_weights)

    def describe(self) -> str:
        """'text_decoder 28 layers, vision_tower 32 layers, multi_modal_projector' for messages."""
        return ", ".join(f"{m.name} {m.num_layers} layers" if m.stack else m.name for m in self.modules)
