"""The `mergefast` command line: `mergefast yaml CONFIG OUT`, `mergefast plan CONFIG`,
`mergefast env`, `mergefast-yaml`.

Exit codes: 0 success; 2 config or usage error (click's usage errors too); 1 runtime error
(a model, a file, the disk, the arithmetic, or a bug: "internal error"); 130 Ctrl-C; 143
SIGTERM. Every failure is one line on stderr; `-v` adds the traceback.
"""

from __future__ import annotations

import errno
import functools
import logging
import signal
import sys
import threading
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
    click.option("--quiet/--no-quiet", default=False, help="No progress bar and no summary."),
    click.option("--unsafe-truncate-embeddings/--no-unsafe-truncate-embeddings", default=False,
                 help="Inputs with different vocabulary sizes: keep only the rows all of them have."),
    click.option("--max-memory", default=None,
                 help="Bytes read ahead but not yet written: 25% of RAM by default; '4g', '500m' or '10%'."),
    click.option("--stats-json", type=click.Path(dir_okay=False), default=None,
                 help="Also write the run summary's figures as JSON to this file."),
]


def merge_options(func):
    """Decorate a click command with every merge option."""
    for option in reversed(MERGE_OPTIONS):
        func = option(func)
    return func


def one_line(text: object) -> str:
    """`text` on one line: its non-empty lines joined with '; '."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return "; ".join(lines)


class _EchoHandler(logging.Handler):
    """Log records of the `mergefast` logger as `mergefast: warning: ...` lines on stderr
    (the stream is looked up at each record, so it works under click's CliRunner too)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            click.echo(f"mergefast: {record.levelname.lower()}: {one_line(record.getMessage())}", err=True)
        except Exception:  # noqa: BLE001 - logging must never break a merge
            self.handleError(record)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that the same cleanup runs."""


def _on_sigterm(signum, frame):
    raise Terminated()


def _fail(message: str, code: int, verbose: int) -> None:
    if verbose:
        traceback.print_exc()
    click.echo(f"mergefast: {one_line(message)}", err=True)
    sys.exit(code)


def reports_errors(func):
    """Turn every failure into one line on stderr and an exit code; `-v` adds the traceback.

    MergefastError: its exit_code (2 config/usage, 1 runtime). Ctrl-C: 130, SIGTERM: 143
    (the temporary output is removed on the way out). OSError (disk full, permissions): 1,
    naming the path. Anything else is a bug: "internal error", exit 1.
    """
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        verbose = kwargs.get("verbose", 0) or 0
        logger, handler = logging.getLogger("mergefast"), _EchoHandler()
        saved_level, saved_propagate = logger.level, logger.propagate
        logger.addHandler(handler)
        logger.setLevel([logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)])
        logger.propagate = False
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, _on_sigterm)
        try:
            return func(*args, **kwargs)
        except MergefastError as exc:
            _fail(f"error: {exc}", exc.exit_code, verbose)
        except Terminated:
            _fail("terminated (SIGTERM); no output was written", 143, verbose)
        except KeyboardInterrupt:
            _fail("interrupted; no output was written", 130, verbose)
        except MemoryError:
            _fail("error: out of memory; free memory or merge on a machine with more", 1, verbose)
        except OSError as exc:
            where = exc.filename or kwargs.get("out_path") or "the output"
            what = exc.strerror or str(exc) or type(exc).__name__
            _fail(f"error: {where}: {what}" + (" (disk full?)" if exc.errno == errno.ENOSPC else ""), 1, verbose)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as exc:  # noqa: BLE001 - a bug: say so in one line
            _fail(f"internal error: {type(exc).__name__}: {exc} (run with -v for the traceback)", 1, verbose)
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
            logger.removeHandler(handler)
            logger.setLevel(saved_level)
            logger.propagate = saved_propagate
    return wrapper


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


DRY_RUN = click.option("--dry-run", is_flag=True, default=False,
                       help="Validate and plan (headers only), print the plan, write nothing.")


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


def _add_legacy_commands() -> None:
    from .legacy import bakllama_command, legacy_command

    main.add_command(legacy_command, "legacy")
    main.add_command(bakllama_command, "bakllama")


_add_legacy_commands()


def yaml_main():
    """Entry point of `mergefast-yaml` (the same as `mergefast yaml`)."""
    yaml_command(prog_name="mergefast-yaml")
