"""Fuzzing whole merges: random configs of every method (parameters as scalars, gradients and
filters; models with and without a base; slices; input and output dtypes) merged by the CLI on
both CPU engines. The torch-free engine (tensors read, mapped, or cut into small parts) and the
torch engine on the C++ kernels give byte-identical model folders, or both refuse with the same
one-line message (never another exception); and the kernels' merges are the torch references'
within rounding, or no farther than they are from the float64 result."""

from __future__ import annotations

import functools
import os
import shutil
from pathlib import Path

import pytest
import torch
from arch_zoo import build_family
from helpers import describe, run_cli, write_family
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from make_models import make_tiny_llama, write_tokenizer
from test_architectures import LazyDict
from test_tokenizer import SIZES, add_special_tokens

from mergefast import execute, host, kernels
from mergefast.host import parts
from mergefast.io import mapped

pytestmark = [
    pytest.mark.slow,  # each example is two to four whole merges
    pytest.mark.skipif(kernels.backend("cpu") != "cpu-ext", reason="no C++ kernel library"),
]

# The same examples on every run (CI must not flake), 5 per method; MERGEFAST_FUZZ_EXAMPLES=100
# hunts with that many fresh random ones per method (~0.1 s an example on 2 CPUs)
HUNT = int(os.environ.get("MERGEFAST_FUZZ_EXAMPLES", "0"))
# MERGEFAST_FUZZ_BACKEND=triton compares the Triton kernels (interpreted: ~3 s a merge) with the
# references instead of the C++ kernels
BACKEND = os.environ.get("MERGEFAST_FUZZ_BACKEND", "cpu-ext")
FUZZ = settings(
    max_examples=HUNT or 5,
    derandomize=not HUNT,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)
FINE_TUNES = ("ft-a", "ft-b", "ft-c")
FRACTION = st.sampled_from([0.0, 1.0, 0.5, 0.3, 0.9, 0.05])
FACTOR = st.sampled_from([1.0, 0.5, -0.7, 0.0, 2.0, 0.3])
BOOL = st.booleans()


def _value(scalar):
    """A parameter value: a scalar, a gradient over the layers, or filters (a list of
    {filter, value} entries, the last without a filter)."""
    gradient = st.lists(scalar, min_size=2, max_size=3)
    filtered = st.tuples(st.sampled_from(["mlp", "self_attn", "embed", "norm"]), scalar, st.one_of(scalar, gradient))
    return st.one_of(
        scalar,
        gradient,
        filtered.map(lambda f: [{"filter": f[0], "value": f[1]}, {"value": f[2]}]),
    )


