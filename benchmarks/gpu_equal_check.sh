#!/usr/bin/env bash
# The --cuda merge path against the CPU path: every example config merged on the GPU must
# equal its CPU merge bit for bit (the staging in mergefast/staging/cuda.py is only tested
# against a fake device on CPU-only machines). Prints one line per config.
# Run from the repository root on a CUDA machine: bash benchmarks/gpu_equal_check.sh
set -u
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
done 2>&1
