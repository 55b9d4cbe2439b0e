"""`mergefast-legacy` (mergekit-legacy's flags) and `bakllama` (layer stacking), in-process (helpers.run_cli)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from helpers import run_cli, write_family
from safetensors.torch import load_file

import mergefast
from mergefast.config import parse_config
from mergefast.legacy import bakllama_command, drop_unread_keys, dump_yaml, legacy_command, legacy_config

MERGEKIT_LEGACY = Path(__file__).resolve().parent.parent / ".venvs/mergekit/bin/mergekit-legacy"


@pytest.fixture(scope="module")
def fam(tmp_path_factory) -> dict[str, Path]:
    """A float32 family (mergekit computes in float32 too: outputs comparable exactly)."""
    return write_family(tmp_path_factory.mktemp("legacy-family"), dtype=torch.float32)


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def yaml_of(stdout: str) -> str:
    """The printed config: stdout up to the blank line print() leaves after it."""
    return stdout.split("\n\n")[0] + "\n"


def paths(text: str, fam: dict[str, Path]) -> str:
    for name, folder in fam.items():
        text = text.replace(str(folder), name.upper())
    return text


def one_line_error(result, code: int = 2) -> str:
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mergefast: error: "), result.stderr
    return lines[0]


# --- mergefast-legacy: the generated config ------------------------------------------------------

TIES_ALL = """\
base_model: BASE
merge_method: ties
models:
- model: FT-A
  parameters:
    density: 0.5
    weight: 0.7
- model: FT-B
  parameters:
    density: 0.5
    weight: 0.7
- model: BASE
  parameters:
    density: 0.5
    weight: 0.7
parameters:
  int8_mask: true
  normalize: true
"""

PER_MODEL = """\
base_model: BASE
merge_method: ties
models:
- model: FT-A
  parameters:
    density: 0.5
    weight: 0.3
- model: FT-B
  parameters:
    density: 0.5
    weight: 0.6
- model: BASE
  parameters:
    density: 0.5
parameters:
  normalize: true
"""

SLERP = """\
base_model: BASE
merge_method: slerp
models:
- model: FT-A
  parameters: {}
- model: BASE
  parameters: {}
parameters:
  t: 0.25
"""

BASE_LISTED_BF16 = """\
base_model: BASE
dtype: bfloat16
merge_method: task_arithmetic
models:
- model: BASE
  parameters:
    weight: 1.0
- model: FT-C
  parameters:
    weight: 1.0
parameters:
  normalize: false
