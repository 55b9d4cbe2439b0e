"""Config + headers -> the list of output tensors to produce (no tensor data is read).

The config becomes one ModulePlan per module of the lead model (slices.py). Within a module,
pre-weights (embeddings) use its first slice's sources, post-weights (final norm, lm_head) its
last slice's, both at gradient position 0; layer tensors get t = i/(n-1) within their slice
(1 for a one-layer slice). Every input tensor is accounted for (accounting.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from .accounting import account_for_inputs
from .architecture.mergekit_names import mergekit_name
from .config import MergeConfig, merged_models, referenced_models
from .dtypes import FLOATS, promote, torch_dtype
from .errors import ConfigError, ModelError
from .inputs import (
    InputModel,
    check_donor_layer_count,
    check_model_folders,
    close_models,
    open_models,
)
from .io.hub_prefetch import HubPrefetch
from .io.output import plan_output_config
from .io.quantized import check_fp8_dtype
from .io.reader import TensorInfo
from .io.writer import OutputTensor
from .methods.registry import MethodSpec
from .options import MergeOptions
from .parameters import method_spec, resolve
from .plan_checks import check_plan
from .slices import ModulePlan, PlanSlice, SliceSource, check_slice_inputs, normalise_modules


@dataclass(frozen=True)
class TensorSource:
    """One input tensor of a job: which model and which of its tensors."""

    model: str
    tensor: str
    info: TensorInfo


@dataclass(frozen=True)
class TensorJob:
    """One output tensor: its sources in merge order and its resolved parameters."""

    name: str
    sources: tuple[TensorSource, ...]
    base_index: int | None
    global_params: dict[str, Any]
    model_params: tuple[dict[str, Any], ...]
    dtype_name: str  # the output's dtype (mergefast/dtypes.py)
    shape: tuple[int, ...]
    copy: bool = False  # the output is sources[0] unchanged: no arithmetic
    vocab: Any = None  # tokenizer.VocabMap: re-index vocabulary rows before the merge (shape is the output's)
    # the other models' copies of a copied integer buffer: accounted for, never read
    not_read: tuple[TensorSource, ...] = ()

    @property
    def dtype(self):
        """The output's torch dtype (imports torch; the planner uses `dtype_name`)."""
        return torch_dtype(self.dtype_name)

    @property
    def input_bytes(self) -> tuple[int, ...]:
        """Bytes read from each input."""
        return tuple(s.info.nbytes for s in self.sources)

    @property
    def read_bytes(self) -> int:
        """Bytes read from the inputs for this job."""
        return sum(self.input_bytes)

    @property
    def start(self) -> int | None:
        """The first element this job writes when it merges a part of its tensor (a
        host/parts.py TensorPart); None: it writes the whole tensor."""
        return None

    @property
    def ends_tensor(self) -> bool:
        """Whether the tensor is complete once this job is written (a TensorPart: its last)."""
        return True

    @property
    def reduces(self) -> bool:
        """Whether this job only adds to its tensor's statistic (a reducing TensorPart's pass)."""
        return False

    @property
    def out_bytes(self) -> int:
        """Bytes of the output tensor."""
        return OutputTensor(self.name, self.dtype_name, self.shape).nbytes


@dataclass
class MergePlan:
    """Everything a merge will do, known before any tensor is read."""

    config: MergeConfig
    config_text: str
    source: str
    spec: MethodSpec
    models: dict[str, InputModel]
    donor: str
    jobs: list[TensorJob] = field(default_factory=list)
    modules: list[ModulePlan] = field(default_factory=list)
    num_layers: int | None = None  # output text layer count when the text module is sliced
    vocab: Any = None  # tokenizer.VocabPlanner: output tokenizer and vocabulary alignment
    dropped: list[str] = field(default_factory=list)  # input tensors left out, and by which rule
    model_config: dict = field(default_factory=dict)  # the output's config.json

    @property
    def base_model(self) -> str | None:
        """The top-level base model reference."""
        return self.config.base_model

    def close(self) -> None:
        """Close the input readers."""
        close_models(self.models)


