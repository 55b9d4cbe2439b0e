"""The mergekit YAML schema (0.1.5), validated strictly.

mergekit ignores unknown keys silently; we reject them with a did-you-mean suggestion,
because a typo such as `densiy:` otherwise costs a whole merge.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from .errors import ConfigError
from .suggest import did_you_mean  # also imported from here by options and legacy
from .yaml_text import load_yaml

Scalar = bool | int | float | str
# A parameter setting: scalar, gradient list, {filter, value} conditional, or a list of those.
Setting = Any

DTYPES = ("bfloat16", "float16", "float32", "float64")
NOT_SUPPORTED_YET: dict[str, str] = {}


class _Strict(BaseModel):
    """Base model: unknown keys are errors that suggest the closest known key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in data:
                if key not in cls.model_fields:
                    if key in NOT_SUPPORTED_YET:
                        raise ValueError(NOT_SUPPORTED_YET[key])
                    raise ValueError(f"unknown key '{key}'{did_you_mean(key, cls.model_fields)}")
        return data


# mergekit-multi (multi.py): the names of a file's merges -> their output folders, set while
# a document is parsed; a model reference whose path is a name is read as that folder.
NAMED_MERGES: ContextVar[dict[str, str] | None] = ContextVar("named_merges", default=None)


def _model_string(value: Any) -> Any:
    """Accept `model: org/name`, the dict form `model: {path, revision}` and mergekit's
    `model: {model: {path, revision}, lora: {path, revision}}` (as `model+lora`); a named merge
    of a mergekit-multi file (NAMED_MERGES) becomes its output folder."""
    ref = _model_text(value)
    path = reference_path(ref)
    folder = (NAMED_MERGES.get() or {}).get(path)
    return ref if folder is None else folder + ref[len(path) :]  # its @revision and +lora kept


def reference_path(ref: str) -> str:
    """The path (folder or repo id) of a model reference `path[@revision][+lora]`."""
    return ref.partition("+")[0].partition("@")[0]


def _model_text(value: Any) -> str:
    if isinstance(value, dict) and "model" in value:
        unknown = {key for key in set(value) - {"model", "lora"} if value[key] is not None}
        if unknown:
            raise ValueError(f"model references with {sorted(unknown)} are not supported yet")
        model = _model_text(value["model"])
        return model if value.get("lora") is None else f"{model}+{_model_text(value['lora'])}"
    if isinstance(value, dict):
        unknown = set(value) - {"path", "revision"}
        if unknown:
            raise ValueError(f"model references with {sorted(unknown)} are not supported yet")
        path = value.get("path")
        if not isinstance(path, str):
            raise ValueError("a model reference needs a `path`")
        return f"{path}@{value['revision']}" if value.get("revision") else path
    if isinstance(value, str) and value.strip():
        return value.strip()
    raise ValueError(f"a model reference must be a path or repo id, got {value!r}")


class ModelEntry(_Strict):
    """One entry of `models:`."""

    model: str
    parameters: dict[str, Setting] | None = None
    _model = field_validator("model", mode="before")(_model_string)


class InputSlice(_Strict):
    """One source of an output slice: a model and an end-exclusive layer range."""

    model: str
    layer_range: tuple[int, int]
    parameters: dict[str, Setting] | None = None
    _model = field_validator("model", mode="before")(_model_string)

    @field_validator("layer_range")
    @classmethod
    def _range(cls, value: tuple[int, int]) -> tuple[int, int]:
        # [0, 0] is the range of a module without layers (a projector), as mergekit writes it.
        if value[0] < 0 or (value[1] <= value[0] and tuple(value) != (0, 0)):
            raise ValueError(f"layer_range {list(value)} must be [start, end) with 0 <= start < end")
        return value


