"""mergekit's older command lines: `mergefast-legacy` (mergekit-legacy's flags) and `bakllama`.

`mergefast-legacy OUT --merge M ... --base-model B` turns mergekit-legacy's flags into the same
`models:` config mergekit-legacy 0.1.5 builds, prints it with `--print-yaml` in the same shape
(PyYAML's default dump: block style, sorted keys), then merges it like `mergefast yaml`.
Flag semantics follow mergekit-legacy:

- the base model is appended to the models when `--merge` does not list it;
- one `--weight` / `--density` is given to every model (the appended base included); several
  are given to the models in order (extra models get none; more values than models is an error);
- `--method slerp` takes exactly one `--weight`, written as the global `t`;
- `normalize` is always written into `parameters`; `--int8-mask` writes `int8_mask: true`;
  `--bf16` writes `dtype: bfloat16` (off by default, as in 0.1.x);
- `--naive-count` writes `consensus_method: count` in mergekit, a key nothing reads there.

mergekit ignores parameters a method does not take; mergefast's schema rejects them. So the
keys mergekit would ignore (`consensus_method`, `normalize`/`int8_mask` for methods without
them, `density` for methods without it) are left out of the config, with a warning when a
flag the user gave caused them; the printed YAML is exactly the config that is merged.

`bakllama CONFIG OUT` reads the original layer-stacking format
(`layer_slices: [{model, start, end, scale?}]`, `embedding_source`, `lm_head_source`) and
merges it as a `passthrough` `slices:` config: `end` is exclusive, `scale` multiplies only the
`down_proj` weights of its slice, the output layer count is the sum of the slice lengths.
Embeddings come from `embedding_source` (default: the first slice's model), the final norm and
`lm_head` from `lm_head_source` (default: the last slice's model); when those differ from the
first/last slice's model the plan's pre-/post-weight jobs are replaced by copies from them
(`take_loose_weights`). mergekit 0.1.5 ships bakllama broken (it fails config validation).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Sequence

import click
import yaml

from .cli import merge_options, reports_errors
from .errors import ConfigError

log = logging.getLogger("mergefast")

LEGACY_SOURCE = "mergefast-legacy"


# --- mergekit-legacy ---------------------------------------------------------------------------

def _spread(flag: str, values: Sequence[float], models: list[dict], key: str) -> None:
    """Give one value to every model, or values to the models in order (mergekit-legacy)."""
    if not values:
        return
    if len(values) == 1:
        values = list(values) * len(models)
    if len(values) > len(models):
        names = ", ".join(m["model"] for m in models)
        raise ConfigError(f"{LEGACY_SOURCE}: {len(values)} {flag} values for {len(models)} models ({names}); "
                          f"give one value for every model or at most one per model")
    for model, value in zip(models, values):
        model["parameters"][key] = float(value)


def legacy_config(merge: Sequence[str], weight: Sequence[float] = (), density: Sequence[float] = (),
                  method: str = "ties", base_model: str | None = None, normalize: bool = True,
                  int8_mask: bool = False, bf16: bool = False, naive_count: bool = False) -> dict:
    """The config mergekit-legacy 0.1.5 builds from these flags, as a plain dict (its keys and
    values exactly; `drop_unread_keys` then removes what mergefast's schema rejects)."""
    if not merge and not base_model:
        raise ConfigError(f"{LEGACY_SOURCE}: no models: give --merge MODEL (repeated) and --base-model")
    models = [{"model": m, "parameters": {}} for m in merge]
    if base_model and base_model not in merge:
        models.append({"model": base_model, "parameters": {}})
    parameters: dict[str, Any] = {}
    _spread("--density", density, models, "density")
    if method == "slerp":
        if len(weight) != 1:
            raise ConfigError(f"{LEGACY_SOURCE}: --method slerp takes exactly one --weight (it becomes the "
                              f"interpolation factor t), got {len(weight)}")
        parameters["t"] = float(weight[0])
    else:
        _spread("--weight", weight, models, "weight")
    if int8_mask:
        parameters["int8_mask"] = True
    if naive_count:
        parameters["consensus_method"] = "count"
    parameters["normalize"] = bool(normalize)
    data: dict[str, Any] = {"merge_method": method, "models": models, "parameters": parameters}
    if base_model:
        data["base_model"] = base_model
    if bf16:
        data["dtype"] = "bfloat16"
    return data


# the flag that writes each parameter mergekit-legacy may generate
_FLAGS = {"consensus_method": "--naive-count", "int8_mask": "--int8-mask", "normalize": "--normalize",
          "density": "--density", "weight": "--weight", "t": "--weight"}


def drop_unread_keys(data: dict, given: Sequence[str] = ()) -> tuple[dict, list[str]]:
    """`data` without the parameters the method does not take (mergekit ignores them, mergefast's
    schema rejects them), and a warning for each one a flag in `given` caused.

    An unknown method is left alone: parsing the config then reports it."""
    from .methods.registry import METHODS

    spec = METHODS.get(data["merge_method"])
    if spec is None:
        return data, []
    method, dropped = data["merge_method"], []

    def keep(block: dict, allowed) -> dict:
        dropped.extend(k for k in block if not allowed(k))
        return {k: v for k, v in block.items() if allowed(k)}

    model_names = {p.name for p in spec.model_params}
    parameters = keep(data["parameters"], lambda k: spec.param(k) is not None)
    models = [{**entry, "parameters": keep(entry["parameters"], model_names.__contains__)}
              for entry in data["models"]]
    warnings = []
    for key in dict.fromkeys(dropped):
        flag = _FLAGS.get(key, key)
        if key == "consensus_method":
            warnings.append("--naive-count writes `consensus_method: count`, which mergekit 0.1.5 never reads "
                            "(a no-op); it is left out of the config")
        elif flag in given:
            warnings.append(f"{flag}: {method} takes no '{key}' parameter (mergekit ignores it); "
                            "it is left out of the config")
        else:
            log.info("%s takes no '%s' parameter; left out of the config", method, key)
    return {**data, "models": models, "parameters": parameters}, warnings


def dump_yaml(data: dict) -> str:
    """PyYAML's default dump, as mergekit-legacy's --print-yaml writes it (block style, sorted keys)."""
    return yaml.safe_dump(data, default_flow_style=False, sort_keys=True)


def _given_flags(ctx: click.Context) -> set[str]:
    """The legacy flags that came from the command line (not defaults)."""
    given = set()
    for name, flag in (("normalize", "--normalize"), ("int8_mask", "--int8-mask"),
                       ("density", "--density"), ("weight", "--weight")):
        source = ctx.get_parameter_source(name)
        if source is not None and source.name == "COMMANDLINE":
            given.add(flag)
    return given


def _run(config_text: str, source: str, out_path: str, options: dict, dry_run: bool,
         adjust=None, explain=None) -> None:
    """Parse `config_text`, plan, optionally `adjust(plan, opts)`, then merge (or print the plan)."""
    from .config import parse_config
    from .execute import check_out_path, execute
    from .options import MergeOptions
    from .plan import build_plan

    opts = MergeOptions.from_kwargs(**options)
    config = parse_config(config_text, source)
    check_out_path(Path(out_path).absolute())
    opts.math_device  # noqa: B018 - --cuda without a GPU is a usage error, found before planning
    try:
        plan = build_plan(config, config_text, source, opts)
        try:
            if adjust is not None:
                adjust(plan, opts)
        except BaseException:
            plan.close()
            raise
    except ConfigError as exc:
        raise ConfigError(explain(str(exc)) if explain else str(exc)) from None
    try:
        if dry_run:
            from .report import format_plan

            click.echo(format_plan(plan, opts, out_path))
            return
        stats = execute(plan, out_path, opts)
    finally:
        plan.close()
    if not opts.quiet:
        from .summary import format_summary

        click.echo(format_summary(stats), err=True)


DRY_RUN = click.option("--dry-run", is_flag=True, default=False,
                       help="Validate and plan (headers only), print the plan, write nothing.")


@click.command("legacy")
@click.argument("out_path", type=click.Path(file_okay=True))
@click.option("--merge", "merge", multiple=True, help="Add a model to the merge (repeat).")
@click.option("--density", type=float, multiple=True,
              help="Fraction of weights to keep: once for every model, or once per model in order.")
@click.option("--weight", type=float, multiple=True,
              help="Model weight: once for every model, or once per model; with --method slerp, t.")
@click.option("--method", default="ties", show_default=True, help="Merge method.")
@click.option("--base-model", default=None, help="Base model (added to the models when not a --merge).")
@click.option("--normalize/--no-normalize", default=True, show_default=True,
              help="Divide merged parameters by the sum of weights.")
@click.option("--int8-mask/--no-int8-mask", default=False, help="Accepted (writes int8_mask: true).")
@click.option("--bf16/--no-bf16", default=False, help="dtype: bfloat16.")
@click.option("--naive-count/--no-naive-count", default=False,
              help="Accepted; mergekit writes consensus_method: count, which nothing reads (dropped here).")
@click.option("--print-yaml/--no-print-yaml", default=False, help="Print the generated config, then merge.")
@DRY_RUN
@merge_options
@click.pass_context
@reports_errors
def legacy_command(ctx, out_path, merge, density, weight, method, base_model, normalize, int8_mask, bf16,
                   naive_count, print_yaml, dry_run=False, **options):
    """Merge with mergekit-legacy's flags into the folder OUT_PATH (mergekit-legacy compatible)."""
    from .config import parse_config

    data = legacy_config(merge, weight, density, method, base_model, normalize, int8_mask, bf16, naive_count)
    data, warnings = drop_unread_keys(data, _given_flags(ctx))
    for warning in warnings:
        log.warning(warning)
    text = dump_yaml(data)
    parse_config(text, LEGACY_SOURCE)  # before printing: an unknown method prints nothing
    if print_yaml:
        click.echo(text)
    _run(text, LEGACY_SOURCE, out_path, options, dry_run, explain=_legacy_words)


# --- bakllama ----------------------------------------------------------------------------------

_BAKLLAMA_KEYS = ("layer_slices", "embedding_source", "lm_head_source")
_SLICE_KEYS = ("model", "start", "end", "scale")


def _unknown_key(key: Any, known: Sequence[str], where: str) -> ConfigError:
    from .config import did_you_mean

    return ConfigError(f"{where}: unknown key '{key}'{did_you_mean(key, known)}; expected {', '.join(known)}")


def _int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where}: expected a whole number, got {value!r}")
    return value


