"""Seconds Triton takes to compile DELLA's GPU masks pass (kernels/triton/della.py) for sm_90,
per row block: one program sorts a whole row, so each row length (rounded up to a power of two)
compiles anew. Needs no GPU (triton's own ptxas). Each block compiles in a fresh cache.

    python benchmarks/della_compile_times.py 1024 4096 16384
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "0"


def compile_seconds(row_block: int) -> float:
    """Seconds to compile the masks pass for bf16 base + 3 models and `row_block`."""
    from mergefast.kernels.triton import della

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from test_triton_compile import compile_for_sm90, della_masks_signature

    constants = {"STRIDE": 1, "ROW_BLOCK": row_block, "PAIRWISE": False}
    start = time.perf_counter()
    compile_for_sm90(della._della_masks_kernel, della_masks_signature("*i16"), constants, della.row_warps(row_block))
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
            print(f"row block {block}: {out.stdout.strip()} s")


if __name__ == "__main__":
    main([int(b) for b in sys.argv[1:]] or [1024, 4096])
