"""End-to-end merges of tiny random models of many architectures (see tests/arch_zoo.py).

For every model type four merges run through the CLI in-process (`mergefast yaml CONFIG OUT
--quiet`): linear, ties, slerp and a passthrough slice stack that re-uses a layer (text stack
3 -> 4 layers; the encoder-decoders T5, BART, MBART and Whisper use the `modules:` syntax:
encoder 3 -> 4, decoder 2 -> 3). Each output must load in transformers with the base's class
and no missing/unexpected/mismatched keys, give finite logits, and carry the right layer
counts in config.json. The linear merge must give
the logits of a model whose state dict is the weighted sum of the inputs', and the
passthrough merge must copy each layer's tensors from its source layer.

A passthrough takes the tensors after the re-stacked layers (final norm, output head) from the
last slice's model and every other tensor from the first slice's model, as mergekit does
(`arch_zoo.Layout.post` lists them per architecture).

`test_matches_mergekit` (marker `mergekit`) compares linear and ties outputs with an installed
mergekit-yaml, found as tests/test_mergekit_compat.py finds it; skipped when there is none,
and for a type that mergekit itself fails to merge.
"""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from arch_zoo import (
    ENCODER_DECODERS,
    LAYOUTS,
    TYPES,
    build_family,
    config_get,
    load_output,
    logits,
    read_config,
    read_tensors,
)
from helpers import describe, run_cli
from test_mergekit_compat import MERGEKIT_YAML, _env, load_folder

METHODS = ["linear", "ties", "slerp", "passthrough"]
# a decoder, an encoder-decoder and a vision-language model run in `pytest -m "not slow"`;
# every other type is `slow`
FAST_TYPES = {"llama", "t5", "qwen2_vl"}
TYPE_PARAMS = [pytest.param(t, marks=[] if t in FAST_TYPES else [pytest.mark.slow]) for t in TYPES]
LINEAR_WEIGHTS = {"base": 0.5, "ft-a": 0.3, "ft-b": 0.2}
# config.json lists that are not per layer even when their length is the text layer count
NOT_PER_LAYER = {"architectures", "mrope_section", "image_size", "patch_size", "supported_aspect_ratios"}


class LazyDict(dict):
    """A dict that computes a missing entry with `make(key)` on first access and keeps it."""

    def __init__(self, make):
        super().__init__()
        self._make = make

    def __missing__(self, key):
        value = self[key] = self._make(key)
        return value


# ---------------------------------------------------------------------------------------------
# Merge configs


def _slices(first: Path, second: Path, second_range: list[int]) -> list[dict]:
    """Two slices: layers [0, 2) of `first`, then `second_range` of `second`."""
    return [
        {"sources": [{"model": str(first), "layer_range": [0, 2]}]},
        {"sources": [{"model": str(second), "layer_range": second_range}]},
    ]


def _passthrough(model_type: str, family: dict[str, Path]) -> dict:
    """The layer-stacking config; T5 (two stacks) in the `modules:` syntax."""
    base, ft_a = family["base"], family["ft-a"]
    if model_type not in ENCODER_DECODERS:
        return {"merge_method": "passthrough", "slices": _slices(base, ft_a, [1, 3]), "dtype": "float32"}
    modules = {"encoder": {"slices": _slices(base, ft_a, [1, 3])}, "decoder": {"slices": _slices(base, ft_a, [1, 2])}}
    if ENCODER_DECODERS[model_type]:
        modules["shared"] = {"models": [{"model": str(base)}]}
    return {"merge_method": "passthrough", "dtype": "float32", "modules": modules}


def merge_config(method: str, model_type: str, family: dict[str, Path]) -> dict:
    """The mergekit-style config of `method` over `family`, as a dict."""
    p = {name: str(folder) for name, folder in family.items()}
    if method == "linear":
        return {
            "merge_method": "linear",
            "dtype": "float32",
            "models": [{"model": p[n], "parameters": {"weight": w}} for n, w in LINEAR_WEIGHTS.items()],
        }
    if method == "ties":
        return {
            "merge_method": "ties",
            "base_model": p["base"],
            "dtype": "float32",
            "models": [
                {"model": p["ft-a"], "parameters": {"density": 0.5, "weight": 0.6}},
                {"model": p["ft-b"], "parameters": {"density": 0.7, "weight": 0.4}},
            ],
        }
    if method == "slerp":
        return {
            "merge_method": "slerp",
            "base_model": p["base"],
            "parameters": {"t": 0.3},
            "models": [{"model": p["base"]}, {"model": p["ft-a"]}],
            "dtype": "float32",
        }
    return _passthrough(model_type, family)


