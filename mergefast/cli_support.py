"""Shared pieces of mergefast's command lines: the merge options, error reporting, the run.

Every command (`mergefast yaml`, `mergefast plan`, `mergefast-legacy`, `bakllama`) takes the
same merge options (click flags made from `options.OPTIONS`), ends in `run_command`, and turns
failures into one line on stderr and an exit code: 0 success; 2 config or usage error; 1
runtime error; 130 Ctrl-C; 143 SIGTERM; `-v` adds the traceback.
"""

from __future__ import annotations

import errno
import functools
import gc
import logging
import os
import signal
import sys
import threading
import traceback
from contextlib import contextmanager

import click

from .errors import MergefastError
from .options import OPTIONS, Option


def _range_check(option: Option):
    """A click callback: `option`'s range checked as the command line is parsed, so a value out
    of range is a usage error naming the flag, before any model is opened."""

    def check(ctx, param, value):
        if value is not None and not option.valid(value):
            raise click.BadParameter(option.cli_error.format(value=value))
        return value

    return check


def click_option(option: Option):
    """The click decorator of one schema option, as every merge command spells it."""
    settings = {"help": option.help}
    if option.kind == "count":  # click counts -v -v from 0
        return click.option(option.short, option.flag, count=True, **settings)
    if option.show_default:
        settings["show_default"] = True
    if option.kind == "int":
        settings["type"] = int
    elif option.kind == "path":
        settings["type"] = click.Path(dir_okay=False)
    if option.cli_error is not None:
        settings["callback"] = _range_check(option)
    flag = f"{option.flag}/--no-{option.flag[2:]}" if option.kind == "bool" else option.flag
    names = (option.short, flag) if option.short else (flag,)
    return click.option(*names, default=option.cli_default, **settings)


MERGE_OPTIONS = [click_option(option) for option in OPTIONS]


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


DRY_RUN = click.option(
    "--dry-run", is_flag=True, default=False, help="Validate and plan (headers only), print the plan, write nothing."
)


@contextmanager
def planning_without_gc():
    """Plan with the garbage collector off, then freeze what planning built for the run.

    Start-up (torch, pydantic, planning) creates ~10^6 long-lived objects and no garbage
    cycles worth collecting; the full collections it triggers took 0.3-0.5 s of a 2 s start
    on a 2-vCPU AMD EPYC VM. Frozen objects are not scanned again; `run_command` unfreezes
    them at its end so that interpreter shutdown still frees them."""
    gc.disable()
    try:
        yield
    except BaseException:  # nothing was planned: nothing to freeze
        gc.enable()
        raise
    gc.freeze()
    gc.enable()


def run_command(config, out_path: str | None, options: dict, dry_run: bool = False, **how) -> None:
    """A merge command's run (`mergefast.run.run`, `how` its keywords): the plan on stdout
    with `dry_run`, else the merge and its summary on stderr (none with --quiet)."""
    from .run import run

    try:
        result = run(config, out_path, options, dry_run=dry_run, planning=planning_without_gc, **how)
    finally:
        gc.unfreeze()
    if dry_run:
        click.echo(result)
    elif not options["quiet"]:
        from .summary import format_summary

        click.echo(format_summary(result), err=True)