class _JobBuilder:
    """Builds TensorJobs for one plan: source lookup, parameters, shapes and dtypes."""

    def __init__(
        self, config: MergeConfig, spec: MethodSpec, models: dict[str, InputModel], source: str, donor: str, vocab=None
    ):
        self.config, self.spec, self.models, self.source = config, spec, models, source
        self.donor = donor  # the model whose config.json the output copies
        self.vocab = vocab  # tokenizer.VocabPlanner, or None
        self.out_dtype = config.out_dtype or config.dtype  # a float dtype's name, or None

    def input_name(self, ref: str, name: str) -> str | None:
        """`name` in model `ref`, falling back from an untied head to the tied embedding."""
        reader = self.models[ref].reader
        if name in reader:
            return name
        tied = self.models[ref].arch.tied_heads.get(name)
        return tied if tied and tied in reader else None

    def job(self, out_name: str, sl: PlanSlice, names: list[str], t: float, base_index) -> TensorJob | None:
        """The job producing `out_name` from input tensor `names[i]` of each slice source."""
        found = [self.input_name(s.model, n) for s, n in zip(sl.sources, names)]
        if all(f is None for f in found):
            return None  # absent from every input (e.g. lm_head of tied-embedding models)
        for s, n, f in zip(sl.sources, names, found):
            if f is None:
                raise ConfigError(
                    f"{self.source}: tensor {n} is missing from model {s.model} "
                    f"({self.models[s.model].folder}) but other inputs of {sl.where} have it"
                )
        sources = tuple(
            TensorSource(s.model, f, self.models[s.model].reader.info(f)) for s, f in zip(sl.sources, found)
        )
        vocab = self.vocab.for_job(out_name, sources) if self.vocab is not None else None
        if vocab is None:
            self._check_shapes(out_name, sources)
        params = tuple(
            self._model_params(sl, s, n, t, i == base_index) for i, (s, n) in enumerate(zip(sl.sources, names))
        )
        job = self._finish(out_name, sources, base_index, self._global_params(sl, out_name, t), params)
        return replace(job, vocab=vocab[0], shape=vocab[1]) if vocab is not None else job

    def filter_name(self, ref: str, name: str) -> str:
        """The name filters match for tensor `name` of model `ref`: mergekit's name for it
        (architecture/mergekit_names.py), which for most checkpoints is the stored one."""
        return mergekit_name(self.models[ref].config.get("model_type"), name)

    def _model_params(self, sl: PlanSlice, s: SliceSource, tensor: str, t: float, is_base: bool) -> dict:
        """Per-model parameters of source `s` for its tensor `tensor` (as the model names it
        for this job: a tied model's head is lm_head.weight, as mergekit names it)."""
        if is_base and not self.spec.base_params:
            return {}
        where = f"{self.source}: {s.where} ({s.model}), tensor {tensor}"
        levels = [s.parameters, sl.parameters, sl.module_parameters, self.config.parameters]
        names = [f"{s.where}.parameters", f"{sl.where}.parameters", _module_where(sl), "parameters"]
        matched = self.filter_name(s.model, tensor)
        return {p.name: resolve(p, levels, matched, t, where, names) for p in self.spec.model_params}

    def _global_params(self, sl: PlanSlice, out_name: str, t: float) -> dict:
        """Global parameters of the output tensor `out_name`."""
        where = f"{self.source}: {sl.where}, tensor {out_name}"
        levels = [sl.parameters, sl.module_parameters, self.config.parameters]
        names = [f"{sl.where}.parameters", _module_where(sl), "parameters"]
        matched = self.filter_name(sl.sources[0].model, out_name)
        return {p.name: resolve(p, levels, matched, t, where, names) for p in self.spec.global_params}

    def _check_shapes(self, out_name: str, sources: tuple[TensorSource, ...]) -> None:
        first = sources[0]
        for other in sources[1:]:
            if other.info.shape != first.info.shape:
                raise ConfigError(
                    f"{self.source}: tensor {out_name}: shape {list(first.info.shape)} in {first.model} but "
                    f"{list(other.info.shape)} in {other.model}; models with different hidden sizes "
                    "cannot be merged"
                )

    def _finish(self, name, sources, base_index, g, m) -> TensorJob:
        dtypes = [s.info.dtype_name for s in sources]
        shape = sources[0].info.shape
        floats = [(s.model, d) for s, d in zip(sources, dtypes) if d in FLOATS]
        ints = [(s.model, d) for s, d in zip(sources, dtypes) if d not in FLOATS]
        if floats and ints and name.endswith("weight"):  # not a mask buffer (GPT-2's attn.bias: bool or float)
            raise ModelError(
                f"{self.source}: tensor {name} is {ints[0][1]} in model {ints[0][0]} but {floats[0][1]} in "
                f"{floats[0][0]}; a weight stored as integers is a corrupt checkpoint: re-download that model"
            )
        if not all(d in FLOATS for d in dtypes):
            keep = base_index or 0  # integer buffers (BatchNorm's step counts) are copied, never merged
            others = sources[:keep] + sources[keep + 1 :]
            return TensorJob(name, (sources[keep],), None, g, (m[keep],), dtypes[keep], shape, True, not_read=others)
        dtype = self.out_dtype
        if dtype is None:
            dtype = dtypes[0]
            for d in dtypes[1:]:
                dtype = promote(dtype, d)
        copy = self.spec.name == "passthrough" and m[0].get("scale") in (None, 1) and dtype == dtypes[0]
        return TensorJob(name, sources, base_index, g, m, dtype, shape, copy=copy)


