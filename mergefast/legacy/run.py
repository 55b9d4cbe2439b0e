"""The merge run both legacy commands end in: parse the generated config, plan, merge."""

from __future__ import annotations

import logging

import click

from ..errors import ConfigError

log = logging.getLogger("mergefast")

def run_merge(config_text: str, source: str, out_path: str, options: dict, dry_run: bool,
              adjust=None, explain=None) -> None:
    """Parse `config_text`, plan, optionally `adjust(plan, opts)`, then merge (or print the plan).

    `explain(message)` rewords the planner's ConfigErrors in the command's own terms."""
    from ..execute import execute
    from ..options import MergeOptions

    opts = MergeOptions.from_kwargs(**options)
    plan = _checked_plan(config_text, source, out_path, opts, adjust, explain)
    try:
        if dry_run:
            from ..report import format_plan

            click.echo(format_plan(plan, opts, out_path))
            return
        stats = execute(plan, out_path, opts)
    finally:
        plan.close()
    if not opts.quiet:
        from ..summary import format_summary

        click.echo(format_summary(stats), err=True)


def _checked_plan(config_text: str, source: str, out_path: str, opts, adjust, explain):
    """The plan of `config_text`, adjusted; closes it again when planning or adjusting fails."""
    from ..config import parse_config
    from ..execute import check_output_folder
    from ..io.out_path import check_out_path, output_folder
    from ..plan import build_plan

    config = parse_config(config_text, source)
    out = output_folder(out_path)
    check_out_path(out)
    opts.math_device  # noqa: B018 - --cuda without a GPU is a usage error, found before planning
    try:
        plan = build_plan(config, config_text, source, opts)
        try:
            if adjust is not None:
                adjust(plan, opts)
            check_output_folder(out, plan)
        except BaseException:
            plan.close()
            raise
    except ConfigError as exc:
        raise ConfigError(explain(str(exc)) if explain else str(exc)) from None
    return plan
