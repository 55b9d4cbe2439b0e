"""The `mergefast` command line: `mergefast yaml CONFIG OUT`, `mergefast plan CONFIG`,
`mergefast env`, `mergefast-yaml`.

Exit codes: 0 success; 2 config or usage error (click's usage errors too); 1 runtime error
(a model, a file, the disk, the arithmetic, or a bug: "internal error"); 130 Ctrl-C; 143
SIGTERM. Every failure is one line on stderr; `-v` adds the traceback.
"""

from __future__ import annotations

import gc
import os
from contextlib import contextmanager

import click

# numpy (imported by torch) starts an OpenBLAS thread pool whose threads spin for a while;
# no merge uses BLAS, and on 2 cores the spinning costs the reader and writer ~0.1 s of CPU.
# Set here, before torch is imported, and only for the command line.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from .cli_support import DRY_RUN, merge_options, reports_errors
from .legacy import bakllama_command, legacy_command


@contextmanager
def _planning_without_gc():
    """Plan with the garbage collector off, then freeze what planning built for the run.

    Start-up (torch, pydantic, planning) creates ~10^6 long-lived objects and no garbage
    cycles worth collecting; the full collections it triggers took 0.3-0.5 s of a 2 s start
    on a 2-vCPU AMD EPYC VM. Frozen objects are not scanned again; the command unfreezes them at its
    end so that interpreter shutdown still frees them."""
    gc.disable()
    try:
        yield
    except BaseException:  # nothing was planned: nothing to freeze
        gc.enable()
        raise
    gc.freeze()
    gc.enable()


def _plan(config_file: str, out_path: str | None, options: dict):
    """Validate the config, OUT and the models, and build the plan (headers only)."""
    from .config import load_config
    from .execute import check_output_folder
    from .io.out_path import check_out_path, check_stats_path, output_folder
    from .options import MergeOptions
    from .plan import build_plan

    opts = MergeOptions.from_kwargs(**options)
    config, text, source = load_config(config_file)
    out = None if out_path is None else output_folder(out_path)
    if out is not None:
        check_out_path(out)
        check_stats_path(opts.stats_json, out)
    opts.math_device  # noqa: B018 - --cuda without a GPU is a usage error, found before planning
    plan = build_plan(config, text, source, opts)
    if out is not None:
        try:
            check_output_folder(out, plan)
        except BaseException:
            plan.close()
            raise
    return plan, opts


def _print_plan(plan, opts, out_path) -> None:
    from .report import format_plan

    click.echo(format_plan(plan, opts, out_path))


@click.command("yaml")
@click.argument("config_file", type=click.Path(dir_okay=False))
@click.argument("out_path", type=click.Path(file_okay=True))
@DRY_RUN
@merge_options
@reports_errors
def yaml_command(config_file, out_path, dry_run=False, **options):
    """Merge the models described by mergekit YAML CONFIG_FILE into the folder OUT_PATH."""
    with _planning_without_gc():
        from .execute import execute

        plan, opts = _plan(config_file, out_path, options)
    try:
        if dry_run:
            _print_plan(plan, opts, out_path)
            return
        stats = execute(plan, out_path, opts)
    finally:
        plan.close()
        gc.unfreeze()
    if not options["quiet"]:
        from .summary import format_summary

        click.echo(format_summary(stats), err=True)


@click.command("plan")
@click.argument("config_file", type=click.Path(dir_okay=False))
@click.argument("out_path", type=click.Path(file_okay=True), required=False)
@merge_options
@reports_errors
def plan_command(config_file, out_path=None, **options):
    """Validate CONFIG_FILE and print what a merge would do (same as `yaml --dry-run`)."""
    with _planning_without_gc():
        plan, opts = _plan(config_file, out_path, options)
    try:
        _print_plan(plan, opts, out_path)
    finally:
        plan.close()
        gc.unfreeze()


@click.command("env")
def env_command():
    """Print versions and which kernel backend each merge op uses, and why."""
    import platform

    import torch

    from . import __version__, kernels

    click.echo(f"mergefast {__version__}, torch {torch.__version__}, python {platform.python_version()}")
    click.echo(f"cuda available: {torch.cuda.is_available()}")
    for line in kernels.describe_backends():
        click.echo(line)


@click.group()
@click.version_option(package_name="mergefast")
def main():
    """mergefast: fast, mergekit-compatible model merging."""


main.add_command(yaml_command)
main.add_command(plan_command)
main.add_command(env_command)
main.add_command(legacy_command, "legacy")
main.add_command(bakllama_command, "bakllama")


def yaml_main():
    """Entry point of `mergefast-yaml` (the same as `mergefast yaml`)."""
    yaml_command(prog_name="mergefast-yaml")
