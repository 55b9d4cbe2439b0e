"""The torch-free CPU engine (mergefast/host/): byte-identical model folders to the torch
engine's, the same errors and warnings, its refusals, and a whole merge in a process that
never imports torch."""

from __future__ import annotations

import math
import random
import shutil
import struct
from pathlib import Path

import pytest
import torch
from helpers import example_config, plan_of, run_cli
from test_tokenizer import zoo  # noqa: F401 - a fixture (used by name)
from test_torch_free_start import _watched

from mergefast import execute, host
from mergefast.io import mapped
from mergefast.methods.scalars import f32_sum
from mergefast.options import MergeOptions


@pytest.fixture(params=["read", "mapped"])
def engines(request, monkeypatch):
    """Runs a CLI merge on the engine asked for; records which one ran. "mapped": the
    torch-free engine maps every whole input tensor (io/mapped.py), not only the large ones."""
    ran: list[bool] = []
    maps: list[str] = []
    if request.param == "mapped":
        monkeypatch.setattr(mapped, "MAP_MIN_BYTES", 1)
        real_map = mapped.map_tensor
        monkeypatch.setattr(mapped, "map_tensor", lambda fd, info: maps.append(info.name) or real_map(fd, info))

    def merge(config, out, *extra, torch_free: bool, env=None):
        def choose(plan, options):
            ran.append(torch_free and host.refusal(plan, options) is None)
            return ran[-1]

        monkeypatch.setattr(execute, "torch_free", choose)
        result = run_cli("yaml", config, out, "--quiet", *extra, env=env)
        assert ran[-1] is torch_free, "the engine asked for did not run"
        merges = "passthrough" not in Path(config).read_text()  # a passthrough merge copies: read, not mapped
        if not (torch_free and request.param == "mapped"):
            assert not maps, maps
        elif merges and result.exit_code == 0:  # a failed merge may stop before its first whole job
            assert maps
        maps.clear()
        return result

    return merge


@pytest.fixture(scope="module")
def many_models(family, tmp_path_factory) -> list[Path]:
    """17 distinct model folders: the family's three fine-tunes, then copies of them in turn (a
    model may be one input of a merge only once, as in mergekit)."""
    root = tmp_path_factory.mktemp("many")
    fine_tunes = [family[k] for k in ("ft-a", "ft-b", "ft-c")]
    copies = [shutil.copytree(fine_tunes[i % 3], root / f"copy-{i}") for i in range(3, 17)]
    return fine_tunes + copies


def _same_folders(a, b) -> None:
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def _warnings(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("mergefast: warning:")]


def _both(engines, config, tmp_path, *extra):
    """Merge `config` on both engines; the output folders and the warnings must be the same."""
    outs, warned = [], []
    for torch_free in (True, False):
        out = tmp_path / ("free" if torch_free else "torch") / "out"  # the card names the folder
        result = engines(config, out, *extra, torch_free=torch_free)
        assert result.exit_code == 0, result.output
        outs.append(out)
        warned.append(_warnings(result))
    _same_folders(*outs)
    assert warned[0] == warned[1]
    return outs[0], warned[0]


@pytest.mark.parametrize("name", ["linear.yml", "ties.yml", "task-arithmetic.yml", "slerp-gradient.yml"])
def test_examples_are_byte_identical_on_both_engines(name, family, tmp_path, engines):
    config = tmp_path / name
    config.write_text(example_config(name, family))
    _both(engines, config, tmp_path)


PASSTHROUGH = """merge_method: passthrough
slices:
  - sources: [{{model: {a}, layer_range: [0, 3]}}]
  - sources: [{{model: {b}, layer_range: [1, 4]}}]
"""


def test_a_layer_stack_copies_byte_identical(family, tmp_path, engines):
    config = tmp_path / "stack.yml"
    config.write_text(PASSTHROUGH.format(a=family["ft-a"], b=family["ft-b"]))
    _both(engines, config, tmp_path)


