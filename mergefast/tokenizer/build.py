"""Building the output tokenizer (transformers/tokenizers, imported only here) and the
per-model permutations, from tokenizers only (mergekit 0.1.5 §5).

- The base tokenizer is the `base_model`'s, else the first merged model's (config order: a
  deterministic choice where mergekit's is arbitrary). It is stripped of tokens whose id is
  at or past its model's `vocab_size`.
- `source: base` is the stripped base tokenizer; `source: <model>` that model's tokenizer;
  `source: union` the base vocabulary, then every ordinary token of the other models that the
  base lacks (as added tokens), then every added/special token of every model (the first
  definition wins).
- Keys of `tokenizer.tokens` are added when missing.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..io.model_files import check_tokenizer_folder, load_json, model_file
from .permute import ROW, ZERO, VocabPlanner, model_vocab_size

log = logging.getLogger(__name__)

# The usual tokenizer files (a folder with none of them: a clearer message than transformers').
TOKENIZER_LOAD_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
)


@dataclass
class BuiltTokenizer:
    """The output tokenizer and its vocabulary."""

    tokenizer: Any  # a transformers tokenizer, saved with save_pretrained
    id_to_token: list[str | None]
    real: int  # len(tokenizer)
    rows: int  # real rounded up to pad_to_multiple_of

    def save(self, folder: Path, chat_template: str | None) -> None:
        """Write the tokenizer files into `folder`."""
        if chat_template is not None:
            self.tokenizer.chat_template = chat_template
        self.tokenizer.save_pretrained(str(folder))


def _transformers():
    try:
        import transformers  # noqa: F401
        from tokenizers import AddedToken
    except ImportError as exc:
        raise ConfigError(
            f"merging tokenizers needs the `transformers` and `tokenizers` packages ({exc}); pip install transformers"
        ) from None
    from transformers import AutoTokenizer

    return AutoTokenizer, AddedToken


def _auto_map_file(folder: Path) -> str | None:
    """The first of tokenizer_config.json / config.json in `folder` whose `auto_map` points
    transformers at Python files (custom code), or None. Read as JSON: nothing is imported."""
    for name in ("tokenizer_config.json", "config.json"):
        try:
            path = model_file(folder, name)
            data = load_json(path) if path is not None else None
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("auto_map"):
            return name
    return None


def _load(folder: Path, what: str):
    """The tokenizer of model `what` (folder `folder`), loaded without running any code from it.

    trust_remote_code=False is always passed: with the default (None) transformers asks
    "Do you wish to run the custom code? [y/N]" on stdin and imports the folder's Python files
    on "y", and mergefast promises never to run code from a model folder."""
    AutoTokenizer, _ = _transformers()
    check_tokenizer_folder(folder)  # transformers picks its files itself: none may lead outside
    try:
        return AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
    except Exception as exc:  # noqa: BLE001 - any loading failure is a config problem here
        custom = _auto_map_file(folder)
        if custom is not None:
            # transformers' own message says to pass trust_remote_code=True: not an option here.
            raise ConfigError(
                f"cannot load the tokenizer of {what} ({folder}): it needs custom code (auto_map in its "
                f"{custom}), which mergefast never runs; take the tokenizer from another model with "
                "tokenizer_source, or give the folder a tokenizer.json with a standard tokenizer_class "
                "(e.g. PreTrainedTokenizerFast) in tokenizer_config.json"
            ) from None
        if not any(model_file(folder, name) is not None for name in TOKENIZER_LOAD_FILES):
            raise ConfigError(
                f"cannot load the tokenizer of {what} ({folder}): the folder has no tokenizer files "
                f"({', '.join(TOKENIZER_LOAD_FILES[:4])}, ...), so its embedding rows cannot be matched to tokens; "
                "add the tokenizer it was trained with (a fine-tune's: its base's tokenizer files)"
            ) from None
        raise ConfigError(f"cannot load the tokenizer of {what} ({folder}): {str(exc).splitlines()[0]}") from None


def _strip(tok, size: int, folder: Path, what: str):
    """`tok` without the tokens whose id is >= `size` (fast BPE/WordLevel/WordPiece models).
    Special tokens that tokenizer_config.json names stay: transformers adds them back on load
    (docs/tokenizers.md), and the row rules give them rows."""
    if len(tok) <= size:
        return tok
    if not (folder / "tokenizer.json").is_file():
        raise ConfigError(
            f"the tokenizer of {what} has {len(tok)} tokens but the model only {size} rows, "
            "and only fast (tokenizer.json) tokenizers can be stripped"
        )
    with tempfile.TemporaryDirectory(prefix="mergefast-tok-") as tmp:
        tmp = Path(tmp)
        tok.save_pretrained(str(tmp))
        data = json.loads((tmp / "tokenizer.json").read_text(encoding="utf-8"))
        model = data["model"]
        if model.get("type") not in ("BPE", "WordLevel", "WordPiece") or not isinstance(model.get("vocab"), dict):
            surplus = [a for a in data.get("added_tokens", []) if a["id"] >= size]
            if len(tok) - len(surplus) > size:
                raise ConfigError(
                    f"the tokenizer of {what} has {len(tok)} tokens but the model only {size} rows; "
                    f"only BPE/WordLevel/WordPiece tokenizers can be stripped, not {model.get('type')}"
                )
        else:
            model["vocab"] = {k: i for k, i in model["vocab"].items() if i < size}
            if model.get("type") == "BPE" and model.get("merges"):
                keep = model["vocab"]

                def ok(merge):
                    a, b = merge.split(" ", 1) if isinstance(merge, str) else merge
                    return a in keep and b in keep and a + b in keep

                model["merges"] = [m for m in model["merges"] if ok(m)]
        data["added_tokens"] = [a for a in data.get("added_tokens", []) if a["id"] < size]
        (tmp / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
        cfg_path = tmp / "tokenizer_config.json"
        if cfg_path.is_file():
            cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
            decoder = cfg.get("added_tokens_decoder")
            if isinstance(decoder, dict):
                cfg["added_tokens_decoder"] = {k: v for k, v in decoder.items() if int(k) < size}
            cfg_path.write_text(json.dumps(cfg), encoding="utf-8")
        stripped = _load(tmp, what)
    log.info("stripped the tokenizer of %s from %d to %d tokens", what, len(tok), len(stripped))
    return stripped


def _added_tokens(tok, size: int) -> list[Any]:
    """A tokenizer's added tokens (AddedToken objects) whose id is below `size`, by id."""
    return [t for i, t in sorted(tok.added_tokens_decoder.items()) if i < size]


