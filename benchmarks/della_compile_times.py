"""Seconds Triton takes to compile DELLA's GPU masks pass (kernels/triton/della_masks.py) for
sm_90, per step size (CHUNK: the row length rounded up to a power of two, at most
della.CHUNK). Needs no GPU (triton's own ptxas). Each size compiles in a fresh cache.

    python benchmarks/della_compile_times.py 256 1024
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "0"


def compile_seconds(chunk: int) -> float:
    """Seconds to compile the masks pass for bf16 base + 3 models and `chunk` columns a step."""
    from mergefast.kernels.triton import della

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from test_triton_compile import compile_for_sm90, della_masks_constants, della_masks_signature

    start = time.perf_counter()
    compile_for_sm90(della._della_masks_kernel, della_masks_signature("*i16"), della_masks_constants(chunk))
    return time.perf_counter() - start


def main(blocks: list[int]) -> None:
    """Compile each block in a child process of its own cache and print the seconds."""
    if os.environ.get("DELLA_COMPILE_BLOCK"):
        print(f"{compile_seconds(int(os.environ['DELLA_COMPILE_BLOCK'])):.1f}")
        return
    import subprocess

    for block in blocks:
        with tempfile.TemporaryDirectory() as cache:
            env = {**os.environ, "TRITON_CACHE_DIR": cache, "DELLA_COMPILE_BLOCK": str(block)}
            out = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, check=True)
            print(f"chunk {block}: {out.stdout.strip()} s")


if __name__ == "__main__":
    main([int(b) for b in sys.argv[1:]] or [256, 1024])