TIES_F32 = """merge_method: ties
base_model: {base}
models:
  - {{model: {a}, parameters: {{weight: 0.7, density: 0.3}}}}
  - {{model: {b}, parameters: {{weight: 0.6, density: 0.9}}}}
  - {{model: {c}, parameters: {{weight: -0.2, density: 0.5}}}}
dtype: {dtype}
"""


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_float32_inputs_to_each_output_dtype(dtype, f32_family, tmp_path, engines):
    config = tmp_path / "ties.yml"
    f = f32_family
    config.write_text(TIES_F32.format(base=f["base"], a=f["ft-a"], b=f["ft-b"], c=f["ft-c"], dtype=dtype))
    _both(engines, config, tmp_path)


# Five weights whose float32 sum torch's sum() rounds otherwise past 4 terms (its vector lanes,
# here 1.0000001 against 1.0 in order), and six for linear, whose base is weighted too.
FIVE_WEIGHTS = (0.1, 0.1, 0.1, 0.1, 0.6)
SIX_WEIGHTS = (0.1, 0.1, 0.1, 0.1, 0.1, 0.3)


@pytest.mark.parametrize(
    "method, params",
    [
        ("linear", ""),
        ("task_arithmetic", ""),
        ("ties", ", density: 0.6"),
        ("dare_ties", ", density: 0.6"),
        ("dare_linear", ", density: 0.6"),
        ("breadcrumbs_ties", ", density: 0.6, gamma: 0.05"),
        ("della", ", density: 0.6, epsilon: 0.1"),
        ("multislerp", ""),
        ("sce", None),
        ("model_stock", None),
        ("karcher", None),
        ("ram", None),
        ("ramplus_tl", None),
    ],
)
def test_more_than_four_models_merge_alike_on_both_engines(method, params, family, many_models, tmp_path, engines):
    """Five or six models: every method sums its weights (and SCE its energies) in model
    order on both engines (methods/numerics.py `ordered_sum`, methods/scalars.py `f32_sum`),
    so the torch-free engine merges them, to the same bytes. `params` None: the method takes
    no weights."""
    folders = many_models[:5] + ([family["base"]] if method == "linear" else [])
    weights = SIX_WEIGHTS if method == "linear" else FIVE_WEIGHTS
    assert torch.tensor(weights).sum().item() != f32_sum(weights)  # what the order changes
    parameters = ["" if params is None else f", parameters: {{weight: {w}{params}}}" for w in weights]
    models = "".join(f"  - {{model: {m}{p}}}\n" for m, p in zip(folders, parameters))
    base = "" if method in ("linear", "karcher") else f"base_model: {family['base']}\n"
    config = tmp_path / "c.yml"
    config.write_text(f"merge_method: {method}\n{base}models:\n{models}")
    assert host.refusal(plan_of(config.read_text()), MergeOptions()) is None
    _both(engines, config, tmp_path)


def test_dare_rescale_past_sixteen_models_draws_again(family, many_models, tmp_path, engines):
    """DARE with rescale keeps its keep bits for the apply in a 16-bit word per element: past
    16 models both engines draw every element again in DARE's own apply (kernels/dare.py), to
    the same bytes."""
    models = "".join(f"  - model: {m}\n" for m in many_models)
    config = tmp_path / "c.yml"
    config.write_text(
        f"merge_method: dare_ties\nbase_model: {family['base']}\n"
        f"parameters: {{weight: 0.1, density: 0.5, rescale: true}}\nmodels:\n{models}"
    )
    _both(engines, config, tmp_path)


def test_ordered_sums_are_f32_sums():
    """The references' sums of a few values (methods/numerics.py `ordered_sum`) are the
    torch-free engine's (methods/scalars.py `f32_sum`) on any count of values, and the linear
    reference divides by that sum, not by torch's own."""
    from mergefast.methods.linear import linear
    from mergefast.methods.numerics import ordered_sum

    rng = random.Random(5)
    for _ in range(2000):
        k = rng.randint(1, 40)
        values = [rng.choice([rng.uniform(-1, 1), rng.uniform(0, 1e4), rng.uniform(0, 1e-3)]) for _ in range(k)]
        assert ordered_sum(torch.tensor(values, dtype=torch.float32)).item() == f32_sum(values), values
    xs = [torch.ones(3) for _ in FIVE_WEIGHTS]
    assert f32_sum(FIVE_WEIGHTS) == 1.0 and linear(xs, FIVE_WEIGHTS).tolist() == [1.0] * 3