# ---------------------------------------------------------------------------------------------
# Fixtures (session-wide, each entry built on first use)


@pytest.fixture(scope="session")
def families(tmp_path_factory):
    """model type -> {"base", "ft-a", "ft-b"} folders."""
    root = tmp_path_factory.mktemp("arch_zoo")
    return LazyDict(lambda t: build_family(t, root / t))


@pytest.fixture(scope="session")
def loaded():
    """(model type, folder) -> load_output's (model, loading info), each folder loaded once
    (the tests only run the models, never change them)."""
    return LazyDict(lambda key: load_output(*key))


@pytest.fixture(scope="session")
def base_missing(families, loaded):
    """model type -> the keys transformers reports missing when loading the base itself."""
    return LazyDict(lambda t: set(loaded[t, families[t]["base"]][1]["missing_keys"]))


def _run_merge(config: dict, folder: Path) -> tuple[int, str]:
    """Run `mergefast yaml CONFIG OUT --quiet` in-process; (exit code, output)."""
    config_path = folder.with_suffix(".yml")
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    result = run_cli("yaml", config_path, folder, "--quiet")
    return result.exit_code, describe(result)


@pytest.fixture(scope="session")
def merges(families, tmp_path_factory):
    """(model type, method) -> (exit code, CLI output, output folder); each merge runs once."""
    root = tmp_path_factory.mktemp("arch_merges")

    def run(key):
        model_type, method = key
        folder = root / f"{model_type}-{method}"
        return (*_run_merge(merge_config(method, model_type, families[model_type]), folder), folder)

    return LazyDict(run)


def merged(merges, model_type: str, method: str) -> Path:
    """The output folder of a merge, asserting that the CLI exited 0."""
    code, output, folder = merges[model_type, method]
    assert code == 0, f"mergefast exited {code}:\n{output}"
    return folder


# ---------------------------------------------------------------------------------------------
# Checks


def assert_loads_cleanly(model_type: str, folder: Path, known_missing: set[str], loaded):
    """Load `folder`; no key may be missing (beyond the base's own), unexpected or mismatched."""
    model, info = loaded[model_type, folder]
    problems = {
        "missing_keys": sorted(set(info["missing_keys"]) - known_missing),
        "unexpected_keys": sorted(info["unexpected_keys"]),
        "mismatched_keys": sorted(map(str, info["mismatched_keys"])),
    }
    assert not any(problems.values()), f"loading {folder.name}: {problems}"
    return model


def per_layer_lists(config: dict, length: int, path: str = ""):
    """Dotted paths of the lists of `length` items in a config dict (nested dicts too)."""
    for key, value in config.items():
        if isinstance(value, dict):
            yield from per_layer_lists(value, length, f"{path}{key}.")
        elif isinstance(value, list) and len(value) == length and key not in NOT_PER_LAYER:
            yield f"{path}{key}"


def assert_layer_counts(model_type: str, method: str, base_cfg: dict, out_cfg: dict) -> None:
    """Layer counts as expected; after a passthrough, per-layer lists have the new length."""
    layout = LAYOUTS[model_type]
    restacked = method == "passthrough"
    for path, after in layout.counts.items():
        want = after if restacked else config_get(base_cfg, path)
        assert config_get(out_cfg, path) == want, f"config.json {path}: want {want}"
    if restacked:  # the first stack is the text stack (T5: the encoder)
        old, sources = next(iter(layout.stacks.values()))
        for path in per_layer_lists(base_cfg, old):
            got = config_get(out_cfg, path)
            assert len(got) == len(sources), f"config.json {path} = {got}: want {len(sources)}"


def linear_reference(models: list, weights: list[float]):
    """A copy of models[0] whose state dict is the weighted sum of the models' state dicts."""
    dicts = [m.state_dict() for m in models]
    combined = {
        k: sum(w * d[k] for w, d in zip(weights, dicts)) if v.is_floating_point() else v for k, v in dicts[0].items()
    }
    reference = copy.deepcopy(models[0])
    reference.load_state_dict(combined)
    return reference


def passthrough_expected(model_type: str, family: dict[str, Path]) -> dict[str, torch.Tensor]:
    """The passthrough output by hand: re-stacked layers from their sources, post weights from
    ft-a (the last slice's model), everything else from base."""
    layout = LAYOUTS[model_type]
    tensors = {name: read_tensors(family[name]) for name in ("base", "ft-a")}
    out = {
        n: tensors["ft-a" if n in layout.post else "base"][n]
        for n in tensors["base"]
        if not n.startswith(tuple(layout.stacks))
    }
    for prefix, (_, sources) in layout.stacks.items():
        for k, (model, i) in enumerate(sources):
            src = f"{prefix}{i}."
            out.update({f"{prefix}{k}.{n[len(src) :]}": t for n, t in tensors[model].items() if n.startswith(src)})
    return out


