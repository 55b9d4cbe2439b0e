"""A config's output, module by module, as normalised slices.

- `models:` gives every module of the lead model one slice over all its layers, each listed
  model a source (the base appended when not listed).
- `slices:` slices the text module; every other module (vision tower, projector) is carried
  through the method from the first slice's models, as pre-weights are.
- `modules:` (mergekit 0.1.5) gives each named module its own `models:` or `slices:`;
  modules it does not name are carried from the first named module's first slice.

The lead model (base_model, else the first merged model) decides which modules the output has.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .config import Block, MergeConfig, did_you_mean
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
    """A normalised output slice of one module."""

    sources: tuple[SliceSource, ...]
    base: str | None
    parameters: dict | None
    where: str
    module_parameters: dict | None = None  # `modules.<name>.parameters`

    @property
    def length(self) -> int:
        """Number of output layers the slice produces."""
        return self.sources[0].end - self.sources[0].start


@dataclass(frozen=True)
class ModulePlan:
    """What one module of the output is made of. `how`: "models", "slices" or "carried"."""

    name: str
    slices: tuple[PlanSlice, ...]
    how: str

    @property
    def num_layers(self) -> int:
        """Output layer count of the module."""
        return sum(sl.length for sl in self.slices)

    def layer_sources(self, donor: str) -> list[tuple[str, int]]:
        """(model, input layer) of each output layer: from its slice's source that is the
        config's donor, else the slice's base, else its first source. A merged layer then takes
        its kind (e.g. its `layer_types` entry) from the model whose config.json the output
        copies, as a `models:` merge of the same models keeps it."""
        out = []
        for sl in self.slices:
            refs = [s.model for s in sl.sources]
            pick = next((r for r in (donor, sl.base) if r in refs), refs[0])
            src = sl.sources[refs.index(pick)]
            out += [(src.model, src.start + i) for i in range(sl.length)]
        return out


class _Normaliser:
    """Turns the config's blocks into one ModulePlan per module of the lead model."""

    def __init__(self, config: MergeConfig, models: dict[str, InputModel], lead: str, source: str):
        self.config, self.models, self.source = config, models, source
        self.lead = models[lead].arch
        self.lead_ref = lead

    def layers(self, ref: str, module: str, where: str) -> int:
        """Layer count of `module` in model `ref`; ConfigError when the model lacks it."""
        found = self.models[ref].arch.module(module)
        if found is None:
            raise ConfigError(
                f"{self.source}: {where}: model {ref} has no {module} module (it has: "
                f"{self.models[ref].arch.describe()}); use models of the same architecture"
            )
        return found.num_layers

    def models_slice(self, block: Block, module: str) -> PlanSlice:
        """The one slice of a `models:` block over every layer of `module`."""
        entries = [(e.model, e.parameters, f"{block.where}models[{i}]") for i, e in enumerate(block.models)]
        if self.config.base_model and self.config.base_model not in [e[0] for e in entries]:
            entries.append((self.config.base_model, None, "base_model"))
        counts = {m: self.layers(m, module, w) for m, _, w in entries}
        if len(set(counts.values())) > 1:
            detail = ", ".join(f"{m}: {n}" for m, n in counts.items())
            which = "" if module == "default" else f" of {module}"
            raise ConfigError(
                f"{self.source}: {block.where}models: models have different layer counts{which} "
                f"({detail}); use `slices:` to pick layer ranges"
            )
        n = next(iter(counts.values()))
        srcs = tuple(SliceSource(m, 0, n, p, w) for m, p, w in entries)
        return PlanSlice(srcs, self.config.base_model, None, f"{block.where}models", block.parameters)

    def config_slice(self, sl, i: int, block: Block, module: str) -> PlanSlice:
        """Slice `i` of a `slices:` block, each source's layer range checked against its model."""
        srcs = []
        for j, s in enumerate(sl.sources):
            where = f"{block.where}slices[{i}].sources[{j}]"
            start, end = s.layer_range
            available = self.layers(s.model, module, where)
            if end > available:
                raise ConfigError(
                    f"{self.source}: {where}.layer_range: [{start}, {end}] goes past the end of "
                    f"{s.model}'s {module}, which has {available} layers (end is exclusive)"
                )
            if end == start and available:
                raise ConfigError(
                    f"{self.source}: {where}.layer_range: [0, 0] selects no layer of {module}, "
                    f"which has {available}; give the range to take"
                )
            srcs.append(SliceSource(s.model, start, end, s.parameters, where))
        return PlanSlice(
            tuple(srcs),
            sl.base_model or self.config.base_model,
            sl.parameters,
            f"{block.where}slices[{i}]",
            block.parameters,
        )

    def block_plan(self, block: Block, module: str) -> ModulePlan:
        """The ModulePlan of `module` from a `models:` or `slices:` block."""
        if block.models is not None:
            return ModulePlan(module, (self.models_slice(block, module),), "models")
        slices = tuple(self.config_slice(sl, i, block, module) for i, sl in enumerate(block.slices))
        return ModulePlan(module, slices, "slices")

    def carried(self, module: str, lead: PlanSlice) -> ModulePlan:
        """`module` over all its layers from the models of slice `lead` (its parameters too)."""
        srcs = []
        for s in lead.sources:
            srcs.append(replace(s, start=0, end=self.layers(s.model, module, lead.where)))
        if len({s.end for s in srcs}) > 1:
            detail = ", ".join(f"{s.model}: {s.end}" for s in srcs)
            raise ConfigError(
                f"{self.source}: {lead.where}: its models carry {module} into the output but have "
                f"different {module} layer counts ({detail}); give {module} its own entry in `modules:`"
            )
        return ModulePlan(module, (replace(lead, sources=tuple(srcs)),), "carried")


