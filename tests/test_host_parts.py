"""The torch-free engine's parts (mergefast/host/parts.py): elementwise merges cut into parts
give the torch engine's model folder byte for byte, the NaN/inf messages count the whole
tensor, and the methods that need a whole tensor are never cut."""

from __future__ import annotations

import math
import shutil

import pytest
from helpers import example_config, plan_of
from test_host_engine import PASSTHROUGH, _both, engines  # noqa: F401 - engines: a fixture

from mergefast.host import parts

PART = 700  # elements: no tensor of the test family is a multiple of it


@pytest.fixture
def cut(monkeypatch):
    """Parts of PART elements; records how many parts each merge ran."""
    counts: list[int] = []
    split = parts.split_jobs

    def recorded(plan, jobs):
        out = split(plan, jobs)
        counts.append(sum(isinstance(j, parts.TensorPart) for j in out))
        return out

    monkeypatch.setattr(parts, "PART_ELEMENTS", PART)
    monkeypatch.setattr(parts, "split_jobs", recorded)
    return counts


NEARSWAP = (
    "merge_method: nearswap\nbase_model: {base}\nmodels:\n  - model: {base}\n  - model: {a}\nparameters: {{t: 0.002}}\n"
)


@pytest.mark.parametrize("name", ["linear.yml", "task-arithmetic.yml", "slerp-gradient.yml", "nearswap", "passthrough"])
def test_cut_merges_are_byte_identical(name, family, tmp_path, engines, cut):  # noqa: F811
    config = tmp_path / "c.yml"
    f = family
    if name == "nearswap":
        config.write_text(NEARSWAP.format(base=f["base"], a=f["ft-a"]))
    elif name == "passthrough":
        config.write_text(PASSTHROUGH.format(a=f["ft-a"], b=f["ft-b"]))
    else:
        config.write_text(example_config(name, f))
    _both(engines, config, tmp_path)
    assert cut[0] > 0, "no tensor was cut"


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
    assert cut[0] > 0


@pytest.mark.parametrize("name", ["linear.yml", "task-arithmetic.yml", "slerp-gradient.yml", "passthrough"])
def test_nan_in_parts_is_the_whole_tensors_error(name, family, tmp_path, engines, cut):  # noqa: F811
    """A NaN in two parts of one tensor: the error counts both, as the torch engine's does."""
    model = "ft-a" if name.startswith("slerp") else "ft-b"
    f = dict(family, **{model: _nan_model(family, tmp_path, model)})
    config = tmp_path / "c.yml"
    if name == "passthrough":
        config.write_text(PASSTHROUGH.format(a=f["ft-b"], b=f["ft-a"]))
    else:
        config.write_text(example_config(name, f))
    errors = []
    for torch_free in (True, False):
        out = tmp_path / f"out-{torch_free}"
        result = engines(config, out, torch_free=torch_free)
        assert result.exit_code != 0 and not out.exists()
        errors.append(result.stderr)
    assert errors[0] == errors[1] and "2 NaN" in errors[0], errors
