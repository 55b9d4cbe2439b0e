#!/usr/bin/env bash
# Short GPU check of the --cuda merge path alone: the example configs merged on the GPU must
# equal the CPU merges bit for bit, then end-to-end timings of a ~1.2B family against the IO
# floor. Run from the repository root on a CUDA machine: OUT=/tmp/out bash benchmarks/gpu_e2e_check.sh
set -u
OUT=${OUT:-/tmp/mergefast-gpu}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ls .gpu_wheels/*.whl >/dev/null 2>&1; then
  python -m pip install -q --no-deps --no-index .gpu_wheels/*.whl > "$OUT/pip.log" 2>&1
fi
bash benchmarks/gpu_equal_check.sh | tee "$OUT/equal.txt"
timeout "${E2E_S:-200}" python benchmarks/e2e.py --size "${E2E_SIZE:-1.2b}" --repeats "${REPEATS:-1}" --cuda \
  --dir /tmp/mergefast-e2e --json "$OUT/e2e.json" 2>&1 | grep -v "^writing" | tee "$OUT/e2e.txt"
