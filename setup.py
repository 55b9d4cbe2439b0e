"""Build of the optional CPU extension `mergefast._C` (everything else is in pyproject.toml).

The extension is compiled ahead of time against the torch that is installed when you build,
so install torch first and build without isolation:

    pip install torch setuptools wheel && pip install --no-build-isolation -e .

It is skipped, with a message, and mergefast then uses its torch reference path on the CPU
(see `mergefast env`), when:
  - MERGEFAST_BUILD_EXT=0 is set;
  - torch cannot be imported at build time (e.g. a build with isolation);
  - no C++ compiler is found, or compiling fails (e.g. no OpenMP support).

Flags: -O3 and OpenMP; -ffp-contract=off keeps a*b+c as two roundings, as the torch
references compute it, so kernel results are bit-exact where the order of operations is the
same; -fno-trapping-math (results unchanged: it only drops FP-exception side effects) lets
GCC vectorise the selects of the TIES sign election (measured: TIES 7B layer 2.5 s -> see
benchmarks/README.md). No -march=native: the build must run on any x86-64 / aarch64 machine.
"""

from __future__ import annotations

import glob
import os
import shutil
import sys

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _note(msg: str) -> None:
    print(f"mergefast setup: {msg}", file=sys.stderr)


def _extensions():
    if os.environ.get("MERGEFAST_BUILD_EXT", "1").strip().lower() in ("0", "false", "no", "off"):
        _note("MERGEFAST_BUILD_EXT=0: not building mergefast._C (CPU kernels use the torch path)")
        return [], {}
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except Exception as exc:  # torch absent (or broken) at build time
        _note(f"torch not importable at build time ({exc}): not building mergefast._C; "
              "install torch first and use `pip install --no-build-isolation -e .`")
        return [], {}
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler.split()[0]) is None and shutil.which("g++") is None:
        _note(f"no C++ compiler ({compiler}) found: not building mergefast._C")
        return [], {}

    class OptionalBuildExtension(BuildExtension):
        """Build mergefast._C, but let the install succeed if compiling fails."""

        def run(self):
            try:
                super().run()
            except Exception as exc:
                _note(f"building mergefast._C failed ({exc}); the torch path will be used")

        def build_extension(self, ext):
            try:
                super().build_extension(ext)
            except Exception as exc:
                _note(f"building {ext.name} failed ({exc}); the torch path will be used")

    sources = sorted(glob.glob(os.path.join("csrc", "**", "*.cpp"), recursive=True))
    openmp = [] if sys.platform == "darwin" else ["-fopenmp"]
    ext = CppExtension(
        "mergefast._C",
        sources=sources,
        include_dirs=[os.path.join(HERE, "csrc")],
        extra_compile_args=["-O3", "-ffp-contract=off", "-fno-trapping-math", *openmp],
        extra_link_args=openmp,
    )
    return [ext], {"build_ext": OptionalBuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
