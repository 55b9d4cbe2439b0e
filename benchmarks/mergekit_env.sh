#!/usr/bin/env bash
# Create (or reuse) a separate virtual environment with mergekit 0.1.5, the reference that
# tests/test_mergekit_compat.py and the benchmarks compare against. It never touches the
# project's own environment.
#
#   benchmarks/mergekit_env.sh [VENV_DIR]      (default .venvs/mergekit in the repository)
#   export MERGEKIT_YAML=VENV_DIR/bin/mergekit-yaml
set -euo pipefail

VENV="${1:-$(cd "$(dirname "$0")/.." && pwd)/.venvs/mergekit}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
MERGEKIT_VERSION="${MERGEKIT_VERSION:-0.1.5}"

if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('mergekit') != '$MERGEKIT_VERSION')" 2>/dev/null; then
    "$VENV/bin/pip" install -q "torch==$TORCH_VERSION" "mergekit==$MERGEKIT_VERSION"
fi
"$VENV/bin/python" -c "import torch, transformers, importlib.metadata as m; print('mergekit', m.version('mergekit'), 'torch', torch.__version__, 'transformers', transformers.__version__)"
echo "export MERGEKIT_YAML=$VENV/bin/mergekit-yaml"