REQUIRED = ("weight", "t")  # parameters without a default (a merge without them is refused)
FAMILY = {"weight": _value(FACTOR), "density": _value(FRACTION)}
# method -> (global parameters, per-model parameters, inputs: (base?, fine-tunes) choices)
METHODS = {
    "linear": ({"normalize": BOOL}, {"weight": _value(FACTOR)}, "any"),
    "task_arithmetic": ({"lambda": FACTOR, "normalize": BOOL}, {"weight": _value(FACTOR)}, "base"),
    "ties": ({"lambda": FACTOR, "normalize": BOOL, "int8_mask": BOOL}, FAMILY, "base"),
    "dare_ties": ({"rescale": BOOL, "normalize": BOOL}, FAMILY, "base"),
    "dare_linear": ({"rescale": BOOL}, FAMILY, "base"),
    "breadcrumbs": ({}, {**FAMILY, "gamma": _value(st.sampled_from([0.0, 0.01, 0.1, 0.5]))}, "base"),
    "breadcrumbs_ties": ({"int8_mask": BOOL}, {**FAMILY, "gamma": _value(st.sampled_from([0.0, 0.05]))}, "base"),
    "della": ({"rescale": BOOL, "normalize": BOOL}, {**FAMILY, "epsilon": _value(st.sampled_from([0.0, 0.1]))}, "base"),
    "della_linear": ({"rescale": BOOL}, {**FAMILY, "epsilon": _value(st.sampled_from([0.05, 0.2]))}, "base"),
    "sce": ({"select_topk": _value(FRACTION), "int8_mask": BOOL}, {}, "base"),
    "slerp": ({"t": _value(st.sampled_from([0.0, 1.0, 0.5, 0.25, 0.8]))}, {}, "pair"),
    "nearswap": ({"t": _value(st.sampled_from([0.001, 0.01, 0.5]))}, {}, "pair"),
    "arcee_fusion": ({}, {}, "pair"),
    "nuslerp": (
        {"nuslerp_flatten": BOOL, "nuslerp_row_wise": BOOL},
        {"weight": _value(st.sampled_from([0.3, 0.7, 1.0]))},
        "two",
    ),
    "multislerp": ({"normalize_weights": BOOL}, {"weight": _value(st.sampled_from([0.2, 0.5, 1.0]))}, "any"),
    "karcher": ({"max_iter": st.sampled_from([1, 3, 10]), "tol": st.sampled_from([1e-5, 1e-2])}, {}, "any"),
    "model_stock": ({"filter_wise": BOOL}, {}, "stock"),
    "ram": ({"epsilon": st.sampled_from([1e-5, 1e-3, 0.01])}, {}, "base"),
    "ramplus_tl": ({"epsilon": st.sampled_from([1e-5, 0.003]), "r": FRACTION, "alpha": FRACTION}, {}, "base"),
    "passthrough": ({}, {"scale": _value(FACTOR)}, "one"),
}


@pytest.fixture(scope="module")
def families(tmp_path_factory) -> dict[str, dict[str, Path]]:
    """A bf16 and a float32 family (base + 3), a float16 one with tied embeddings, and one of
    different vocabularies (tests/test_tokenizer.py's: ft-a shares the base's 32 tokens, ft-b
    adds two special tokens, ft-c has 36 rows)."""
    root = tmp_path_factory.mktemp("fuzz-families")
    if ARCHITECTURES:
        return LazyDict(lambda model_type: build_family(model_type, root / model_type))
    return {
        "bf16": write_family(root / "bf16", layers=3),
        "f32": write_family(root / "f32", dtype=torch.float32, layers=2),
        "f16-tied": write_family(root / "f16", dtype=torch.float16, tie=True, layers=2),
        "vocab": _vocabulary_family(root / "vocab"),
    }


def _vocabulary_family(root: Path) -> dict[str, Path]:
    """base + 3 bf16 models of 2 layers with the vocabularies of tests/test_tokenizer.py's zoo."""
    sizes = {**SIZES, "dtype": torch.bfloat16}
    base = make_tiny_llama(root / "base", seed=0, vocab=32, **sizes)
    make_tiny_llama(root / "ft-a", seed=1, base=base, vocab=32, **sizes)
    make_tiny_llama(root / "ft-b", seed=2, vocab=34, **sizes)
    write_tokenizer(root / "ft-b", 32)
    add_special_tokens(root / "ft-b", ["<|im_start|>", "<|im_end|>"], 32)
    make_tiny_llama(root / "ft-c", seed=3, vocab=36, **sizes)
    return {name: root / name for name in ("base", *FINE_TUNES)}


# the families of the `families` fixture and their layer counts; MERGEFAST_FUZZ_ARCH=1 (with
# a hunt's MERGEFAST_FUZZ_EXAMPLES) merges tests/arch_zoo.py's architectures instead (base,
# ft-a and ft-b of 3 text layers; slices of their other stacks are refused alike)
ARCHITECTURES = os.environ.get("MERGEFAST_FUZZ_ARCH") == "1"
LAYERS = {"bf16": 3, "f32": 2, "f16-tied": 2, "vocab": 2}
if ARCHITECTURES:
    LAYERS = dict.fromkeys(("mixtral", "qwen3_moe", "t5", "qwen2_vl", "gemma3", "gpt2", "mamba", "bert", "phi"), 3)