def _model(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: expected a model path or repo id, got {value!r}")
    return value.strip()


def read_bakllama(text: str, source: str) -> dict:
    """Validate a bakllama YAML config; returns {layer_slices: [...], embedding_source, lm_head_source}."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{source}: invalid YAML{where}: {getattr(exc, 'problem', None) or exc}") from None
    if not isinstance(data, dict) or "layer_slices" not in data:
        raise ConfigError(f"{source}: expected a bakllama config: a mapping with `layer_slices`")
    for key in data:
        if key not in _BAKLLAMA_KEYS:
            raise _unknown_key(key, _BAKLLAMA_KEYS, source)
    slices = data["layer_slices"]
    if not isinstance(slices, list) or not slices:
        raise ConfigError(f"{source}: layer_slices: expected a non-empty list of {{model, start, end, scale}}")
    out = []
    for i, item in enumerate(slices):
        where = f"{source}: layer_slices[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(f"{where}: expected a mapping with model, start, end (and optionally scale)")
        for key in item:
            if key not in _SLICE_KEYS:
                raise _unknown_key(key, _SLICE_KEYS, where)
        for key in ("model", "start", "end"):
            if key not in item:
                raise ConfigError(f"{where}: missing `{key}`")
        start, end = _int(item["start"], f"{where}.start"), _int(item["end"], f"{where}.end")
        if start < 0 or end <= start:
            raise ConfigError(f"{where}: start {start}, end {end}: need 0 <= start < end (end is exclusive)")
        scale = item.get("scale")
        if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float))):
            raise ConfigError(f"{where}.scale: expected a number, got {scale!r}")
        out.append({"model": _model(item["model"], f"{where}.model"), "start": start, "end": end,
                    "scale": None if scale is None else float(scale)})
    result = {"layer_slices": out}
    for key in ("embedding_source", "lm_head_source"):
        value = data.get(key)
        result[key] = None if value is None else _model(value, f"{source}: {key}")
    return result


def bakllama_yaml(bak: dict, fp16: bool = False, origin: str | None = None) -> str:
    """The `passthrough` `slices:` config for a validated bakllama config (YAML text).

    Embedding/lm_head sources that differ from the first/last slice's model cannot be said in
    mergekit YAML; a comment at the top records them."""
    slices = []
    for s in bak["layer_slices"]:
        src: dict[str, Any] = {"model": s["model"], "layer_range": [s["start"], s["end"]]}
        if s["scale"] is not None:
            src["parameters"] = {"scale": [{"filter": "down_proj", "value": s["scale"]}]}
        slices.append({"sources": [src]})
    data: dict[str, Any] = {"merge_method": "passthrough"}
    if fp16:
        data["dtype"] = "float16"
    data["slices"] = slices
    lines = [f"# bakllama config {origin} as passthrough slices (mergefast bakllama)"] if origin else []
    embed, head = _edge_sources(bak)
    if embed != bak["layer_slices"][0]["model"]:
        lines.append(f"# embeddings from embedding_source: {embed}")
    if head != bak["layer_slices"][-1]["model"]:
        lines.append(f"# final norm and lm_head from lm_head_source: {head}")
    header = "".join(line + "\n" for line in lines)
    return header + yaml.safe_dump(data, default_flow_style=None, sort_keys=False)


def _edge_sources(bak: dict) -> tuple[str, str]:
    """(embedding source, lm_head source) with bakllama's defaults applied."""
    return (bak["embedding_source"] or bak["layer_slices"][0]["model"],
            bak["lm_head_source"] or bak["layer_slices"][-1]["model"])


def _is_layer(name: str, prefix: str | None) -> bool:
    from .architecture import split_layer_name

    parts = split_layer_name(name)
    return parts is not None and parts.prefix == prefix


def _copy_jobs(plan, ref: str, names: Sequence[str], replaced: dict, what: str, out_dtype) -> list:
    """Jobs that copy tensors `names` of model `ref` unchanged (an untied head falls back to the
    tied embedding); each must have the shape of the job it replaces."""
    from .architecture import TIED_HEADS
    from .plan import TensorJob, TensorSource

    reader = plan.models[ref].reader
    jobs = []
    for name in names:
        found = name if name in reader else TIED_HEADS.get(name)
        if found is None or found not in reader:
            continue
        info = reader.info(found)
        old = replaced.get(name)
        if old is not None and tuple(old.shape) != tuple(info.shape):
            raise ConfigError(f"{plan.source}: {what} {ref}: {found} has shape {list(info.shape)} but the "
                              f"layers' model has {list(old.shape)} for {name}; the models must have the same "
                              "vocabulary and hidden sizes")
        dtype = out_dtype if out_dtype is not None and info.dtype.is_floating_point else info.dtype
        jobs.append(TensorJob(name=name, sources=(TensorSource(ref, found, info),), base_index=None,
                              global_params={}, model_params=({"scale": None},), dtype=dtype,
                              shape=tuple(info.shape), copy=dtype == info.dtype))
    return jobs


def take_loose_weights(plan, options, *, pre: str | None = None, post: str | None = None) -> None:
    """Make a passthrough plan take its pre-weights (embeddings) from model `pre` and its
    post-weights (final norm, lm_head) from model `post`, copied unchanged, instead of from the
    first/last slice's model (bakllama's `embedding_source` / `lm_head_source`).

    Relies on the plan's job order (pre-weights, layers, post-weights). Models not in the plan
    are opened (and must share its architecture unless --allow-crimes); each replacement must
    have the shape of the tensor it replaces, so config.json (from the first slice's model)
    stays true."""
    from .inputs import open_models
    from .plan import TORCH_DTYPES

    if plan.spec.name != "passthrough":
        raise ValueError("take_loose_weights works on passthrough plans only")
    slices = plan.config.slices
    first, last = slices[0].sources[0].model, slices[-1].sources[0].model
    pre = None if pre == first else pre
    post = None if post == last else post
    if pre is None and post is None:
        return
    new = [r for r in dict.fromkeys((pre, post)) if r is not None and r not in plan.models]
    if new:
        plan.models.update(open_models(new, options.transformers_cache, True))
        if not options.allow_crimes:
            _check_architecture(plan, new)
    prefix = plan.models[first].arch.layer_prefix
    layer_at = [i for i, job in enumerate(plan.jobs) if _is_layer(job.name, prefix)]
    lead = layer_at[0] if layer_at else len(plan.jobs)
    tail = layer_at[-1] + 1 if layer_at else len(plan.jobs)
    head, middle, end = plan.jobs[:lead], plan.jobs[lead:tail], plan.jobs[tail:]
    name = plan.config.out_dtype or plan.config.dtype
    out_dtype = TORCH_DTYPES[name] if name else None
    if pre is not None:
        head = _copy_jobs(plan, pre, plan.models[pre].arch.pre_weights, {j.name: j for j in head},
                          "embedding_source", out_dtype)
    if post is not None:
        names = list(plan.models[post].arch.post_weights)
        names += [j.name for j in end if j.name not in names]  # e.g. lm_head from a tied source
        end = _copy_jobs(plan, post, names, {j.name: j for j in end}, "lm_head_source", out_dtype)
    plan.jobs = [*head, *middle, *end]


def _check_architecture(plan, new: Sequence[str]) -> None:
    def arch(ref):
        return tuple(plan.models[ref].config.get("architectures") or ())

    known = {arch(r): r for r in plan.models if r not in new and arch(r)}
    for ref in new:
        if arch(ref) and known and arch(ref) not in known:
            other, kind = next(iter(known.values())), next(iter(known))
            raise ConfigError(f"models have different architectures: {other} is {'/'.join(kind)} but {ref} is "
                              f"{'/'.join(arch(ref))}; pass --allow-crimes to merge them anyway")


_SLICE_WHERE = re.compile(r"slices\[(\d+)\]\.sources\[0\](?:\.layer_range: \[(\d+), (\d+)\])?")


def _bakllama_words(message: str) -> str:
    """Planner messages name `slices[i].sources[0].layer_range: [a, b]`: say `layer_slices[i]:
    start a, end b` instead."""
    def words(m: re.Match) -> str:
        where = f"layer_slices[{m.group(1)}]"
        return f"{where}: start {m.group(2)}, end {m.group(3)}" if m.group(2) else where
    return _SLICE_WHERE.sub(words, message)


def _legacy_words(message: str) -> str:
    """A missing weight comes from missing --weight flags: say which flag to give."""
    if "missing required parameter 'weight'" in message:
        return (message + "; give --weight once (for every model) or once per model in order, the appended "
                "--base-model last")
    return message


@click.command("bakllama")
@click.argument("config_file", type=click.Path(dir_okay=False))
@click.argument("out_path", type=click.Path(file_okay=True))
@click.option("--clone-tensors/--no-clone-tensors", default=False,
              help="Accepted for compatibility: repeated layers always work in mergefast.")
@click.option("--fp16/--no-fp16", default=False, help="dtype: float16.")
@click.option("--print-yaml/--no-print-yaml", default=False,
              help="Print the equivalent passthrough config, then merge.")
@DRY_RUN
@merge_options
@reports_errors
def bakllama_command(config_file, out_path, clone_tensors=False, fp16=False, print_yaml=False, dry_run=False,
                     **options):
    """Stack layer ranges of models (a bakllama CONFIG_FILE) into the folder OUT_PATH."""
    path = Path(config_file)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the config ({exc})") from None
    bak = read_bakllama(text, str(path))
    config_text = bakllama_yaml(bak, fp16, origin=path.name)
    if print_yaml:
        click.echo(config_text)
    embed, head = _edge_sources(bak)
    _run(config_text, str(path), out_path, options, dry_run,
         adjust=lambda plan, opts: take_loose_weights(plan, opts, pre=embed, post=head),
         explain=_bakllama_words)