@pytest.mark.parametrize(
    "method,params",
    [
        ("breadcrumbs_ties", "gamma: 0.02"),
        ("breadcrumbs", "normalize: true"),
        ("dare_ties", "normalize: false"),
        ("dare_ties", "rescale: false"),
        ("dare_linear", "normalize: true"),
        ("della", "normalize: true"),
        ("della_linear", "rescale: false\n  epsilon: 0.1"),
    ],
)
def test_task_arithmetic_family_is_byte_identical(method, params, family, tmp_path, engines):
    """Breadcrumbs, DARE and DELLA (whose masks come from (seed, tensor name, model), with and
    without the L1 rescale): same bytes on both engines; another --random-seed gives DARE and
    DELLA another model."""
    config = tmp_path / "c.yml"
    text = example_config("ties.yml", family).replace("merge_method: ties", f"merge_method: {method}")
    config.write_text(text.replace("normalize: true", params))
    first, _ = _both(engines, config, tmp_path / "seed0")
    other, _ = _both(engines, config, tmp_path / "seed7", "--random-seed", "7")
    same = (first / "model.safetensors").read_bytes() == (other / "model.safetensors").read_bytes()
    assert same is method.startswith("breadcrumbs")


@pytest.mark.parametrize(
    "text",
    [
        "merge_method: nearswap\nbase_model: {base}\nmodels:\n  - model: {base}\n  - model: {a}\n"
        "parameters: {{t: 0.002}}\n",
        "merge_method: sce\nbase_model: {base}\nmodels:\n  - model: {a}\n  - model: {b}\n  - model: {c}\n"
        "parameters: {{select_topk: 0.3}}\ndtype: float16\n",
        "merge_method: ram\nbase_model: {base}\nmodels:\n  - model: {a}\n  - model: {b}\n  - model: {c}\n"
        "parameters: {{epsilon: 0.002}}\n",
        "merge_method: ramplus_tl\nbase_model: {base}\nmodels:\n  - model: {a}\n  - model: {b}\n"
        "parameters: {{epsilon: 0.002, r: 0.3}}\n",
        "merge_method: arcee_fusion\nbase_model: {base}\nmodels:\n  - model: {base}\n  - model: {c}\n",
        "merge_method: model_stock\nbase_model: {base}\nmodels:\n  - model: {a}\n  - model: {b}\n  - model: {c}\n",
        "merge_method: model_stock\nbase_model: {base}\nmodels:\n  - model: {a}\n  - model: {b}\n"
        "parameters: {{filter_wise: true}}\ndtype: float32\n",
        "merge_method: nuslerp\nbase_model: {base}\nmodels:\n  - {{model: {a}, parameters: {{weight: 0.3}}}}\n"
        "  - {{model: {b}, parameters: {{weight: 0.6}}}}\n",
        "merge_method: nuslerp\nmodels:\n  - {{model: {a}, parameters: {{weight: 0.3}}}}\n"
        "  - {{model: {b}, parameters: {{weight: 0.6}}}}\nparameters: {{nuslerp_flatten: false}}\ndtype: float16\n",
        "merge_method: nuslerp\nbase_model: {base}\nmodels:\n  - {{model: {a}, parameters: {{weight: 0.3}}}}\n"
        "  - {{model: {b}, parameters: {{weight: 0.6}}}}\n"
        "parameters: {{nuslerp_flatten: false, nuslerp_row_wise: true}}\n",
        "merge_method: multislerp\nbase_model: {base}\nmodels:\n  - {{model: {a}, parameters: {{weight: 0.5}}}}\n"
        "  - {{model: {b}, parameters: {{weight: 0.2}}}}\n  - {{model: {c}, parameters: {{weight: 0.3}}}}\n",
        "merge_method: multislerp\nmodels:\n  - {{model: {a}, parameters: {{weight: 1.0}}}}\n"
        "  - {{model: {b}, parameters: {{weight: 2.0}}}}\nparameters: {{normalize_weights: false}}\n",
        "merge_method: karcher\nmodels:\n  - model: {a}\n  - model: {b}\n  - model: {c}\nparameters: {{max_iter: 7}}\n",
    ],
    ids=[
        "nearswap",
        "sce",
        "ram",
        "ramplus_tl",
        "arcee_fusion",
        "model_stock",
        "model_stock-rows",
        "nuslerp",
        "nuslerp-rows-no-base",
        "nuslerp-row_wise",
        "multislerp",
        "multislerp-no-base",
        "karcher",
    ],
)
def test_other_methods_are_byte_identical(text, family, tmp_path, engines):
    config = tmp_path / "c.yml"
    config.write_text(text.format(base=family["base"], a=family["ft-a"], b=family["ft-b"], c=family["ft-c"]))
    _both(engines, config, tmp_path)


