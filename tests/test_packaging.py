"""The install declares what the package needs: a fresh `pip install -e .` (the README's first
Quick start command) must run a merge with nothing else installed."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent
# imported only behind a guard that names the package to install (or the torch path runs)
OPTIONAL = {"triton", "transformers", "tokenizers"}
# import name -> distribution name, where they differ
DISTRIBUTION = {"yaml": "pyyaml"}


def _declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {re.split(r"[<>=!~;\[ ]", dep, maxsplit=1)[0].lower() for dep in project["dependencies"]}


def _imported(source: str) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_every_import_is_a_declared_dependency():
    """Third-party modules imported anywhere in mergefast/ are in [project] dependencies,
    except the guarded optional ones; Tensor.numpy() (the reader's and writer's buffers)
    needs numpy, which torch does not install."""
    needed = set()
    for path in (ROOT / "mergefast").rglob("*.py"):
        source = path.read_text()
        needed |= _imported(source)
        if ".numpy()" in source:
            needed.add("numpy")
    third_party = {n for n in needed if n not in sys.stdlib_module_names and n != "mergefast"}
    missing = {DISTRIBUTION.get(n, n) for n in third_party - OPTIONAL} - _declared()
    assert not missing, f"imported but not in pyproject.toml's dependencies: {sorted(missing)}"


# ----------------------------------------------------------------------------- the CPU kernels


def test_the_cpu_kernels_need_no_torch_to_build():
    """csrc/ includes no torch, ATen, c10, pybind11 or Python header; setup.py imports no
    torch; the build requirements list none: any pip invocation can build the library."""
    banned = re.compile(r'#include\s*[<"](torch|ATen|c10|pybind11|Python\.h)')
    sources = list((ROOT / "csrc").rglob("*.h")) + list((ROOT / "csrc").rglob("*.cpp"))
    assert sources
    assert not [p.name for p in sources if banned.search(p.read_text())]
    assert "torch" not in _imported((ROOT / "setup.py").read_text())
    build = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    assert not [r for r in build if r.lower().startswith("torch")]


def test_the_binding_matches_the_c_abi():
    """native.py declares every entry point of csrc/mergefast.h, and the ABI versions agree."""
    from mergefast import native
    from mergefast.kernels import cpu

    header = (ROOT / "csrc" / "mergefast.h").read_text()
    declared = set(re.findall(r"MF_API\s+[\w\s\*]+?\b(mf_\w+)\(", header))
    assert declared == set(native._SIGNATURES), declared ^ set(native._SIGNATURES)
    assert int(re.search(r"#define MF_ABI_VERSION (\d+)", header).group(1)) == native.ABI_VERSION == cpu.ABI_VERSION


def test_the_library_loads_without_torch():
    """The built library is a plain C library: it loads and runs without torch in the
    process (so a torch upgrade cannot break it)."""
    import os
    import subprocess

    from mergefast.kernels import cpu

    if os.environ.get("MERGEFAST_BUILD_EXT", "1") == "0":
        import pytest

        pytest.skip("MERGEFAST_BUILD_EXT=0: no CPU kernel library")
    code = (
        "import ctypes, sys\n"
        f"lib = ctypes.CDLL({str(cpu.LIBRARY)!r})\n"
        "assert 'torch' not in sys.modules\n"
        "x = (ctypes.c_float * 4)(1, 2, 3, 4)\n"
        "out = (ctypes.c_float * 4)()\n"
        "xs = (ctypes.c_void_p * 1)(ctypes.addressof(x))\n"
        "codes = (ctypes.c_int32 * 1)(0)\n"
        "w = (ctypes.c_double * 1)(0.5)\n"
        "lib.mf_linear.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int32, ctypes.c_int64,"
        " ctypes.c_void_p, ctypes.c_int32, ctypes.c_double, ctypes.c_void_p, ctypes.c_int32, ctypes.c_int32]\n"
        "assert lib.mf_linear(xs, codes, 1, 4, w, 0, 1.0, out, 0, 1) == 0\n"
        "print(lib.mf_abi_version(), list(out))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.split() == [str(cpu.ABI_VERSION), "[0.5,", "1.0,", "1.5,", "2.0]"]