class OutputSlice(_Strict):
    """One entry of `slices:`."""

    sources: list[InputSlice]
    base_model: str | None = None
    parameters: dict[str, Setting] | None = None
    residual_weight: float | None = None  # in mergekit's schema, never used
    _base = field_validator("base_model", mode="before")(lambda v: None if v is None else _model_string(v))

    @model_validator(mode="after")
    def _same_lengths(self) -> OutputSlice:
        if not self.sources:
            raise ValueError("a slice needs at least one source")
        lengths = {s.layer_range[1] - s.layer_range[0] for s in self.sources}
        if len(lengths) > 1:
            raise ValueError(f"all sources of a slice must have the same number of layers, got {sorted(lengths)}")
        return self


class ModuleConfig(_Strict):
    """One entry of `modules:` (mergekit 0.1.5): a module's own `models:` or `slices:`, and
    parameters that rank between the slice's and the top-level ones."""

    models: list[ModelEntry] | None = None
    slices: list[OutputSlice] | None = None
    parameters: dict[str, Setting] | None = None

    @model_validator(mode="after")
    def _models_xor_slices(self) -> ModuleConfig:
        if (self.models is None) == (self.slices is None) or not (self.models or self.slices):
            raise ValueError("a module needs exactly one of `models` or `slices`, not empty")
        return self


@dataclass(frozen=True)
class Block:
    """A `models:`/`slices:` block: the top level, or one module of `modules:`."""

    module: str | None  # None: the top level
    where: str  # YAML path prefix: "" or "modules.vision_tower."
    models: list[ModelEntry] | None
    slices: list[OutputSlice] | None
    parameters: dict[str, Setting] | None  # the module's parameters (None at the top level)


class ModelTokenSource(_Strict):
    """`{kind: model_token, model, token_id | token}`: a row of one model's original embedding."""

    kind: Literal["model_token"]
    model: str
    token_id: int | None = None
    token: str | None = None
    _model = field_validator("model", mode="before")(_model_string)

    @model_validator(mode="after")
    def _one_of(self) -> ModelTokenSource:
        if (self.token_id is None) == (self.token is None):
            raise ValueError("a model_token source needs exactly one of `token_id` or `token`")
        return self


class ZeroSource(_Strict):
    """`{kind: zero}`: an all-zero row."""

    kind: Literal["zero"]


def _token_source(value: Any) -> Any:
    """A token's `source`: a model reference, or a `{kind: model_token|zero}` mapping."""
    if isinstance(value, dict) and "kind" in value:
        kind = value["kind"]
        if kind == "zero":
            return ZeroSource.model_validate(value)
        if kind == "model_token":
            return ModelTokenSource.model_validate(value)
        raise ValueError(f"unknown token source kind {kind!r}; use model_token or zero")
    return _model_string(value)


class TokenEmbedding(_Strict):
    """One entry of `tokenizer.tokens`: where the token's embedding comes from."""

    source: ModelTokenSource | ZeroSource | str | None = None
    force: bool = False
    _source = field_validator("source", mode="before")(lambda v: None if v is None else _token_source(v))


class TokenizerConfig(_Strict):
    """The `tokenizer:` block (mergekit 0.1.5)."""

    source: str = "union"
    tokens: dict[str, TokenEmbedding] | None = None
    pad_to_multiple_of: int | None = None
    _source = field_validator("source", mode="before")(lambda v: v if v in ("union", "base") else _model_string(v))

    @field_validator("pad_to_multiple_of")
    @classmethod
    def _pad(cls, value: int | None) -> int | None:
        if value is not None and value < 1:
            raise ValueError(f"pad_to_multiple_of must be a positive integer, got {value}")
        return value


