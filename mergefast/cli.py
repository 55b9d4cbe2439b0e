"""The `mergefast` command line: `mergefast yaml CONFIG OUT`, `mergefast plan CONFIG`,
`mergefast env`, `mergefast-yaml`.

Exit codes: 0 success; 2 config or usage error (click's usage errors too); 1 runtime error
(a model, a file, the disk, the arithmetic, or a bug: "internal error"); 130 Ctrl-C; 143
SIGTERM. Every failure is one line on stderr; `-v` adds the traceback.
"""

from __future__ import annotations

import click

from .cli_support import DRY_RUN, merge_options, reports_errors
from .legacy import bakllama_command, legacy_command


def _plan(config_file: str, out_path: str | None, options: dict):
    """Validate the config, OUT and the models, and build the plan (headers only)."""
    from pathlib import Path

    from .config import load_config
    from .execute import check_out_path
    from .options import MergeOptions
    from .plan import build_plan

    opts = MergeOptions.from_kwargs(**options)
    config, text, source = load_config(config_file)
    if out_path is not None:
        check_out_path(Path(out_path).absolute())
    opts.math_device  # noqa: B018 - --cuda without a GPU is a usage error, found before planning
    return build_plan(config, text, source, opts), opts


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
    from .execute import execute

    plan, opts = _plan(config_file, out_path, options)
    try:
        if dry_run:
            _print_plan(plan, opts, out_path)
            return
        stats = execute(plan, out_path, opts)
    finally:
        plan.close()
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
    plan, opts = _plan(config_file, out_path, options)
    try:
        _print_plan(plan, opts, out_path)
    finally:
        plan.close()


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
