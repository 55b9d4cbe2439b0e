"""Compare mergefast against mergekit 0.1.5 for the deterministic methods added after the
first compatibility suite (``tests/test_mergekit_compat.py``, whose helpers this file reuses).

Every case uses ``dtype: float32`` and the same tiny float32 Llamas (base + three fine-tunes,
``base + 0.02 * N(0, 1)``). Results must agree tensor by tensor to within a few float32 ulps
of the inputs' magnitude (``compare_outputs``); the tolerance is the one of the first suite
and is not loosened here. Where mergefast knowingly computes something different, the case
is marked ``xfail(strict=True)`` with the reason (see the module's ``XFAIL``).

Random methods (``dare_*``, ``della*``) are not compared: mergefast draws its masks from its
own counter-based generator on purpose (docs/methods.md). ``arcee_fusion`` is deterministic
here because every tensor has fewer than 10**6 elements (mergekit samples above that).

Some variants give mergekit the same output on purpose, to check that mergefast ignores
the same things: ``nuslerp_row_wise`` when ``nuslerp_flatten`` is true, and per-model
``weight`` for ``sce`` (``sce_weights_ignored`` equals ``sce_topk0.5``).

To keep the run short, mergekit runs once for all cases: one process of mergekit's own
interpreter calls ``mergekit-yaml``'s entry point once per config (the same code path as
``mergekit-yaml CONFIG OUT --no-copy-tokenizer --no-write-model-card --quiet``). If the
interpreter cannot be found from the script's ``#!`` line, each case runs ``mergekit-yaml``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_mergekit_compat import (  # noqa: E402  (shared helpers; read-only)
    MERGEKIT_YAML,
    _env,
    assert_outputs_match,
    config_dtype,
    make_models,
)

pytestmark = [
    pytest.mark.mergekit,
    pytest.mark.slow,  # mergekit-yaml runs in subprocesses
    pytest.mark.skipif(MERGEKIT_YAML is None, reason="mergekit-yaml not found (set MERGEKIT_YAML)"),
]

FT = ["ft-a", "ft-b", "ft-c"]


# ---------------------------------------------------------------------------------------------
# Inputs


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, tuple[Path, dict[str, torch.Tensor]]]:
    """name -> (folder, float32 tensors): a float32 base and three fine-tunes of it."""
    root = tmp_path_factory.mktemp("mkm_models")
    out = {}
    base = make_models.make_tiny_llama(root / "base", seed=0, dtype=torch.float32)
    out["base"] = (root / "base", base)
    for i, name in enumerate(FT, start=1):
        out[name] = (root / name, make_models.make_tiny_llama(root / name, seed=i, base=base, dtype=torch.float32))
    return out


def _p(models, name) -> str:
    return str(models[name][0])


# ---------------------------------------------------------------------------------------------
# Cases: name -> function(models) -> config dict

NUSLERP_W = {"ft-a": 0.6, "ft-b": 0.4}


def _nuslerp(flatten: bool, row_wise: bool, with_base: bool):
    def cfg(models):
        c = {
            "merge_method": "nuslerp",
            "models": [{"model": _p(models, n), "parameters": {"weight": w}} for n, w in NUSLERP_W.items()],
            "parameters": {"nuslerp_flatten": flatten, "nuslerp_row_wise": row_wise},
            "dtype": "float32",
        }
        if with_base:
            c["base_model"] = _p(models, "base")
        return c

    return cfg


MULTISLERP_W = {"ft-a": 0.5, "ft-b": 0.3, "ft-c": 0.2}


def _multislerp(with_base: bool):
    def cfg(models):
        c = {
            "merge_method": "multislerp",
            "models": [{"model": _p(models, n), "parameters": {"weight": w}} for n, w in MULTISLERP_W.items()],
            "dtype": "float32",
        }
        if with_base:
            c["base_model"] = _p(models, "base")
        return c

    return cfg


def _karcher(models):
    return {
        "merge_method": "karcher",
        "models": [{"model": _p(models, n)} for n in FT],
        "parameters": {"max_iter": 10, "tol": 1e-5},
        "dtype": "float32",
    }


def _karcher_with_base(models):
    # the base is one more input for karcher (appended after the listed models)
    cfg = _karcher(models)
    cfg["models"] = cfg["models"][:2]
    cfg["base_model"] = _p(models, "base")
    return cfg


def _model_stock(filter_wise: bool):
    def cfg(models):
        return {
            "merge_method": "model_stock",
            "base_model": _p(models, "base"),
            "models": [{"model": _p(models, n)} for n in FT],
            "parameters": {"filter_wise": filter_wise},
            "dtype": "float32",
        }

    return cfg


def _sce(select_topk: float):
    def cfg(models):
        return {
            "merge_method": "sce",
            "base_model": _p(models, "base"),
            "models": [{"model": _p(models, n)} for n in FT],
            "parameters": {"select_topk": select_topk},
            "dtype": "float32",
        }

    return cfg


def _nuslerp_zero_weight_sum(models):
    # |w0 + w1| < 1e-6: t falls back to 0.5
    cfg = _nuslerp(True, False, True)(models)
    cfg["models"][0]["parameters"]["weight"] = -0.5
    cfg["models"][1]["parameters"]["weight"] = 0.5
    return cfg


def _multislerp_unnormalized(models):
    # weights summing to 2 (MULTISLERP_W sums to 1, where normalizing changes nothing)
    cfg = _multislerp(True)(models)
    for m, w in zip(cfg["models"], [1.0, 0.6, 0.4]):
        m["parameters"]["weight"] = w
    cfg["parameters"] = {"normalize_weights": False}
    return cfg


def _karcher_few_iterations(models):
    # stops on max_iter, not on tol: the iterations themselves must match
    cfg = _karcher(models)
    cfg["parameters"] = {"max_iter": 2, "tol": 1e-9}
    return cfg


def _model_stock_two(models):
    cfg = _model_stock(False)(models)
    cfg["models"] = cfg["models"][:2]
    return cfg


def _sce_weights_ignored(models):
    cfg = _sce(0.5)(models)
    for m, w in zip(cfg["models"], [0.9, 0.05, 0.05]):
        m["parameters"] = {"weight": w}
    return cfg


def _nearswap(models):
    # |base - ft-a| is about 0.02, so with t = 0.015 the weight is clamped to 1 for some
    # elements and lies strictly inside (0, 1) for the others
    return {
        "merge_method": "nearswap",
        "base_model": _p(models, "base"),
        "models": [{"model": _p(models, "ft-a")}],
        "parameters": {"t": 0.015},
        "dtype": "float32",
    }


def _ram(epsilon: float | None):
    def cfg(models):
        c = {
            "merge_method": "ram",
            "base_model": _p(models, "base"),
            "models": [{"model": _p(models, n)} for n in FT],
            "dtype": "float32",
        }
        if epsilon is not None:
            c["parameters"] = {"epsilon": epsilon}
        return c

    return cfg


def _ramplus_tl(params: dict):
    def cfg(models):
        return {
            "merge_method": "ramplus_tl",
            "base_model": _p(models, "base"),
            "models": [{"model": _p(models, n)} for n in FT],
            "parameters": dict(params),
            "dtype": "float32",
        }

    return cfg


BREADCRUMBS = {  # model -> (weight, density, gamma)
    "ft-a": (0.5, 0.7, 0.05),
    "ft-b": (0.3, 0.6, 0.1),
    "ft-c": (0.2, 0.8, 0.02),
}


# density + gamma > 1: mergekit shrinks the top cut (n_top += n_bot, n_bot = 0)
BREADCRUMBS_OVERLAP = {
    "ft-a": (0.6, 0.95, 0.1),
    "ft-b": (0.4, 0.9, 0.2),
}


def _breadcrumbs(method: str, global_params: dict, table: dict = BREADCRUMBS):
    def cfg(models):
        return {
            "merge_method": method,
            "base_model": _p(models, "base"),
            "models": [
                {"model": _p(models, n), "parameters": {"weight": w, "density": d, "gamma": g}}
                for n, (w, d, g) in table.items()
            ],
            "parameters": dict(global_params),
            "dtype": "float32",
        }

    return cfg


def _arcee_fusion(models):
    return {
        "merge_method": "arcee_fusion",
        "base_model": _p(models, "base"),
        "models": [{"model": _p(models, "ft-a")}],
        "dtype": "float32",
    }


CASES = {}
for _flat in (True, False):
    for _row in (False, True):
        for _base in (False, True):
            CASES[f"nuslerp_flatten{int(_flat)}_row{int(_row)}_{'base' if _base else 'nobase'}"] = _nuslerp(
                _flat, _row, _base
            )
CASES.update(
    {
        "nuslerp_zero_weight_sum": _nuslerp_zero_weight_sum,
        "multislerp_nobase": _multislerp(False),
        "multislerp_base": _multislerp(True),
        "multislerp_unnormalized": _multislerp_unnormalized,
        "karcher": _karcher,
        "karcher_with_base": _karcher_with_base,
        "karcher_few_iterations": _karcher_few_iterations,
        "model_stock": _model_stock(False),
        "model_stock_filter_wise": _model_stock(True),
        "model_stock_two": _model_stock_two,
        "sce_topk1": _sce(1.0),
        "sce_topk0.5": _sce(0.5),
        "sce_weights_ignored": _sce_weights_ignored,
        "nearswap": _nearswap,
        "ram": _ram(None),
        "ram_eps0.02": _ram(0.02),
        "ramplus_tl": _ramplus_tl({"epsilon": 0.02}),
        "ramplus_tl_r0.5_alpha1": _ramplus_tl({"epsilon": 0.02, "r": 0.5, "alpha": 1.0}),
        "breadcrumbs": _breadcrumbs("breadcrumbs", {}),
        "breadcrumbs_normalized_lambda": _breadcrumbs("breadcrumbs", {"normalize": True, "lambda": 0.8}),
        "breadcrumbs_ties": _breadcrumbs("breadcrumbs_ties", {}),
        "breadcrumbs_ties_normalized": _breadcrumbs("breadcrumbs_ties", {"normalize": True}),
        "breadcrumbs_overlap": _breadcrumbs("breadcrumbs", {}, BREADCRUMBS_OVERLAP),
        "breadcrumbs_ties_overlap": _breadcrumbs("breadcrumbs_ties", {"normalize": True}, BREADCRUMBS_OVERLAP),
        "arcee_fusion": _arcee_fusion,
    }
)

# case -> reason: mergefast is known to differ from mergekit 0.1.5 here (see the report)
XFAIL: dict[str, str] = {
    "arcee_fusion": (  # on the fused kernels only
        "the kernels' float64 KL (mergekit's float32 KL is off by ~1e-4 relative) moves the element "
        "at the importance threshold in 6 of 39 tensors (docs/methods.md); MERGEFAST_BACKEND=torch matches"
    ),
}


# ---------------------------------------------------------------------------------------------
# Running


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("mkm_runs")


def _write_configs(models, workdir) -> dict[str, Path]:
    paths = {}
    for case, make in CASES.items():
        path = workdir / f"{case}.yml"
        path.write_text(yaml.safe_dump(make(models), sort_keys=False))
        paths[case] = path
    return paths


def _mergekit_python() -> str | None:
    """The interpreter of the mergekit-yaml script (its #! line), if it is a Python."""
    try:
        first = Path(MERGEKIT_YAML).read_text(errors="replace").splitlines()[0]
    except (OSError, IndexError):
        return None
    if not first.startswith("#!"):
        return None
    exe = first[2:].strip().split()[0]
    return exe if "python" in Path(exe).name and Path(exe).exists() else None


# Runs mergekit-yaml's click entry point once per (config, out) pair, in one process.
_DRIVER = r"""
import json, sys, traceback
from mergekit.scripts.run_yaml import main
jobs = json.loads(sys.argv[1])
status = {}
for case, cfg, out in jobs:
    try:
        main([cfg, out, "--no-copy-tokenizer", "--no-write-model-card", "--quiet"],
             standalone_mode=False)
        status[case] = "ok"
    except BaseException:
        status[case] = traceback.format_exc()[-4000:]
json.dump(status, open(sys.argv[2], "w"))
"""


@pytest.fixture(scope="module")
def mergekit_outputs(models, workdir) -> dict[str, Path | str]:
    """case -> mergekit's output folder, or the error text if mergekit failed."""
    configs = _write_configs(models, workdir)
    outs = {case: workdir / f"mergekit-{case}" for case in CASES}
    python = _mergekit_python()
    result: dict[str, Path | str] = {}
    if python is not None:
        jobs = [[case, str(configs[case]), str(outs[case])] for case in CASES]
        status_file = workdir / "mergekit-status.json"
        proc = subprocess.run(
            [python, "-c", _DRIVER, json.dumps(jobs), str(status_file)],
            env=_env(),
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert proc.returncode == 0 and status_file.exists(), proc.stderr[-4000:]
        status = json.loads(status_file.read_text())
        for case in CASES:
            result[case] = outs[case] if status.get(case) == "ok" else str(status.get(case))
        return result
    for case in CASES:
        proc = subprocess.run(
            [
                MERGEKIT_YAML,
                str(configs[case]),
                str(outs[case]),
                "--no-copy-tokenizer",
                "--no-write-model-card",
                "--quiet",
            ],
            env=_env(),
            capture_output=True,
            text=True,
            timeout=600,
        )
        result[case] = outs[case] if proc.returncode == 0 else proc.stderr[-4000:]
    return result


def _run_mergefast(case: str, workdir: Path) -> Path:
    from mergefast import merge

    out = workdir / f"mergefast-{case}"
    merge(str(workdir / f"{case}.yml"), str(out), copy_tokenizer=False)
    return out


# ---------------------------------------------------------------------------------------------
# Preconditions: no ties where a ranking decides (mergefast breaks ties by index on purpose)


def test_breadcrumbs_inputs_have_no_ties_at_boundaries(models):
    """The sorted |delta| values at both ends of the kept window differ from their neighbours."""
    base = models["base"][1]
    for m, (_, density, gamma) in [*BREADCRUMBS.items(), *BREADCRUMBS_OVERLAP.items()]:
        for k, b in base.items():
            d = (models[m][1][k] - b).abs().flatten().sort().values
            n = d.numel()
            target, n_top = int(density * n), int(gamma * n)
            n_bot = n - target - n_top
            if n_bot < 0:
                n_top += n_bot
                n_bot = 0
            for edge in (n_bot, n_bot + target):
                if 0 < edge < n:
                    assert d[edge - 1] != d[edge], f"tie at a breadcrumbs boundary in {m} {k}"


def test_sce_inputs_have_no_ties_at_threshold(models):
    base = models["base"][1]
    for k, b in base.items():
        tv = torch.stack([models[m][1][k] - b for m in FT])
        var = tv.var(dim=0, unbiased=False).flatten()
        keep = int(torch.count_nonzero(var) * 0.5)
        if 0 < keep < var.numel():
            top = var.abs().topk(keep + 1).values
            assert top[keep - 1] != top[keep], f"tie at the sce top-k threshold in {k}"


# ---------------------------------------------------------------------------------------------
# mergefast against mergekit


def _params():
    for case in CASES:
        kernels = os.environ.get("MERGEFAST_BACKEND", "auto").strip().lower() != "torch"
        marks = [pytest.mark.xfail(strict=True, reason=XFAIL[case])] if case in XFAIL and kernels else []
        yield pytest.param(case, marks=marks, id=case)


@pytest.mark.parametrize("case", list(_params()))
def test_mergefast_matches_mergekit(case, models, workdir, mergekit_outputs):
    mk_out = mergekit_outputs[case]
    assert isinstance(mk_out, Path), f"mergekit failed for {case}:\n{mk_out}"
    mf_out = _run_mergefast(case, workdir)
    _, mk_cfg, mf_cfg = assert_outputs_match(case, CASES[case](models), models, mk_out, mf_out)
    assert mf_cfg.get("tie_word_embeddings") == mk_cfg.get("tie_word_embeddings")
    assert config_dtype(mf_cfg) == config_dtype(mk_cfg) == "float32"
