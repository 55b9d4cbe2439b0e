"""Build of the CPU kernels, `mergefast/kernels/libmergefast_cpu.so` (everything else is in
pyproject.toml).

The kernels (csrc/) are a plain C ABI shared library: raw pointers, dtype codes, element
counts and a thread count in, status codes out (csrc/mergefast.h), loaded with ctypes by
mergefast/kernels/cpu.py. No torch is needed to build it and none of torch's C++ ABI is in it,
so every way of installing builds it, and a later torch upgrade keeps it working:

    pip install .        pip install -e .        pip wheel .        (with or without
    --no-build-isolation)

It is compiled by setuptools as an extension module (an Extension needs neither torch nor
CMake; a `PyInit_` stub in csrc/api.cpp satisfies build_ext), then renamed to a plain
library name. Knobs:

    MERGEFAST_BUILD_EXT=0   do not build it (merges then run on the torch reference path)
    CXX / CC                the compiler, as for any setuptools extension

A missing compiler or a failed compile does not fail the install: setup prints why, and
every CPU merge then warns in one line at its start that it runs on the torch reference path,
with the reason and the fix (`mergefast env` says the same).

Flags: -O3 and OpenMP; -ffp-contract=off keeps a*b+c as two roundings, as the torch
references compute it, so kernel results are bit-exact where the order of operations is the
same; -fno-trapping-math (results unchanged: it only drops FP-exception side effects) lets
GCC vectorise the selects of the TIES sign election. No -fvisibility=hidden: with it GCC 12
compiles the linear kernel 10-20 % slower (7B layer on a 2-vCPU AMD EPYC VM, alternated calls).
No -march=native: the build must run on any x86-64 / aarch64 machine (the hot loops get AVX2
clones picked at run time instead, csrc/cpu/common.h).
"""

from __future__ import annotations

import glob
import os
import sys
from concurrent.futures import ThreadPoolExecutor

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

LIBRARY = "mergefast.kernels.libmergefast_cpu"  # -> mergefast/kernels/libmergefast_cpu.so


def _note(msg: str) -> None:
    print(f"mergefast setup: {msg}", file=sys.stderr)


def _library_file() -> str:
    """The library's file name, without the Python ABI tag of extension modules."""
    return "libmergefast_cpu" + (".dll" if sys.platform == "win32" else ".so")


class BuildCpuKernels(build_ext):
    """build_ext for the CPU kernel library: a plain file name, sources compiled in parallel,
    and an install that goes on (with a message) when compiling fails."""

    def get_ext_filename(self, fullname: str) -> str:
        # build_ext asks with the full name and with its last component alone
        if fullname in (LIBRARY, LIBRARY.rsplit(".", 1)[1]):
            return os.path.join(*fullname.split(".")[:-1], _library_file())
        return super().get_ext_filename(fullname)

    def build_extension(self, ext: Extension) -> None:
        compile_one = self.compiler.compile

        def compile_all(sources, *args, **kwargs):  # one source per job, all cores
            with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
                parts = pool.map(lambda src: compile_one([src], *args, **kwargs), sources)
                return [obj for part in parts for obj in part]

        self.compiler.compile = compile_all
        try:
            super().build_extension(ext)
        except Exception as exc:  # no compiler, no OpenMP, ...: the torch path still works
            _note(
                f"building the CPU kernels failed ({type(exc).__name__}: {exc}); mergefast "
                "will merge on the CPU with its torch reference path. Install a C++17 "
                "compiler with OpenMP (e.g. g++) and reinstall to get them."
            )
        finally:
            self.compiler.compile = compile_one


def _extensions() -> list[Extension]:
    if os.environ.get("MERGEFAST_BUILD_EXT", "1").strip().lower() in ("0", "false", "no", "off"):
        _note("MERGEFAST_BUILD_EXT=0: not building the CPU kernels (CPU merges use the torch path)")
        return []
    openmp = [] if sys.platform == "darwin" else ["-fopenmp"]
    sources = ["csrc/api.cpp", *sorted(glob.glob("csrc/cpu/**/*.cpp", recursive=True))]
    headers = sorted(glob.glob("csrc/**/*.h", recursive=True))
    return [
        Extension(
            LIBRARY,
            sources=sources,
            depends=headers,
            include_dirs=["csrc"],
            language="c++",
            extra_compile_args=["-std=c++17", "-O3", "-ffp-contract=off", "-fno-trapping-math", *openmp],
            extra_link_args=openmp,
        )
    ]


setup(ext_modules=_extensions(), cmdclass={"build_ext": BuildCpuKernels})
