"""Choosing the vocabulary handling of a plan: none, truncate, copy, or permute (built tokenizer).

The top of the tokenizer package: it picks the mode, then hands the work to `permute.py`
(the VocabPlanner and its per-job maps) and, only when a tokenizer must be built, to
`build.py` (which imports transformers lazily). Neither of those imports this module, so the
package has no import cycle.
"""

from __future__ import annotations

from pathlib import Path

from ..config import merged_models
from ..io.model_files import model_file, parse_json
from .build import build_tokenizer
from .permute import VocabPlanner, model_vocab_size


def _vocab_json(folder: Path, parsed: dict[bytes, dict[str, int] | None]) -> dict[str, int] | None:
    """token -> id from a folder's tokenizer.json, read as plain JSON (None when unreadable).
    `parsed`: the tables of the file contents read so far, by content: fine-tunes mostly ship
    their base's file, parsed once (Llama 3's 9 MB one takes ~0.1 s)."""
    path = model_file(folder, "tokenizer.json")  # a file leading outside the folder: ModelError
    if path is None:
        return None
    try:
        raw = path.read_bytes()
    except OSError:
        return None
    if raw not in parsed:
        parsed[raw] = _vocab_table(raw)
    return parsed[raw]


def _vocab_table(raw: bytes) -> dict[str, int] | None:
    """token -> id of a tokenizer.json's bytes (None when it is not one)."""
    try:
        data = parse_json(raw.decode("utf-8"))
        vocab = data["model"]["vocab"]
        if isinstance(vocab, list):  # Unigram: [[piece, score], ...]
            vocab = {piece[0]: i for i, piece in enumerate(vocab)}
        vocab = dict(vocab)
        vocab.update({a["content"]: a["id"] for a in data.get("added_tokens") or []})
        return vocab
    except (ValueError, KeyError, TypeError, IndexError, AttributeError):
        return None


def _same_vocabularies(models: dict, refs: list[str], extra: str | None, *, readable: bool = False) -> bool:
    """Every merged model (and the tokenizer source) has the same vocabulary size and, where
    tokenizer.json can be read, the same token -> id table with every id below that size
    (nothing to strip): the tokenizer can simply be copied. `readable`: every tokenizer.json
    must be read (else sizes that agree are taken as aligned)."""
    names = list(dict.fromkeys([*refs, *([extra] if extra else [])]))
    sizes = {model_vocab_size(models[r]) for r in names}
    if len(sizes) != 1 or None in sizes:
        return False
    size = sizes.pop()
    parsed: dict[bytes, dict[str, int] | None] = {}
    vocabs = [_vocab_json(models[r].folder, parsed) for r in names]
    if any(v is None for v in vocabs):
        return not readable  # nothing cheap to compare
    if any(i >= size for i in vocabs[0].values()):
        return False  # tokens past the rows: the built tokenizer strips them
    return all(v == vocabs[0] for v in vocabs[1:])


def _copies_tokenizer(config, models: dict, refs: list[str]) -> bool:
    """Whether the output vocabulary is the donor's own, so its tokenizer files are copied and
    transformers is not needed: no `tokens` or padding in a `tokenizer:` block, and every
    merged model (and a model source) shares one vocabulary. A union of equal vocabularies is
    that vocabulary (build.py adds nothing), but only tokenizer.json tables can show it."""
    block = config.tokenizer
    if block is not None and (block.tokens or block.pad_to_multiple_of is not None):
        return False
    src = config.tokenizer_choice()
    if src == "union":
        return _same_vocabularies(models, refs, None, readable=True)
    if src != "base" and src not in models:  # a tokenizer-only source of the block (not read yet)
        return False
    # "base" without a base_model is the first merged model's tokenizer (mergekit's choice
    # there is arbitrary), as without any tokenizer config
    return _same_vocabularies(models, refs, None if src == "base" else src)


def plan_vocab(config, models: dict, options, source: str, cache_dir: str | None = None) -> VocabPlanner:
    """The plan's VocabPlanner; builds the output tokenizer when one is needed."""
    refs = merged_models(config)
    if config.tokenizer_choice() is None:
        mode = "truncate" if getattr(options, "unsafe_truncate_embeddings", False) else "none"
        return VocabPlanner(mode, models, refs, source)
    if _copies_tokenizer(config, models, refs):
        return VocabPlanner("copy", models, refs, source)
    planner = VocabPlanner("permute", models, refs, source)
    build_tokenizer(planner, config, cache_dir)
    return planner