def assert_same_tensors(expected: dict, actual: dict, atol: float = 0.0) -> None:
    """Same names, and each tensor's dtype, shape and values (within `atol`)."""
    assert set(actual) == set(expected), (
        f"only expected: {sorted(set(expected) - set(actual))}; only in output: {sorted(set(actual) - set(expected))}"
    )
    bad = [
        n
        for n, e in sorted(expected.items())
        if actual[n].dtype != e.dtype
        or actual[n].shape != e.shape
        or not torch.allclose(actual[n], e, rtol=0, atol=atol)
    ]
    assert not bad, f"{len(bad)} tensors differ: {bad[:10]}"


# ---------------------------------------------------------------------------------------------
# Tests


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("model_type", TYPE_PARAMS)
def test_merge_loads_and_runs(model_type, method, families, base_missing, merges, loaded):
    """Exit 0; loads with no key problems; finite logits; the right layer counts."""
    out = merged(merges, model_type, method)
    model = assert_loads_cleanly(model_type, out, base_missing[model_type], loaded)
    assert torch.isfinite(logits(model, model_type)).all()
    base_cfg, out_cfg = read_config(families[model_type]["base"]), read_config(out)
    assert out_cfg["architectures"] == base_cfg["architectures"]
    assert_layer_counts(model_type, method, base_cfg, out_cfg)


@pytest.mark.parametrize("model_type", TYPE_PARAMS)
def test_linear_logits_match_reference(model_type, families, merges, loaded):
    """The linear merge runs like the weighted sum of the three state dicts."""
    model, _ = loaded[model_type, merged(merges, model_type, "linear")]
    inputs = [loaded[model_type, families[model_type][n]][0] for n in LINEAR_WEIGHTS]
    reference = linear_reference(inputs, list(LINEAR_WEIGHTS.values()))
    torch.testing.assert_close(logits(model, model_type), logits(reference, model_type), rtol=0, atol=1e-4)


@pytest.mark.parametrize("model_type", TYPE_PARAMS)
def test_passthrough_tensors_come_from_their_sources(model_type, families, merges):
    """Output layer k is its source layer exactly; other tensors are base's (or ft-a's, after
    the layers)."""
    out = read_tensors(merged(merges, model_type, "passthrough"))
    assert_same_tensors(passthrough_expected(model_type, families[model_type]), out)


@pytest.mark.parametrize("model_type", TYPE_PARAMS)
def test_linear_keeps_every_tensor(model_type, families, merges):
    """No tensor lost or added: the linear output has the base's tensor names, in float32."""
    out = read_tensors(merged(merges, model_type, "linear"))
    base = read_tensors(families[model_type]["base"])
    assert set(out) == set(base), f"lost: {sorted(set(base) - set(out))}; added: {sorted(set(out) - set(base))}"
    assert {t.dtype for t in out.values()} == {torch.float32}


@pytest.mark.mergekit
@pytest.mark.slow
@pytest.mark.skipif(MERGEKIT_YAML is None, reason="mergekit-yaml not found (set MERGEKIT_YAML)")
@pytest.mark.parametrize("method", ["linear", "ties"])
@pytest.mark.parametrize("model_type", TYPES)
def test_matches_mergekit(model_type, method, families, merges, tmp_path):
    """Same tensor names and values (within 1e-5) as mergekit, where mergekit merges the type
    into the inputs' layout. Skipped where mergekit fails, drops input tensors (LLaVA under
    transformers 5: the whole language model) or renames them (MoE experts written fused)."""
    actual = load_folder(merged(merges, model_type, method))
    config = tmp_path / "config.yml"
    config.write_text(yaml.safe_dump(merge_config(method, model_type, families[model_type])))
    cmd = [MERGEKIT_YAML, str(config), str(tmp_path / "out"), "--no-copy-tokenizer", "--no-write-model-card", "--quiet"]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        pytest.skip(f"mergekit-yaml cannot merge {model_type}: {last}")
    expected = load_folder(tmp_path / "out")
    inputs = set(read_tensors(families[model_type]["base"]))
    if set(expected) != inputs:
        pytest.skip(
            f"mergekit-yaml writes another layout for {model_type}: {len(inputs - set(expected))} input "
            f"tensor(s) missing, {len(set(expected) - inputs)} name(s) not in the inputs"
        )
    assert_same_tensors(expected, actual, atol=1e-5)