# Tensors whose Gram scalars are near a degenerate configuration (tests/kernel_cases.py's
# test_spherical_near_degenerate): karcher's four inputs with one near the antipode of the
# Karcher mean, multislerp's deltas on one element where the mean direction nearly vanishes.
# In a small tensor, in its first elements (zeros after); in a large one (LARGE: cut into parts
# where its inputs are read, tests/test_host_parts.py), over its first half, and small values
# of each model's own after (so a part's mean is not the whole tensor's).
NEAR_ANTIPODE = {"base": (0.0770, -0.0147), "ft-a": (-3.1863, -0.8448), "ft-b": (-2.8848, 1.6159)}
NEAR_ANTIPODE["ft-c"] = (-2.6730, 0.7353)
VANISHING_MEAN = {"base": (0.0770,), "ft-a": (0.0276,), "ft-b": (0.0825,), "ft-c": (0.0770,)}
DEGENERATE = {
    "model.norm.weight": NEAR_ANTIPODE,
    "model.embed_tokens.weight": NEAR_ANTIPODE,
    "model.layers.0.input_layernorm.weight": VANISHING_MEAN,
    "lm_head.weight": VANISHING_MEAN,
}
LARGE = ("model.embed_tokens.weight", "lm_head.weight")
DEGENERATE_MERGES = {  # id: (config, its degenerate tensors)
    "karcher": (
        "merge_method: karcher\nmodels:\n  - model: {base}\n  - model: {a}\n  - model: {b}\n  - model: {c}\n"
        "dtype: float32\n",
        ("model.norm.weight", "model.embed_tokens.weight"),
    ),
    "multislerp": (
        "merge_method: multislerp\nbase_model: {base}\nmodels:\n  - {{model: {a}, parameters: {{weight: 1.0}}}}\n"
        "  - {{model: {b}, parameters: {{weight: 1.0}}}}\ndtype: float32\n",
        ("model.layers.0.input_layernorm.weight", "lm_head.weight"),
    ),
}


