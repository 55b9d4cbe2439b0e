#!/usr/bin/env bash
# GPU check, one run on a CUDA machine, from the repository root:
#     OUT=/tmp/out bash benchmarks/gpu_check.sh
# 1. the tests marked gpu (the kernel suite with real Triton), 2. the kernel benchmarks of every
# method, 3. --cuda merges of the examples equal the CPU ones, 4. end-to-end merges (--cuda)
# against the IO floor on a ~1.2B Llama family (E2E_SIZE, E2E_METHODS), 5. a profile of one
# Triton TIES call (which selection pass or sync is slow), 6. the block-size / histogram-grid
# sweep and DELLA's masks pass over its step and grid (bench_kernels.py script mode). Each step is time-boxed (TEST_S, BENCH_S, EQUAL_S, E2E_S,
# PROFILE_S, SWEEP_S; ~9 minutes in all) so that a slow step still leaves the others' figures in
# $OUT/summary.txt. Uses
# the preinstalled torch/triton; wheels for the pure-Python dependencies may be carried in
# .gpu_wheels/ (no network there). $OUT holds eight files (the other logs go to /tmp):
# summary.txt, tests.log, bench.json, bench.log, e2e.json, e2e.log, profile_ties.txt, sweep.txt.
set -u
OUT=${OUT:-/tmp/mergefast-gpu}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
unset TRITON_INTERPRET MERGEFAST_BACKEND
S="$OUT/summary.txt"
if ls .gpu_wheels/*.whl >/dev/null 2>&1; then
  python -m pip install -q --no-deps --no-index .gpu_wheels/*.whl > /tmp/mergefast-gpu-pip.log 2>&1
fi
{
  echo "# mergefast gpu_check $(date -u +%FT%TZ)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
  python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.cuda.is_available())"
  nproc; free -g | head -2
} > "$S" 2>&1

echo "## GPU tests (real Triton: the kernel suite and every test marked gpu)" >> "$S"
# pytest-xdist, where installed, spreads the Triton compiles over the host's cores; -v names
# each failure as it happens, so a step cut by its time box still says which tests failed
# (on an H200 with 16 host cores and 12 workers, 200 s ran ~60 % of the ~330 tests)
XDIST=$(python -c "import xdist" 2>/dev/null && echo "-n ${TEST_WORKERS:-12}")
timeout "${TEST_S:-240}" python -m pytest -v --tb=short --maxfail=40 --durations=15 -p no:cacheprovider $XDIST -m gpu tests \
  > "$OUT/tests.log" 2>&1
echo "tests exit code $?" >> "$S"
grep -E "(FAILED|ERROR) tests/" "$OUT/tests.log" | sed -e 's/^.*\(FAILED\|ERROR\) /\1 /' -e 's/ - .*//' -e 's/ *$//' | sort -u | head -n 40 >> "$S"
tail -n 3 "$OUT/tests.log" >> "$S"

echo "## kernel benchmarks (7B layer, base + 3 x 11008x4096 bf16)" >> "$S"
timeout "${BENCH_S:-90}" python -m pytest -q -p no:cacheprovider benchmarks/bench_kernels.py -k triton \
  --benchmark-only --benchmark-json="$OUT/bench.json" > "$OUT/bench.log" 2>&1
echo "bench exit code $?" >> "$S"
sed -n '/mergefast kernel benchmarks/,$p' "$OUT/bench.log" | head -40 >> "$S"
echo "## --cuda equals CPU (examples)" >> "$S"
timeout "${EQUAL_S:-60}" bash benchmarks/gpu_equal_check.sh > /tmp/mergefast-gpu-equal.txt 2>&1
echo "equal exit code $?" >> "$S"
tail -n 12 /tmp/mergefast-gpu-equal.txt >> "$S"

echo "## end to end (--cuda, ${E2E_SIZE:-1.2b} family, warm page cache)" >> "$S"
timeout "${E2E_S:-80}" python benchmarks/e2e.py --size "${E2E_SIZE:-1.2b}" --repeats 1 --cuda --methods "${E2E_METHODS:-linear,ties,slerp,passthrough}" \
  --dir /tmp/mergefast-e2e --json "$OUT/e2e.json" > "$OUT/e2e.log" 2>&1
echo "e2e exit code $?" >> "$S"
grep -v "^writing" "$OUT/e2e.log" | tail -n 16 >> "$S"

echo "## TIES profile (7B layer)" >> "$S"
timeout "${PROFILE_S:-40}" python benchmarks/profile_ties.py --out "$OUT/profile_ties.txt" \
  > /tmp/mergefast-gpu-profile.log 2>&1
echo "profile exit code $?" >> "$S"
head -n 22 "$OUT/profile_ties.txt" >> "$S" 2>/dev/null || tail -n 4 /tmp/mergefast-gpu-profile.log >> "$S"
echo "## sweep: TIES in one read vs two passes, BLOCK x warps, histogram programs per SM, DELLA masks" >> "$S"
timeout "${SWEEP_S:-70}" python benchmarks/bench_kernels.py > "$OUT/sweep.txt" 2>&1
echo "sweep exit code $?" >> "$S"
cat "$OUT/sweep.txt" >> "$S"
cat "$S"
