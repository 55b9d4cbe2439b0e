#!/usr/bin/env bash
# GPU check for the Triton kernels: the kernel tests for real on the GPU, then the GPU
# benchmarks and a block-size sweep. Run from the repository root on a CUDA machine:
#     OUT=/tmp/out bash benchmarks/gpu_check.sh
# Writes $OUT/summary.txt (plus the full logs). Uses the preinstalled torch/triton; nothing is
# downloaded or pinned. The C++ extension is not needed here (CPU tests are not run).
set -u
OUT=${OUT:-/tmp/mergefast-gpu}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
unset TRITON_INTERPRET MERGEFAST_BACKEND
S="$OUT/summary.txt"
{
  echo "# mergefast gpu_check $(date -u +%FT%TZ)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
  python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.cuda.is_available())"
} > "$S" 2>&1

echo "## tests (real Triton)" >> "$S"
if python -c "import pytest" 2>/dev/null; then
  timeout 180 python -m pytest -q -x -p no:cacheprovider tests/test_kernels_triton.py -k Cuda \
    > "$OUT/tests.log" 2>&1
  echo "tests exit code $?" >> "$S"
  tail -n 15 "$OUT/tests.log" >> "$S"
else
  echo "pytest not installed: tests skipped" >> "$S"
fi

echo "## benchmarks (7B layer, base + 3 x 11008x4096 bf16)" >> "$S"
if python -c "import pytest_benchmark" 2>/dev/null; then
  timeout 120 python -m pytest -q -p no:cacheprovider benchmarks/bench_kernels.py -k triton \
    --benchmark-only --benchmark-json="$OUT/bench.json" > "$OUT/bench.log" 2>&1
  echo "bench exit code $?" >> "$S"
  sed -n '/mergefast kernel benchmarks/,$p' "$OUT/bench.log" | head -20 >> "$S"
else
  echo "pytest-benchmark not installed: see the sweep below" >> "$S"
fi

echo "## block-size sweep" >> "$S"
timeout 150 python benchmarks/bench_kernels.py > "$OUT/sweep.log" 2>&1
echo "sweep exit code $?" >> "$S"
tail -n 16 "$OUT/sweep.log" >> "$S"
cat "$S"
