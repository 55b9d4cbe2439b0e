"""`mergefast-legacy`: mergekit-legacy's flags -> the config mergekit-legacy 0.1.5 builds, merged.

`mergefast-legacy OUT --merge M ... --base-model B` turns mergekit-legacy's flags into the same
`models:` config mergekit-legacy 0.1.5 builds, prints it with `--print-yaml` in the same shape
(PyYAML's default dump: block style, sorted keys), then merges it like `mergefast yaml`.
Flag semantics follow mergekit-legacy:

- the base model is appended to the models when `--merge` does not list it;
- one `--weight` / `--density` is given to every model (the appended base included); several
  are given to the models in order (extra models get none; more values than models is an error);
- `--method slerp` takes exactly one `--weight`, written as the global `t`;
- `normalize` is always written into `parameters`; `--int8-mask` writes `int8_mask: true`;
  `--bf16` writes `dtype: bfloat16` (off by default, as in 0.1.x);
- `--naive-count` writes `consensus_method: count` in mergekit, a key nothing reads there.

mergekit ignores parameters a method does not take; mergefast's schema rejects them. So the
keys mergekit would ignore (`consensus_method`, `normalize`/`int8_mask` for methods without
them, `density` for methods without it) are left out of the config, with a warning when a
flag the user gave caused them; the printed YAML is exactly the config that is merged.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import click
import yaml

from ..cli_support import DRY_RUN, merge_options, reports_errors, run_command
from ..errors import ConfigError

LEGACY_SOURCE = "mergefast-legacy"
log = logging.getLogger("mergefast")


def _spread(flag: str, values: Sequence[float], models: list[dict], key: str) -> None:
    """Give one value to every model, or values to the models in order (mergekit-legacy)."""
    if not values:
        return
    if len(values) == 1:
        values = list(values) * len(models)
    if len(values) > len(models):
        names = ", ".join(m["model"] for m in models)
        raise ConfigError(
            f"{LEGACY_SOURCE}: {len(values)} {flag} values for {len(models)} models ({names}); "
            f"give one value for every model or at most one per model"
        )
    for model, value in zip(models, values):
        model["parameters"][key] = float(value)


def legacy_config(
    merge: Sequence[str],
    weight: Sequence[float] = (),
    density: Sequence[float] = (),
    method: str = "ties",
    base_model: str | None = None,
    normalize: bool = True,
    int8_mask: bool = False,
    bf16: bool = False,
    naive_count: bool = False,
) -> dict:
    """The config mergekit-legacy 0.1.5 builds from these flags, as a plain dict (its keys and
    values exactly; `drop_unread_keys` then removes what mergefast's schema rejects)."""
    if not merge and not base_model:
        raise ConfigError(f"{LEGACY_SOURCE}: no models: give --merge MODEL (repeated) and --base-model")
    models = [{"model": m, "parameters": {}} for m in merge]
    if base_model and base_model not in merge:
        models.append({"model": base_model, "parameters": {}})
    parameters: dict[str, Any] = {}
    _spread("--density", density, models, "density")
    if method == "slerp":
        if len(weight) != 1:
            raise ConfigError(
                f"{LEGACY_SOURCE}: --method slerp takes exactly one --weight (it becomes the "
                f"interpolation factor t), got {len(weight)}"
            )
        parameters["t"] = float(weight[0])
    else:
        _spread("--weight", weight, models, "weight")
    if int8_mask:
        parameters["int8_mask"] = True
    if naive_count:
        parameters["consensus_method"] = "count"
    parameters["normalize"] = bool(normalize)
    data: dict[str, Any] = {"merge_method": method, "models": models, "parameters": parameters}
    if base_model:
        data["base_model"] = base_model
    if bf16:
        data["dtype"] = "bfloat16"
    return data


# the flag that writes each parameter mergekit-legacy may generate
_FLAGS = {
    "consensus_method": "--naive-count",
    "int8_mask": "--int8-mask",
    "normalize": "--normalize",
    "density": "--density",
    "weight": "--weight",
    "t": "--weight",
}


def drop_unread_keys(data: dict, given: Sequence[str] = ()) -> tuple[dict, list[str]]:
    """`data` without the parameters the method does not take (mergekit ignores them, mergefast's
    schema rejects them), and a warning for each one a flag in `given` caused.

    An unknown method is left alone: parsing the config then reports it."""
    from ..methods.registry import METHODS

    spec = METHODS.get(data["merge_method"])
    if spec is None:
        return data, []
    method, dropped = data["merge_method"], []

    def keep(block: dict, allowed) -> dict:
        dropped.extend(k for k in block if not allowed(k))
        return {k: v for k, v in block.items() if allowed(k)}

    model_names = {p.name for p in spec.model_params}
    parameters = keep(data["parameters"], lambda k: spec.param(k) is not None)
    models = [{**entry, "parameters": keep(entry["parameters"], model_names.__contains__)} for entry in data["models"]]
    warnings = _drop_warnings(dropped, method, given)
    return {**data, "models": models, "parameters": parameters}, warnings


def _drop_warnings(dropped: Sequence[str], method: str, given: Sequence[str]) -> list[str]:
    """A warning for each dropped key a given flag (or --naive-count) caused; the others are
    only logged at info level."""
    warnings = []
    for key in dict.fromkeys(dropped):
        flag = _FLAGS.get(key, key)
        if key == "consensus_method":
            warnings.append(
                "--naive-count writes `consensus_method: count`, which mergekit 0.1.5 never reads "
                "(a no-op); it is left out of the config"
            )
        elif flag in given:
            warnings.append(
                f"{flag}: {method} takes no '{key}' parameter (mergekit ignores it); it is left out of the config"
            )
        else:
            log.info("%s takes no '%s' parameter; left out of the config", method, key)
    return warnings


def dump_yaml(data: dict) -> str:
    """PyYAML's default dump, as mergekit-legacy's --print-yaml writes it (block style, sorted keys)."""
    return yaml.safe_dump(data, default_flow_style=False, sort_keys=True)


def _given_flags(ctx: click.Context) -> set[str]:
    """The legacy flags that came from the command line (not defaults)."""
    given = set()
    for name, flag in (
        ("normalize", "--normalize"),
        ("int8_mask", "--int8-mask"),
        ("density", "--density"),
        ("weight", "--weight"),
    ):
        source = ctx.get_parameter_source(name)
        if source is not None and source.name == "COMMANDLINE":
            given.add(flag)
    return given


def _legacy_words(message: str) -> str:
    """A missing weight comes from missing --weight flags: say which flag to give."""
    if "missing required parameter 'weight'" in message:
        return (
            message + "; give --weight once (for every model) or once per model in order, the appended "
            "--base-model last"
        )
    return message


@click.command("legacy")
@click.argument("out_path", type=click.Path(file_okay=True))
@click.option("--merge", "merge", multiple=True, help="Add a model to the merge (repeat).")
@click.option(
    "--density",
    type=float,
    multiple=True,
    help="Fraction of weights to keep: once for every model, or once per model in order.",
)
@click.option(
    "--weight",
    type=float,
    multiple=True,
    help="Model weight: once for every model, or once per model; with --method slerp, t.",
)
@click.option("--method", default="ties", show_default=True, help="Merge method.")
@click.option("--base-model", default=None, help="Base model (added to the models when not a --merge).")
@click.option(
    "--normalize/--no-normalize",
    default=True,
    show_default=True,
    help="Divide merged parameters by the sum of weights.",
)
@click.option("--int8-mask/--no-int8-mask", default=False, help="Accepted (writes int8_mask: true).")
@click.option("--bf16/--no-bf16", default=False, help="dtype: bfloat16.")
@click.option(
    "--naive-count/--no-naive-count",
    default=False,
    help="Accepted; mergekit writes consensus_method: count, which nothing reads (dropped here).",
)
@click.option("--print-yaml/--no-print-yaml", default=False, help="Print the generated config, then merge.")
@DRY_RUN
@merge_options
@click.pass_context
@reports_errors
def legacy_command(
    ctx,
    out_path,
    merge,
    density,
    weight,
    method,
    base_model,
    normalize,
    int8_mask,
    bf16,
    naive_count,
    print_yaml,
    dry_run=False,
    **options,
):
    """Merge with mergekit-legacy's flags into the folder OUT_PATH (mergekit-legacy compatible)."""
    from ..config import parse_config

    data = legacy_config(merge, weight, density, method, base_model, normalize, int8_mask, bf16, naive_count)
    data, warnings = drop_unread_keys(data, _given_flags(ctx))
    for warning in warnings:
        log.warning(warning)
    text = dump_yaml(data)
    parse_config(text, LEGACY_SOURCE)  # before printing: an unknown method prints nothing
    if print_yaml:
        click.echo(text)
    run_command(text, out_path, options, dry_run, source=LEGACY_SOURCE, explain=_legacy_words)
