"""Shared fixtures: tiny Llama-shaped model families written by the tests themselves.

The helpers they are built from (and the CLI runner) are in tests/helpers.py.

Without a CUDA device the Triton kernels run under the interpreter: TRITON_INTERPRET=1 must
be set before triton is imported (it decides at `@triton.jit` time whether a kernel is compiled
or interpreted), so it is set here, before any test module is imported, unless it is set
already. tests/test_kernels_triton.py then runs its interpreted suites in this process, and
tests/test_triton_compile.py compiles the kernels in a child process without the interpreter.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch

if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

from helpers import write_family  # noqa: E402
from triton_interpreter import patch_once_per_launch  # noqa: E402

if os.environ.get("TRITON_INTERPRET") == "1":
    patch_once_per_launch()

# A suite started in the background by a non-interactive shell (`pytest &`) inherits SIGINT
# ignored; the interruption tests need Ctrl-C to raise KeyboardInterrupt as it does at a prompt.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """A test class may name its slow tests in SLOW_TESTS, or set SLOW_TESTS = "all" and name
    the exceptions in FAST_TESTS: they get the `slow` mark. (The tests its suite shares with
    other classes, tests/kernel_cases.py, cannot carry the mark themselves: it would mark every
    suite's.)"""
    for item in items:
        cls, name = getattr(item, "cls", None), getattr(item, "originalname", None)
        slow = getattr(cls, "SLOW_TESTS", ())
        if name in slow or (slow == "all" and name not in getattr(cls, "FAST_TESTS", ())):
            item.add_marker(pytest.mark.slow)


def pytest_collection_finish(session):
    """Start tests/test_triton_compile.py's compiling child now where its runner test was
    collected (it runs on the second core beside the suite; the test waits for it)."""
    from test_triton_compile import COMPILING, HAVE_TRITON, INTERPRETED, RUNNER, start_compiling

    if HAVE_TRITON and INTERPRETED and any(getattr(item, "originalname", None) == RUNNER for item in session.items):
        session.config.stash[COMPILING] = start_compiling()


def pytest_sessionfinish(session):
    """Stop a compiling child whose test did not run (a stopped or deselected session)."""
    from test_triton_compile import COMPILING

    child = session.config.stash.get(COMPILING, None)
    if child is not None and child.poll() is None:
        child.kill()
        child.wait()


@pytest.fixture(autouse=True)
def torch_engine_in_process(monkeypatch):
    """Merges run in this process (CliRunner, `mergefast.merge`) take the torch engine, which
    most tests exercise (fake GPUs, kernel spies, failure injection); a merge would otherwise
    take the torch-free engine wherever it covers the plan (execute.torch_free). The tests of
    that engine (tests/test_host_*.py, tests/test_io_mapped.py) set `execute.torch_free`
    themselves, and subprocess tests run the real rule."""
    from mergefast import execute

    monkeypatch.setattr(execute, "torch_free", lambda plan, options: False)


@pytest.fixture(scope="session")
def family(tmp_path_factory) -> dict[str, Path]:
    """A bf16 family of four 4-layer tiny Llamas (untied)."""
    return write_family(tmp_path_factory.mktemp("family"))


@pytest.fixture(scope="session")
def f32_family(tmp_path_factory) -> dict[str, Path]:
    """A float32 family of four 2-layer tiny Llamas (untied): the methods' end-to-end merges."""
    return write_family(tmp_path_factory.mktemp("f32"), dtype=torch.float32, layers=2)


@pytest.fixture(scope="session")
def fuzz_families(tmp_path_factory) -> dict[str, dict[str, Path]]:
    """The model families of the whole-merge fuzz tests (tests/fuzz_configs.py)."""
    from fuzz_configs import build_families

    return build_families(tmp_path_factory.mktemp("fuzz-families"))


@pytest.fixture(scope="session")
def tied_family(tmp_path_factory) -> dict[str, Path]:
    """A float32 family with tied embeddings (no lm_head.weight in the checkpoints)."""
    return write_family(tmp_path_factory.mktemp("tied"), dtype=torch.float32, tie=True)
