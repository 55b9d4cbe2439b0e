"""Checks on OUT before any tensor is read: mergefast replaces the OUT folder whole at the end
of a merge (execute.replace_folder), so OUT must never be a folder whose loss would hurt.

mergekit writes its files into an existing OUT and leaves the rest there; mergefast swaps in
a finished folder instead (an interrupted merge never leaves a half-written model). So OUT
may be missing, empty, or a previous output (a model folder or a merge's folder), and never
the working folder, a folder above it, an input model's folder (or one above it), the
config file's folder, or a folder of other files.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from ..errors import ConfigError

# What marks OUT as a previous output, replaceable: a merge (mergekit's or ours) or a model.
_OUTPUT_MARKS = ("mergekit_config.yml", "config.json")


def output_folder(out_path: str | os.PathLike) -> Path:
    """OUT as an absolute path, `~` expanded (as the model paths are)."""
    return Path(os.path.expanduser(os.fspath(out_path))).absolute()


def check_out_path(out: Path) -> None:
    """What can be told of OUT alone: a folder or nothing yet, below folders, not the
    working folder or one above it."""
    if out.is_symlink() and not out.exists():
        raise ConfigError(f"output path {out} is a dangling symbolic link; remove it or give another path")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output path {out} is a file; give a folder path")
    for parent in out.parents:
        if parent.exists() and not parent.is_dir():
            raise ConfigError(f"output path {out} lies under {parent}, which is a file")
    cwd = Path.cwd().resolve()
    if _is_within(cwd, out.resolve()):
        raise ConfigError(
            f"output path {out} is the current folder or holds it; mergefast "
            "replaces OUT whole: give a new folder, e.g. ./merged"
        )


def check_replaceable(out: Path, protected: Iterable[Path]) -> None:
    """OUT holds none of `protected` (the input models' folders, the config file), and an
    existing OUT is empty or a previous output."""
    target = out.resolve()
    for path in protected:
        if _is_within(Path(path).resolve(), target):
            raise ConfigError(
                f"output path {out} holds {path}, an input of this merge; mergefast "
                "replaces OUT whole, which would delete it: give another folder"
            )
    if not out.is_dir():
        return
    entries = sorted(p.name for p in out.iterdir())
    if entries and not any(mark in entries for mark in _OUTPUT_MARKS):
        raise ConfigError(
            f"output path {out} already holds files that are not a model ({', '.join(entries[:3])}"
            f"{', ...' if len(entries) > 3 else ''}); mergefast replaces OUT whole: give a new or "
            "empty folder, or remove it first"
        )


def check_stats_path(stats_json: str | None, out: Path) -> None:
    """`--stats-json` can be written when the merge ends: its folder exists and it is neither a
    folder nor inside OUT (which is replaced)."""
    if not stats_json:
        return
    path = Path(stats_json).absolute()  # as summary.write_stats_json will write it
    if path.is_dir():
        raise ConfigError(f"--stats-json {stats_json} is a folder; give a file path")
    if _is_within(path.resolve(), out.resolve()):
        raise ConfigError(
            f"--stats-json {stats_json} lies inside the output folder {out}, which "
            "is replaced at the end of the merge; write it elsewhere"
        )
    if not path.parent.is_dir():
        raise ConfigError(f"--stats-json {stats_json}: folder {path.parent} does not exist")


def check_output_folder(out: Path, plan) -> None:
    """Every check on OUT, the plan's inputs among them: the model folders and the config
    file (plan.MergePlan's), which OUT must not hold."""
    inputs = [m.folder for m in plan.models.values()]
    if plan.source and Path(plan.source).is_file():
        inputs.append(Path(plan.source))
    check_out_path(out)
    check_replaceable(out, inputs)


def _is_within(path: Path, folder: Path) -> bool:
    """Whether `path` is `folder` or lies below it (both resolved)."""
    return path == folder or folder in path.parents
