"""The one merge run behind `merge()`, `mergefast yaml` / `plan` and the legacy commands.

Options, config, OUT alone, the math device: everything that needs no model is checked before
planning (a bad flag or OUT fails in a second, not after the headers are read); then the plan,
OUT against the plan's inputs, and the merge itself or the plan's text.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

from .errors import ConfigError


def run(
    config: Any,
    out_path: str | os.PathLike | None,
    options: dict,
    *,
    source: str | None = None,
    dry_run: bool = False,
    adjust: Callable | None = None,
    explain: Callable[[str], str] | None = None,
    planning: Callable = nullcontext,
):
    """Merge `config` into the folder `out_path`; returns the RunSummary, or with `dry_run` the
    plan's text (what `mergefast plan` prints; `out_path` may then be None).

    `config` is what `load_config` takes (a path, YAML text, a dict, a MergeConfig), or YAML
    text named `source` when `source` is given. `options` are the merge options by name
    (`MergeOptions.from_kwargs`). `adjust(plan, opts)` changes the plan before OUT is checked
    against it; `explain(message)` rewords the planner's ConfigErrors in a command's own terms;
    `planning()` is the context the checks and planning run in (the CLI's gc freezing)."""
    with planning():
        plan, opts = _checked_plan(config, source, out_path, options, adjust, explain)
    try:
        if dry_run:
            from .report import format_plan

            return format_plan(plan, opts, None if out_path is None else str(out_path))
        from .native import thread_count

        with thread_count(opts.num_threads):
            return _merge(plan, out_path, opts, planning)
    finally:
        plan.close()


def _merge(plan, out_path, opts, planning: Callable):
    """`execute(plan)`, with the plan's Hub inputs started first: planning needs no torch
    (mergefast/dtypes.py), so their first shards download before any heavy import; a merge on
    the torch engine imports torch meanwhile (2.1-2.4 s on the 2-core VM), in `planning()` as
    the planner's imports were."""
    from .io.out_path import output_folder
    from .plan import start_hub_inputs

    downloads = start_hub_inputs(plan, output_folder(out_path), opts)
    try:
        with planning():
            from .execute import execute
    except BaseException:
        downloads.close()
        raise
    return execute(plan, out_path, opts, downloads)


def _load(config: Any, source: str | None, on_valid: Callable):
    """(config, YAML text, source) of what `run` was given; `on_valid` as in `parse_config`."""
    from .config import load_config, parse_config

    if source is None:
        return load_config(config, on_valid)
    return parse_config(config, source, on_valid), config, source


def _checked_plan(config: Any, source: str | None, out_path, options: dict, adjust, explain):
    """The checked options and the plan, adjusted and checked against OUT; the plan is closed
    again when a check after planning fails."""
    from .config import referenced_models
    from .io.hub_prefetch import HubPrefetch
    from .io.out_path import check_out_path, check_stats_path, output_folder
    from .options import MergeOptions

    opts = MergeOptions.from_kwargs(**options)
    # The Hub repos' listings, side files and headers are read (io/hub_prefetch.py) from the
    # moment the config's structure is valid, while the parameter checks and the planner
    # import torch (1-2.5 s).
    with HubPrefetch(opts.transformers_cache) as prefetch:
        config, text, source = _load(config, source, lambda valid: prefetch.start(referenced_models(valid)))
        out = None if out_path is None else output_folder(out_path)
        if out is not None:
            check_out_path(out)
            check_stats_path(opts.stats_json, out)
        opts.math_device  # noqa: B018 - --cuda without a GPU is a usage error, found before planning
        try:
            return _planned(config, text, source, out, opts, adjust, prefetch), opts
        except ConfigError as exc:
            if explain is None:
                raise
            raise ConfigError(explain(str(exc))) from None


def _planned(config, text: str, source: str, out, opts, adjust, prefetch):
    """The plan, adjusted and its inputs checked against OUT (closed again on failure)."""
    from .io.out_path import check_output_folder
    from .plan import build_plan

    plan = build_plan(config, text, source, opts, prefetch)
    try:
        if adjust is not None:
            adjust(plan, opts)
        if out is not None:
            check_output_folder(out, plan)
    except BaseException:
        plan.close()
        raise
    return plan