def normalise_modules(config: MergeConfig, models: dict[str, InputModel], lead: str, source: str) -> list[ModulePlan]:
    """One ModulePlan per module of the lead model, in the lead model's module order."""
    norm = _Normaliser(config, models, lead, source)
    arch = norm.lead
    named = _named_blocks(config, arch, lead, source)
    plans = {name: norm.block_plan(block, name) for name, block in named.items()}
    first = plans[next(iter(named))].slices[0]
    for module in arch.modules:
        if module.name not in plans:
            plans[module.name] = norm.carried(module.name, first)
    return [plans[m.name] for m in arch.modules]


def _named_blocks(config: MergeConfig, arch, lead: str, source: str) -> dict[str, Block]:
    """module name -> the block that defines it; the text module's first (it leads)."""
    blocks = config.blocks()
    if config.modules is None:
        block = blocks[0]
        if block.models is not None:
            return {m.name: block for m in arch.modules}
        if arch.text is None:
            raise ConfigError(
                f"{source}: slices: {lead} has several layer stacks ({arch.describe()}) and none of "
                "them is a text decoder, so a plain `slices:` is ambiguous; slice each with `modules:`"
            )
        return {arch.text: block}
    named: dict[str, Block] = {}
    for block in blocks:
        module = arch.module(block.module)
        if module is None:
            names = [m.name for m in arch.modules]
            raise ConfigError(
                f"{source}: modules.{block.module}: {lead} has no such module{did_you_mean(block.module, names)}; "
                f"its modules are {', '.join(names)}"
            )
        if module.name in named:
            raise ConfigError(f"{source}: modules.{block.module}: {module.name} is configured twice")
        named[module.name] = block
    return dict(sorted(named.items(), key=lambda item: item[0] != arch.text))


def check_slice_inputs(spec: MethodSpec, sl: PlanSlice, source: str) -> int | None:
    """Check the slice has the inputs the method needs; return the base's source index."""
    refs = [s.model for s in sl.sources]
    for j, ref in enumerate(refs):
        if ref in refs[:j]:
            first = sl.sources[refs.index(ref)].where
            raise ConfigError(
                f"{source}: {sl.where}: model {ref} is listed twice ({first} and {sl.sources[j].where}); "
                "a model is one input of a merge (mergekit refuses duplicate inputs too): list it once"
            )
    base_index = refs.index(sl.base) if sl.base in refs else None
    if spec.needs_base and sl.base is None:
        raise ConfigError(f"{source}: {spec.name} needs a base_model")
    if spec.needs_base and base_index is None:
        raise ConfigError(f"{source}: {sl.where}: base_model {sl.base} must be one of the slice's sources")
    problem = spec.input_error(len(refs), base_index is not None)
    if problem:
        raise ConfigError(f"{source}: {sl.where}: {problem}")
    return base_index