class MergeConfig(_Strict):
    """A whole mergekit configuration file."""

    merge_method: str
    models: list[ModelEntry] | None = None
    slices: list[OutputSlice] | None = None
    modules: dict[str, ModuleConfig] | None = None
    base_model: str | None = None
    parameters: dict[str, Setting] | None = None
    dtype: str | None = None
    out_dtype: str | None = None
    tokenizer_source: str | None = None
    tokenizer: TokenizerConfig | None = None
    chat_template: str | None = None
    name: str | None = None  # a mergekit-multi document's name (multi.py); unused by one merge
    _base = field_validator("base_model", mode="before")(lambda v: None if v is None else _model_string(v))

    @field_validator("dtype", "out_dtype")
    @classmethod
    def _dtype(cls, value: str | None) -> str | None:
        if value is None:
            return None
        name = value.removeprefix("torch.")
        if name == "int64":  # a name mergekit takes; every weight would be truncated
            raise ValueError(
                f"'{value}' would truncate every weight to an integer (an "
                f"all-zero model); use one of {', '.join(DTYPES)}"
            )
        if name not in DTYPES:
            hint = {
                "bf16": "bfloat16",
                "fp16": "float16",
                "half": "float16",
                "fp32": "float32",
                "float": "float32",
            }.get(name)
            suggestion = f" (did you mean '{hint}'?)" if hint else did_you_mean(name, DTYPES)
            raise ValueError(f"unknown dtype '{value}'{suggestion}; use one of {', '.join(DTYPES)}")
        return name

    @field_validator("tokenizer_source", mode="before")
    @classmethod
    def _tokenizer_source(cls, value: Any) -> Any:
        if value in (None, "union", "base"):
            return value
        return _model_string(value)

    @field_validator("chat_template")
    @classmethod
    def _chat_template(cls, value: str | None) -> str | None:
        from .tokenizer.templates import check_chat_template

        return None if value is None else check_chat_template(value)

    def blocks(self) -> list[Block]:
        """The config's `models:`/`slices:` blocks: the top level's, or each module's."""
        if self.modules is None:
            return [Block(None, "", self.models, self.slices, None)]
        return [Block(name, f"modules.{name}.", m.models, m.slices, m.parameters) for name, m in self.modules.items()]

    def tokenizer_choice(self) -> str | None:
        """The output tokenizer's source: the `tokenizer:` block's, else `tokenizer_source`
        ("union", "base" or a model; None: neither key, the donor's files are copied)."""
        return self.tokenizer.source if self.tokenizer is not None else self.tokenizer_source

    def parameter_blocks(self) -> Iterator[tuple[str, dict[str, Setting], bool]]:
        """(YAML location, parameters dict, is a per-model block) for every block in the config."""
        if self.parameters:
            yield "parameters", self.parameters, False
        for block in self.blocks():
            w = block.where
            if block.parameters:
                yield f"{w}parameters", block.parameters, False
            for i, entry in enumerate(block.models or []):
                if entry.parameters:
                    yield f"{w}models[{i}].parameters", entry.parameters, True
            for i, sl in enumerate(block.slices or []):
                if sl.parameters:
                    yield f"{w}slices[{i}].parameters", sl.parameters, False
                for j, src in enumerate(sl.sources):
                    if src.parameters:
                        yield f"{w}slices[{i}].sources[{j}].parameters", src.parameters, True

    @model_validator(mode="after")
    def _models_xor_slices(self) -> MergeConfig:
        if [self.models, self.slices, self.modules].count(None) != 2:
            raise ValueError("exactly one of `models`, `slices` or `modules` must be given")
        if not (self.models or self.slices or self.modules):
            raise ValueError("`models`/`slices`/`modules` must not be empty")
        if self.tokenizer_source is not None and self.tokenizer is not None:
            raise ValueError("give either `tokenizer_source` or a `tokenizer:` block, not both")
        return self


def _location(loc: tuple) -> str:
    """pydantic's error location as a YAML path, e.g. slices[0].sources[1].layer_range."""
    parts = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif not str(item).startswith(("function-", "tuple[")):
            parts.append(("." if parts else "") + str(item))
    return "".join(parts)