def _module_where(sl: PlanSlice) -> str:
    """The YAML path of the module parameters of slice `sl` (`modules.<name>.parameters`)."""
    head = sl.where.split(".slices[")[0].split(".models")[0]
    return f"{head}.parameters" if head.startswith("modules.") else "parameters"


def _slice_jobs(
    builder: _JobBuilder, module: str, sl: PlanSlice, base_index, first_layer: int, out_prefix: str
) -> list[TensorJob]:
    """Jobs for every layer tensor of one slice; output layers start at `first_layer`."""
    lead = builder.models[sl.sources[0].model].arch.module(module).stack
    prefixes = [builder.models[s.model].arch.module(module).layer_prefix for s in sl.sources]
    jobs = []
    for i in range(sl.length):
        t = i / (sl.length - 1) if sl.length > 1 else 1.0
        for suffix in lead.layer_suffixes.get(sl.sources[0].start + i, ()):
            names = [f"{p}{s.start + i}.{suffix}" for p, s in zip(prefixes, sl.sources)]
            job = builder.job(f"{out_prefix}{first_layer + i}.{suffix}", sl, names, t, base_index)
            if job:
                jobs.append(job)
    return jobs


def _loose_jobs(builder: _JobBuilder, sl: PlanSlice, names, base_index) -> list[TensorJob]:
    """Jobs for pre- or post-weights, at gradient position 0."""
    jobs = [builder.job(n, sl, [n] * len(sl.sources), 0.0, base_index) for n in names]
    return [j for j in jobs if j]


def _module_jobs(builder: _JobBuilder, plan: ModulePlan) -> list[TensorJob]:
    """A module's jobs in output order: pre-weights, layers slice by slice, post-weights."""
    bases = [check_slice_inputs(builder.spec, sl, builder.source) for sl in plan.slices]
    first, last = plan.slices[0], plan.slices[-1]
    lead = builder.models[first.sources[0].model].arch.module(plan.name)
    jobs = _loose_jobs(builder, first, lead.pre_weights, bases[0])
    offset = 0
    for sl, base_index in zip(plan.slices, bases):
        jobs += _slice_jobs(builder, plan.name, sl, base_index, offset, lead.layer_prefix)
        offset += sl.length
    return jobs + _loose_jobs(builder, last, _post_weights(builder, plan.name, last), bases[-1])


def build_jobs(builder: _JobBuilder, modules: list[ModulePlan]) -> list[TensorJob]:
    """All jobs in output order, module by module."""
    return [job for plan in modules for job in _module_jobs(builder, plan)]


def _post_weights(builder: _JobBuilder, module: str, sl: PlanSlice) -> tuple[str, ...]:
    """The lead model's post-weights of `module`, plus a tied head (lm_head) that only other
    sources have, or that the config's donor has (its config.json, which the output copies,
    unties the head: a passthrough whose last slice comes from a tied model): tied-embedding
    models then contribute their embedding to it."""
    arch = builder.models[sl.sources[0].model].arch
    lead = arch.module(module)
    holders = [builder.models[s.model].reader for s in sl.sources] + [builder.models[builder.donor].reader]
    heads = [
        h
        for h, embedding in arch.tied_heads.items()
        if embedding in lead.pre_weights
        and h not in (*arch.pre_weights, *arch.post_weights)  # the lead model's own head: in its module
        and any(h in r for r in holders)
    ]
    return (*lead.post_weights, *heads)


