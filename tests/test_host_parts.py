"""The torch-free engine's parts (mergefast/host/parts.py): elementwise merges cut into parts
give the torch engine's model folder byte for byte, the NaN/inf messages count the whole
tensor, and the methods that need a whole tensor are never cut."""

from __future__ import annotations

import ctypes
import math
import shutil

import pytest
from helpers import example_config, plan_of, run_cli
from test_host_engine import (  # noqa: F401 - engines, degenerate_family: fixtures
    DEGENERATE_MERGES,
    PASSTHROUGH,
    _both,
    degenerate_family,
    engines,
    merge_near_degenerate,
)

from mergefast import execute
from mergefast.config import parse_config
from mergefast.host import parts, staging
from mergefast.io import mapped
from mergefast.io.direct import BLOCK
from mergefast.options import MergeOptions
from mergefast.plan import build_plan

PART = 700  # elements: no tensor of the test family is a multiple of it


@pytest.fixture
def cut(monkeypatch):
    """Parts of PART elements; records how many parts each merge ran."""
    counts: list[int] = []
    split = parts.split_jobs

    def recorded(plan, jobs, whole=frozenset()):
        out = split(plan, jobs, whole)
        counts.append(sum(isinstance(j, parts.TensorPart) for j in out))
        return out

    monkeypatch.setattr(parts, "PART_ELEMENTS", PART)
    monkeypatch.setattr(parts, "split_jobs", recorded)
    return counts


THREE = "base_model: {base}\nmodels:\n  - model: {a}\n  - model: {b}\n  - model: {c}\n"
CONFIGS = {
    "nearswap": "merge_method: nearswap\nbase_model: {base}\nmodels:\n  - model: {base}\n  - model: {a}\n"
    "parameters: {{t: 0.002}}\n",
    "ram": "merge_method: ram\n" + THREE + "parameters: {{epsilon: 0.002}}\n",
    "ramplus_tl": "merge_method: ramplus_tl\n" + THREE + "parameters: {{epsilon: 0.002, r: 0.3}}\n",
    "model_stock": "merge_method: model_stock\n" + THREE,
    "model_stock-rows": "merge_method: model_stock\n" + THREE + "parameters: {{filter_wise: true}}\n",
    "nuslerp": "merge_method: nuslerp\nbase_model: {base}\nmodels:\n  - {{model: {a}, parameters: {{weight: 0.3}}}}\n"
    "  - {{model: {b}, parameters: {{weight: 0.6}}}}\n",
    "multislerp": "merge_method: multislerp\n" + THREE + "parameters: {{weight: 0.5}}\n",
    "karcher": "merge_method: karcher\nmodels:\n  - model: {a}\n  - model: {b}\n  - model: {c}\n",
}


def _config(name, f, path):
    """`path` holding the config `name`: an example's, a CONFIGS entry or a passthrough stack."""
    if name == "passthrough":
        path.write_text(PASSTHROUGH.format(a=f["ft-a"], b=f["ft-b"]))
    elif name in CONFIGS:
        path.write_text(CONFIGS[name].format(base=f["base"], a=f["ft-a"], b=f["ft-b"], c=f["ft-c"]))
    else:
        path.write_text(example_config(name, f))
    return path


@pytest.mark.parametrize("name", ["linear.yml", "task-arithmetic.yml", "slerp-gradient.yml", "passthrough", *CONFIGS])
def test_cut_merges_are_byte_identical(name, family, tmp_path, engines, cut):  # noqa: F811
    """Elementwise methods cut into parts of PART elements, reducing ones (SLERP, RAM+, Model
    Stock) into parts of one C block where their inputs are read, whole where they are mapped
    (the engines' "mapped" runs map every tensor); Model Stock per row (filter_wise) is not cut."""
    _both(engines, _config(name, family, tmp_path / "c.yml"), tmp_path)
    reducing = name not in ("linear.yml", "task-arithmetic.yml", "passthrough", "nearswap", "ram")
    assert (cut[0] > 0) is (name != "model_stock-rows" and not (reducing and mapped.MAP_MIN_BYTES == 1))


