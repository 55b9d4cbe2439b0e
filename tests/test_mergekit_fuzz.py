"""Fuzzing mergefast against an installed mergekit 0.1.5: random configs of the deterministic
methods (tests/fuzz_configs.py: parameters as scalars, gradients and filters, slices, with and
without a base) over the float32 family and the one of mixed input dtypes, with `dtype:
float32`, merged by both. The tensors agree within rounding, or mergefast's are no farther from
the float64 result than mergekit's; where mergekit merges, mergefast does too, except where it
refuses an output mergekit writes as NaN (linear weights summing to zero with `normalize:
true`, docs/errors.md).

Skipped unless mergekit-yaml is found (tests/test_mergekit_compat.py). One mergekit process
serves every example (its interpreter runs mergekit-yaml's entry point per config, read from
stdin). `MERGEFAST_FUZZ_EXAMPLES=N` hunts with N fresh examples per method."""

from __future__ import annotations

import functools
import json
import subprocess
from pathlib import Path

import pytest
from fuzz_checks import assert_near, float64_merge
from fuzz_configs import FUZZ, METHODS, configs, to_yaml
from helpers import describe, run_cli, scratch
from hypothesis import given
from hypothesis import strategies as st
from test_backends_agree import THRESHOLD_FLIPS
from test_mergekit_compat import MERGEKIT_YAML, _env, load_folder
from test_mergekit_compat_methods import _mergekit_python

pytestmark = [
    pytest.mark.mergekit,
    pytest.mark.slow,
    pytest.mark.skipif(MERGEKIT_YAML is None, reason="mergekit-yaml not found (set MERGEKIT_YAML)"),
]

# DARE and DELLA draw from mergefast's own counter-based generator on purpose (docs/methods.md)
DETERMINISTIC = sorted(set(METHODS) - {"dare_ties", "dare_linear", "della", "della_linear"})
DONE = "mergefast-fuzz-done"
# reads [config, out, status file] per line; writes the status file, then DONE on stdout
_WORKER = rf"""
import json, sys, traceback
from mergekit.scripts.run_yaml import main
for line in sys.stdin:
    cfg, out, status = json.loads(line)
    try:
        main([cfg, out, "--no-copy-tokenizer", "--no-write-model-card", "--quiet"], standalone_mode=False)
        result = "ok"
    except BaseException:
        result = traceback.format_exc()[-3000:]
    open(status, "w").write(result)
    print("{DONE}", flush=True)
"""


@pytest.fixture(scope="module")
def mergekit():
    """A function (config path, out folder) -> "ok" or mergekit's traceback, served by one
    mergekit process."""
    python = _mergekit_python()
    if python is None:
        pytest.skip("mergekit-yaml's interpreter not found from its #! line")
    worker = subprocess.Popen(
        [python, "-c", _WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=_env(), text=True
    )

    def run(config: Path, out: Path) -> str:
        status = out.parent / "mergekit-status"
        worker.stdin.write(json.dumps([str(config), str(out), str(status)]) + "\n")
        worker.stdin.flush()
        for line in worker.stdout:
            if line.strip() == DONE:
                return status.read_text()
        raise AssertionError("the mergekit process ended")

    yield run
    worker.stdin.close()
    worker.wait(timeout=60)


@pytest.mark.parametrize("method", DETERMINISTIC)
def test_random_merges_agree_with_mergekit(method, fuzz_families, mergekit, tmp_path_factory):
    _agree_with_mergekit(method, fuzz_families, mergekit, tmp_path_factory)


@FUZZ
@given(example=st.data())
def _agree_with_mergekit(method, fuzz_families, mergekit, tmp_path_factory, example):
    """mergefast's merge of a random config of `method` is mergekit's (see the docstring)."""
    name, config = example.draw(configs(method, ("f32", "mixed")))
    family = fuzz_families[name]
    config["dtype"] = "float32"
    config.pop("out_dtype", None)
    with scratch(tmp_path_factory, "mk") as root:
        path = root / "config.yml"
        path.write_text(to_yaml(config, family))
        theirs = mergekit(path, root / "mergekit")
        ours = run_cli("yaml", path, root / "mergefast", "--quiet", "--no-copy-tokenizer")
        if ours.exit_code != 0:
            assert theirs != "ok" or _not_finite(root / "mergekit"), describe(ours)
            return
        assert theirs == "ok", f"mergekit failed where mergefast merged:\n{theirs}"
        got, want = load_folder(root / "mergefast"), load_folder(root / "mergekit")
        assert got.keys() == want.keys()
        exact = functools.cache(lambda: float64_merge(config, family, root))
        for key, ref in want.items():
            assert_near(key, got[key], ref, exact, THRESHOLD_FLIPS.get(method, 0))


def _not_finite(folder: Path) -> bool:
    """Whether a model folder has a tensor with a NaN or infinite value."""
    return any(not bool(t.isfinite().all()) for t in load_folder(folder).values())
