"""Fuzzing whole merges (random configs of tests/fuzz_configs.py) merged by the CLI on both
CPU engines: the torch-free engine (tensors read, mapped, or cut into small parts) and the
torch engine on the C++ kernels give byte-identical model folders, or both refuse with the
same one-line message (never another exception); and the kernels' merges are the torch
references' within rounding, or no farther than they are from the float64 result; and inputs
stored as one safetensors file, as shards or as pickles merge to the same tensors.
MERGEFAST_FUZZ_EXAMPLES, MERGEFAST_FUZZ_BACKEND and MERGEFAST_FUZZ_ARCH: tests/fuzz_configs.py."""

from __future__ import annotations

import functools

import pytest
import torch
from fuzz_checks import NAMES_THE_INPUTS, assert_near, float64_merge, merge_on
from fuzz_configs import ARCHITECTURES, BACKEND, FUZZ, METHODS, configs, to_yaml
from helpers import describe, run_cli, scratch
from hypothesis import given
from hypothesis import strategies as st
from test_backends_agree import THRESHOLD_FLIPS
from test_mergekit_compat import load_folder

from mergefast import kernels

pytestmark = [
    pytest.mark.slow,  # each example is two to four whole merges
    pytest.mark.skipif(kernels.backend("cpu") != "cpu-ext", reason="no C++ kernel library"),
]


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
def test_random_merges_are_the_same_on_both_engines(method, fuzz_families, tmp_path_factory):
    _same_on_both_engines(method, fuzz_families, tmp_path_factory)


@FUZZ
@given(example=st.data(), engine=st.sampled_from(["read", "mapped", "cut"]), options=OPTIONS)
def _same_on_both_engines(method, fuzz_families, tmp_path_factory, example, engine, options):
    """Both engines merge a random config of `method` alike (see the module's docstring)."""
    name, config = example.draw(configs(method))
    with scratch(tmp_path_factory, "merge") as root:
        path = root / "config.yml"
        path.write_text(to_yaml(config, fuzz_families[name]))
        on_torch = merge_on(path, root / "torch" / "out", "torch", tuple(options))
        torch_free = merge_on(path, root / engine / "out", engine, tuple(options))
        assert torch_free[0] == on_torch[0], (torch_free, on_torch)
        if on_torch[0]:
            assert torch_free[1] == on_torch[1]
            assert len(on_torch[1]) == 1, on_torch[1]  # one error line
            return
        assert sorted(torch_free[1]) == sorted(on_torch[1])
        different = [k for k in on_torch[1] if torch_free[1][k] != on_torch[1][k]]
        assert not different, (different, path.read_text())


@pytest.mark.parametrize("method", sorted(METHODS))
def test_random_merges_agree_with_the_references(method, fuzz_families, tmp_path_factory):
    _agree_with_the_references(method, fuzz_families, tmp_path_factory)


@FUZZ
@given(example=st.data())
def _agree_with_the_references(method, fuzz_families, tmp_path_factory, example):
    """The kernels' merge of a random config of `method` is the references' within rounding."""
    name, config = example.draw(configs(method))
    config["dtype"] = "float32"
    config.pop("out_dtype", None)
    with scratch(tmp_path_factory, "refs") as root:
        path = root / "config.yml"
        path.write_text(to_yaml(config, fuzz_families[name]))
        fused = run_cli("yaml", path, root / "fused", "--quiet", env={"MERGEFAST_BACKEND": BACKEND})
        reference = run_cli("yaml", path, root / "reference", "--quiet", env={"MERGEFAST_BACKEND": "torch"})
        assert fused.exit_code == reference.exit_code, (describe(fused), describe(reference))
        if fused.exit_code:
            return
        got, want = load_folder(root / "fused"), load_folder(root / "reference")
        assert got.keys() == want.keys()
        exact = functools.cache(lambda: float64_merge(config, fuzz_families[name], root))
        for key, ref in want.items():
            assert_near(key, got[key], ref, exact, THRESHOLD_FLIPS.get(config["merge_method"], 0))


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.skipif(ARCHITECTURES, reason="the formats fuzz stores the Llama bf16 families only")
def test_random_merges_read_every_format_alike(method, fuzz_families, tmp_path_factory):
    _every_format_alike(method, fuzz_families, tmp_path_factory)


@FUZZ
@given(example=st.data(), stored=st.sampled_from(["bf16-sharded", "bf16-bin", "bf16-formats"]))
def _every_format_alike(method, fuzz_families, tmp_path_factory, example, stored):
    """A random config of `method` merges the same tensors stored as one safetensors file,
    as shards with an index, as pickles, or each model in another of those, alike: the same
    tensors (written in the order the inputs are read) and side files (but those naming the
    inputs), or the same refusal."""
    _, config = example.draw(configs(method, ("bf16",)))
    with scratch(tmp_path_factory, "formats") as root:
        outs = []
        for family in ("bf16", stored):
            path = root / f"{family}.yml"
            path.write_text(to_yaml(config, fuzz_families[family]))
            code, files = merge_on(path, root / family, "torch")  # error lines name the inputs
            outs.append((code, {} if code else {k: v for k, v in files.items() if k not in NAMES_THE_INPUTS}))
            if not code:
                outs[-1][1]["model.safetensors"] = load_folder(root / family)
        assert outs[0][0] == outs[1][0]
        if not outs[0][0]:
            mine, theirs = outs[0][1].pop("model.safetensors"), outs[1][1].pop("model.safetensors")
            assert mine.keys() == theirs.keys()
            assert all(torch.equal(mine[k], theirs[k]) for k in mine)
            assert outs[0][1] == outs[1][1]