def _vocab(tok, size: int) -> dict[str, int]:
    return {t: i for t, i in tok.get_vocab().items() if i < size}


def build_tokenizer(planner: VocabPlanner, config, cache_dir: str | None = None) -> None:
    """Fill `planner` with the output tokenizer, each merged model's permutation and the defaults."""
    _, AddedToken = _transformers()
    models, refs, where = planner.models, planner.refs, planner.source
    block = config.tokenizer
    source = config.tokenizer_choice()
    tokens_cfg = (block.tokens if block is not None else None) or {}
    pad = block.pad_to_multiple_of if block is not None else None

    sizes = {}
    for ref in refs:
        size = model_vocab_size(models[ref])
        if size is None:
            raise ConfigError(
                f"{where}: cannot tell the vocabulary size of {ref}: its config.json has no "
                "vocab_size and no embedding tensor was found"
            )
        sizes[ref] = size
    toks = {ref: _load(models[ref].folder, ref) for ref in refs}
    vocabs = {ref: _vocab(toks[ref], sizes[ref]) for ref in refs}
    base_ref = config.base_model if config.base_model in refs else refs[0]

    if source in ("union", "base"):
        out = _strip(toks[base_ref], sizes[base_ref], models[base_ref].folder, base_ref)
        out = _load_copy(out)
    else:
        if source in models:
            folder = models[source].folder
            out = _load(folder, source)
            size = model_vocab_size(models[source])
            if size is not None:
                out = _strip(out, size, folder, source)
        else:
            from ..io.hub import parse_model_ref, resolve_model

            out = _load(resolve_model(parse_model_ref(source), cache_dir=cache_dir), source)
    if source == "union":
        _union(out, toks, vocabs, sizes, refs, base_ref, AddedToken)
    missing = [t for t in tokens_cfg if t not in out.get_vocab()]
    if missing:
        out.add_tokens([AddedToken(t, special=False) for t in missing])

    vocab = out.get_vocab()
    real = len(out)
    id_to_token: list[str | None] = [None] * real
    for token, i in vocab.items():
        if i < real:
            id_to_token[i] = token
    rows = math.ceil(real / pad) * pad if pad else real
    planner.built = BuiltTokenizer(out, id_to_token, real, rows)
    _plan_rows(planner, tokens_cfg, vocabs, sizes, base_ref, config.base_model)


def _load_copy(tok):
    """An independent copy of a loaded tokenizer (adding tokens must not touch the inputs')."""
    with tempfile.TemporaryDirectory(prefix="mergefast-tok-") as tmp:
        tok.save_pretrained(tmp)
        return _load(Path(tmp), "the base model")


