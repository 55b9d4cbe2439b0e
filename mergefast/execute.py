"""Runs a plan: read each job's inputs, merge on the math device, stream into the output.

The output is written into a temporary folder beside OUT (named `.<OUT>.mergefast-partial-*`)
and renamed into place only when everything is written, so OUT never holds a half-written
model.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import MergeError
from .io.out_path import check_output_folder, check_stats_path, output_folder
from .io.output import check_copied_tokenizer, tokenizer_copy_source, write_json, write_tokenizer
from .io.pipeline import run_pipeline
from .io.resident import inputs_resident
from .io.writer import OutputTensor, ShardedWriter
from .methods.spec import NONFINITE_REACHES_OUTPUT  # noqa: F401 - re-exported for tests
from .options import MergeOptions
from .plan import MergePlan, TensorJob, input_spans, pooled_order, processing_order, start_hub_inputs
from .staging import staging_for
from .summary import RunSummary, peak_rss_bytes, write_stats_json

if TYPE_CHECKING:
    import torch

PARTIAL_MARK = ".mergefast-partial-"


def merge_job(plan: MergePlan, job: TensorJob, tensors: list[torch.Tensor], seed: int | None = None) -> torch.Tensor:
    """Merge a job's input tensors (already on the math device); the result stays there.

    `seed` is `--random-seed` (None means 0): with the output name it keys DARE/DELLA masks.
    (The torch engine's imports are here: the torch-free engine, host/, never loads them.)"""
    from .checks import all_finite, check_output_finite, warn_nonfinite_inputs
    from .kernels.cpu import finite_inputs
    from .kernels.fused import merge_group
    from .methods.linear import ZeroWeightSumError

    if job.vocab is not None:  # embeddings / lm_head: align rows to the output vocabulary first
        tensors = job.vocab.apply(tensors, job.dtype)
    if job.copy:
        return check_output_finite(job.name, tensors[0], job.sources)
    try:
        with finite_inputs() as proven:
            out = merge_group(
                plan.spec,
                tensors,
                job.base_index,
                job.global_params,
                job.model_params,
                job.dtype,
                seed=seed,
                tensor_name=job.name,
            )
    except ZeroWeightSumError as exc:
        raise MergeError(f"{plan.source}: tensor {job.name}: {exc}") from None
    output_finite = all_finite(out)
    # A NaN/inf input of linear, slerp, nearswap or sce always reaches the output (checked by
    # tests/test_nonfinite_reaches_output.py), so a finite output proves finite inputs and saves
    # a pass over every input (~0.3 ns per element; sce's 4 inputs on the 0.3B family: ~0.3 s
    # of CPU). TIES drops NaN deltas in the sign election, so other methods scan their inputs,
    # except those the C++ kernel proved finite (`proven`) while it read them.
    if not output_finite or plan.spec.name not in NONFINITE_REACHES_OUTPUT:
        warn_nonfinite_inputs(job.name, job.sources, tensors, proven)
    if not output_finite:
        check_output_finite(job.name, out, job.sources, tensors)
    return out


def run_job(plan: MergePlan, job: TensorJob, device: str) -> torch.Tensor:
    """Read a job's inputs and return its output tensor on the CPU (no pipeline)."""
    tensors = [plan.models[s.model].reader.read(s.tensor) for s in job.sources]
    if not job.copy:
        tensors = [t.to(device) for t in tensors]
    return merge_job(plan, job, tensors).cpu()


def torch_free(plan: MergePlan, options: MergeOptions) -> bool:
    """Whether the merge runs on the torch-free CPU engine (host/): wherever it covers the
    plan, in a process that has torch too (`mergefast.merge` from a notebook): its parts and
    mapped inputs beat the torch engine's staging there as well. 0.3B family, merges in a
    process that had imported torch, 3 alternated runs: TIES 1.26-1.65 s against 1.63-2.77 s
    on the torch engine, linear 0.68-1.12 against 1.14-1.20 s."""
    from .host import refusal

    return refusal(plan, options) is None


def _engine(
    plan: MergePlan,
    jobs: list,
    options: MergeOptions,
    budget: int,
    host: bool,
    on_torch: frozenset[str] = frozenset(),
    writer: ShardedWriter | None = None,
):
    """(staging, merge function of (job, staged)) of the torch-free engine or the torch one,
    for running `jobs` (the plan's, or their parts on the torch-free engine, which merges
    those named in `on_torch` with torch); the torch-free engine places each output where
    `writer` (its O_DIRECT pwrites) takes it without a copy."""
    seed = options.random_seed
    if not host or on_torch:
        # Ctrl-C or SIGTERM inside torch's import (1-2.5 s, while Hub shards download) would raise
        # in its C++ initialisation: "terminate called", or a hang. They wait until it is done.
        # Here, not on a thread of its own beside the stages: their torch calls would then import
        # parts of it half made.
        with _signals_held():
            import torch

        if seed is not None:
            torch.manual_seed(seed)
    if host:
        from .host.merge import merge_host_job
        from .host.staging import HostArrayStaging

        out_offset = None
        if writer is not None and writer.direct_io:
            out_offset = lambda job: writer.offset(job.name, job.start)  # noqa: E731
        staging = HostArrayStaging(plan, jobs, on_torch, out_offset)
        return staging, lambda job, staged: staging.merge(
            job, staged, lambda *a: merge_host_job(plan, *a, seed, on_torch, merge_job)
        )
    staging = staging_for(plan, options.math_device, budget)
    return staging, lambda job, staged: staging.merge(job, staged, lambda j, ts: merge_job(plan, j, ts, seed))


def _write_tensors(
    plan: MergePlan,
    folder: Path,
    options: MergeOptions,
    stats: RunSummary,
    downloads=None,
    host: bool = False,
    on_torch: frozenset[str] = frozenset(),
) -> None:
    outputs = [OutputTensor(j.name, j.dtype_name, j.shape) for j in plan.jobs]
    out_bytes = {o.name: o.nbytes for o in outputs}
    device = "cpu" if host else options.math_device
    jobs = pooled_order(processing_order(plan.jobs))
    if host:
        from .host.parts import split_jobs
        from .io.hub_stream import streamed_inputs

        if not streamed_inputs(plan):  # a range request costs a round trip: whole tensors, as the torch engine
            jobs = split_jobs(plan, jobs, on_torch)
    budget = _budget(plan, jobs, options, device)
    writer = ShardedWriter(folder, outputs, options.out_shard_size)
    try:
        staging, merge = _engine(plan, jobs, options, budget, host, on_torch, writer)
    except BaseException:  # Ctrl-C in torch's import
        writer.abort()
        raise
    total = sum(j.read_bytes for j in jobs)  # a SLERP part is read twice (host/parts.py)
    try:
        with _progress_bar(total, options.quiet) as bar:

            def write(job, pending):
                staging.write(pending, lambda tensor: writer.write(job.name, tensor, job.start))

            def done(job):
                stats.tensors += job.ends_tensor
                stats.read_bytes += 0 if job.reduces else job.read_bytes  # the plan's bytes, once
                bar.update(job.read_bytes)

            stages = run_pipeline(
                jobs,
                staging.read,
                merge,
                write,
                cost=lambda job: job.read_bytes + job.out_bytes,
                budget=budget,
                progress=done,
                on_stop=lambda: _stop(staging, downloads),
                readers=staging.readers,
                mergers=staging.mergers,
                alone=staging.runs_alone,
            )
        if downloads is not None:
            downloads.finish()  # a job may read a file's bytes before its download has ended
        writer.finish()
    except BaseException:
        writer.abort()
        raise
    finally:
        staging.close()  # a stage still waiting for a pinned slot stops now
    stats.written_bytes = sum(out_bytes.values())
    stats.read_s, stats.merge_s, stats.write_s = stages.read_s, stages.merge_s, stages.write_s
    stats.h2d_s, stats.d2h_s = staging.copy_seconds()
    stats.device = device
    if downloads is not None:  # the reader's waits for shards are download time, not read time
        stats.read_s = max(0.0, stats.read_s - downloads.waited_s)
        stats.download_wait_s = downloads.waited_s
        if downloads.fresh_bytes:
            stats.set_download(downloads.fresh_bytes, downloads.seconds)


class _NoBar:
    """--quiet's progress bar: nothing shown."""

    def update(self, n: int) -> None:
        """Nothing to show."""


def _progress_bar(total: int, quiet: bool):
    """The merge's byte progress bar (a context manager), tqdm's unless --quiet. Quiet, tqdm is
    not imported: its import and the multiprocessing lock a bar makes even when disabled took
    ~8 ms of a merge's start (python -X importtime, 2-vCPU Intel Xeon VM)."""
    if quiet:
        return nullcontext(_NoBar())
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, desc="merging")