"""


def legacy_flags(fam, case: str) -> list:
    a, b, c, base = fam["ft-a"], fam["ft-b"], fam["ft-c"], fam["base"]
    return {
        "ties_all": [
            "--merge",
            a,
            "--merge",
            b,
            "--weight",
            0.7,
            "--density",
            0.5,
            "--base-model",
            base,
            "--int8-mask",
        ],
        "per_model": [
            "--merge",
            a,
            "--merge",
            b,
            "--weight",
            0.3,
            "--weight",
            0.6,
            "--density",
            0.5,
            "--base-model",
            base,
        ],
        "slerp": ["--merge", a, "--weight", 0.25, "--base-model", base, "--method", "slerp"],
        "base_listed_bf16": [
            "--merge",
            base,
            "--merge",
            c,
            "--weight",
            1,
            "--base-model",
            base,
            "--method",
            "task_arithmetic",
            "--no-normalize",
            "--bf16",
        ],
    }[case]


EXPECTED = {"ties_all": TIES_ALL, "per_model": PER_MODEL, "slerp": SLERP, "base_listed_bf16": BASE_LISTED_BF16}


@pytest.mark.parametrize("case", list(EXPECTED))
def test_print_yaml_is_mergekit_legacy_shape(fam, tmp_path, case):
    result = run_cli(
        tmp_path / "out", *legacy_flags(fam, case), "--print-yaml", "--quiet", "--dry-run", command=legacy_command
    )
    assert result.exit_code == 0, result.output
    assert paths(yaml_of(result.stdout), fam) == EXPECTED[case]
    assert result.stdout.startswith(yaml_of(result.stdout) + "\n")  # print()'s blank line, as mergekit
    parse_config(yaml_of(result.stdout))


def test_broadcast_and_base_append_rules():
    # one value: every model, the appended base included
    data = legacy_config(["a", "b"], weight=[0.5], density=[0.2], base_model="base")
    assert [m["model"] for m in data["models"]] == ["a", "b", "base"]
    assert all(m["parameters"] == {"weight": 0.5, "density": 0.2} for m in data["models"])
    # several values: in order; models past the last value get none
    data = legacy_config(["a", "b"], weight=[0.1, 0.2], density=[0.3, 0.4, 0.5], base_model="base")
    assert [m["parameters"] for m in data["models"]] == [
        {"density": 0.3, "weight": 0.1},
        {"density": 0.4, "weight": 0.2},
        {"density": 0.5},
    ]
    # the base is not appended when listed, and no base is fine (linear)
    assert [m["model"] for m in legacy_config(["base", "a"], [1.0], base_model="base")["models"]] == ["base", "a"]
    data = legacy_config(["a", "b"], [1], method="linear")
    assert "base_model" not in data and data["models"][1]["parameters"] == {"weight": 1.0}
    # normalize is always written; int8_mask and dtype only when asked
    assert legacy_config(["a"], [1], base_model="b")["parameters"] == {"normalize": True}
    assert "dtype" not in legacy_config(["a"], [1], base_model="b")


def test_slerp_weight_becomes_t():
    data = legacy_config(["a"], weight=[0.3], method="slerp", base_model="b")
    assert data["parameters"] == {"t": 0.3, "normalize": True}
    assert all(m["parameters"] == {} for m in data["models"])
    cleaned, warnings = drop_unread_keys(data)
    assert cleaned["parameters"] == {"t": 0.3} and warnings == []  # the default --normalize: silently
    _, warnings = drop_unread_keys(data, given={"--normalize"})
    assert len(warnings) == 1 and "slerp takes no 'normalize'" in warnings[0]


def test_unread_keys_are_dropped_with_a_warning(fam, tmp_path):
    result = run_cli(
        tmp_path / "out",
        "--merge",
        fam["ft-a"],
        "--merge",
        fam["ft-b"],
        "--weight",
        0.5,
        "--density",
        0.5,
        "--method",
        "linear",
        "--naive-count",
        "--print-yaml",
        "--dry-run",
        "--quiet",
        command=legacy_command,
    )
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 2
    assert "consensus_method" in warnings[0] and "no-op" in warnings[0]
    assert "--density: linear takes no 'density'" in warnings[1]
    config = parse_config(yaml_of(result.stdout))
    assert config.parameters == {"normalize": True}
    assert [e.parameters for e in config.models] == [{"weight": 0.5}, {"weight": 0.5}]


def test_every_flag_set_parses():
    for method in ("ties", "task_arithmetic", "linear", "slerp", "dare_ties", "della", "breadcrumbs"):
        for naive in (False, True):
            data = legacy_config(
                ["a", "b"],
                [0.5],
                [0.5],
                method,
                None if method == "linear" else "c",
                int8_mask=True,
                bf16=True,
                naive_count=naive,
            )
            if method == "slerp":
                data = legacy_config(["a"], [0.5], [0.5], method, "c", int8_mask=True, naive_count=naive)
            parse_config(dump_yaml(drop_unread_keys(data)[0]))


def test_legacy_merge_equals_merge_of_printed_yaml(fam, tmp_path):
    result = run_cli(
        tmp_path / "legacy",
        *legacy_flags(fam, "per_model"),
        "--print-yaml",
        "--quiet",
        "--no-write-model-card",
        command=legacy_command,
    )
    assert result.exit_code == 0, result.output
    mergefast.merge(yaml_of(result.stdout), tmp_path / "api", quiet=True, write_model_card=False)
    got, want = tensors(tmp_path / "legacy"), tensors(tmp_path / "api")
    assert got.keys() == want.keys() and len(got) > 10
    assert all(torch.equal(got[k], want[k]) for k in got)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--weight", 0.2, "--weight", 0.3, "--method", "slerp"], "slerp takes exactly one --weight"),
        (["--method", "slerp"], "slerp takes exactly one --weight"),
        (["--weight", 1, "--weight", 2, "--weight", 3], "3 --weight values for 2 models"),
        (["--weight", 1, "--density", 1, "--density", 1, "--density", 1], "3 --density values for 2 models"),
        ([], "missing required parameter 'weight'; give --weight"),
        (["--weight", 1, "--method", "tie"], "unknown method 'tie' (did you mean 'ties'?)"),
        (["--weight", 1, "--density", 1.5], "density 1.5"),
    ],
)
def test_legacy_errors_are_one_line_exit_2(fam, tmp_path, flags, message):
    result = run_cli(
        tmp_path / "out",
        "--merge",
        fam["ft-a"],
        "--base-model",
        fam["base"],
        *flags,
        "--print-yaml",
        command=legacy_command,
    )
    assert message in one_line_error(result)
    assert not (tmp_path / "out").exists()


def test_legacy_needs_models(tmp_path):
    assert "no models" in one_line_error(run_cli(tmp_path / "out", "--weight", 1, command=legacy_command))


# --- mergefast-legacy against mergekit-legacy 0.1.5 ----------------------------------------------


def mergekit_legacy(out: Path, flags: list) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            str(MERGEKIT_LEGACY),
            str(out),
            *map(str, flags),
            "--print-yaml",
            "--no-write-model-card",
            "--no-copy-tokenizer",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.mergekit
@pytest.mark.slow
@pytest.mark.skipif(not MERGEKIT_LEGACY.exists(), reason="mergekit-legacy not installed")
@pytest.mark.parametrize("case", ["ties_all", "slerp"])
def test_against_mergekit_legacy(fam, tmp_path, case):
    flags = legacy_flags(fam, case)
    proc = mergekit_legacy(tmp_path / "mk", flags)
    assert proc.returncode == 0, proc.stderr[-3000:]
    theirs = yaml.safe_load(yaml_of(proc.stdout))
    result = run_cli(
        tmp_path / "mf",
        *flags,
        "--print-yaml",
        "--quiet",
        "--no-write-model-card",
        "--no-copy-tokenizer",
        command=legacy_command,
    )
    assert result.exit_code == 0, result.output
    # the printed text is mergekit's, less the keys mergekit ignores (slerp's `normalize`)
    assert yaml_of(result.stdout) == dump_yaml(drop_unread_keys(theirs)[0])
    if case == "ties_all":
        assert yaml_of(result.stdout) == yaml_of(proc.stdout)
    got, want = tensors(tmp_path / "mf"), tensors(tmp_path / "mk")
    assert got.keys() == want.keys()
    for name in got:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=1e-6, msg=name)


# --- bakllama --------------------------------------------------------------------------------------


def bakllama_file(tmp_path: Path, fam, *, embedding=None, lm_head=None, end=4) -> Path:
    data = {
        "layer_slices": [
            {"model": str(fam["ft-a"]), "start": 0, "end": 2, "scale": 0.5},
            {"model": str(fam["ft-b"]), "start": 1, "end": end},
        ]
    }
    if embedding:
        data["embedding_source"] = str(fam[embedding])
    if lm_head:
        data["lm_head_source"] = str(fam[lm_head])
    path = tmp_path / "bakllama.yml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_bakllama_layers_scale_and_default_sources(fam, tmp_path):
    config = bakllama_file(tmp_path, fam)
    result = run_cli(config, tmp_path / "out", "--quiet", "--clone-tensors", command=bakllama_command)
    assert result.exit_code == 0, result.output
    out = tensors(tmp_path / "out")
    assert json.loads((tmp_path / "out" / "config.json").read_text())["num_hidden_layers"] == 5
    assert {int(k.split(".")[2]) for k in out if ".layers." in k} == set(range(5))
    a, b = tensors(fam["ft-a"]), tensors(fam["ft-b"])
    layer_map = [(0, a, 0), (1, a, 1), (2, b, 1), (3, b, 2), (4, b, 3)]
    for out_i, src, in_i in layer_map:
        for name in [k for k in a if k.startswith("model.layers.0.")]:
            got = out[name.replace("layers.0.", f"layers.{out_i}.")]
            want = src[name.replace("layers.0.", f"layers.{in_i}.")]
            scaled = "down_proj" in name and out_i < 2
            assert torch.equal(got, want * 0.5 if scaled else want), (out_i, name)
    # embeddings from the first slice's model, norm and lm_head from the last slice's
    assert torch.equal(out["model.embed_tokens.weight"], a["model.embed_tokens.weight"])
    assert torch.equal(out["model.norm.weight"], b["model.norm.weight"])
    assert torch.equal(out["lm_head.weight"], b["lm_head.weight"])
    assert "# embeddings" not in (tmp_path / "out" / "mergekit_config.yml").read_text()


def test_bakllama_embedding_and_lm_head_sources(fam, tmp_path):
    config = bakllama_file(tmp_path, fam, embedding="ft-c", lm_head="base")
    result = run_cli(config, tmp_path / "out", "--quiet", "--fp16", command=bakllama_command)
    assert result.exit_code == 0, result.output
    out = tensors(tmp_path / "out")
    c, base, b = tensors(fam["ft-c"]), tensors(fam["base"]), tensors(fam["ft-b"])
    assert torch.equal(out["model.embed_tokens.weight"], c["model.embed_tokens.weight"].half())
    assert torch.equal(out["model.norm.weight"], base["model.norm.weight"].half())
    assert torch.equal(out["lm_head.weight"], base["lm_head.weight"].half())
    assert torch.equal(out["model.layers.4.mlp.up_proj.weight"], b["model.layers.3.mlp.up_proj.weight"].half())
    assert all(t.dtype == torch.float16 for t in out.values())
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert saved["num_hidden_layers"] == 5
    card = (tmp_path / "out" / "mergekit_config.yml").read_text()
    assert f"# embeddings from embedding_source: {fam['ft-c']}" in card
    assert f"# final norm and lm_head from lm_head_source: {fam['base']}" in card


def test_bakllama_print_yaml(fam, tmp_path):
    config = bakllama_file(tmp_path, fam)
    result = run_cli(config, tmp_path / "out", "--print-yaml", "--dry-run", "--fp16", command=bakllama_command)
    assert result.exit_code == 0, result.output
    assert paths(result.stdout, fam).startswith("""\
