"""Choosing the vocabulary handling of a plan: none, truncate, copy, or permute (built tokenizer).

The top of the tokenizer package: it picks the mode, then hands the work to `permute.py`
(the VocabPlanner and its per-job maps) and, only when a tokenizer must be built, to
`build.py` (which imports transformers lazily). Neither of those imports this module, so the
package has no import cycle.
"""

from __future__ import annotations

from pathlib import Path

from ..config import merged_models
from ..io.model_files import load_json, model_file
from .build import build_tokenizer
from .permute import VocabPlanner, model_vocab_size


def _vocab_json(folder: Path) -> dict[str, int] | None:
    """token -> id from a folder's tokenizer.json, read as plain JSON (None when unreadable)."""
    path = model_file(folder, "tokenizer.json")  # a file leading outside the folder: ModelError
    if path is None:
        return None
    try:
        data = load_json(path)
        vocab = data["model"]["vocab"]
        if isinstance(vocab, list):  # Unigram: [[piece, score], ...]
            vocab = {piece[0]: i for i, piece in enumerate(vocab)}
        vocab = dict(vocab)
        vocab.update({a["content"]: a["id"] for a in data.get("added_tokens") or []})
        return vocab
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None


def _same_vocabularies(models: dict, refs: list[str], extra: str | None) -> bool:
    """Every merged model (and the tokenizer source) has the same vocabulary size and, where
    tokenizer.json can be read, the same token -> id table: the tokenizer can simply be copied."""
    names = list(dict.fromkeys([*refs, *([extra] if extra else [])]))
    sizes = {model_vocab_size(models[r]) for r in names}
    if len(sizes) != 1 or None in sizes:
        return False
    size = sizes.pop()
    vocabs = [_vocab_json(models[r].folder) for r in names]
    if any(v is None for v in vocabs):
        return True  # sizes agree and there is nothing cheap to compare: assume aligned
    trimmed = [{k: i for k, i in v.items() if i < size} for v in vocabs]
    return all(v == trimmed[0] for v in trimmed[1:])


def plan_vocab(config, models: dict, options, source: str, cache_dir: str | None = None) -> VocabPlanner:
    """The plan's VocabPlanner; builds the output tokenizer when one is needed."""
    refs = merged_models(config)
    enabled = config.tokenizer is not None or config.tokenizer_source is not None
    if not enabled:
        mode = "truncate" if getattr(options, "unsafe_truncate_embeddings", False) else "none"
        return VocabPlanner(mode, models, refs, source)
    src = config.tokenizer_source
    if config.tokenizer is None and src != "union":
        # "base" without a base_model is the first merged model's tokenizer (mergekit's
        # choice there is arbitrary), as without any tokenizer config
        if _same_vocabularies(models, refs, None if src == "base" else src):
            return VocabPlanner("copy", models, refs, source)
    planner = VocabPlanner("permute", models, refs, source)
    build_tokenizer(planner, config, cache_dir)
    return planner