def _describe(error: ValidationError, source: str) -> str:
    first = error.errors()[0]
    where = _location(first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    return f"{source}: {where + ': ' if where else ''}{message}"


def parse_config(
    text: str, source: str = "<config>", on_valid: Callable[[MergeConfig], Any] | None = None
) -> MergeConfig:
    """Parse and validate YAML text; raise ConfigError naming `source` and the key.
    `on_valid(config)` runs once the structure is valid, before the methods' parameters are
    checked (which imports torch): the run starts reading Hub metadata there."""
    try:
        data = load_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        if "another document" in problem:  # a mergekit-multi file: several merges, `---` between them
            problem += "; mergefast takes one merge per file: put each `---` document in a file of its own"
        raise ConfigError(f"{source}: invalid YAML{where}: {problem}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping with `merge_method`, got {type(data).__name__}")
    try:
        config = MergeConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source)) from None
    if on_valid is not None:
        on_valid(config)
    # parameters.py sits below this module (it knows methods, not the schema); imported here,
    # not at the top, so that importing the schema does not import torch with the methods
    from .parameters import check_parameters

    check_parameters(config.merge_method, config.parameter_blocks(), source)
    return config


def _plain(value: Any) -> Any:
    """What Python callers put in a config dict, as YAML data: paths as strings, numpy
    numbers, bools and arrays as Python ones (`np.linspace` gives np.float64, which
    yaml.safe_dump cannot represent), tuples as lists."""
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fsdecode(value)
    numpy = sys.modules.get("numpy")  # never imported here: a numpy value means it is loaded
    if numpy is not None and isinstance(value, (numpy.generic, numpy.ndarray)):
        return value.tolist()
    return value


def _dict_to_yaml(data: dict) -> str:
    """The YAML text of a config dict; a value YAML cannot hold is a ConfigError naming it."""
    try:
        return yaml.safe_dump(_plain(data), sort_keys=False)
    except yaml.representer.RepresenterError as exc:
        bad = exc.args[1] if len(exc.args) > 1 else exc
        raise ConfigError(
            f"<config>: {bad!r} ({type(bad).__name__}) is not YAML data; give strings, "
            "numbers, booleans, lists and dicts"
        ) from None


def load_config(
    path_or_text: str | Path | MergeConfig, on_valid: Callable[[MergeConfig], Any] | None = None
) -> tuple[MergeConfig, str, str]:
    """Return (config, its YAML text, where it came from) from a path, YAML text, its data as
    a dict, or a MergeConfig. `on_valid`: as in `parse_config`."""
    if isinstance(path_or_text, MergeConfig):
        text = _dict_to_yaml(path_or_text.model_dump(exclude_none=True))
        if on_valid is not None:
            on_valid(path_or_text)
        return path_or_text, text, "<config>"
    if isinstance(path_or_text, dict):  # the YAML's data, e.g. from yaml.safe_load
        text = _dict_to_yaml(path_or_text)
        return parse_config(text, on_valid=on_valid), text, "<config>"
    if not isinstance(path_or_text, (str, Path)):
        raise ConfigError(
            f"config must be a path, YAML text, a dict or a MergeConfig, got {type(path_or_text).__name__}"
        )
    if isinstance(path_or_text, Path) or "\n" not in str(path_or_text):
        path = Path(path_or_text)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not a UTF-8 text file (byte {exc.start}); save the YAML as UTF-8") from None
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read the config ({exc.strerror or exc})") from None
        return parse_config(text, str(path), on_valid), text, str(path)
    return parse_config(str(path_or_text), on_valid=on_valid), str(path_or_text), "<config>"


def merged_models(config: MergeConfig) -> list[str]:
    """The models whose tensors are merged (not a tokenizer-only source), in config order."""
    refs: list[str] = []
    for block in config.blocks():
        for entry in block.models or []:
            refs.append(entry.model)
        for sl in block.slices or []:
            refs.extend(src.model for src in sl.sources)
            if sl.base_model:
                refs.append(sl.base_model)
    if config.base_model:
        refs.append(config.base_model)
    return list(dict.fromkeys(refs))


def referenced_models(config: MergeConfig) -> list[str]:
    """Every model reference in config order: the merged models, then a tokenizer source."""
    refs = merged_models(config)
    if config.tokenizer_source and config.tokenizer_source not in ("base", "union"):
        refs.append(config.tokenizer_source)
    return list(dict.fromkeys(refs))