def processing_order(jobs: list[TensorJob]) -> list[TensorJob]:
    """Jobs sorted by where their first input lies (file, offset): reads stream through files.

    The writer puts each tensor at its planned offset, so the output layout does not depend
    on this order."""

    def key(job: TensorJob):
        info = job.sources[0].info
        return str(info.file), info.data_offsets[0] if info.data_offsets else 0

    return sorted(jobs, key=key)


def input_spans(jobs: list[TensorJob]):
    """(file, start, end) of every input tensor `jobs` read (end None: a .bin file, all of it)."""
    for job in jobs:
        for s in job.sources:
            start, end = s.info.data_offsets or (0, None)
            yield s.info.file, start, end


# Jobs of one size regrouped by `pooled_order`: the few largest ones (embeddings, lm_head)
# of at least this many bytes each (inputs + output).
REGROUP_MIN_BYTES = 16 << 20
REGROUP_MAX_JOBS = 4


def pooled_order(jobs: list[TensorJob]) -> list[TensorJob]:
    """`jobs` (in processing order) with the later jobs of a rare large size moved up right
    behind the first one, when their files are on disk already (a Hub shard still
    downloading keeps its place). A model's embeddings and its lm_head lie first and last
    in its files; back to back they share the CPU pool's largest buffers, which then retire
    and are carved into the smaller sizes (staging/host.py) instead of idling through the
    run while the other sizes fault fresh pages."""

    def size(job: TensorJob):
        return tuple(s.info.nbytes for s in job.sources), job.out_bytes

    groups: dict[tuple, list[TensorJob]] = {}
    for job in jobs:
        if not job.copy:
            groups.setdefault(size(job), []).append(job)
    followers = {  # a group's first job -> the later ones moved up behind it
        id(group[0]): [j for j in group[1:] if all(s.info.file.is_file() for s in j.sources)]
        for group in groups.values()
        if _regrouped(group)
    }
    moved = {id(j) for later in followers.values() for j in later}
    ordered = []
    for job in jobs:
        if id(job) not in moved:
            ordered += [job, *followers.get(id(job), ())]
    return ordered


def _regrouped(group: list[TensorJob]) -> bool:
    """Whether `pooled_order` brings the jobs of one size together."""
    job = group[0]
    return 1 < len(group) <= REGROUP_MAX_JOBS and job.read_bytes + job.out_bytes >= REGROUP_MIN_BYTES


def build_plan(
    config: MergeConfig, config_text: str, source: str, options: MergeOptions, prefetch: HubPrefetch | None = None
) -> MergePlan:
    """Resolve models, read headers and build every job; raises before any tensor is read.
    `prefetch`: the Hub repos' metadata, being read since the config was parsed."""
    spec = method_spec(config.merge_method, source)
    refs = referenced_models(config)
    models = open_models(refs, options.transformers_cache, options.allow_crimes, prefetch, options.lora_merge_dtype)
    try:
        check_model_folders(models, merged_models(config), source)
        check_fp8_dtype(config, models, merged_models(config), source)
        donor = config.base_model or refs[0]
        check_donor_layer_count(models[donor])
        plan = MergePlan(config, config_text, source, spec, models, donor)
        plan.modules = normalise_modules(config, models, donor, source)
        from .tokenizer import plan_vocab

        plan.vocab = plan_vocab(config, models, options, source, options.transformers_cache)
        plan.jobs = build_jobs(_JobBuilder(config, spec, models, source, donor, plan.vocab), plan.modules)
        text = models[donor].arch.text
        plan.num_layers = next((m.num_layers for m in plan.modules if m.name == text and m.how == "slices"), None)
        plan.dropped = account_for_inputs(plan)
        plan.model_config = plan_output_config(plan)
        check_plan(plan)
        return plan
    except BaseException:
        close_models(models)
        raise


def start_hub_inputs(plan: MergePlan, out, options: MergeOptions):
    """Start reading the plan's Hub inputs (io/hub_fetch.py): their weights download, in the
    order the pipeline reads them, while the merge runs, each job waiting for its own files
    only. Needs no torch, so `run` starts them while torch still imports."""
    from .io.hub_fetch import start_downloads

    return start_downloads(plan, out, processing_order(plan.jobs), quiet=options.quiet, stream=options.stream_inputs)
