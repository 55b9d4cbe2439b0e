"""`bakllama CONFIG OUT` reads the original layer-stacking format
(`layer_slices: [{model, start, end, scale?}]`, `embedding_source`, `lm_head_source`) and
merges it as a `passthrough` `slices:` config: `end` is exclusive, `scale` multiplies only the
`down_proj` weights of its slice, the output layer count is the sum of the slice lengths.
Embeddings come from `embedding_source` (default: the first slice's model), the final norm and
`lm_head` from `lm_head_source` (default: the last slice's model); when those differ from the
first/last slice's model the plan's pre-/post-weight jobs are replaced by copies from them
(`take_loose_weights`). mergekit 0.1.5 ships bakllama broken (it fails config validation).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
import yaml

from ..cli_support import DRY_RUN, merge_options, reports_errors, run_command
from ..errors import ConfigError
from ..yaml_text import load_yaml
from .loose_weights import take_loose_weights

_BAKLLAMA_KEYS = ("layer_slices", "embedding_source", "lm_head_source")
_SLICE_KEYS = ("model", "start", "end", "scale")


def _unknown_key(key: Any, known: Sequence[str], where: str) -> ConfigError:
    from ..config import did_you_mean

    return ConfigError(f"{where}: unknown key '{key}'{did_you_mean(key, known)}; expected {', '.join(known)}")


def _int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where}: expected a whole number, got {value!r}")
    return value


def _model(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: expected a model path or repo id, got {value!r}")
    return value.strip()


def read_bakllama(text: str, source: str) -> dict:
    """Validate a bakllama YAML config; returns {layer_slices: [...], embedding_source, lm_head_source}."""
    try:
        data = load_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{source}: invalid YAML{where}: {getattr(exc, 'problem', None) or exc}") from None
    if not isinstance(data, dict) or "layer_slices" not in data:
        raise ConfigError(f"{source}: expected a bakllama config: a mapping with `layer_slices`")
    for key in data:
        if key not in _BAKLLAMA_KEYS:
            raise _unknown_key(key, _BAKLLAMA_KEYS, source)
    slices = data["layer_slices"]
    if not isinstance(slices, list) or not slices:
        raise ConfigError(f"{source}: layer_slices: expected a non-empty list of {{model, start, end, scale}}")
    out = [_layer_slice(item, f"{source}: layer_slices[{i}]") for i, item in enumerate(slices)]
    result = {"layer_slices": out}
    for key in ("embedding_source", "lm_head_source"):
        value = data.get(key)
        result[key] = None if value is None else _model(value, f"{source}: {key}")
    return result


def _layer_slice(item: Any, where: str) -> dict:
    """One validated `layer_slices` entry: {model, start, end, scale (float or None)}."""
    if not isinstance(item, dict):
        raise ConfigError(f"{where}: expected a mapping with model, start, end (and optionally scale)")
    for key in item:
        if key not in _SLICE_KEYS:
            raise _unknown_key(key, _SLICE_KEYS, where)
    for key in ("model", "start", "end"):
        if key not in item:
            raise ConfigError(f"{where}: missing `{key}`")
    start, end = _int(item["start"], f"{where}.start"), _int(item["end"], f"{where}.end")
    if start < 0 or end <= start:
        raise ConfigError(f"{where}: start {start}, end {end}: need 0 <= start < end (end is exclusive)")
    scale = item.get("scale")
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float))):
        raise ConfigError(f"{where}.scale: expected a number, got {scale!r}")
    return {
        "model": _model(item["model"], f"{where}.model"),
        "start": start,
        "end": end,
        "scale": None if scale is None else float(scale),
    }


def bakllama_yaml(bak: dict, fp16: bool = False, origin: str | None = None) -> str:
    """The `passthrough` `slices:` config for a validated bakllama config (YAML text).

    Embedding/lm_head sources that differ from the first/last slice's model cannot be said in
    mergekit YAML; a comment at the top records them."""
    slices = []
    for s in bak["layer_slices"]:
        src: dict[str, Any] = {"model": s["model"], "layer_range": [s["start"], s["end"]]}
        if s["scale"] is not None:
            src["parameters"] = {"scale": [{"filter": "down_proj", "value": s["scale"]}]}
        slices.append({"sources": [src]})
    data: dict[str, Any] = {"merge_method": "passthrough"}
    if fp16:
        data["dtype"] = "float16"
    data["slices"] = slices
    lines = [f"# bakllama config {origin} as passthrough slices (mergefast bakllama)"] if origin else []
    embed, head = _edge_sources(bak)
    if embed != bak["layer_slices"][0]["model"]:
        lines.append(f"# embeddings from embedding_source: {embed}")
    if head != bak["layer_slices"][-1]["model"]:
        lines.append(f"# final norm and lm_head from lm_head_source: {head}")
    header = "".join(line + "\n" for line in lines)
    return header + yaml.safe_dump(data, default_flow_style=None, sort_keys=False)


def _edge_sources(bak: dict) -> tuple[str, str]:
    """(embedding source, lm_head source) with bakllama's defaults applied."""
    return (
        bak["embedding_source"] or bak["layer_slices"][0]["model"],
        bak["lm_head_source"] or bak["layer_slices"][-1]["model"],
    )


_SLICE_WHERE = re.compile(r"slices\[(\d+)\]\.sources\[0\](?:\.layer_range: \[(\d+), (\d+)\])?")


def _bakllama_words(message: str) -> str:
    """Planner messages name `slices[i].sources[0].layer_range: [a, b]`: say `layer_slices[i]:
    start a, end b` instead."""

    def words(m: re.Match) -> str:
        where = f"layer_slices[{m.group(1)}]"
        return f"{where}: start {m.group(2)}, end {m.group(3)}" if m.group(2) else where

    return _SLICE_WHERE.sub(words, message)


@click.command("bakllama")
@click.argument("config_file", type=click.Path(dir_okay=False))
@click.argument("out_path", type=click.Path(file_okay=True))
@click.option("--fp16/--no-fp16", default=False, help="dtype: float16.")
@click.option(
    "--print-yaml/--no-print-yaml", default=False, help="Print the equivalent passthrough config, then merge."
)
@DRY_RUN
@merge_options
@reports_errors
def bakllama_command(config_file, out_path, fp16=False, print_yaml=False, dry_run=False, **options):
    """Stack layer ranges of models (a bakllama CONFIG_FILE) into the folder OUT_PATH."""
    path = Path(config_file)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the config ({exc})") from None
    bak = read_bakllama(text, str(path))
    config_text = bakllama_yaml(bak, fp16, origin=path.name)
    if print_yaml:
        click.echo(config_text)
    embed, head = _edge_sources(bak)
    run_command(
        config_text,
        out_path,
        options,
        dry_run,
        source=str(path),
        adjust=lambda plan, opts: take_loose_weights(plan, opts, pre=embed, post=head),
        explain=_bakllama_words,
    )