@st.composite
def _inputs(draw, rule: str, family: str) -> tuple[bool, list[str]]:
    """(with a base model, the fine-tunes) of `family` for an input rule of METHODS."""
    fine_tunes = FINE_TUNES[:2] if ARCHITECTURES else FINE_TUNES
    if rule == "pair":
        return True, [draw(st.sampled_from(fine_tunes))]
    if rule == "one":
        return False, [draw(st.sampled_from(fine_tunes))]
    if rule == "two":
        return draw(BOOL), draw(st.permutations(fine_tunes))[:2]
    chosen = draw(st.lists(st.sampled_from(fine_tunes), min_size=2 if rule == "stock" else 1, unique=True))
    return rule != "any" or draw(BOOL), chosen


def _parameters(draw, strategies: dict) -> dict:
    """Values for a random subset of `strategies`' parameters, and for the REQUIRED ones."""
    chosen = draw(st.lists(st.sampled_from(sorted(strategies)), unique=True)) if strategies else []
    chosen += [key for key in REQUIRED if key in strategies and key not in chosen]
    return {key: draw(strategies[key]) for key in chosen}


@st.composite
def configs(draw, method: str, family_names: tuple[str, ...] = ()) -> tuple[str, dict]:
    """(family name, a mergekit YAML config of `method` as a dict with model names for paths),
    of one of `family_names` (default: every family of LAYERS)."""
    family = draw(st.sampled_from(family_names or sorted(LAYERS)))
    global_params, model_params, rule = METHODS[method]
    with_base, fine_tunes = draw(_inputs(rule, family))
    config = {"merge_method": method, "models": []}
    for name in fine_tunes:
        config["models"].append({"model": name})
        if chosen := _parameters(draw, model_params):
            config["models"][-1]["parameters"] = chosen
    if with_base:
        config["base_model"] = "base"
    if chosen := _parameters(draw, global_params):
        config["parameters"] = chosen
    for key in ("dtype", "out_dtype"):
        if dtype := draw(st.sampled_from([None, None, "bfloat16", "float16", "float32"])):
            config[key] = dtype
    if family == "vocab":
        _tokenizer(draw, config)
    if draw(st.integers(0, 3)) == 0:
        _as_slices(draw, config, LAYERS[family])
    return family, config


def _tokenizer(draw, config: dict) -> None:
    """A random choice of output vocabulary: none, `tokenizer_source`, or `tokenizer:` with
    a source, padding and a token taken from a model."""
    kind = draw(st.sampled_from(["none", "source", "tokenizer"]))
    source = draw(st.sampled_from(["base", "union", "ft-b", "ft-c"]))
    if kind == "source":
        config["tokenizer_source"] = source
    elif kind == "tokenizer":
        section = {"source": source, "pad_to_multiple_of": draw(st.sampled_from([None, 8, 64]))}
        if draw(BOOL):
            donor = {"kind": "model_token", "model": config["models"][0]["model"], "token_id": 5}
            section["tokens"] = {"<|im_end|>": {"source": donor}}
        config["tokenizer"] = {k: v for k, v in section.items() if v is not None}


def _as_slices(draw, config: dict, layers: int) -> None:
    """`config`'s models as `slices:` over all layers, cut in two at a random layer (each slice
    with every model, perhaps with the global parameters); passthrough stacks a fine-tune's
    first layers on the base's last one."""
    if config["merge_method"] == "passthrough":
        config["slices"] = [{"sources": [{**config["models"][0], "layer_range": [0, layers]}]}]
        config["slices"].append({"sources": [{"model": "base", "layer_range": [layers - 1, layers]}]})
    else:
        cut = draw(st.integers(0, layers - 1))
        ranges = [(0, layers)] if cut == 0 else [(0, cut), (cut, layers)]
        sources = config["models"] + ([{"model": "base"}] if "base_model" in config else [])
        config["slices"] = [{"sources": [{**m, "layer_range": list(r)} for m in sources]} for r in ranges]
        if "parameters" in config and draw(BOOL):  # the global parameters given per slice
            for piece in config["slices"]:
                piece["parameters"] = config["parameters"]
            del config["parameters"]
    del config["models"]


