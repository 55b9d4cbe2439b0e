"""The `mergefast` command line: `mergefast yaml CONFIG OUT`, `mergefast plan CONFIG`,
`mergefast env`, `mergefast-yaml`.

Exit codes: 0 success; 2 config or usage error (click's usage errors too); 1 runtime error
(a model, a file, the disk, the arithmetic, or a bug: "internal error"); 130 Ctrl-C; 143
SIGTERM. Every failure is one line on stderr; `-v` adds the traceback.
"""

from __future__ import annotations

import os

import click

# numpy (imported by torch) starts an OpenBLAS thread pool whose threads spin for a while;
# no merge uses BLAS, and on 2 cores the spinning costs the reader and writer ~0.1 s of CPU.
# Set here, before torch is imported, and only for the command line.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from .cli_support import DRY_RUN, merge_options, reports_errors, run_command
from .legacy import bakllama_command, legacy_command


@click.command("yaml")
@click.argument("config_file", type=click.Path(dir_okay=False))
@click.argument("out_path", type=click.Path(file_okay=True))
@DRY_RUN
@merge_options
@reports_errors
def yaml_command(config_file, out_path, dry_run=False, **options):
    """Merge the models described by mergekit YAML CONFIG_FILE into the folder OUT_PATH."""
    run_command(config_file, out_path, options, dry_run)


@click.command("plan")
@click.argument("config_file", type=click.Path(dir_okay=False))
@click.argument("out_path", type=click.Path(file_okay=True), required=False)
@merge_options
@reports_errors
def plan_command(config_file, out_path=None, **options):
    """Validate CONFIG_FILE and print what a merge would do (same as `yaml --dry-run`)."""
    run_command(config_file, out_path, options, dry_run=True)


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
