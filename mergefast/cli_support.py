"""Shared pieces of mergefast's command lines: the merge options and error reporting.

Every command (`mergefast yaml`, `mergefast plan`, `mergefast-legacy`, `bakllama`) takes the
same merge options and turns failures into one line on stderr and an exit code: 0 success;
2 config or usage error; 1 runtime error; 130 Ctrl-C; 143 SIGTERM; `-v` adds the traceback.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import signal
import sys
import threading
import traceback

import click

from .errors import MergefastError
from .options import MAX_SEED


def _check_seed(ctx, param, value: int | None) -> int | None:
    """--random-seed checked as the command line is parsed: outside 0..2**64 - 1 it is a
    usage error naming the flag (torch.manual_seed raised an "internal error" past 2**64)."""
    if value is not None and not 0 <= value <= MAX_SEED:
        raise click.BadParameter(f"{value} is outside the seeds mergefast supports: give a whole number "
                                 f"from 0 to {MAX_SEED} (2**64 - 1)")
    return value


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
    click.option("--random-seed", type=int, default=None, callback=_check_seed,
                 help="Seed for random merge methods (DARE, DELLA): 0 to 2**64 - 1."),
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
                 help="Bytes read ahead but not yet written, e.g. 4g, 500m or 10% (default: twice the "
                 "largest tensor group, at most 25% of RAM)."),
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


def _interrupted(message: str, code: int, verbose: int) -> None:
    """Ctrl-C (130) or SIGTERM (143), once the temporary output is gone: one line, the code.

    A merge stage may still be finishing a step that outlasted the pipeline's stop wait (a
    torch op or kernel call over 1.5 s, a read from a hung disk). Python would wait for it
    before exiting; the command ends now instead, with os._exit, which skips interpreter
    teardown, so no stage can resume into it (see io/pipeline.py for the abort that caused)."""
    pipeline = sys.modules.get("mergefast.io.pipeline")
    if pipeline is None or not pipeline.stages_running():
        _fail(message, code, verbose)
    if verbose:
        traceback.print_exc()
    click.echo(f"mergefast: {one_line(message)}", err=True)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


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
            _interrupted("terminated (SIGTERM); no output was written", 143, verbose)
        except KeyboardInterrupt:
            _interrupted("interrupted; no output was written", 130, verbose)
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


DRY_RUN = click.option("--dry-run", is_flag=True, default=False,
                       help="Validate and plan (headers only), print the plan, write nothing.")
