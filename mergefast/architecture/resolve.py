"""Tensor names + config.json -> Architecture: from the family table when the model_type is
known and its stacks are present, else by inference from the names alone.

Inference finds every numbered stack (`<prefix><i>.<rest>` with indices 0..n-1, no gaps; a
prefix with gaps, e.g. an nn.Sequential `mlp.0`/`mlp.2`, is loose weights). The stack whose
count config.json gives as the text layer count is the text module (`default` when it is the
only stack); other stacks become modules named by their prefix. Counts in config.json are
checked against the tensors, never used instead of them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from ..errors import ModelError
from .config_paths import TEXT_COUNT_PATHS, get_path, present_counts
from .families import FAMILIES, POST_NAMES, TIED_HEAD_NAMES, ModuleSpec
from .layout import Architecture, Module, Stack, split_layer_name

# Loose weights that come after the layers: final norms and output heads (`embeddings.norm` is
# ModernBERT's input norm).
POST_PATTERN = re.compile(
    r"(^|\.)(lm_head|embed_out|output|score|classifier|proj_out|cls)(\.|$)|^head\."
    r"|(^|(?<!embeddings)\.)(norm|final_layernorm|final_layer_norm|ln_f|final_norm|norm_f)\."
)
# Output heads: `proj_out` (Whisper), `vocab_projector` (DistilBERT), `head` (DeepSeek V4, RWKV)
# and `output` (GIT) only at the top level, as those families write them (Janus'
# `model.generation_head.proj_out` is its image head, not the text head: taken for one, the
# output's config was untied with no `lm_head.weight`); FSMT's `output_projection` under its decoder.
HEAD_PATTERN = re.compile(
    r"(^|\.)(lm_head|embed_out|output_projection)\.weight$|^(proj_out|vocab_projector|head|output)\.weight$"
    r"|(^|\.)(lm_head|predictions)\.decoder\.weight$"
)
EMBEDDING_PATTERN = re.compile(r"(^|\.)(embed_tokens|wte|word_embeddings|embed_in|embeddings|shared)\.weight$")


def _numbered(names: list[str]) -> dict[str, dict[int, list[str]]]:
    """prefix -> layer index -> suffixes, for every name with a `.<digits>.`."""
    stacks: dict[str, dict[int, list[str]]] = {}
    for name in names:
        split = split_layer_name(name)
        if split:
            stacks.setdefault(split.prefix, {}).setdefault(split.index, []).append(split.suffix)
    return stacks


def _contiguous(layers: dict[int, list[str]]) -> bool:
    return sorted(layers) == list(range(len(layers)))


def _stack(prefix: str, layers: dict[int, list[str]]) -> Stack:
    return Stack(prefix, {i: tuple(layers[i]) for i in sorted(layers)})


def _owner(name: str, owns: dict[str, tuple[str, ...]]) -> str:
    """The module owning loose weight `name`: the longest owned prefix that matches."""
    best, length = None, -1
    for module, prefixes in owns.items():
        for p in prefixes:
            if name.startswith(p) and len(p) > length:
                best, length = module, len(p)
    return best


def _split_loose(loose: list[str], owner_of, module_names, config) -> dict[str, tuple[list[str], list[str]]]:
    """module -> (pre-weights, post-weights) of the loose names, in checkpoint order."""
    family_names = POST_NAMES.get(config.get("model_type"), ())
    parts = {m: ([], []) for m in module_names}
    for name in loose:
        pre, post = parts[owner_of(name)]
        after = POST_PATTERN.search(name) or any(f".{part}." in f".{name}" for part in family_names)
        (post if after else pre).append(name)
    return parts


def _tied_heads(modules: tuple[Module, ...], text: str | None, model_type) -> dict[str, str]:
    """head -> embedding for the input embedding of the text module (else the first module
    holding one: T5's `shared`); the head is the checkpoint's (a post-weight of that module or
    of one without layers), else the family's name for it (TIED_HEAD_NAMES), else
    `lm_head.weight`."""
    ordered = sorted(modules, key=lambda m: m.name != text)
    for module in ordered:
        embedding = next((n for n in module.pre_weights if EMBEDDING_PATTERN.search(n)), None)
        if embedding is None:
            continue
        # the embedding's module, or one without layers (Whisper's untied proj_out is `shared`'s)
        holders = [module, *(m for m in ordered if m.stack is None)]
        heads = [n for m in holders for n in m.post_weights if HEAD_PATTERN.search(n)]  # GPT-NeoX: embed_out
        root = "language_model." if embedding.startswith("language_model.") else ""
        named = TIED_HEAD_NAMES.get(model_type, f"{root}lm_head.weight")
        return {heads[0] if heads else named: embedding}
    return {}


def resolve_architecture(names: Iterable[str], config: dict | None, where: str = "config.json") -> Architecture:
    """The Architecture of a checkpoint with tensor `names` and config.json `config`."""
    names, config = list(names), config if isinstance(config, dict) else {}
    model_type = config.get("model_type")
    family = FAMILIES.get(model_type) if isinstance(model_type, str) else None
    numbered = _numbered(names)
    if family is not None:
        arch = _from_family(model_type, family, names, numbered, config, where)
        if arch is not None:
            return arch
    return _inferred(names, numbered, config, where)


def _family_stacks(family, numbered, config) -> dict[str, str | None] | None:
    """module -> its stack prefix present in the names; None when a declared stack is absent
    although config.json gives the module layers (a layout the table does not know)."""
    chosen = {}
    for spec in family:
        present = [p for p in spec.stacks if p in numbered]
        if len(present) > 1 or (spec.stacks and not present and any(get_path(config, c) for c in spec.counts)):
            return None
        chosen[spec.name] = present[0] if present else None
    return chosen


def _from_family(model_type: str, family: tuple[ModuleSpec, ...], names, numbered, config, where):
    chosen = _family_stacks(family, numbered, config)
    if chosen is None:
        return None
    stacks = {p: n for n, p in chosen.items() if p}
    for prefix in stacks:
        if not _contiguous(numbered[prefix]):
            missing = sorted(set(range(max(numbered[prefix]) + 1)) - set(numbered[prefix]))
            raise ModelError(
                f"{where}: the weights have no tensors for layer(s) {missing[:5]} of {prefix}N; "
                "the checkpoint is incomplete: re-download it"
            )
    loose = [n for n in names if not (split_layer_name(n) and split_layer_name(n).prefix in stacks)]
    owns = {spec.name: spec.owns for spec in family}
    parts = _split_loose(loose, lambda n: _owner(n, owns), owns, config)
    modules = []
    for spec in family:
        prefix = chosen[spec.name]
        stack = _stack(prefix, numbered[prefix]) if prefix else None
        counts = present_counts(config, spec.counts, stack.num_layers if stack else 0, prefix, where)
        indexes = tuple(p for p in spec.index_lists if isinstance(get_path(config, p), list))
        pre, post = parts[spec.name]
        if stack is None:  # no layers between them: every loose weight comes from the first slice
            pre, post = pre + post, []
        if stack or pre or post:
            modules.append(Module(spec.name, stack, tuple(pre), tuple(post), counts, indexes))
    modules = tuple(modules)
    text = next((m.name for m in modules if m.name in ("default", "text_decoder") and m.stack), None)
    return Architecture(model_type, modules, text, _tied_heads(modules, text, model_type))


def _distinct_prefix(prefix: str, others: list[str]) -> str:
    """The shortest dotted prefix of stack `prefix` that starts no other stack's prefix."""
    parts = prefix.rstrip(".").split(".")
    for n in range(1, len(parts) + 1):
        head = ".".join(parts[:n]) + "."
        if not any(o.startswith(head) for o in others):
            return head
    return prefix


def _inferred(names, numbered, config, where) -> Architecture:
    stacks = {p: layers for p, layers in numbered.items() if _contiguous(layers)}
    text_counts = [get_path(config, p) for p in TEXT_COUNT_PATHS if isinstance(get_path(config, p), int)]
    if len(stacks) == 1:
        text = next(iter(stacks))
    else:
        matching = [p for p, layers in stacks.items() if text_counts and all(c == len(layers) for c in text_counts)]
        text = matching[0] if len(matching) == 1 else None
    module_of = {p: ("default" if p == text else p.rstrip(".")) for p in stacks}
    owns = {module_of[p]: (_distinct_prefix(p, [o for o in stacks if o != p]),) for p in stacks}
    if text:
        owns[module_of[text]] = ("",)
    elif "" not in [o for v in owns.values() for o in v]:
        owns["default"] = ("",)  # loose weights no stack claims (embeddings, heads)
    loose = [n for n in names if not (split_layer_name(n) and split_layer_name(n).prefix in stacks)]
    parts = _split_loose(loose, lambda n: _owner(n, owns), owns, config)
    modules = []
    for name in owns:
        prefix = next((p for p, m in module_of.items() if m == name), None)
        stack = _stack(prefix, stacks[prefix]) if prefix else None
        counts = (
            present_counts(config, TEXT_COUNT_PATHS, stack.num_layers, prefix, where)
            if stack and prefix == text
            else ()
        )
        pre, post = parts[name]
        if stack or pre or post:
            modules.append(Module(name, stack, tuple(pre), tuple(post), counts))
    modules = tuple(modules)
    text_name = module_of[text] if text else None
    return Architecture(None, modules, text_name, _tied_heads(modules, text_name, config.get("model_type")))