def test_parts_slice_mapped_windows_of_their_tensor(family, tmp_path, monkeypatch, cut):
    """With every input mappable, a tensor cut into parts is mapped once per source and window
    of MAP_WINDOW_PARTS parts, not once per part: its parts are slices of those mappings
    (host/staging.py `_mapped`); the output is the torch engine's (test_cut_merges_are_byte_identical)."""
    monkeypatch.setattr(execute, "torch_free", lambda plan, options: True)  # conftest pins the torch engine
    monkeypatch.setattr(mapped, "MAP_MIN_BYTES", 1)
    monkeypatch.setattr(staging, "MAP_WINDOW_PARTS", 3)
    maps: list[str] = []
    real_map = mapped.map_tensor
    monkeypatch.setattr(mapped, "map_tensor", lambda fd, info: maps.append(info.name) or real_map(fd, info))
    config = _config("linear.yml", family, tmp_path / "c.yml")
    result = run_cli("yaml", config, tmp_path / "out", "--quiet")
    assert result.exit_code == 0, result.output
    plan = plan_of(config.read_text())
    windows = {job.name: -(-math.ceil(math.prod(job.shape) / PART) // 3) for job in plan.jobs}
    assert max(windows.values()) > 1 and cut[0] > len([w for w in windows.values() if w > 1])
    for job in plan.jobs:
        assert maps.count(job.name) == windows[job.name] * len(job.sources), job.name


@pytest.mark.parametrize("name", ["linear.yml", "passthrough"])
def test_outputs_are_placed_like_their_file_offsets(name, family, tmp_path, monkeypatch):
    """The torch-free engine's staging places each output (a part's, a whole tensor's, a copy's
    input) at an address congruent to its file offset modulo BLOCK, so the writer's O_DIRECT
    pwrites take it from where it lies (io/direct.py `_write_in_place`, tests/test_io_direct.py)."""
    monkeypatch.setattr(parts, "PART_ELEMENTS", PART)
    text = _config(name, family, tmp_path / "c.yml").read_text()
    plan = build_plan(parse_config(text, "c.yml"), text, "c.yml", MergeOptions())  # open: its readers read
    jobs = parts.split_jobs(plan, plan.jobs)
    offsets = {(job.name, job.start): 1000 + 7 * i for i, job in enumerate(jobs)}
    host = staging.HostArrayStaging(plan, jobs, out_offset=lambda job: offsets[job.name, job.start])
    try:
        for job in jobs:
            merged = host.merge(
                job, host.read(job), lambda job, inputs, take: inputs[0] if job.copy else take(job.out_bytes)
            )
            out = merged.array.data if job.copy else merged.array  # a copy's output: its input's HostArray
            assert (ctypes.addressof(ctypes.c_char.from_buffer(out)) - offsets[job.name, job.start]) % BLOCK == 0
            assert out.nbytes == job.out_bytes
            host.write(merged, lambda array: None)  # its buffers back to the pool
    finally:
        host.close()
        plan.close()


def test_parts_cover_each_tensor_and_need_elementwise_methods(family, monkeypatch):
    monkeypatch.setattr(parts, "PART_ELEMENTS", PART)
    linear = plan_of(example_config("linear.yml", family))
    pieces = parts.split_jobs(linear, linear.jobs)
    for job in linear.jobs:
        mine = [p for p in pieces if p.name == job.name]
        n = math.prod(job.shape)
        if n <= PART:
            assert mine == [job]
            continue
        assert [(p.start, p.stop) for p in mine] == [(s, min(s + PART, n)) for s in range(0, n, PART)]
        assert [p.ends_tensor for p in mine] == [False] * (len(mine) - 1) + [True]
        assert sum(p.read_bytes for p in mine) == job.read_bytes and sum(p.out_bytes for p in mine) == job.out_bytes
        assert mine[0].first_to_check() and not mine[-1].first_to_check()  # once per tensor
    ties = plan_of(example_config("ties.yml", family))  # a top-k of each whole tensor
    assert parts.split_jobs(ties, ties.jobs) == ties.jobs
    big = [job.name for job in linear.jobs if math.prod(job.shape) > PART]
    assert big and parts.split_jobs(linear, linear.jobs, frozenset(big)) == linear.jobs  # merged with torch


def _nan_model(family, tmp_path, name):
    """Model `name` with a NaN in the first and in the last element of a tensor parts cut."""

    def two_nan(t):
        t.view(-1)[0] = t.view(-1)[-1] = float("nan")

    return _changed_model(family, tmp_path / "nan", two_nan, name)


def _changed_model(family, folder, change, name):
    """Model `name` with `change` made to its embeddings in place (cut into parts, SLERP's too)."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(family[name], folder)
    tensors = load_file(folder / "model.safetensors")
    embed = tensors["model.embed_tokens.weight"]
    assert embed.numel() >= 2 * max(PART, 2048)  # 2048: the C block, which SLERP's parts hold whole
    change(embed)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


def test_slerp_parts_past_float32_dots_are_the_reference(family, tmp_path, engines, cut):  # noqa: F811
    """Embeddings of ~1e20: their float32 dots overflow, so SLERP takes the reference on the
    whole tensor, and each part is its slice: the torch engine's bytes."""
    f = dict(family, **{"ft-a": _changed_model(family, tmp_path / "big", lambda t: t.mul_(1e20), "ft-a")})
    config = tmp_path / "c.yml"
    config.write_text(example_config("slerp-gradient.yml", f))
    _both(engines, config, tmp_path)
    assert (cut[0] > 0) is (mapped.MAP_MIN_BYTES != 1)  # mapped inputs: SLERP merges whole tensors


@pytest.mark.parametrize(
    "name", ["linear.yml", "task-arithmetic.yml", "slerp-gradient.yml", "passthrough", "ramplus_tl", "model_stock"]
)
def test_nan_in_parts_is_the_whole_tensors_message(name, family, tmp_path, engines, cut):  # noqa: F811
    """A NaN in two parts of one tensor: the error (or, for RAM+, which drops NaN deltas, the
    warning) counts both, as the torch engine's does."""
    model = "ft-a" if name.startswith(("slerp", "passthrough")) else "ft-b"  # the model with the embeddings
    f = dict(family, **{model: _nan_model(family, tmp_path, model)})
    config = _config(name, f, tmp_path / "c.yml")
    results = []
    for torch_free in (True, False):
        out = tmp_path / f"out-{torch_free}"
        result = engines(config, out, torch_free=torch_free)
        results.append((result.exit_code, result.stderr, out.exists()))
    assert results[0] == results[1] and "2 NaN" in results[0][1], results
    assert results[0][0] == (0 if name == "ramplus_tl" else 1)


def test_antipodal_multislerp_is_the_same_error(family, tmp_path, engines, cut):  # noqa: F811
    """ft-a and its negation, equally weighted (a third model at weight 0): their unit vectors'
    mean vanishes, and both engines refuse with the same error naming the tensor."""
    from safetensors.torch import load_file, save_file

    negated = tmp_path / "neg"
    shutil.copytree(family["ft-a"], negated)
    tensors = {k: -v for k, v in load_file(family["ft-a"] / "model.safetensors").items()}
    save_file(tensors, negated / "model.safetensors", metadata={"format": "pt"})
    models = [(family["ft-a"], 1), (negated, 1), (family["ft-b"], 0)]
    listed = "".join(f"  - {{model: {m}, parameters: {{weight: {w}}}}}\n" for m, w in models)
    config = tmp_path / "c.yml"
    config.write_text(f"merge_method: multislerp\nmodels:\n{listed}")
    errors = []
    for torch_free in (True, False):
        result = engines(config, tmp_path / f"out-{torch_free}", torch_free=torch_free)
        errors.append((result.exit_code, result.stderr))
    assert errors[0] == errors[1] and errors[0][0] == 1 and "antipodal" in errors[0][1], errors


@pytest.mark.parametrize("merge", sorted(DEGENERATE_MERGES))
def test_near_degenerate_parts_take_the_whole_reference(merge, degenerate_family, tmp_path, engines, cut):  # noqa: F811
    """A large tensor near a degenerate configuration of multislerp's or karcher's Gram
    scalars, cut into parts where its inputs are read: each part is its slice of the whole
    tensor's reference, as the torch engine writes it (a reference of the part alone would
    be another mean)."""
    merge_near_degenerate(merge, degenerate_family, tmp_path, engines)
    assert (cut[0] > 0) is (mapped.MAP_MIN_BYTES != 1)  # mapped inputs: whole tensors


def test_a_reducing_merge_in_parts_counts_each_input_byte_once(family, tmp_path, cut, monkeypatch):
    """SLERP's parts are read twice (statistic, merge); the summary's bytes read are the plan's."""
    import mergefast
    from mergefast import execute

    monkeypatch.setattr(execute, "torch_free", lambda plan, options: True)  # this process has torch
    config = _config("slerp-gradient.yml", family, tmp_path / "c.yml")
    summary = mergefast.merge(config, tmp_path / "out", quiet=True)
    assert cut[0] > 0
    assert summary.read_bytes == sum(job.read_bytes for job in plan_of(config.read_text()).jobs)