@pytest.fixture(scope="module")
def degenerate_family(family, tmp_path_factory) -> dict[str, Path]:
    """The bf16 family with the DEGENERATE tensors written into copies of its models."""
    from safetensors.torch import load_file, save_file

    root, folders = tmp_path_factory.mktemp("degenerate"), {}
    for seed, (name, folder) in enumerate(family.items()):
        folders[name] = shutil.copytree(folder, root / name)
        weights = folders[name] / "model.safetensors"
        tensors = load_file(weights)
        for tensor, values in DEGENERATE.items():
            flat, pattern = torch.zeros(tensors[tensor].numel()), torch.tensor(values[name])
            if tensor in LARGE:
                half = flat.numel() // 2
                flat[:half] = pattern.repeat(half // len(pattern))
                noise = torch.randn(flat.numel() - half, generator=torch.Generator().manual_seed(seed))
                flat[half:] = 1e-3 * (1 + 0.2 * noise)
            else:
                flat[: len(pattern)] = pattern
            tensors[tensor] = flat.to(tensors[tensor].dtype).view(tensors[tensor].shape)
        save_file(tensors, weights, metadata={"format": "pt"})
    return folders


def merge_near_degenerate(merge: str, family: dict[str, Path], tmp_path, engines) -> None:
    """DEGENERATE_MERGES[merge] on both engines: their bytes, and the reference's for each of
    its degenerate tensors (kernels/spherical.py and host/gram_methods.py run it there)."""
    from safetensors.torch import load_file

    from mergefast import methods

    text, degenerate = DEGENERATE_MERGES[merge]
    config = tmp_path / "c.yml"
    config.write_text(text.format(base=family["base"], a=family["ft-a"], b=family["ft-b"], c=family["ft-c"]))
    merged = load_file(_both(engines, config, tmp_path)[0] / "model.safetensors")
    for tensor in degenerate:
        x = {name: load_file(folder / "model.safetensors")[tensor] for name, folder in family.items()}
        if merge == "karcher":
            want = methods.karcher([x["base"], x["ft-a"], x["ft-b"], x["ft-c"]], out_dtype=torch.float32)
        else:
            want = methods.multislerp([x["ft-a"], x["ft-b"]], [1.0, 1.0], x["base"], out_dtype=torch.float32)
        assert torch.equal(merged[tensor], want), tensor


@pytest.mark.parametrize("merge", sorted(DEGENERATE_MERGES))
def test_near_degenerate_tensors_take_the_reference(merge, degenerate_family, tmp_path, engines):
    """Where the Gram scalars are near a degenerate configuration both engines write the
    reference's bytes: the float32 outputs of the coefficients' sum were off by 1e-5 (karcher)
    and 0.25% (multislerp), both engines alike."""
    merge_near_degenerate(merge, degenerate_family, tmp_path, engines)


def test_sce_weights_are_the_kernels():
    """methods/scalars.py's float32 SCE weights against kernels/sce.py's torch ones, 1 to 8
    models, near the uniform threshold too."""
    from mergefast.kernels.sce import weights
    from mergefast.methods.scalars import sce_weights

    rng = random.Random(1)
    for trial in range(2000):
        k, n = rng.randint(1, 8), rng.choice([1, 7, 4096, 45_000_017])
        scale = rng.choice([1e-12, 1e-7 * n, 1.0, 1e6])
        sums = [rng.uniform(0, scale) for _ in range(k)]
        if trial % 5 == 0:  # zeros, sums past float32's range, inf and NaN (NaN inputs)
            sums[rng.randrange(k)] = rng.choice([0.0, 1e39, math.inf, math.nan])
        assert _bits(sce_weights(sums, n)) == _bits(weights(sums, n)), (sums, n)


def _bits(values) -> list[int]:
    """The float32 bit patterns of `values` (NaN equal to NaN, -0.0 not equal to 0.0)."""
    return [struct.unpack("<I", struct.pack("<f", v))[0] for v in values]


def test_model_stock_ratios_are_the_kernels():
    """methods/scalars.py's float32 Model Stock ratios against kernels/slerp_family.py's torch
    ones, bit for bit: opposite task vectors (a zero denominator) and NaN rows included."""
    import numpy as np

    from mergefast.kernels.slerp_family import stock_ratios
    from mergefast.methods.scalars import model_stock_ratios

    rng = np.random.default_rng(0)
    for trial in range(500):
        k, rows = int(rng.integers(2, 5)), int(rng.integers(1, 40))
        d = rng.standard_normal((rows, k, 16)) * rng.choice([1e-6, 1e-3, 1.0, 1e3])
        if trial % 7 == 0:
            d[:, 1] = -d[:, 0] / (k - 1)
        gram = np.stack([(d[:, i] * d[:, j]).sum(-1) for i in range(k) for j in range(i, k)], axis=1)
        gram[0, 0] = np.nan if trial % 11 == 0 else gram[0, 0]
        expected = stock_ratios(torch.from_numpy(gram), k).numpy()
        assert model_stock_ratios(gram, k).view(np.uint32).tolist() == expected.view(np.uint32).tolist()


def test_ram_boost_and_arcee_threshold_are_the_kernels():
    """methods/scalars.py's RAM+ factors and arcee_fusion threshold against the torch formulas
    of the references (methods/ram.py, methods/arcee_fusion.py)."""
    from mergefast.methods.arcee_fusion import IQR_FACTOR
    from mergefast.methods.ram import boost_of_counts
    from mergefast.methods.scalars import arcee_threshold, ram_boost

    rng = random.Random(2)
    for _ in range(2000):
        k = rng.randint(1, 4)
        shared = [rng.choice([0, 1, rng.randint(0, 10**7)]) for _ in range(k)]
        unique = [rng.choice([0, 1, rng.randint(0, 10**7)]) for _ in range(k)]
        r, alpha = rng.choice([0.0, 1.0, rng.uniform(0, 1)]), rng.choice([0.0, 1e9, rng.uniform(0, 1)])
        eps = rng.choice([0.0, 1e-5, 0.5, -1.0])
        boost = boost_of_counts(torch.tensor(shared), torch.tensor(unique), r, alpha, eps)
        assert _bits(ram_boost(shared, unique, r, alpha, eps)) == _bits(boost.to(torch.float32).tolist())
        q = sorted(rng.uniform(-1e3, 1e3) * rng.choice([1e-30, 1.0, 1e30]) for _ in range(3))
        if rng.random() < 0.2:  # the top order statistics inf or NaN (NaN keys sort last)
            at = rng.randint(1, 2)
            q[at:] = [rng.choice([math.inf, math.nan])] * (3 - at)
        q1, median, q3 = torch.tensor(q, dtype=torch.float32).unbind()
        assert _bits([arcee_threshold(q)]) == _bits([(median + IQR_FACTOR * (q3 - q1)).item()]), q


def _nan_model(family, tmp_path):
    """ft-b with three NaN in one tensor."""
    import shutil

    from safetensors.torch import load_file, save_file

    folder = tmp_path / "nan"
    shutil.copytree(family["ft-b"], folder)
    tensors = load_file(folder / "model.safetensors")
    tensors["model.layers.1.mlp.up_proj.weight"][0, :3] = float("nan")
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


def test_nan_input_same_warning_and_output(family, tmp_path, engines):
    """TIES drops NaN deltas: the merge succeeds with one warning naming the model, on both."""
    config = tmp_path / "ties.yml"
    config.write_text(
        example_config("ties.yml", family).replace(str(family["ft-b"]), str(_nan_model(family, tmp_path)))
    )
    _, warned = _both(engines, config, tmp_path)
    assert len(warned) == 1 and "3 NaN" in warned[0] and "nan" in warned[0]


def test_nan_input_of_linear_is_the_same_error(family, tmp_path, engines):
    config = tmp_path / "linear.yml"
    config.write_text(
        example_config("linear.yml", family).replace(str(family["ft-b"]), str(_nan_model(family, tmp_path)))
    )
    errors = []
    for torch_free in (True, False):
        out = tmp_path / f"out-{torch_free}"
        result = engines(config, out, torch_free=torch_free)
        assert result.exit_code != 0
        errors.append(result.stderr)
        assert not out.exists()
    assert errors[0] == errors[1] and "3 NaN" in errors[0] and "refusing to write a broken model" in errors[0]


def test_refusals(family, many_models, tmp_path, monkeypatch):
    """What the torch-free engine leaves to the torch engine, each with its reason."""
    monkeypatch.delenv("MERGEFAST_BACKEND", raising=False)
    linear = plan_of(example_config("linear.yml", family))
    assert host.refusal(linear, MergeOptions()) is None
    assert host.refusal(linear, MergeOptions(cuda=True)) == "a GPU or --device merge"
    monkeypatch.setenv("MERGEFAST_BACKEND", "cpu-ext")
    assert host.refusal(linear, MergeOptions()) == "MERGEFAST_BACKEND is set"
    monkeypatch.delenv("MERGEFAST_BACKEND")
    ties = example_config("ties.yml", family)
    models = "".join(f"  - model: {family[k]}\n" for k in ("ft-a", "ft-b"))
    karcher = plan_of(f"merge_method: karcher\nmodels:\n{models}")
    assert host.refusal(karcher, MergeOptions()) is None
    wide = ties.replace("merge_method: ties", "merge_method: della").replace("density: 0.7", "density: 0.9")
    assert "DELLA density +- epsilon outside (0, 1)" in host.refusal(plan_of(wide), MergeOptions())
    models = "".join(f"  - model: {m}\n" for m in many_models)
    della = f"merge_method: della\nbase_model: {family['base']}\nparameters: {{weight: 0.1, density: 0.5}}\n"
    expected = "17 models, more than della's kernels take"  # one keep bit per model in 16-bit words
    assert expected in host.refusal(plan_of(f"{della}models:\n{models}"), MergeOptions())
    assert host.refusal(plan_of(f"{della}models:\n{models[models.index(chr(10)) + 1 :]}"), MergeOptions()) is None
    rescale = example_config("ties.yml", family).replace("normalize: true", "normalize: true\n  rescale: true")
    assert "every tensor needs torch" in host.refusal(plan_of(rescale), MergeOptions())
    assert "rescale" in host.refusal(plan_of(rescale), MergeOptions())
    scaled = plan_of(example_config("passthrough-stack.yml", family))  # copies, and scaled o_proj
    assert host.refusal(scaled, MergeOptions()) is None
    on_torch = host.torch_jobs(scaled)
    assert on_torch and all(name.endswith("o_proj.weight") for name in on_torch)
    assert all("passthrough scale" in why for why in on_torch.values())


@pytest.mark.parametrize("case", ["vocabulary", "scaled-slice"])
def test_tensors_that_need_torch_are_merged_with_it_on_the_torch_free_engine(case, engines, family, zoo, tmp_path):  # noqa: F811
    """A merge aligning two vocabularies (the embedding and the head need torch) and a layer
    stack with a scaled slice (its scaled tensors): those tensors through the torch engine's
    merge_job, the others on the C calls; the folder is the torch engine's, byte for byte."""
    if case == "vocabulary":
        text = (
            f"merge_method: linear\nbase_model: {zoo['base']}\nmodels:\n  - model: {zoo['base']}\n"
            f"    parameters: {{weight: 0.4}}\n  - model: {zoo['chatml']}\n    parameters: {{weight: 0.6}}\n"
            "dtype: float32\ntokenizer:\n  source: union\n  pad_to_multiple_of: 8\n"
        )
    else:
        text = example_config("passthrough-stack.yml", family)
    plan = plan_of(text)
    assert host.refusal(plan, MergeOptions()) is None and 0 < len(host.torch_jobs(plan)) < len(plan.jobs)
    config = tmp_path / "config.yml"
    config.write_text(text)
    _both(engines, config, tmp_path)


def test_f32_is_numpys_float32():
    """methods/scalars.py's float32 rounding (ctypes) against numpy's, overflow included."""
    import numpy as np

    from mergefast.methods.scalars import f32

    rng = random.Random(3)
    edges = [3.4028235e38, 3.40282356e38, 3.4028236e38, 1e39, 1.4e-45, 7e-46, 1e-46, float("inf"), 0.0, -0.0]
    values = edges + [-v for v in edges] + [rng.uniform(-1, 1) * 10 ** rng.randint(-50, 50) for _ in range(5000)]
    with np.errstate(over="ignore"):
        for v in values:
            assert str(f32(v)) == str(float(np.float32(v))), v
    assert math.isnan(f32(float("nan")))


def test_f32_sum_is_torchs_float32_sum():
    """Up to 4 terms torch sums float32 values in order too: so where a merge has at most 4
    weighted models, the ordered sums of weights are mergekit's (torch's) own."""
    rng = random.Random(0)
    for _ in range(3000):
        k = rng.randint(1, 4)
        values = [rng.choice([rng.uniform(-1, 1), rng.uniform(-1e4, 1e4), rng.uniform(0, 1e-3)]) for _ in range(k)]
        assert f32_sum(values) == torch.tensor(values, dtype=torch.float32).sum().item(), values


# Methods whose host-side scalars are float32 formulas (methods/scalars.py), without numpy.
NO_NUMPY = {
    "sce": "merge_method: sce\nbase_model: {base}\nmodels:\n  - model: {a}\n  - model: {b}\n"
    "parameters: {{select_topk: 0.3}}\n",
    "arcee_fusion": "merge_method: arcee_fusion\nbase_model: {base}\nmodels:\n  - model: {base}\n  - model: {a}\n",
    "ramplus_tl": "merge_method: ramplus_tl\nbase_model: {base}\nmodels:\n  - model: {a}\n  - model: {b}\n",
}


@pytest.mark.slow  # subprocesses
@pytest.mark.parametrize("name", ["linear.yml", "ties.yml", *NO_NUMPY])
def test_a_cli_merge_never_imports_torch(name, family, tmp_path, engines):
    """In a fresh process whose first `import torch` fails, the merge runs and writes the
    torch engine's bytes; it imports no numpy either (io/host_array.py; only Model Stock's and
    nuslerp's Gram rows use it)."""
    config = tmp_path / f"{name.removesuffix('.yml')}.yml"
    text = NO_NUMPY.get(name)
    config.write_text(
        example_config(name, family)
        if text is None
        else text.format(base=family["base"], a=family["ft-a"], b=family["ft-b"])
    )
    proc = _watched(["yaml", config, tmp_path / "free" / "out"], "refuse", tmp_path, "numpy")
    assert proc.returncode == 0, proc.stderr
    assert "cpu-ext without torch" in proc.stderr + proc.stdout
    assert engines(config, tmp_path / "torch" / "out", torch_free=False).exit_code == 0
    _same_folders(tmp_path / "free" / "out", tmp_path / "torch" / "out")


def test_env_names_the_torch_free_engine():
    result = run_cli("env")
    assert result.exit_code == 0
    line = [line for line in result.output.splitlines() if line.startswith("cpu without torch:")]
    assert line == [host.torch_free_line()] and "dare_ties" in line[0]


def test_every_method_of_the_engine_has_its_calls():
    from mergefast.host.merge import CALLS

    assert set(host.METHODS) - {"passthrough"} <= set(CALLS)


def test_slerp_past_float32_dots_runs_the_reference():
    """Past |x| ~ 1e19 the kernels' float32 dots overflow: the reference writes the output,
    as kernels.slerp does."""
    from types import SimpleNamespace

    from mergefast import kernels
    from mergefast.host.reducing import slerp
    from mergefast.io.host_array import host_array

    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randn(5, 7, generator=gen) * 3e20 for _ in range(2))
    arrays = [host_array(t.view(torch.uint8).reshape(-1).numpy(), "float32", (5, 7)) for t in (a, b)]
    out = host_array(torch.empty(5 * 7 * 2, dtype=torch.uint8).numpy(), "bfloat16", (5, 7))
    slerp(None, SimpleNamespace(base_index=0, global_params={"t": 0.3}, model_params=({}, {})), arrays, out, 0)
    expected = kernels.slerp(a, b, 0.3, out_dtype=torch.bfloat16)
    assert torch.isfinite(expected).all() and torch.equal(out.to_torch(), expected)


REAL_TORCH_FREE = execute.torch_free  # the conftest pins in-process merges to the torch engine


def test_a_process_that_has_torch_takes_the_torch_free_engine(family, monkeypatch):
    """`mergefast.merge` from a process that imported torch: the torch-free engine where it
    covers the plan, its OpenMP team torch's intra-op thread count."""
    import sys

    from mergefast.host import ops

    plan = plan_of(example_config("ties.yml", family))
    assert "torch" in sys.modules and REAL_TORCH_FREE(plan, MergeOptions())
    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)
    assert ops.threads() == 3
    monkeypatch.setenv("MERGEFAST_BACKEND", "cpu-ext")
    assert not REAL_TORCH_FREE(plan, MergeOptions())
