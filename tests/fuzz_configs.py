"""Random mergekit configs for the whole-merge fuzz tests (tests/test_fuzz_merges.py,
tests/test_fuzz_hub.py, tests/test_mergekit_fuzz.py): every method with its parameters as
scalars, gradients over the layers and filters; models with and without a base; `slices:`
with parameters per slice; input and output dtypes; vocabularies with `tokenizer_source` or
`tokenizer:`; `modules:` for the models of several modules. The model families they name are
built by `build_families` (the session fixture `fuzz_families` of tests/conftest.py)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import yaml
from arch_zoo import build_family
from helpers import fuzz_settings, make_tiny_llama, write_family
from hypothesis import strategies as st
from test_architectures import LazyDict
from test_tokenizer import write_vocabularies

# MERGEFAST_FUZZ_BACKEND=triton compares the Triton kernels (interpreted: ~3 s a merge) with the
# references instead of the C++ kernels
BACKEND = os.environ.get("MERGEFAST_FUZZ_BACKEND", "cpu-ext")
# 5 examples per method; MERGEFAST_FUZZ_EXAMPLES=100 hunts with that many fresh random ones
# per method (~0.1 s an example on 2 CPUs)
FUZZ = fuzz_settings(5)
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


def build_families(root: Path) -> dict[str, dict[str, Path]]:
    """Under `root`: a bf16 family (base + 3; also stored as shards, as pickles, and as both
    mixed with one safetensors file per model), a float32 one, a float16 one with tied
    embeddings, one of mixed dtypes, and one of different vocabularies
    (tests/test_tokenizer.py's: ft-a shares the base's 32 tokens, ft-b adds two special tokens,
    ft-c has 36 rows); with ARCHITECTURES, tests/arch_zoo.py's families, each built when first
    used."""
    if ARCHITECTURES:
        return LazyDict(lambda model_type: build_family(model_type, root / model_type))
    families = {
        "bf16": write_family(root / "bf16", layers=3),
        # the same tensors as "bf16", stored as sharded safetensors and as PyTorch pickles
        "bf16-sharded": write_family(root / "bf16-sharded", layers=3, fmt="sharded"),
        "bf16-bin": write_family(root / "bf16-bin", layers=3, fmt="bin"),
        "f32": write_family(root / "f32", dtype=torch.float32, layers=2),
        "f16-tied": write_family(root / "f16", dtype=torch.float16, tie=True, layers=2),
        "mixed": _mixed_dtypes(root / "mixed"),
        "vocab": write_vocabularies(root / "vocab", ("base", *FINE_TUNES), torch.bfloat16),
    }
    # the same tensors again, each model in another of those formats (a fine-tune published
    # only as pickles beside safetensors ones)
    formats = ("bf16-sharded", "bf16-bin", "bf16", "bf16-sharded")
    families["bf16-formats"] = {name: families[f][name] for name, f in zip(("base", *FINE_TUNES), formats)}
    return families


def _mixed_dtypes(root: Path) -> dict[str, Path]:
    """A bf16 base and fine-tunes stored as float16, float32 and bf16 (fine-tunes published in
    another dtype than their base), 2 layers."""
    base = make_tiny_llama(root / "base", seed=0, layers=2)
    for seed, (name, dtype) in enumerate(zip(FINE_TUNES, (torch.float16, torch.float32, torch.bfloat16)), start=1):
        make_tiny_llama(root / name, seed=seed, base=base, dtype=dtype, layers=2)
    return {name: root / name for name in ("base", *FINE_TUNES)}


# the families of `build_families` and their layer counts; MERGEFAST_FUZZ_ARCH=1 (with
# a hunt's MERGEFAST_FUZZ_EXAMPLES) merges tests/arch_zoo.py's architectures instead (base,
# ft-a and ft-b of 3 text layers; slices of their other stacks are refused alike)
ARCHITECTURES = os.environ.get("MERGEFAST_FUZZ_ARCH") == "1"
LAYERS = {"bf16": 3, "bf16-sharded": 3, "bf16-bin": 3, "f32": 2, "f16-tied": 2, "mixed": 2, "vocab": 2}
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
    shape = draw(st.integers(0, 3))
    if shape == 1 and family in MODULES:
        _as_modules(draw, config, MODULES[family])
    elif shape == 0:
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
    """`config`'s models as `slices:` (`_slices`), perhaps with the global parameters per slice."""
    config["slices"] = _slices(draw, config, layers)
    if "parameters" in config and config["merge_method"] != "passthrough" and draw(BOOL):
        for piece in config["slices"]:
            piece["parameters"] = config["parameters"]
        del config["parameters"]
    del config["models"]


def _slices(draw, config: dict, layers: int) -> list[dict]:
    """`config`'s models as slices over `layers` layers, cut in two at a random layer (each
    slice with every model); passthrough stacks a fine-tune's first layers on the base's last
    one. A module without layers gets one slice of `layer_range: [0, 0]`."""
    if config["merge_method"] == "passthrough":
        first = [{"sources": [{**config["models"][0], "layer_range": [0, layers]}]}]
        return first + ([{"sources": [{"model": "base", "layer_range": [layers - 1, layers]}]}] if layers else [])
    cut = draw(st.integers(0, max(layers - 1, 0)))
    ranges = [(0, layers)] if cut == 0 else [(0, cut), (cut, layers)]
    sources = config["models"] + ([{"model": "base"}] if "base_model" in config else [])
    return [{"sources": [{**m, "layer_range": list(r)} for m in sources]} for r in ranges]


# MERGEFAST_FUZZ_ARCH's models of several modules: module -> layer count (mergekit's names)
MODULES = {
    "t5": {"encoder": 3, "decoder": 2, "shared": 0},
    "qwen2_vl": {"text_decoder": 3, "vision_tower": 2, "multi_modal_projector": 0},
    "gemma3": {"text_decoder": 3, "vision_tower": 2, "multi_modal_projector": 0},
}


def _as_modules(draw, config: dict, modules: dict[str, int]) -> None:
    """`config`'s models as `modules:`: some of the model's modules (the others are carried
    from the first), each with `models:` or `slices:`, perhaps with the global parameters."""
    config["modules"] = {}
    for name in draw(st.lists(st.sampled_from(sorted(modules)), min_size=1, unique=True)):
        use_models = draw(BOOL)
        body = {"models": config["models"]} if use_models else {"slices": _slices(draw, config, modules[name])}
        if "parameters" in config and draw(BOOL):
            body["parameters"] = config["parameters"]
        config["modules"][name] = body
    del config["models"]


def to_yaml(config: dict, family: dict[str, Path]) -> str:
    """`config`'s YAML with the model names turned into `family`'s folders."""

    def paths(node):
        if isinstance(node, dict):
            return {k: (str(family[v]) if names_a_model(k, v) and v in family else paths(v)) for k, v in node.items()}
        if isinstance(node, list):
            return [paths(v) for v in node]
        return node

    return yaml.safe_dump(paths(config), sort_keys=False)


def names_a_model(key: str, value: object) -> bool:
    """Whether `value` under `key` names a model ("base" as a tokenizer source is the keyword,
    "union" and sections are no names)."""
    if key in ("tokenizer_source", "source"):
        return isinstance(value, str) and value not in ("base", "union")
    return key in ("model", "base_model") and isinstance(value, str)
