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

# Files besides tokenizer.json whose tokens transformers adds on load (at new ids when
# tokenizer.json lacks them): a token declared only there is part of the vocabulary.
DECLARING_FILES = ("tokenizer_config.json", "special_tokens_map.json")
NAMED_SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
SPECIAL_LIST_KEYS = ("additional_special_tokens", "extra_special_tokens")


def _vocab_json(folder: Path, parsed: dict[tuple, dict[str, int] | None]) -> dict[str, int] | None:
    """token -> id of a folder's tokenizer as transformers would load it, from its files read as
    plain JSON: tokenizer.json's table and the tokens the other files declare (None when
    tokenizer.json is missing or unreadable). `parsed`: the tables of the file contents read so
    far, by content: fine-tunes mostly ship their base's files, parsed once (Llama 3's 9 MB
    tokenizer.json takes ~0.1 s)."""
    contents = []
    for name in ("tokenizer.json", *DECLARING_FILES):
        path = model_file(folder, name)  # a file leading outside the folder: ModelError
        try:
            contents.append(path.read_bytes() if path is not None else None)
        except OSError:
            contents.append(None)
    key = tuple(contents)
    if contents[0] is None:
        return None
    if key not in parsed:
        table = _vocab_table(contents[0])
        parsed[key] = None if table is None else _with_declared(table, contents[1:])
    return parsed[key]


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


def _with_declared(table: dict[str, int], raws: list[bytes | None]) -> dict[str, int]:
    """`table` with the tokens tokenizer_config.json / special_tokens_map.json declare: an
    `added_tokens_decoder` entry at its id, a special token tokenizer.json lacks at the next id."""
    table = dict(table)
    for raw in raws:
        try:
            data = parse_json(raw.decode("utf-8")) if raw is not None else None
        except (ValueError, UnicodeDecodeError):
            continue
        if not isinstance(data, dict):
            continue
        decoder = data.get("added_tokens_decoder")
        for i, entry in decoder.items() if isinstance(decoder, dict) else ():
            if isinstance(entry, dict) and str(i).isdigit():
                table[str(entry.get("content"))] = int(i)
        following = max(table.values(), default=-1) + 1
        for token in _special_tokens(data):
            if token not in table:
                table[token], following = following, following + 1
    return table


def _special_tokens(data: dict) -> list[str]:
    """The special tokens a tokenizer_config.json / special_tokens_map.json names."""
    values = [data.get(k) for k in NAMED_SPECIAL_KEYS]
    for key in SPECIAL_LIST_KEYS:
        listed = data.get(key)
        values += list(listed.values()) if isinstance(listed, dict) else listed if isinstance(listed, list) else []
    tokens = [v.get("content") if isinstance(v, dict) else v for v in values]
    return [t for t in tokens if isinstance(t, str) and t]


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
    parsed: dict[tuple, dict[str, int] | None] = {}
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
