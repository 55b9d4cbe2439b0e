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
for cfg in linear ties task-arithmetic slerp-gradient passthrough-stack; do
  python -m mergefast yaml "examples/$cfg.yml" "/tmp/gpu-$cfg" --cuda --quiet &&
  python -m mergefast yaml "examples/$cfg.yml" "/tmp/cpu-$cfg" --quiet &&
  python - "$cfg" <<'PY'
import sys
from safetensors.torch import load_file
cfg = sys.argv[1]
a, b = load_file(f"/tmp/gpu-{cfg}/model.safetensors"), load_file(f"/tmp/cpu-{cfg}/model.safetensors")
same = sum(bool((a[k] == b[k]).all()) for k in a)
print(f"{cfg}: {same}/{len(a)} tensors bit-identical between --cuda and CPU")
PY
done 2>&1 | tee "$OUT/equal.txt"
timeout "${E2E_S:-200}" python benchmarks/e2e.py --size "${E2E_SIZE:-1.2b}" --repeats "${REPEATS:-1}" --cuda \
  --dir /tmp/mergefast-e2e --json "$OUT/e2e.json" 2>&1 | grep -v "^writing" | tee "$OUT/e2e.txt"
