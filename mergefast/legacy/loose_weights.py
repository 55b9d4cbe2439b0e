"""Replacing a passthrough plan's pre-/post-weight jobs with copies from other models
(bakllama's `embedding_source` / `lm_head_source`)."""

from __future__ import annotations

from collections.abc import Sequence

from ..dtypes import FLOATS
from ..errors import ConfigError


def _is_layer(name: str, prefix: str | None) -> bool:
    from ..architecture import split_layer_name

    parts = split_layer_name(name)
    return parts is not None and parts.prefix == prefix


def _copy_jobs(plan, ref: str, names: Sequence[str], replaced: dict, what: str, out_dtype) -> list:
    """Jobs that copy tensors `names` of model `ref` unchanged (an untied head falls back to the
    tied embedding); each must have the shape of the job it replaces."""
    from ..plan import TensorJob, TensorSource

    reader = plan.models[ref].reader
    jobs = []
    for name in names:
        found = name if name in reader else plan.models[ref].arch.tied_heads.get(name)
        if found is None or found not in reader:
            continue
        info = reader.info(found)
        old = replaced.get(name)
        if old is not None and tuple(old.shape) != tuple(info.shape):
            raise ConfigError(
                f"{plan.source}: {what} {ref}: {found} has shape {list(info.shape)} but the "
                f"layers' model has {list(old.shape)} for {name}; the models must have the same "
                "vocabulary and hidden sizes"
            )
        dtype = out_dtype if out_dtype is not None and info.dtype_name in FLOATS else info.dtype_name
        jobs.append(
            TensorJob(
                name=name,
                sources=(TensorSource(ref, found, info),),
                base_index=None,
                global_params={},
                model_params=({"scale": None},),
                dtype_name=dtype,
                shape=tuple(info.shape),
                copy=dtype == info.dtype_name,
            )
        )
    return jobs


def take_loose_weights(plan, options, *, pre: str | None = None, post: str | None = None) -> None:
    """Make a passthrough plan take its pre-weights (embeddings) from model `pre` and its
    post-weights (final norm, lm_head) from model `post`, copied unchanged, instead of from the
    first/last slice's model (bakllama's `embedding_source` / `lm_head_source`).

    Relies on the plan's job order (pre-weights, layers, post-weights). Models not in the plan
    are opened (and must share its architecture unless --allow-crimes); each replacement must
    have the shape of the tensor it replaces, so config.json (from the first slice's model)
    stays true."""
    if plan.spec.name != "passthrough":
        raise ValueError("take_loose_weights works on passthrough plans only")
    slices = plan.config.slices
    first, last = slices[0].sources[0].model, slices[-1].sources[0].model
    pre = None if pre == first else pre
    post = None if post == last else post
    if pre is None and post is None:
        return
    if len(plan.modules) > 1:
        raise ConfigError(
            f"{plan.source}: embedding_source / lm_head_source work on single-module models only; "
            f"{first} has {plan.models[first].arch.describe()}"
        )
    _open_new_models(plan, options, [pre, post])
    head, middle, end = _split_at_layers(plan.jobs, plan.models[first].arch.layer_prefix)
    out_dtype = plan.config.out_dtype or plan.config.dtype
    if pre is not None:
        head = _copy_jobs(
            plan, pre, plan.models[pre].arch.pre_weights, {j.name: j for j in head}, "embedding_source", out_dtype
        )
    if post is not None:
        names = list(plan.models[post].arch.post_weights)
        names += [j.name for j in end if j.name not in names]  # e.g. lm_head from a tied source
        end = _copy_jobs(plan, post, names, {j.name: j for j in end}, "lm_head_source", out_dtype)
    plan.jobs = [*head, *middle, *end]


def _open_new_models(plan, options, refs: Sequence[str | None]) -> None:
    """Open the models of `refs` the plan does not hold yet (same architecture unless
    --allow-crimes)."""
    from ..inputs import open_models

    new = [r for r in dict.fromkeys(refs) if r is not None and r not in plan.models]
    if new:
        plan.models.update(open_models(new, options.transformers_cache, True))
        if not options.allow_crimes:
            _check_architecture(plan, new)


def _split_at_layers(jobs: list, prefix: str | None) -> tuple[list, list, list]:
    """(pre-weight jobs, layer jobs, post-weight jobs) of a plan's jobs in output order."""
    layer_at = [i for i, job in enumerate(jobs) if _is_layer(job.name, prefix)]
    lead = layer_at[0] if layer_at else len(jobs)
    tail = layer_at[-1] + 1 if layer_at else len(jobs)
    return jobs[:lead], jobs[lead:tail], jobs[tail:]


def _check_architecture(plan, new: Sequence[str]) -> None:
    """ConfigError when a newly opened model's architecture differs from the plan's models'."""

    def arch(ref):
        return tuple(plan.models[ref].config.get("architectures") or ())

    known = {arch(r): r for r in plan.models if r not in new and arch(r)}
    for ref in new:
        if arch(ref) and known and arch(ref) not in known:
            other, kind = next(iter(known.values())), next(iter(known))
            raise ConfigError(
                f"models have different architectures: {other} is {'/'.join(kind)} but {ref} is "
                f"{'/'.join(arch(ref))}; pass --allow-crimes to merge them anyway"
            )
