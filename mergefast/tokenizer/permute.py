"""Aligning vocabulary-sized tensors (embeddings, lm_head) to the output vocabulary.

At plan time `VocabPlanner` decides, from tokenizers and headers only, how every vocabulary
tensor job maps its inputs' rows to output rows (`VocabMap`); `merge_job` applies the map to
the tensors it was handed, before the merge method sees them (mergekit 0.1.5 §5):

- each model's row for output token t is its own row if it has the token and the token is not
  `force`d, else the token's default;
- the default: an explicit `tokens.<t>.source`; else the row of the only model that has t;
  else zeros (with a warning) when no model has it; else the base model's row; else the mean
  of the rows of the models that have it;
- padding rows (up to `pad_to_multiple_of`) are the mean of the model's real rows.

Without a tokenizer config, inputs with different vocabulary sizes are an error, or with
`--unsafe-truncate-embeddings` every input is cut to the common prefix of rows.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

ZERO, ROW, MEAN = 0, 1, 2  # kinds of default row


@dataclass(eq=False)
class VocabMap:
    """How one vocabulary job aligns its inputs (applied by `merge_job`, on any device).

    `own is None` means truncation to the first `rows` rows. Otherwise, per job source i,
    `own[i][t]` is the source row of output token t (-1: use the default), `present[i][t]`
    the row whether or not the token is forced (for means), and the default of t is zeros,
    row `default_row[t]` of source `default_src[t]`, or the mean over sources that have it."""

    rows: int
    real: int
    own: tuple[torch.Tensor, ...] | None = None
    present: tuple[torch.Tensor, ...] = ()
    default_kind: torch.Tensor | None = None
    default_src: torch.Tensor | None = None
    default_row: torch.Tensor | None = None

    def apply(self, tensors: list[torch.Tensor], out_dtype: torch.dtype | None = None) -> list[torch.Tensor]:
        """The inputs re-indexed to the output vocabulary, on their device.

        Rows taken from elsewhere (defaults, means, padding) are computed in float32 (float64
        for a float64 output) and each input is stored in the wider of its dtype and
        `out_dtype`: mergekit casts its inputs to the merge's `dtype` before it computes them,
        so with `dtype: float32` a bf16 model's padding row is the float32 mean, not that mean
        rounded to bf16."""
        import torch  # not at the top: planning imports no torch (mergefast/dtypes.py)

        if self.own is None:
            return [t[: self.rows] for t in tensors]
        dev = tensors[0].device
        acc = torch.promote_types(torch.float32, out_dtype or torch.float32)
        default = self._defaults(tensors, dev, acc)
        out = []
        for own, t in zip(self.own, tensors):
            dtype = torch.promote_types(t.dtype, out_dtype) if out_dtype else t.dtype
            own = own.to(dev)
            has = (own >= 0).view(-1, *([1] * (t.dim() - 1)))
            real = torch.where(has, t[own.clamp(min=0)].to(acc), default)
            new = torch.empty((self.rows, *t.shape[1:]), dtype=dtype, device=dev)
            new[: self.real] = real.to(dtype)
            if self.rows > self.real:
                new[self.real :] = real.mean(dim=0).to(dtype)
            out.append(new)
        return out

    def _defaults(self, tensors: list[torch.Tensor], dev, acc: torch.dtype) -> torch.Tensor:
        import torch

        kind = self.default_kind.to(dev)
        default = torch.zeros((self.real, *tensors[0].shape[1:]), dtype=acc, device=dev)
        src, row = self.default_src.to(dev), self.default_row.to(dev)
        for j, t in enumerate(tensors):
            ids = ((kind == ROW) & (src == j)).nonzero().squeeze(1)
            if ids.numel():
                default[ids] = t[row[ids]].to(acc)
        ids = (kind == MEAN).nonzero().squeeze(1)
        if ids.numel():
            total = torch.zeros((ids.numel(), *tensors[0].shape[1:]), dtype=acc, device=dev)
            count = torch.zeros(ids.numel(), dtype=acc, device=dev)
            for present, t in zip(self.present, tensors):
                p = present.to(dev)[ids]
                ok = p >= 0
                total[ok] += t[p[ok]].to(acc)
                count += ok
            default[ids] = total / count.clamp(min=1).view(-1, *([1] * (total.dim() - 1)))
        return default


def model_vocab_size(model) -> int | None:
    """The vocabulary size of an input model: config `vocab_size` (or text_config's), else the
    row count of its embedding."""
    config = model.config or {}
    for holder in (config, config.get("text_config") or {}):
        if isinstance(holder.get("vocab_size"), int):
            return holder["vocab_size"]
    for name in model.arch.pre_weights:
        if "embed" in name and name in model.reader:
            shape = model.reader.info(name).shape
            if len(shape) == 2:
                return shape[0]
    return None


@dataclass
class VocabPlanner:
    """Decides the vocabulary handling of a plan; `for_job` gives each job its VocabMap."""

    mode: str  # "none" (mismatch is an error), "truncate", "copy" (tokenizer files copied), "permute"
    models: dict[str, Any]
    refs: list[str]  # the merged models (those with embeddings), config order
    source: str
    built: Any = None  # build.BuiltTokenizer when mode == "permute"
    own: dict[str, torch.Tensor] = field(default_factory=dict)  # per model: output id -> row, -1 (missing/forced)
    present: dict[str, torch.Tensor] = field(default_factory=dict)  # the same, ignoring `force`
    explicit_kind: torch.Tensor | None = None  # per output id: -1 (no explicit source), ZERO or ROW
    explicit_model: torch.Tensor | None = None  # index into refs
    explicit_row: torch.Tensor | None = None
    base_model: str | None = None
    truncated_rows: int | None = None

    @property
    def output_vocab_size(self) -> int | None:
        """The vocab size config.json must declare (None: leave the donor's value)."""
        if self.built is not None:
            return self.built.rows
        return self.truncated_rows

    def is_vocab_tensor(self, ref: str, tensor: str, shape: tuple[int, ...]) -> bool:
        """A pre/post weight whose first dimension is the model's vocabulary."""
        model = self.models[ref]
        loose = (
            tensor in model.arch.pre_weights
            or tensor in model.arch.post_weights
            or tensor in model.arch.tied_heads.values()
        )
        return loose and len(shape) >= 1 and shape[0] == model_vocab_size(model)

    def for_job(self, out_name: str, sources) -> tuple[VocabMap, tuple[int, ...]] | None:
        """(map, output shape) for a vocabulary job, None for every other job (or no change)."""
        shapes = [tuple(s.info.shape) for s in sources]
        if not all(self.is_vocab_tensor(s.model, s.tensor, sh) for s, sh in zip(sources, shapes)):
            return None
        if len({sh[1:] for sh in shapes}) > 1:
            return None  # hidden sizes differ: the ordinary shape check reports it
        sizes = [sh[0] for sh in shapes]
        if self.mode == "permute":
            return self._permute(out_name, sources, shapes[0][1:])
        if len(set(sizes)) == 1:
            return None
        if self.mode == "truncate":
            rows = min(sizes)
            log.warning(
                "%s: --unsafe-truncate-embeddings: %s cut to its first %d rows (inputs have %s)",
                self.source,
                out_name,
                rows,
                sorted(set(sizes)),
            )
            self.truncated_rows = rows
            return VocabMap(rows, rows), (rows, *shapes[0][1:])
        detail = ", ".join(f"{s.model}: {n}" for s, n in zip(sources, sizes))
        raise ConfigError(
            f"{self.source}: tensor {out_name}: the models have different vocabulary sizes ({detail}); add a "
            "tokenizer config (`tokenizer_source: union`, `base` or a model, or a `tokenizer:` block) to merge "
            "the vocabularies, or pass --unsafe-truncate-embeddings to keep only the rows they have in common"
        )

    def _permute(self, out_name: str, sources, rest: tuple[int, ...]):
        """The map of one vocabulary job; the implicit defaults (only one model has the token,
        no model has it, the base has it, mean) count the models that are inputs of this job."""
        import torch

        built = self.built
        index: dict[str, int] = {}
        for i, s in enumerate(sources):
            if s.model not in self.own:
                raise ConfigError(f"{self.source}: tensor {out_name}: {s.model} has no vocabulary plan")
            index.setdefault(s.model, i)
        real = built.real
        present = tuple(
            self.present[s.model] if index[s.model] == i else torch.full((real,), -1, dtype=torch.long)
            for i, s in enumerate(sources)
        )  # a model listed twice counts once in means
        have = torch.stack([p >= 0 for p in present])
        count = have.sum(0)
        kind = torch.full((real,), MEAN, dtype=torch.int8)
        src = torch.full((real,), -1, dtype=torch.long)
        row = torch.zeros((real,), dtype=torch.long)
        kind[count == 0] = ZERO
        only = have.to(torch.int8).argmax(0)
        one = count == 1
        for i, p in enumerate(present):
            sel = one & (only == i)
            kind[sel], src[sel], row[sel] = ROW, i, p[sel]
        if self.base_model in index:
            i = index[self.base_model]
            sel = (count > 1) & have[i]
            kind[sel], src[sel], row[sel] = ROW, i, present[i][sel]
        explicit = self.explicit_kind >= 0
        zero = (count == 0) & ~explicit
        if zero.any():
            log.warning(
                "%s: tensor %s: %d output token(s) are in none of its input models and get zero rows (e.g. %r)",
                self.source,
                out_name,
                int(zero.sum()),
                built.id_to_token[int(zero.nonzero()[0])],
            )
        kind[explicit] = self.explicit_kind[explicit]
        lookup = torch.tensor([index.get(ref, -1) for ref in self.refs], dtype=torch.long)
        ex_src = lookup[self.explicit_model.clamp(min=0)]
        sel = explicit & (self.explicit_kind == ROW)
        if (ex_src[sel] < 0).any():
            t = int((sel & (ex_src < 0)).nonzero()[0])
            ref = self.refs[int(self.explicit_model[t])]
            raise ConfigError(
                f"{self.source}: tensor {out_name}: the embedding of token {built.id_to_token[t]!r} "
                f"comes from {ref}, which is not an input of this tensor"
            )
        src[sel], row[sel] = ex_src[sel], self.explicit_row[sel]
        own = tuple(self.own[s.model] for s in sources)
        identity = built.rows == built.real and all(
            len(o) == s.info.shape[0] and bool((o == torch.arange(len(o))).all()) for o, s in zip(own, sources)
        )
        if identity:
            return None
        return VocabMap(built.rows, real, own, present, kind, src, row), (built.rows, *rest)