# bakllama config bakllama.yml as passthrough slices (mergefast bakllama)
merge_method: passthrough
dtype: float16
slices:
- sources:
  - model: FT-A
    layer_range: [0, 2]
    parameters:
      scale:
      - {filter: down_proj, value: 0.5}
- sources:
  - model: FT-B
    layer_range: [1, 4]
""")


@pytest.mark.parametrize(
    "edit, message",
    [
        ({"end": 9}, "layer_slices[1]: start 1, end 9 goes past the end of"),
        ({"layer_slices": []}, "layer_slices: expected a non-empty list"),
        ({"stop": 2}, "layer_slices[0]: unknown key 'stop'"),
        ({"embeding_source": "x"}, "unknown key 'embeding_source' (did you mean 'embedding_source'?)"),
        ({"start": 3}, "layer_slices[0]: start 3, end 2: need 0 <= start < end"),
    ],
)
def test_bakllama_errors_are_one_line_exit_2(fam, tmp_path, edit, message):
    config = bakllama_file(tmp_path, fam, end=edit.get("end", 4))
    data = yaml.safe_load(config.read_text())
    if "layer_slices" in edit or "embeding_source" in edit:
        data.update(edit)
    elif "stop" in edit:
        data["layer_slices"][0]["stop"] = 2
    elif "start" in edit:
        data["layer_slices"][0]["start"] = 3
    config.write_text(yaml.safe_dump(data))
    result = run_cli(config, tmp_path / "out", command=bakllama_command)
    assert message in one_line_error(result)
    assert not (tmp_path / "out").exists()


def test_bakllama_shape_mismatch_is_an_error(tmp_path):
    small = write_family(tmp_path / "small", dtype=torch.float32, layers=2)
    config = tmp_path / "bak.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "layer_slices": [{"model": str(small["ft-a"]), "start": 0, "end": 2}],
                "embedding_source": str(small["ft-b"]),
            }
        )
    )
    result = run_cli(config, tmp_path / "out", "--quiet", command=bakllama_command)
    assert result.exit_code == 0, result.output  # same shapes: fine
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
    from make_models import make_tiny_llama

    make_tiny_llama(tmp_path / "wide", seed=5, dtype=torch.float32, layers=2, vocab=48)
    config.write_text(
        yaml.safe_dump(
            {
                "layer_slices": [{"model": str(small["ft-a"]), "start": 0, "end": 2}],
                "lm_head_source": str(tmp_path / "wide"),
            }
        )
    )
    assert "lm_head_source" in one_line_error(run_cli(config, tmp_path / "out2", "--quiet", command=bakllama_command))


def test_legacy_commands_import_on_their_own():
    """The console scripts import mergefast.legacy first (no import cycle with mergefast.cli)."""
    import subprocess
    import sys

    for module in ("mergefast.legacy", "mergefast.cli"):
        proc = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
