"""Helpers shared by the test modules (the fixtures built from them are in conftest.py).

from helpers import example_config, run_cli, write_family

result = run_cli("yaml", config, out, "--quiet")        # mergefast, in this process
assert result.exit_code == 0, describe(result)
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import torch
from click.testing import CliRunner, Result

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "examples") not in sys.path:
    sys.path.insert(0, str(ROOT / "examples"))

from make_models import make_tiny_llama  # noqa: E402

# ---------------------------------------------------------------------------------------------
# Model families and example configs


def write_family(root: Path, *, dtype=torch.bfloat16, tie=False, fmt="safetensors", layers=4) -> dict[str, Path]:
    """base + three fine-tunes (ft-a, ft-b, ft-c) under `root`; returns name -> folder."""
    base = make_tiny_llama(root / "base", seed=0, dtype=dtype, tie_word_embeddings=tie, fmt=fmt, layers=layers)
    folders = {"base": root / "base"}
    for seed, name in enumerate(("ft-a", "ft-b", "ft-c"), start=1):
        make_tiny_llama(root / name, seed=seed, base=base, dtype=dtype, tie_word_embeddings=tie, fmt=fmt, layers=layers)
        folders[name] = root / name
    return folders


def example_config(name: str, family: dict[str, Path]) -> str:
    """The text of examples/<name>, its model paths pointed at `family`."""
    text = (ROOT / "examples" / name).read_text()
    for key, folder in family.items():
        text = text.replace(f"examples/models/{key}", str(folder))
    return text


def method_yaml(
    method: str, family: dict[str, Path], *, base=True, models=("ft-a", "ft-b"), model_params="", params=""
) -> str:
    """A float32 config of `method` over `family`: its base (when `base`), `models` with the
    per-model `model_params` each, and the global `params` (YAML flow-mapping bodies)."""
    lines = [f"merge_method: {method}", "dtype: float32"]
    if base:
        lines.append(f"base_model: {family['base']}")
    lines.append("models:")
    for name in models:
        lines.append(f"  - model: {family[name]}")
        if model_params:
            lines.append(f"    parameters: {{{model_params}}}")
    if params:
        lines.append(f"parameters: {{{params}}}")
    return "\n".join(lines) + "\n"


def plan_of(text: str, **options):
    """The (closed) plan of the YAML `text`, built with MergeOptions(**options)."""
    from mergefast.config import parse_config
    from mergefast.options import MergeOptions
    from mergefast.plan import build_plan

    plan = build_plan(parse_config(text, "cfg.yml"), text, "cfg.yml", MergeOptions(**options))
    plan.close()
    return plan


# ---------------------------------------------------------------------------------------------
# Fuzz tests


@contextlib.contextmanager
def scratch(tmp_path_factory, name: str):
    """A fresh folder for one hypothesis example, removed after it: a hunt's thousands of
    merges would otherwise fill the disk."""
    root = tmp_path_factory.mktemp(name)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def fuzz_settings(examples: int):
    """hypothesis settings of a fuzz test: the same `examples` examples on every run (CI must
    not flake), or, with MERGEFAST_FUZZ_EXAMPLES=N set, a hunt with N fresh random ones."""
    from hypothesis import HealthCheck, settings

    hunt = int(os.environ.get("MERGEFAST_FUZZ_EXAMPLES", "0"))
    return settings(
        max_examples=hunt or examples,
        derandomize=not hunt,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
    )


# ---------------------------------------------------------------------------------------------
# The command line


def run_cli(*args, command=None, env: dict | None = None, cwd: Path | None = None, input: str | None = None) -> Result:
    """Run `mergefast ARGS` (or another click `command`: mergefast-legacy, bakllama) in this
    process with click's CliRunner; arguments are str()-ed. The result has exit_code, stdout,
    stderr, output (both, interleaved) and exception (None, the SystemExit of the exit code,
    or what escaped). `env` entries are set (None: unset) for the call; `cwd` is the working
    folder during the call."""
    if command is None:
        from mergefast.cli import main as command
    old = os.getcwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        return CliRunner(env=env).invoke(command, [str(a) for a in args], input=input)
    finally:
        os.chdir(old)


def describe(result: Result) -> str:
    """The output of a run_cli result, and the exception if one escaped: for assert messages."""
    text = result.output
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        text += f"\n{type(result.exception).__name__}: {result.exception}"
    return text


def run_cli_process(
    *args, env: dict | None = None, cwd: Path | None = None, input: str | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """Run `python -m mergefast ARGS` in a fresh interpreter (for what only a real process
    shows: imports, stdin, exit status, time to fail); text output captured. `env` replaces
    the environment."""
    return subprocess.run(
        [sys.executable, "-m", "mergefast", *map(str, args)],
        env=env,
        cwd=cwd,
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def popen_with_default_sigint(args: list[str], **kwargs) -> subprocess.Popen:
    """Popen, the child starting with SIGINT at its default disposition, as from a terminal.

    A shell starts a background job (`pytest ... &` in a script) with SIGINT ignored, and an
    ignored signal stays ignored across fork and exec: the merge would then ignore the test's
    SIGINT (Python installs no KeyboardInterrupt handler). A signal with a handler is reset
    to the default by exec, so Python's handler is installed here for the spawn, and the
    disposition found before is put back."""
    before = signal.getsignal(signal.SIGINT)
    if before is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return subprocess.Popen(args, **kwargs)
    finally:
        if before is signal.SIG_IGN:
            signal.signal(signal.SIGINT, before)
