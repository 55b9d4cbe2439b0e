"""The `mergefast` command line: `mergefast yaml CONFIG OUT`, `mergefast plan CONFIG`,
`mergefast multi CONFIG -I DIR --out-path OUT`, `mergefast env`, `mergefast-yaml`.

Exit codes: 0 success; 2 config or usage error (click's usage errors too); 1 runtime error
(a model, a file, the disk, the arithmetic, or a bug: "internal error"); 130 Ctrl-C; 143
SIGTERM. Every failure is one line on stderr; `-v` adds the traceback.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import NoReturn

import click

# numpy (imported by torch) starts an OpenBLAS thread pool whose threads spin for a while;
# no merge uses BLAS, and on 2 cores the spinning costs the reader and writer ~0.1 s of CPU.
# Set here, before torch is imported, and only for the command line.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from .cli_support import DRY_RUN, merge_options, reports_errors, run_command


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
    from .host import torch_free_line

    click.echo(torch_free_line())


class _LegacyOnUse(click.Group):
    """A group whose `legacy`, `bakllama` and `multi` commands are imported when named: the
    legacy modules (mergefast/legacy/) took ~11 ms of every `mergefast yaml` start (python -X
    importtime, 2-vCPU Intel Xeon VM), ~2% of a linear merge of the 0.3B family."""

    ON_USE = {
        "legacy": ("legacy", "legacy_command"),
        "bakllama": ("legacy", "bakllama_command"),
        "multi": ("multi", "multi_command"),
    }

    def list_commands(self, ctx):
        return sorted([*super().list_commands(ctx), *self.ON_USE])

    def get_command(self, ctx, name):
        if name in self.ON_USE:
            import importlib

            module, command = self.ON_USE[name]
            return getattr(importlib.import_module(f".{module}", __package__), command)
        return super().get_command(ctx, name)


@click.group(cls=_LegacyOnUse)
@click.version_option(package_name="mergefast")
def main():
    """mergefast: fast, mergekit-compatible model merging."""


main.add_command(yaml_command)
main.add_command(plan_command)
main.add_command(env_command)


def run() -> NoReturn:
    """Entry point of `mergefast` and `python -m mergefast` (`main`, then `exit_now`)."""
    exit_now(main)


def yaml_main() -> NoReturn:
    """Entry point of `mergefast-yaml` (the same as `mergefast yaml`)."""
    exit_now(lambda: yaml_command(prog_name="mergefast-yaml"))


def exit_now(command) -> NoReturn:
    """Run the click `command`, then end the process without the interpreter's teardown: with
    torch imported that takes 0.6 s (2-vCPU VM, `python -c "import torch"`: 1.8-1.9 s, with
    os._exit 1.2 s), a quarter of a 0.3B merge. The command has closed every file it wrote;
    stdout, stderr and logging are flushed here. After Ctrl-C with a pipeline stage still
    finishing its step, Python's normal exit waits for it instead."""
    try:
        command()  # click ends with SystemExit
        code = 0
    except SystemExit as e:
        code = e.code
    if isinstance(code, str):  # SystemExit("message"): the message on stderr, status 1
        click.echo(code, err=True)
        code = 1
    pipeline = sys.modules.get(f"{__package__}.io.pipeline")  # not imported: no stage ever ran
    if pipeline is not None and pipeline.stages_running():
        raise SystemExit(code)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (BrokenPipeError, ValueError):  # `mergefast plan | head`, or a closed stream
        pass
    logging.shutdown()
    os._exit(code or 0)
