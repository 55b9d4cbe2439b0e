"""What a merge will do, from the plan alone: `mergefast plan` / `mergefast yaml --dry-run`.

`summarize_plan` returns the numbers as a dict (tests and tools use it); `format_plan`
renders them for people. Nothing here reads tensor data: only the plan built from headers.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from .io.hub_fetch import download_summary
from .io.writer import OutputTensor, plan_shards, shard_file_names

_LAYER = re.compile(r"\.(\d+)\.")


def human_bytes(n: int) -> str:
    """1234567 -> '1.23 MB' (decimal units, like the merge summary)."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


def sample_jobs(jobs: list) -> list[tuple[str, Any]]:
    """(label, job) for the first job, one in the middle layer, and the last job."""
    if not jobs:
        return []
    layered = [j for j in jobs if _LAYER.search(j.name)]
    middle = jobs[len(jobs) // 2]
    if layered:
        layers = sorted({int(_LAYER.search(j.name).group(1)) for j in layered})
        mid_layer = layers[len(layers) // 2]
        middle = next(j for j in layered if int(_LAYER.search(j.name).group(1)) == mid_layer)
    picks: list[tuple[str, Any]] = []
    for label, job in (("first", jobs[0]), ("middle", middle), ("last", jobs[-1])):
        if all(job is not other for _, other in picks):
            picks.append((label, job))
    return picks


def peak_memory(plan, buffer_bytes: int = 0) -> tuple[int, str | None]:
    """Estimated peak bytes: the largest job's inputs + its output, + pipeline buffers."""
    best, name = 0, None
    for job in plan.jobs:
        size = job.read_bytes + job.out_bytes
        if size > best:
            best, name = size, job.name
    return best + buffer_bytes, name


def pipeline_buffer_bytes(options, largest_job_bytes: int) -> int:
    """The byte budget of the read/merge/write pipeline (`--max-memory`), 0 when unknown."""
    budget = getattr(options, "pipeline_budget", None)
    return int(budget(largest_job_bytes)) if budget else 0


def summarize_plan(plan, options=None, out_path: str | Path | None = None, buffer_bytes: int | None = None) -> dict:
    """The plan's numbers: outputs, per-model sources, bytes, shards, peak memory, samples.

    `buffer_bytes`: bytes the pipeline may hold in flight besides the largest job; by default
    its budget from `options` (`pipeline_budget`), capped by what the other jobs move."""
    jobs = plan.jobs
    if buffer_bytes is None:  # the other jobs' bytes the pipeline may hold besides the largest job
        total = sum(j.read_bytes + j.out_bytes for j in jobs)
        largest = peak_memory(plan)[0]
        buffer_bytes = max(0, min(pipeline_buffer_bytes(options, largest), total - largest))
    per_model: dict[str, dict] = {ref: {"tensors": 0, "bytes": 0} for ref in plan.models}
    for job in jobs:
        for s in job.sources:
            per_model[s.model]["tensors"] += 1
            per_model[s.model]["bytes"] += s.info.nbytes
    for ref, model in plan.models.items():
        per_model[ref].update(folder=str(model.folder), format=model.reader.format, layers=model.arch.num_layers)
        per_model[ref]["lora"] = getattr(model.reader, "lora_summary", None)  # io/lora_reader.py
    outputs = [OutputTensor(j.name, j.dtype_name, tuple(j.shape)) for j in jobs]
    shard_size = getattr(options, "out_shard_size", 0) or 0
    shards = plan_shards(outputs, shard_size) if outputs else []
    peak, peak_job = peak_memory(plan, buffer_bytes)
    samples = []
    for label, job in sample_jobs(jobs):
        samples.append(
            {
                "label": label,
                "name": job.name,
                "dtype": job.dtype_name,
                "shape": list(job.shape),
                "copy": job.copy,
                "global": dict(job.global_params),
                "sources": [
                    {"model": s.model, "tensor": s.tensor, "base": i == job.base_index, "params": dict(p)}
                    for i, (s, p) in enumerate(zip(job.sources, job.model_params))
                ],
            }
        )
    config = plan.config
    return {
        "config": plan.source,
        "method": plan.spec.name,
        "dtype": config.dtype,
        "out_dtype": config.out_dtype,
        "device": getattr(options, "math_device", None) if options is not None else None,
        "out": None if out_path is None else str(Path(out_path).absolute()),
        "output_tensors": len(jobs),
        "copied_tensors": sum(1 for j in jobs if j.copy),
        "output_layers": plan.num_layers,
        "modules": summarize_modules(plan),
        "dropped": list(plan.dropped),
        "models": per_model,
        "read_bytes": sum(j.read_bytes for j in jobs),
        "write_bytes": sum(o.nbytes for o in outputs),
        "shards": shard_file_names(len(shards)) if shards else [],
        "peak_memory_bytes": peak,
        "peak_memory_job": peak_job,
        "buffer_bytes": buffer_bytes,
        "samples": samples,
        "hub": download_summary(plan, None if out_path is None else Path(out_path)),
    }


def _slice_text(sl) -> str:
    """'slices[1]: ft-a [1, 3)' for the plan's module lines."""
    ranges = ", ".join(f"{s.model} [{s.start}, {s.end})" if s.end else s.model for s in sl.sources)
    return f"{sl.where}: {ranges}"


def summarize_modules(plan) -> list[dict]:
    """Per output module: its stack, input and output layer counts, and how it is made."""
    lead = plan.models[plan.donor].arch
    out = []
    for module_plan in plan.modules:
        module = lead.module(module_plan.name)
        first = module_plan.slices[0]
        out.append(
            {
                "name": module_plan.name,
                "stack": module.layer_prefix if module else None,
                "input_layers": module.num_layers if module else None,
                "output_layers": module_plan.num_layers,
                "how": module_plan.how,
                "slices": [_slice_text(sl) for sl in module_plan.slices],
                "from": first.where,
            }
        )
    return out


def _module_line(m: dict, method: str) -> str:
    stack = f" ({m['stack']}N)" if m["stack"] else ""
    layers = (
        (
            f"{m['input_layers']} -> {m['output_layers']} layers"
            if m["input_layers"] != m["output_layers"]
            else f"{m['output_layers']} layers"
        )
        if m["stack"]
        else "no layers"
    )
    if m["how"] == "carried":
        how = f"carried through {method} from the models of {m['from']}"
    elif m["how"] == "slices":
        how = "sliced: " + "; ".join(m["slices"])
    else:
        how = f"{method} over {m['slices'][0]}"
    return f"  {m['name']}{stack}: {layers}, {how}"


def _hub_lines(hub: dict) -> list[str]:
    """Per Hub input: what the merge will download and what is cached; the disks' needs."""
    lines = [
        f"  {ref} ({m['repo']}, commit {m['commit'][:12]}): download {m['files']} file(s), "
        f"{human_bytes(m['download_bytes'])}; cached {m['cached_files']} file(s), {human_bytes(m['cached_bytes'])}"
        for ref, m in hub["models"].items()
    ]
    lines += [
        f"  disk of {d['path']}: {d['what']} need {human_bytes(d['need'])}, {human_bytes(d['free'])} free"
        + ("" if d["need"] <= d["free"] else " (NOT ENOUGH: the merge will stop before downloading)")
        for d in hub["disks"]
    ]
    return ["from the Hugging Face Hub (only headers read so far):", *lines] if lines else []


def _params(params: dict) -> str:
    if not params:
        return "-"
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def format_plan(plan, options=None, out_path: str | Path | None = None, buffer_bytes: int | None = None) -> str:
    """The dry-run report as text (several lines, no trailing newline)."""
    s = summarize_plan(plan, options, out_path, buffer_bytes)
    dtype = s["dtype"] or "input dtype"
    lines = [
        f"plan for {s['config']} (dry run: only headers were read, nothing was written)",
        f"method: {s['method']}, dtype: {dtype}"
        + (f", out_dtype: {s['out_dtype']}" if s["out_dtype"] else "")
        + (f", math device: {s['device']}" if s["device"] else ""),
        f"models ({len(s['models'])}):",
    ]
    for ref, m in s["models"].items():
        lines.append(
            f"  {ref}: {m['folder']} ({m['format']}, {m['layers']} layers"
            + (f", {m['lora']}" if m.get("lora") else "")
            + "): "
            f"{m['tensors']} tensors read, {human_bytes(m['bytes'])}"
        )
    layers = f", {s['output_layers']} layers" if s["output_layers"] is not None else ""
    lines.append(
        f"output: {s['output_tensors']} tensors{layers} ({s['copied_tensors']} copied unchanged) in "
        f"{len(s['shards'])} shard(s)" + (f" -> {s['out']}" if s["out"] else "")
    )
    lines.append(f"modules ({len(s['modules'])}):")
    lines += [_module_line(m, s["method"]) for m in s["modules"]]
    lines += [f"  left out: {line}" for line in s["dropped"]]
    lines.append(
        f"bytes: read {human_bytes(s['read_bytes'])} ({s['read_bytes']}), "
        f"write {human_bytes(s['write_bytes'])} ({s['write_bytes']})"
    )
    buffers = f" + pipeline buffers up to {human_bytes(s['buffer_bytes'])}" if s["buffer_bytes"] else ""
    lines += _hub_lines(s["hub"])
    lines.append(
        f"estimated peak memory: {human_bytes(s['peak_memory_bytes'])} ({s['peak_memory_bytes']}): "
        f"largest job {s['peak_memory_job']} (inputs + output){buffers}"
    )
    lines.append("sample jobs (resolved parameters):")
    for job in s["samples"]:
        kind = "copy" if job["copy"] else s["method"]
        lines.append(
            f"  [{job['label']}] {job['name']}  {job['dtype']}{job['shape']}  {kind}; global: {_params(job['global'])}"
        )
        for src in job["sources"]:
            base = " (base)" if src["base"] else ""
            lines.append(f"      {src['model']}{base}: {src['tensor']}: {_params(src['params'])}")
    return "\n".join(lines)
