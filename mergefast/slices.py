"""A config's output slices, normalised: `models:` becomes one slice over every layer (the base
appended when not listed), `slices:` are taken as given after checking each layer range
against its model and each slice's inputs against the merge method.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import MergeConfig
from .errors import ConfigError
from .inputs import InputModel
from .methods.spec import MethodSpec


@dataclass(frozen=True)
class SliceSource:
    """A source of a normalised slice: model, end-exclusive layer range, parameters."""

    model: str
    start: int
    end: int
    parameters: dict | None
    where: str


@dataclass(frozen=True)
class PlanSlice:
    """A normalised output slice."""

    sources: tuple[SliceSource, ...]
    base: str | None
    parameters: dict | None
    where: str

    @property
    def length(self) -> int:
        """Number of output layers the slice produces."""
        return self.sources[0].end - self.sources[0].start


def normalise_slices(config: MergeConfig, models: dict[str, InputModel], source: str) -> list[PlanSlice]:
    """`models:` -> one slice over all layers; `slices:` validated against layer counts."""
    if config.models is not None:
        return [_models_slice(config, models, source)]
    return [_config_slice(sl, i, config, models, source) for i, sl in enumerate(config.slices)]


def _models_slice(config: MergeConfig, models: dict[str, InputModel], source: str) -> PlanSlice:
    """The one slice of a `models:` config: every layer of every model, the base appended
    when not listed; the models must have the same layer count."""
    entries = [(e.model, e.parameters, f"models[{i}]") for i, e in enumerate(config.models)]
    if config.base_model and config.base_model not in [e[0] for e in entries]:
        entries.append((config.base_model, None, "base_model"))
    counts = {models[m].arch.num_layers for m, _, _ in entries}
    if len(counts) > 1:
        detail = ", ".join(f"{m}: {models[m].arch.num_layers}" for m, _, _ in entries)
        raise ConfigError(f"{source}: models have different layer counts ({detail}); use `slices:`")
    n = counts.pop()
    srcs = tuple(SliceSource(m, 0, n, p, w) for m, p, w in entries)
    return PlanSlice(srcs, config.base_model, None, "models")


def _config_slice(sl, i: int, config: MergeConfig, models: dict[str, InputModel], source: str) -> PlanSlice:
    """Slice `i` of a `slices:` config, each source's layer range checked against its model."""
    srcs = []
    for j, s in enumerate(sl.sources):
        where = f"slices[{i}].sources[{j}]"
        start, end = s.layer_range
        available = models[s.model].arch.num_layers
        if end > available:
            raise ConfigError(f"{source}: {where}.layer_range: [{start}, {end}] goes past the end of "
                              f"{s.model}, which has {available} layers (end is exclusive)")
        srcs.append(SliceSource(s.model, start, end, s.parameters, where))
    return PlanSlice(tuple(srcs), sl.base_model or config.base_model, sl.parameters, f"slices[{i}]")


def check_slice_inputs(spec: MethodSpec, sl: PlanSlice, source: str) -> int | None:
    """Check the slice has the inputs the method needs; return the base's source index."""
    refs = [s.model for s in sl.sources]
    base_index = refs.index(sl.base) if sl.base in refs else None
    if spec.needs_base and sl.base is None:
        raise ConfigError(f"{source}: {spec.name} needs a base_model")
    if spec.needs_base and base_index is None:
        raise ConfigError(f"{source}: {sl.where}: base_model {sl.base} must be one of the slice's sources")
    problem = spec.input_error(len(refs), base_index is not None)
    if problem:
        raise ConfigError(f"{source}: {sl.where}: {problem}")
    return base_index