def _budget(plan: MergePlan, jobs: list, options: MergeOptions, device: str) -> int:
    """The pipeline's byte budget for running `jobs` (options.pipeline_budget): on the CPU,
    smaller when every input is in the page cache, where reading ahead gains nothing. A CUDA
    merge keeps its budget: its pinned ring is shaped from it (staging/cuda.py), untimed with
    less."""
    costs = sorted(j.read_bytes + j.out_bytes for j in jobs)
    typical = None
    if options.max_memory is None and device == "cpu" and inputs_resident(input_spans(plan.jobs)):
        typical = costs[len(costs) // 2]
    return options.pipeline_budget(costs[-1], typical)


def _stop(staging, downloads) -> None:
    """The pipeline stops: wake a stage waiting for a pinned slot, and stop the Hub downloads
    (a reader waiting for a shard then stops too)."""
    staging.close()
    if downloads is not None:
        downloads.cancel()


def _write_side_files(plan: MergePlan, folder: Path, options: MergeOptions, out_name: str) -> None:
    config = plan.config
    write_json(folder / "config.json", plan.model_config)
    write_tokenizer(plan, folder, options)
    if options.write_model_card:
        from .io.card import model_card

        others = [m for m in plan.models if m != config.base_model and m != config.tokenizer_source]
        base = None if config.merge_method == "slerp" else config.base_model
        if base is None and config.base_model:
            others = [config.base_model, *others]
        card = model_card(
            plan.config_text, method=config.merge_method, base_model=base, models=others, out_name=out_name
        )
        (folder / "README.md").write_text(card, encoding="utf-8")
        (folder / "mergekit_config.yml").write_text(plan.config_text, encoding="utf-8")


def replace_folder(tmp: Path, out: Path, *, undo_on_signal: bool = False) -> None:
    """Move the finished `tmp` to `out`, replacing an existing `out` only at this moment.

    Ctrl-C and SIGTERM wait for the two renames (between them neither OUT is in place). Then,
    with `undo_on_signal` (execute's way), a signal that came undoes them (the new model back
    in `tmp`, the old OUT back in place) and is raised: the merge stops with 130/143 and OUT
    as it was, as at any earlier moment. Without it, the signal is dropped."""
    old = out.parent / f".{out.name}.mergefast-old-{os.getpid()}"
    with _signals_held(redeliver=undo_on_signal) as came:
        replaced = out.exists()
        if replaced:
            os.rename(out, old)
        try:
            os.rename(tmp, out)
        except BaseException:
            if replaced:
                os.rename(old, out)
            raise
        if came and undo_on_signal:
            os.rename(out, tmp)
            if replaced:
                os.rename(old, out)
            return
    if replaced:
        with _signals_held(redeliver=False):  # the merge is done: a signal now is dropped
            shutil.rmtree(old, ignore_errors=True)


@contextmanager
def _signals_held(redeliver: bool = True):
    """Ctrl-C and SIGTERM wait until the block is done; it gets the list of those that came.
    Then the first one is raised (its own handler runs), or dropped with redeliver=False. A
    signal the process ignores stays ignored."""
    came: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield came
        return
    held = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(sig) not in (signal.SIG_IGN, None):  # None: set outside Python
            held[sig] = signal.signal(sig, lambda signum, frame: came.append(signum))
    try:
        yield came
    finally:
        for sig, handler in held.items():
            signal.signal(sig, handler)
    if came and redeliver:
        signal.raise_signal(came[0])


def execute(plan: MergePlan, out_path: str | Path, options: MergeOptions, downloads=None) -> RunSummary:
    """Run every job of `plan` and write the finished model folder at `out_path`.
    `downloads`: the plan's Hub downloads when started already (`start_hub_inputs`); they
    are closed at the end either way."""
    out = output_folder(out_path)
    try:
        check_output_folder(out, plan)
        check_stats_path(options.stats_json, out)
        tokenizer_source = tokenizer_copy_source(plan, options)
        if tokenizer_source is not None:
            check_copied_tokenizer(tokenizer_source)
        host = torch_free(plan, options)
        if not host and not all(job.copy for job in plan.jobs):
            from . import kernels

            kernels.warn_missing_kernels(options.math_device)  # one line: why, and how to fix it
        if downloads is None:
            downloads = start_hub_inputs(plan, out, options)
        stats = _merge_into(plan, out, options, downloads, host)
    finally:
        if downloads is not None:
            downloads.close()  # after a failure or Ctrl-C none goes on (the cache keeps partial files)
    if options.stats_json:
        write_stats_json(options.stats_json, stats, out)  # OUT is complete: a failure here says so
    return stats


def _merge_into(plan: MergePlan, out: Path, options: MergeOptions, downloads, host: bool = False) -> RunSummary:
    """Merge into a temporary folder beside `out`, then move it into place; `host`: on the
    torch-free engine (`torch_free`)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}{PARTIAL_MARK}{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    stats, start = RunSummary(), time.perf_counter()
    on_torch: frozenset[str] = frozenset()
    if host:
        from .host import torch_jobs

        on_torch = frozenset(torch_jobs(plan))  # merged with torch by the torch-free engine
    try:
        _write_tensors(plan, tmp, options, stats, downloads, host, on_torch)
        _write_side_files(plan, tmp, options, out.name)
        replace_folder(tmp, out, undo_on_signal=True)
    except BaseException:
        with _signals_held(redeliver=False):  # a second Ctrl-C must not leave half of tmp
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    stats.wall_s = time.perf_counter() - start
    stats.peak_rss_bytes = peak_rss_bytes()
    stats.backends = _backends(plan, options, host, len(on_torch))
    return stats


def _backends(plan: MergePlan, options: MergeOptions, host: bool, on_torch: int = 0) -> dict[str, str]:
    """Which kernel backend ran the method (passthrough copies need none), and whether
    without torch (the torch-free engine, host/) or how many tensors it merged with torch."""
    free = " without torch" if host else ""
    if on_torch:
        free = f", {on_torch} tensor{'s' * (on_torch > 1)} with torch"
    if all(job.copy for job in plan.jobs):
        return {plan.spec.name: "copy" + free}
    if host:
        return {plan.spec.name: "cpu-ext" + free}
    from . import kernels

    return {plan.spec.name: kernels.backend(options.math_device)}