def _union(out, toks, vocabs, sizes, refs, base_ref, AddedToken) -> None:
    """Add the other models' ordinary tokens, then every model's added/special tokens.

    A token that some model defines as an added token is added with that definition (its
    `special` flag, normalisation), not as another model's ordinary token, as mergekit does;
    unlike mergekit, a token of the base's own vocabulary stays as the base has it (mergekit
    re-adds it as an added token, which changes how the base tokenizer splits text)."""
    have = set(out.get_vocab())
    defined = {str(t) for ref in refs for t in _added_tokens(toks[ref], sizes[ref])}
    ordinary: dict[str, None] = {}
    for ref in refs:
        if ref == base_ref:
            continue
        added_ids = {i for i in toks[ref].added_tokens_decoder}
        for token, i in sorted(vocabs[ref].items(), key=lambda kv: kv[1]):
            if i not in added_ids and token not in have and token not in defined:
                ordinary.setdefault(token)
    if ordinary:
        out.add_tokens([AddedToken(t, special=False) for t in ordinary])
        have |= set(ordinary)
    seen: dict[str, Any] = {str(t): t for t in out.added_tokens_decoder.values()}
    new = []
    for ref in [base_ref, *[r for r in refs if r != base_ref]]:
        for token in _added_tokens(toks[ref], sizes[ref]):
            content = str(token)
            if content in seen:
                first = seen[content]
                if getattr(first, "special", None) != getattr(token, "special", None):
                    log.warning("token %r is defined differently by %s; keeping the first definition", content, ref)
                continue
            seen[content] = token
            if content not in have:
                new.append(token)
                have.add(content)
    for token in new:  # one at a time keeps the config order of ids
        out.add_tokens([token], special_tokens=bool(getattr(token, "special", False)))


def _plan_rows(
    planner: VocabPlanner, tokens_cfg: dict, vocabs: dict, sizes: dict, base_ref: str, base_model: str | None
) -> None:
    """Per model: output id -> own row or -1; per output id: the default row (§5 rules)."""
    import torch  # not at the top: planning imports no torch (mergefast/dtypes.py)

    from ..config import ModelTokenSource, ZeroSource

    built, refs, where = planner.built, planner.refs, planner.source
    real = built.real
    present = {ref: torch.full((real,), -1, dtype=torch.long) for ref in refs}
    for t, token in enumerate(built.id_to_token):
        if token is None:
            continue
        for ref in refs:
            present[ref][t] = vocabs[ref].get(token, -1)
    kind = torch.full((real,), -1, dtype=torch.int8)  # explicit sources only; the rest per job
    model = torch.full((real,), -1, dtype=torch.long)
    row = torch.zeros((real,), dtype=torch.long)
    none = torch.stack([present[r] < 0 for r in refs]).all(0)
    forced = torch.zeros((real,), dtype=torch.bool)
    explicit = torch.zeros((real,), dtype=torch.bool)
    token_id = {tok: i for i, tok in enumerate(built.id_to_token) if tok is not None}
    for token, spec in tokens_cfg.items():
        t = token_id[token]
        forced[t] = spec.force
        src = spec.source
        if src is None:
            continue
        explicit[t] = True
        if isinstance(src, ZeroSource):
            kind[t] = ZERO
            continue
        ref = src.model if isinstance(src, ModelTokenSource) else src
        if ref not in refs:
            raise ConfigError(f"{where}: tokenizer.tokens.{token}.source: {ref} is not one of the merged models")
        if isinstance(src, ModelTokenSource):
            if src.token_id is not None:
                r = src.token_id
                if not 0 <= r < sizes[ref]:
                    raise ConfigError(
                        f"{where}: tokenizer.tokens.{token}.source: token_id {r} is outside "
                        f"{ref}'s vocabulary of {sizes[ref]}"
                    )
            else:
                r = vocabs[ref].get(src.token, -1)
                if r < 0:
                    raise ConfigError(f"{where}: tokenizer.tokens.{token}.source: {ref} has no token {src.token!r}")
        else:
            r = int(present[ref][t])
            if r < 0:
                raise ConfigError(
                    f"{where}: tokenizer.tokens.{token}.source: {ref} has no token {token!r}; "
                    "use {kind: model_token, model, token} to take another token's row"
                )
        kind[t], model[t], row[t] = ROW, refs.index(ref), r
    zero = none & ~explicit
    if zero.any():
        names = [built.id_to_token[int(t)] for t in zero.nonzero().squeeze(1)[:5]]
        log.warning(
            "%s: %d output token(s) are in no merged model and get zero embeddings (e.g. %s)",
            where,
            int(zero.sum()),
            ", ".join(repr(n) for n in names),
        )
    own = {}
    for ref in refs:
        mine = present[ref].clone()
        mine[forced] = -1
        own[ref] = mine
    planner.own, planner.present = own, present
    planner.explicit_kind, planner.explicit_model, planner.explicit_row = kind, model, row
    planner.base_model = base_model
