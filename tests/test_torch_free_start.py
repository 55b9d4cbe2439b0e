"""Planning imports no torch (mergefast/dtypes.py): `mergefast plan` runs without it, and a
Hub merge starts its downloads before torch's import begins. In subprocesses, whose first
import of torch a meta path finder watches."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import test_hub_stream
from fake_hub import FakeHub, use_fake_hub
from helpers import run_cli
from test_hub_overlap import ALL_LAYERS, base4  # noqa: F401 - base4 is a fixture

models = test_hub_stream.models  # its fixture, shared

# Runs `python -m mergefast ARGS`; at the first import of torch it says whether the Hub
# downloads had started, then exits 3, or with WATCH=refuse fails that import instead (and
# that of every module in WATCH_NAMES, comma-separated).
WATCHED = """
import importlib.abc, os, runpy, sys, threading

class Watch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name not in ("torch", *os.environ.get("WATCH_NAMES", "").split(",")):
            return None
        if os.environ["WATCH"] == "refuse":
            raise ImportError("torch was imported")
        started = any(t.name.startswith("hub-download") for t in threading.enumerate())
        print(f"downloading when torch was imported: {started}", flush=True)
        os._exit(3)

sys.meta_path.insert(0, Watch())
sys.argv = ["mergefast", *sys.argv[1:]]
runpy.run_module("mergefast", run_name="__main__", alter_sys=True)
"""


def _watched(args, watch: str, cwd, names: str = "", **env_vars: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "WATCH": watch, "WATCH_NAMES": names, **env_vars}
    return subprocess.run(
        [sys.executable, "-c", WATCHED, *map(str, args)], env=env, cwd=cwd, capture_output=True, text=True, timeout=120
    )


@pytest.mark.slow  # a subprocess
def test_plan_of_a_local_config_imports_no_torch(models, tmp_path):
    config = tmp_path / "config.yml"
    config.write_text(
        f"merge_method: ties\nbase_model: {models['base']}\nmodels:\n"
        f"  - model: {models['ft-a']}\n    parameters: {{weight: 0.5, density: 0.5}}\n"
        f"  - model: {models['ft-b']}\n    parameters: {{weight: 0.5, density: 0.5}}\ndtype: bfloat16\n"
    )
    proc = _watched(["plan", config], "refuse", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("plan for ") and "model.norm.weight" in proc.stdout


@pytest.mark.slow  # subprocesses
def test_a_hub_merge_downloads_before_torch_is_imported(base4, tmp_path, monkeypatch):  # noqa: F811
    """100 kB/s: the shards take seconds, so the download threads are still running when the
    planner's work is done. `plan` of the same config needs no torch at all, nor does the
    merge on the torch-free engine (downloading at full speed: ~3 s where 100 kB/s took 25), which
    writes the torch engine's bytes; the torch engine (MERGEFAST_BACKEND) imports it while the
    shards download."""
    slow = FakeHub(bytes_per_second=100_000).start()
    slow.add_repo("org/base4", base4)
    use_fake_hub(monkeypatch, slow, tmp_path / "hf")  # the environment reaches the subprocesses
    config = tmp_path / "config.yml"
    config.write_text(ALL_LAYERS)
    torch_engine = {"MERGEFAST_BACKEND": "cpu-ext"}
    try:
        planned = _watched(["plan", config], "refuse", tmp_path)
        on_torch = _watched(["yaml", config, tmp_path / "torch" / "out", "--quiet"], "report", tmp_path, **torch_engine)
        shutil.rmtree(tmp_path / "hf" / "hub")  # the torch-free merge downloads again
        slow.bytes_per_second = None
        without = _watched(["yaml", config, tmp_path / "free" / "out", "--quiet"], "refuse", tmp_path)
        cached = run_cli("yaml", config, tmp_path / "torch" / "out", "--quiet", env=torch_engine)  # in this process
    finally:
        slow.stop()
    assert planned.returncode == 0, planned.stderr
    assert "org/base4" in planned.stdout
    assert on_torch.returncode == 3, on_torch.stderr
    assert on_torch.stdout.strip() == "downloading when torch was imported: True"
    assert without.returncode == 0 and cached.exit_code == 0, without.stderr + cached.stderr
    free, torch_out = tmp_path / "free" / "out", tmp_path / "torch" / "out"  # the card names the folder
    names = sorted(p.name for p in free.iterdir())
    assert names == sorted(p.name for p in torch_out.iterdir()) and "config.json" in names
    for name in names:
        assert (free / name).read_bytes() == (torch_out / name).read_bytes(), name


def test_the_planner_and_executor_import_neither_torch_nor_numpy():
    """A bad config fails before any heavy import: the modules a `mergefast yaml` run imports
    before its first read load neither torch nor numpy (only Model Stock and nuslerp import
    numpy, host/gram_methods.py), nor what a `--quiet` merge of most methods never uses: the
    legacy commands (mergefast/cli.py), tqdm (execute._progress_bar) and hashlib (DARE's and
    DELLA's stream keys, methods/random_keys.py)."""
    code = (
        "import sys\n"
        "import mergefast.cli, mergefast.run, mergefast.config, mergefast.plan, mergefast.execute, mergefast.host\n"
        "import mergefast.host.merge, mergefast.host.staging, mergefast.host.parts\n"
        "unused = ('torch', 'numpy', 'mergefast.legacy', 'tqdm', 'hashlib')\n"
        "print(sorted(m for m in unused if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_dtype_names_agree_with_torch():
    """mergefast/dtypes.py's table against torch and the safetensors library: every name is
    torch's, with its size and float-ness, under the safetensors code the library uses."""
    import torch
    from safetensors.torch import _TYPES

    from mergefast import dtypes

    for code, name in dtypes.SAFETENSORS_NAMES.items():
        dtype = dtypes.torch_dtype(name)
        assert _TYPES[code] == dtype and dtypes.name_of(dtype) == name
        assert dtypes.ITEMSIZE[name] == dtype.itemsize
        assert (name in dtypes.FLOATS) == dtype.is_floating_point
    computed = ("bfloat16", "float16", "float32", "float64", "int8", "int64", "bool")
    for a in computed:
        for b in computed:
            want = torch.promote_types(dtypes.torch_dtype(a), dtypes.torch_dtype(b))
            assert dtypes.promote(a, b) == dtypes.name_of(want), (a, b)


# Thread A imports torch through import_torch; once torch._tensor is being imported (torch
# half initialised, already in sys.modules), the main thread asks for it as the pipeline's
# stages and the kernels' team size do.
WHILE_IMPORTING = """
import sys, threading
from mergefast.io.host_array import import_torch, loaded_torch

started = threading.Event()
sys.addaudithook(lambda event, args: event == "import" and args[0] == "torch._tensor" and started.set())
importer = threading.Thread(target=import_torch)
importer.start()
assert started.wait(120)
torch = loaded_torch()
from torch.overrides import TorchFunctionMode  # noqa: F401
print(torch.get_num_threads() > 0)
importer.join()
"""


def test_torch_asked_for_while_another_thread_imports_it_is_whole():
    """Merge threads meeting NaN inputs import torch while the writer's stage looks for it: each
    gets the whole module, never a half-initialised torch.overrides (an ImportError)."""
    proc = subprocess.run([sys.executable, "-c", WHILE_IMPORTING], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "True"
