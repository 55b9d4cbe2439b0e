"""`mergefast multi` (mergekit-multi): several merges in one YAML file, `---` between its
documents; a merge names another's `name` where a model goes.

Every document is checked (YAML, keys, parameters, names, which merge needs which) before the
first merge starts. The merges then run in an order that has each one's inputs written: a
named one into `--intermediate-dir/<name>`, the unnamed one (at most one) into `--out-path`.
`--lazy` (the default, as mergekit's) skips a merge whose folder already holds config.json and
weights: mergefast renames a folder into place only once it is complete.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import click
import yaml

from .cli_support import merge_options, reports_errors, run_command
from .config import NAMED_MERGES, load_config, parse_config, reference_path, referenced_models
from .errors import ConfigError
from .yaml_text import load_yaml

log = logging.getLogger(__name__)
WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


@dataclass
class Document:
    """One merge of the file: its `name` (None: the final merge), YAML text and place, and
    once checked (merge_order) its config as YAML with the named merges' folders in place of
    their names (what its mergekit_config.yml holds, as mergekit-multi's)."""

    name: str | None
    text: str
    where: str
    resolved: str = ""


def read_documents(path: Path) -> list[Document]:
    """The file's merges, each named at most once, one unnamed at most; ConfigError else."""
    try:
        text = path.read_text(encoding="utf-8")
        nodes = [node for node in yaml.compose_all(text, Loader=yaml.SafeLoader) if node is not None]
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the config ({exc})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: invalid YAML{where}: {getattr(exc, 'problem', None) or exc}") from None
    documents: list[Document] = []
    for i, node in enumerate(nodes, start=1):
        where = f"{path} (document {i}, line {node.start_mark.line + 1})"
        doc_text = text[node.start_mark.index : node.end_mark.index] + "\n"
        data = load_yaml(doc_text)
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: expected a mapping with `merge_method`, got {type(data).__name__}")
        documents.append(Document(_checked_name(data.get("name"), where), doc_text, where))
    for name, count in Counter(d.name for d in documents).items():
        if count > 1:
            what = f"two merges are named {name!r}" if name else "two merges have no name"
            raise ConfigError(f"{path}: {what}; name every merge but the final one, each differently")
    if not documents:
        raise ConfigError(f"{path}: no merge in the file")
    return documents


def _checked_name(name, where: str) -> str | None:
    """A merge's name, which is also its folder's: one plain path component."""
    if name is None:
        return None
    if not isinstance(name, str) or not name.strip() or name in (".", "..") or any(c in name for c in "/\\"):
        raise ConfigError(f"{where}: name {name!r}: give a plain folder name (no '/', not '.' or '..')")
    return name


def merge_order(documents: list[Document], folders: dict[str, str]) -> list[Document]:
    """The documents in an order where every merge comes after the merges it reads (by the
    `folders` of the named ones); each document's config is checked on the way."""
    needs: dict[str | None, set[str]] = {}
    token = NAMED_MERGES.set(folders)
    try:
        for doc in documents:
            config = parse_config(doc.text, doc.where)
            doc.resolved = load_config(config)[1]
            paths = {reference_path(ref) for ref in referenced_models(config)}
            needs[doc.name] = {name for name, folder in folders.items() if folder in paths}
    finally:
        NAMED_MERGES.reset(token)
    by_name = {doc.name: doc for doc in documents}
    order: list[Document] = []
    state: dict[str | None, str] = {}

    def visit(name: str | None, chain: list) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "open":
            cycle = " -> ".join(str(n) for n in [*chain[chain.index(name) :], name])
            raise ConfigError(f"the merges read each other in a cycle: {cycle}; one must come first")
        state[name] = "open"
        for need in sorted(needs[name]):
            visit(need, [*chain, name])
        state[name] = "done"
        order.append(by_name[name])

    for doc in documents:
        visit(doc.name, [])
    return order


def finished(folder: Path) -> bool:
    """Whether `folder` holds a written model (config.json and weights), for --lazy."""
    return (folder / "config.json").is_file() and any((folder / name).is_file() for name in WEIGHTS)


def run_multi(config_file: str, intermediate_dir: str, out_path: str | None, lazy: bool, options: dict) -> None:
    """Check every merge of the file, then run them in order (see the module docstring)."""
    documents = read_documents(Path(config_file))
    inter = Path(intermediate_dir).absolute()
    folders = {doc.name: str(inter / doc.name) for doc in documents if doc.name is not None}
    if any(doc.name is None for doc in documents) and not out_path:
        raise ConfigError(f"{config_file}: the file has an unnamed final merge: give --out-path for it")
    for doc in merge_order(documents, folders):
        out = Path(folders[doc.name]) if doc.name is not None else Path(out_path)
        if lazy and finished(out):
            log.warning("%s: %s holds a model already; skipped (--no-lazy merges it again)", doc.where, out)
            continue
        if not options["quiet"]:
            click.echo(f"merging {doc.name or 'the final merge'} into {out}", err=True)
        run_command(doc.resolved, str(out), options, source=doc.where)


@click.command("multi")
@click.argument("config_file", type=click.Path(dir_okay=False))
@click.option(
    "-I", "--intermediate-dir", required=True, type=click.Path(file_okay=False), help="Folder of the named merges."
)
@click.option("--out-path", type=click.Path(), default=None, help="Folder of the unnamed (final) merge.")
@click.option("--lazy/--no-lazy", default=True, show_default=True, help="Skip merges whose folder holds a model.")
@merge_options
@reports_errors
def multi_command(config_file, intermediate_dir, out_path=None, lazy=True, **options):
    """Run the merges of a mergekit-multi CONFIG_FILE (YAML documents separated by ---; a
    merge reads another by its `name`)."""
    run_multi(config_file, intermediate_dir, out_path, lazy, options)