def _yaml(config: dict, family: dict[str, Path]) -> str:
    """`config`'s YAML with the model names turned into `family`'s folders."""
    import yaml

    def paths(node):
        if isinstance(node, dict):
            return {
                k: (str(family[v]) if k in NAMED and isinstance(v, str) and v in family else paths(v))
                for k, v in node.items()
            }
        if isinstance(node, list):
            return [paths(v) for v in node]
        return node

    return yaml.safe_dump(paths(config), sort_keys=False)


# keys whose values name models ("union", "base" and sections are left as they are)
NAMED = ("model", "base_model", "tokenizer_source", "source")


def _merge(config_path: Path, out: Path, engine: str, options: tuple[str, ...] = ()):
    """One CLI merge on `engine`: "torch", or the torch-free engine with its tensors "read",
    "mapped" (every whole tensor) or "cut" into parts of 700 elements; (exit code, folder
    bytes by file name or the error lines)."""
    with pytest.MonkeyPatch.context() as m:
        ran = []

        def choose(plan, options):
            ran.append(engine != "torch" and host.refusal(plan, options) is None)
            return ran[-1]

        m.setattr(execute, "torch_free", choose)
        if engine == "mapped":
            m.setattr(mapped, "MAP_MIN_BYTES", 1)
        if engine == "cut":
            m.setattr(parts, "PART_ELEMENTS", 700)
        result = run_cli("yaml", config_path, out, "--quiet", *options)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"{engine}: {describe(result)}")
    if result.exit_code != 0:
        return result.exit_code, [line for line in result.stderr.splitlines() if "error" in line]
    return 0, {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()}


# output shards of at most 20 kB or 200 kB (one tensor alone when larger), a small read-ahead
# budget, another seed for DARE and DELLA, the vocabulary family's rows in common
OPTIONS = st.lists(
    st.sampled_from(
        ["--out-shard-size=20k", "--out-shard-size=200k", "--max-memory=100k", "--random-seed=7"]
        + ["--unsafe-truncate-embeddings"]
    ),
    unique=True,
    max_size=2,
)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_random_merges_are_the_same_on_both_engines(method, families, tmp_path_factory):
    _same_on_both_engines(method, families, tmp_path_factory)


@FUZZ
@given(example=st.data(), engine=st.sampled_from(["read", "mapped", "cut"]), options=OPTIONS)
def _same_on_both_engines(method, families, tmp_path_factory, example, engine, options):
    """Both engines merge a random config of `method` alike (see the module's docstring)."""
    name, config = example.draw(configs(method))
    root = tmp_path_factory.mktemp("merge")
    path = root / "config.yml"
    path.write_text(_yaml(config, families[name]))
    try:
        on_torch = _merge(path, root / "torch" / "out", "torch", tuple(options))
        torch_free = _merge(path, root / engine / "out", engine, tuple(options))
        assert torch_free[0] == on_torch[0], (torch_free, on_torch)
        if on_torch[0]:
            assert torch_free[1] == on_torch[1]
            assert len(on_torch[1]) == 1, on_torch[1]  # one error line
            return
        assert sorted(torch_free[1]) == sorted(on_torch[1])
        different = [k for k in on_torch[1] if torch_free[1][k] != on_torch[1][k]]
        assert not different, (different, path.read_text())
    finally:
        shutil.rmtree(root, ignore_errors=True)


# arcee_fusion's kernels sum a row's KL divergence in float64, the reference in float32: an
# element at the row's importance threshold may be kept by one and dropped by the other
# (docs/methods.md)
THRESHOLD_FLIPS = {"arcee_fusion": 2}


