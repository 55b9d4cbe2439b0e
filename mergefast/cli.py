"""The `mergefast` command line: `mergefast yaml CONFIG OUT`, `mergefast env`, `mergefast-yaml`.

Errors a user can fix print one line on stderr and exit with 2 (config or usage) or 1
(runtime); `-v` adds the traceback.
"""

from __future__ import annotations

import functools
import logging
import sys
import traceback

import click

from .errors import MergefastError

MERGE_OPTIONS = [
    click.option("--cuda/--no-cuda", default=False, help="Run the merge arithmetic on the GPU."),
    click.option("--device", default=None, help="Math device (cpu, cuda, cuda:N, auto); overrides --cuda."),
    click.option("--out-shard-size", default="5B", show_default=True,
                 help="Maximum bytes per output shard; an integer or with k/m/b suffix (x1000)."),
    click.option("--copy-tokenizer/--no-copy-tokenizer", default=True, show_default=True,
                 help="Copy the donor model's tokenizer files into the output."),
    click.option("--write-model-card/--no-write-model-card", default=True, show_default=True,
                 help="Write README.md and mergekit_config.yml."),
    click.option("--allow-crimes/--no-allow-crimes", default=False,
                 help="Allow merging models whose architectures differ."),
    click.option("--random-seed", type=int, default=None, help="Seed for random merge methods."),
    click.option("--transformers-cache", default=None, help="Hugging Face download cache folder."),
    click.option("--lazy-unpickle/--no-lazy-unpickle", default=False,
                 help="Accepted for mergekit compatibility: .bin files are always read lazily."),
    click.option("--trust-remote-code/--no-trust-remote-code", default=False,
                 help="Accepted for compatibility; mergefast never runs code from a model folder."),
    click.option("-v", "--verbose", count=True, help="More logging; -v also shows tracebacks."),
    click.option("--quiet/--no-quiet", default=False, help="No progress bar."),
]


def merge_options(func):
    """Decorate a click command with every merge option."""
    for option in reversed(MERGE_OPTIONS):
        func = option(func)
    return func


def reports_errors(func):
    """Turn MergefastError into one line on stderr and its exit code."""
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        verbose = kwargs.get("verbose", 0)
        logging.basicConfig(level=[logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)],
                            format="%(levelname)s: %(message)s")
        try:
            return func(*args, **kwargs)
        except MergefastError as exc:
            if verbose:
                traceback.print_exc()
            click.echo(f"mergefast: error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("mergefast: interrupted; no output was written", err=True)
            sys.exit(130)
    return wrapper


@click.command("yaml")
@click.argument("config_file", type=click.Path(dir_okay=False))
@click.argument("out_path", type=click.Path(file_okay=True))
@merge_options
@reports_errors
def yaml_command(config_file, out_path, **options):
    """Merge the models described by mergekit YAML CONFIG_FILE into the folder OUT_PATH."""
    from . import merge

    stats = merge(config_file, out_path, **options)
    if not options["quiet"]:
        rate = stats.read_bytes / max(stats.seconds, 1e-9) / 1e9
        click.echo(f"merged {stats.tensors} tensors: read {stats.read_bytes / 1e9:.3f} GB, wrote "
                   f"{stats.written_bytes / 1e9:.3f} GB in {stats.seconds:.2f} s ({rate:.2f} GB/s) -> {out_path}",
                   err=True)


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
main.add_command(env_command)


def yaml_main():
    """Entry point of `mergefast-yaml` (the same as `mergefast yaml`)."""
    yaml_command(prog_name="mergefast-yaml")