def _tensors(out: Path) -> dict[str, torch.Tensor]:
    """The merged tensors of a model folder (one or more safetensors files)."""
    from safetensors.torch import load_file

    found = {}
    for file in sorted(out.glob("*.safetensors")):
        found.update(load_file(file))
    return found


def _float64_family(family: dict[str, Path]) -> dict[str, Path]:
    """`family`'s folders copied, once, with every floating tensor in float64: into a folder
    beside the family's (its name + "-float64")."""
    from safetensors.torch import load_file, save_file

    copies = {}
    for name, folder in family.items():
        copies[name] = copy = folder.parent.with_name(folder.parent.name + "-float64") / name
        if not copy.exists():
            shutil.copytree(folder, copy)
            for file in copy.glob("*.safetensors"):
                tensors = load_file(file)
                save_file({k: v.double() if v.is_floating_point() else v for k, v in tensors.items()}, file)
    return copies


def _float64_merge(config: dict, family: dict[str, Path], root: Path) -> dict[str, torch.Tensor]:
    """The merge of `config` on the float64 references, from float64 copies of `family`."""
    path = root / "float64.yml"
    path.write_text(_yaml({**config, "dtype": "float64"}, _float64_family(family)))
    result = run_cli("yaml", path, root / "float64", "--quiet", env={"MERGEFAST_BACKEND": "torch"})
    assert result.exit_code == 0, describe(result)
    return _tensors(root / "float64")


def _assert_near(key: str, got: torch.Tensor, ref: torch.Tensor, exact, flips: int) -> None:
    """`got` within rounding of the float32 reference `ref` (but `flips` elements), or no
    farther than it from the float64 result (`exact()`, computed when needed): near a
    method's ill-conditioned points (Model Stock's t on short rows of nearly opposite task
    vectors) the kernels' float64 sums are the closer (docs/methods.md)."""
    scale = float(ref.abs().nan_to_num(0, 0, 0).max()) or 1.0
    off = ~torch.isclose(got, ref, rtol=1e-5, atol=1e-6 * scale, equal_nan=True)
    if int(off.sum()) <= flips:
        return
    truth = exact()[key][off]
    error, reference_error = (got[off].double() - truth).abs(), (ref[off].double() - truth).abs()
    farther = error > reference_error * 1.01 + 1e-6 * scale
    assert int(farther.sum()) <= flips, (key, int(farther.sum()), float(error.max()), float(reference_error.max()))


@pytest.mark.parametrize("method", sorted(METHODS))
def test_random_merges_agree_with_the_references(method, families, tmp_path_factory):
    _agree_with_the_references(method, families, tmp_path_factory)


@FUZZ
@given(example=st.data())
def _agree_with_the_references(method, families, tmp_path_factory, example):
    """The kernels' merge of a random config of `method` is the references' within rounding."""
    name, config = example.draw(configs(method))
    config["dtype"] = "float32"
    config.pop("out_dtype", None)
    root = tmp_path_factory.mktemp("refs")
    path = root / "config.yml"
    path.write_text(_yaml(config, families[name]))
    try:
        fused = run_cli("yaml", path, root / "fused", "--quiet", env={"MERGEFAST_BACKEND": BACKEND})
        reference = run_cli("yaml", path, root / "reference", "--quiet", env={"MERGEFAST_BACKEND": "torch"})
        assert fused.exit_code == reference.exit_code, (describe(fused), describe(reference))
        if fused.exit_code:
            return
        got, want = _tensors(root / "fused"), _tensors(root / "reference")
        assert got.keys() == want.keys()
        exact = functools.cache(lambda: _float64_merge(config, families[name], root))
        for key, ref in want.items():
            _assert_near(key, got[key], ref, exact, THRESHOLD_FLIPS.get(config["merge_method"], 0))
    finally:
        shutil.rmtree(root, ignore_errors=True)
