"""The bad-input corpus (tests/bad_inputs/*): every case fails with the expected exit code and
one line naming the culprit, without a traceback, and leaves nothing at OUT.

See tests/bad_inputs/README.md for the case format.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import sys
from pathlib import Path

import pytest
import torch
from helpers import run_cli
from safetensors.torch import load_file, save_file

TESTS = Path(__file__).resolve().parent
CORPUS = TESTS / "bad_inputs"
MODELS = TESTS.parent / "examples" / "models"
CASES = sorted(p.name for p in CORPUS.iterdir() if (p / "expect.json").is_file())
MARKER_ENV = "MERGEFAST_TEST_MARKER"


# -- setup functions: model folders a case needs, written under @TMP@ -------------------------


def _copy_model(name: str, dest: Path) -> Path:
    shutil.copytree(MODELS / name, dest)
    return dest


def setup_symlink_out(tmp: Path) -> None:
    """A sharded model whose shard is a symlink to a file outside the folder."""
    outside = tmp / "elsewhere"
    outside.mkdir()
    shutil.copy(MODELS / "ft-b" / "model.safetensors", outside / "shard.safetensors")
    model = tmp / "model"
    model.mkdir()
    (model / "model-00001-of-00001.safetensors").symlink_to(outside / "shard.safetensors")
    names = list(load_file(outside / "shard.safetensors"))
    (model / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": {n: "model-00001-of-00001.safetensors" for n in names}})
    )


def _make(tmp: Path, name: str, **kwargs) -> Path:
    sys.path.insert(0, str(TESTS.parent / "examples"))
    from make_models import make_tiny_llama

    make_tiny_llama(tmp / name, seed=7, **kwargs)
    return tmp / name


def setup_wide_model(tmp: Path) -> None:
    _make(tmp, "wide", hidden=48)


def setup_deep_model(tmp: Path) -> None:
    _make(tmp, "deep", layers=6)


def setup_holey_model(tmp: Path) -> None:
    folder = _copy_model("ft-b", tmp / "holey")
    tensors = load_file(folder / "model.safetensors")
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})


def setup_model_without_up_proj(tmp: Path) -> None:
    """No layer has mlp.up_proj: alike layers, but another input has the tensor."""
    folder = _copy_model("ft-b", tmp / "holey")
    tensors = load_file(folder / "model.safetensors")
    tensors = {k: v for k, v in tensors.items() if not k.endswith("mlp.up_proj.weight")}
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})


def setup_integer_weight(tmp: Path) -> None:
    """ft-b's q_proj of layer 0 with its bf16 bytes relabelled int16 (same size)."""
    folder = _copy_model("ft-b", tmp / "holey")
    tensors = load_file(folder / "model.safetensors")
    name = "model.layers.0.self_attn.q_proj.weight"
    tensors[name] = tensors[name].view(torch.int16)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})


def setup_inf_model(tmp: Path) -> None:
    folder = _copy_model("ft-b", tmp / "inf")
    tensors = load_file(folder / "model.safetensors")
    tensors["model.layers.0.self_attn.q_proj.weight"][0, :4] = float("inf")
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})


class _Evil:
    """Unpickling this (without weights_only) would run code: it must never happen."""

    def __reduce__(self):
        return (os.system, (f'touch "${MARKER_ENV}"',))


def setup_evil_bin(tmp: Path) -> None:
    folder = _copy_model("ft-b", tmp / "evil")
    os.remove(folder / "model.safetensors")
    with open(folder / "pytorch_model.bin", "wb") as f:
        pickle.dump({"model.embed_tokens.weight": _Evil()}, f)


# -- hostile inputs, round two: files leading out of a model folder; headers the safetensors
# library refuses; config.json sub-configs that are not objects, and values of the wrong type --


def _model_with_link_out(tmp: Path, name: str, text: str | None = None, relative: bool = False) -> Path:
    """A copy of ft-b as @TMP@/model whose file `name` is a symlink to a file outside the folder
    holding `text` (else the file's own content): without the rule it is read, or copied to OUT."""
    folder = _copy_model("ft-b", tmp / "model")
    outside = tmp / "elsewhere"
    outside.mkdir(exist_ok=True)
    link = folder / name
    (outside / name).write_text(text if text is not None else link.read_text())
    link.unlink(missing_ok=True)
    link.symlink_to(Path("..") / "elsewhere" / name if relative else outside / name)
    return folder


def setup_tokenizer_json_link_out(tmp: Path) -> None:
    _model_with_link_out(tmp, "tokenizer.json")


def setup_tokenizer_config_relative_link_out(tmp: Path) -> None:
    _model_with_link_out(tmp, "tokenizer_config.json", relative=True)


def setup_config_json_link_out(tmp: Path) -> None:
    _model_with_link_out(tmp, "config.json")


def setup_chat_template_link_out(tmp: Path) -> None:
    _model_with_link_out(tmp, "chat_template.jinja", "{% for m in messages %}{{ m['content'] }}{% endfor %}")


def setup_generation_config_link_out(tmp: Path) -> None:
    _model_with_link_out(tmp, "generation_config.json", '{"bos_token_id": 1, "eos_token_id": 2}')


def setup_tokenizer_side_file_link_out(tmp: Path) -> None:
    """A file only a tokenizer library picks (a sentencepiece model), linked in from elsewhere."""
    _model_with_link_out(tmp, "spiece.model", "not really a sentencepiece model")


def setup_index_link_out(tmp: Path) -> None:
    """A sharded model whose index file itself is a symlink to a file outside the folder."""
    folder = _copy_model("ft-b", tmp / "model")
    names = list(load_file(folder / "model.safetensors"))
    (folder / "model.safetensors").rename(folder / "model-00001-of-00001.safetensors")
    (tmp / "elsewhere").mkdir()
    index = tmp / "elsewhere" / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {n: "model-00001-of-00001.safetensors" for n in names}}))
    (folder / "model.safetensors.index.json").symlink_to(index)


def setup_index_empty_weight_map(tmp: Path) -> None:
    """A sharded model whose index names no tensor (the donor of a TIES merge)."""
    folder = _copy_model("ft-b", tmp / "model")
    (folder / "model.safetensors").rename(folder / "model-00001-of-00001.safetensors")
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": {}}))


def setup_tokenizer_json_truncated(tmp: Path) -> None:
    """The donor's tokenizer.json cut in half: the output would copy it, and its tokenizer not load."""
    folder = _copy_model("ft-b", tmp / "model")
    text = (folder / "tokenizer.json").read_text()
    (folder / "tokenizer.json").write_text(text[: len(text) // 2])


def setup_special_tokens_map_list(tmp: Path) -> None:
    folder = _copy_model("ft-b", tmp / "model")
    (folder / "special_tokens_map.json").write_text('["<s>"]')


def setup_tokenizer_json_null(tmp: Path) -> None:
    (_copy_model("ft-b", tmp / "model") / "tokenizer.json").write_text("null")


def _ft_b_header() -> tuple[dict, bytes]:
    """ft-b's safetensors header (parsed) and its data bytes."""
    raw = (MODELS / "ft-b" / "model.safetensors").read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def _model_with_header(tmp: Path, header: dict | str | bytes, data: bytes) -> None:
    """A copy of ft-b as @TMP@/model whose model.safetensors has this header and data."""
    folder = _copy_model("ft-b", tmp / "model")
    if isinstance(header, dict):
        header = json.dumps(header)
    if isinstance(header, str):
        header = header.encode()
    (folder / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + data)


def setup_duplicate_tensor_name(tmp: Path) -> None:
    """model.norm.weight listed twice: Python's json keeps the last one silently."""
    header, data = _ft_b_header()
    text = json.dumps(header)
    _model_with_header(tmp, text[:-1] + f', "model.norm.weight": {json.dumps(header["model.norm.weight"])}}}', data)


def setup_duplicate_entry_field(tmp: Path) -> None:
    header, data = _ft_b_header()
    _model_with_header(tmp, json.dumps(header).replace('"dtype": ', '"dtype": "U8", "dtype": ', 1), data)


def setup_header_deep_nesting(tmp: Path) -> None:
    _model_with_header(tmp, b"[" * 100_000 + b"]" * 100_000, b"")


def setup_header_deep_nesting_in_entry(tmp: Path) -> None:
    header, data = _ft_b_header()
    nested: list = []
    for _ in range(200):
        nested = [nested]
    header["model.norm.weight"]["extra"] = nested
    _model_with_header(tmp, header, data)


def setup_header_without_tensors(tmp: Path) -> None:
    _model_with_header(tmp, {"__metadata__": {"format": "pt"}}, b"")


def setup_metadata_not_strings(tmp: Path) -> None:
    header, data = _ft_b_header()
    header["__metadata__"] = {"format": "pt", "step": 1000}
    _model_with_header(tmp, header, data)


def setup_metadata_not_an_object(tmp: Path) -> None:
    header, data = _ft_b_header()
    header["__metadata__"] = ["format", "pt"]
    _model_with_header(tmp, header, data)


def setup_data_offsets_gap(tmp: Path) -> None:
    """Every tensor 8 bytes later than the data region starts (8 unused bytes first)."""
    header, data = _ft_b_header()
    for name, entry in header.items():
        if name != "__metadata__":
            entry["data_offsets"] = [o + 8 for o in entry["data_offsets"]]
    _model_with_header(tmp, header, b"\0" * 8 + data)


def setup_data_not_covered(tmp: Path) -> None:
    header, data = _ft_b_header()
    _model_with_header(tmp, header, data + b"\0" * 16)


def setup_header_nan(tmp: Path) -> None:
    header, data = _ft_b_header()
    header["model.norm.weight"]["scale"] = float("nan")  # json.dumps writes NaN, which is not JSON
    _model_with_header(tmp, header, data)


def setup_tensor_name_lone_surrogate(tmp: Path) -> None:
    header, data = _ft_b_header()
    _model_with_header(tmp, json.dumps(header).replace('"model.norm.weight"', '"model.norm.weight\\ud800"'), data)


def setup_header_not_utf8(tmp: Path) -> None:
    header, data = _ft_b_header()
    _model_with_header(
        tmp, json.dumps(header).encode().replace(b'"model.norm.weight"', b'"model.norm.weight\xff"'), data
    )


def setup_shape_overflow(tmp: Path) -> None:
    header, data = _ft_b_header()
    header["model.norm.weight"]["shape"] = [2**40] * 4
    _model_with_header(tmp, header, data)


def _model_with_config(tmp: Path, **changes) -> None:
    """A copy of ft-b as @TMP@/model with these config.json keys set."""
    folder = _copy_model("ft-b", tmp / "model")
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def setup_config_json_null(tmp: Path) -> None:
    """config.json holding JSON null (no object), in a model that is not the donor."""
    (_copy_model("ft-b", tmp / "model") / "config.json").write_text("null")


def setup_text_config_list(tmp: Path) -> None:
    _model_with_config(tmp, text_config=[{"num_hidden_layers": 4}])


def setup_text_config_string(tmp: Path) -> None:
    _model_with_config(tmp, text_config="llama")


def setup_vision_config_number(tmp: Path) -> None:
    _model_with_config(tmp, vision_config=3)


def setup_hidden_size_string(tmp: Path) -> None:
    _model_with_config(tmp, hidden_size="4096")


def setup_vocab_size_negative(tmp: Path) -> None:
    _model_with_config(tmp, vocab_size=-1)


def setup_dtype_unknown(tmp: Path) -> None:
    _model_with_config(tmp, torch_dtype="bf16")


def setup_architectures_string(tmp: Path) -> None:
    _model_with_config(tmp, architectures="LlamaForCausalLM")


def setup_model_type_list(tmp: Path) -> None:
    _model_with_config(tmp, model_type=["llama"])


def setup_layer_types_numbers(tmp: Path) -> None:
    _model_with_config(tmp, text_config={"layer_types": [0, 0, 0, 0]})


def setup_layer_types_short(tmp: Path) -> None:
    _model_with_config(tmp, layer_types=["full_attention"])


def setup_no_model_type(tmp: Path) -> None:
    """The donor (the first model of a merge without a base) without model_type."""
    _model_with_config(tmp)
    config = json.loads((tmp / "model" / "config.json").read_text())
    del config["model_type"]
    (tmp / "model" / "config.json").write_text(json.dumps(config))


def setup_config_json_deep_nesting(tmp: Path) -> None:
    folder = _copy_model("ft-b", tmp / "model")
    (folder / "config.json").write_text("[" * 100_000 + "]" * 100_000)


SETUPS = {name.removeprefix("setup_"): fn for name, fn in globals().items() if name.startswith("setup_")}


# -- the runner ----------------------------------------------------------------------------


def assert_clean_failure(result, expect: dict, out: Path) -> None:
    """`result` (of helpers.run_cli) exited with the case's code and one error line."""
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == expect["exit"], result.stderr
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("mergefast: error:")]
    assert len(errors) == 1, result.stderr
    for part in expect["message"]:
        assert part in errors[0], f"{part!r} not in {errors[0]!r}"
    if expect.get("out") != "file":
        assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.mergefast-partial-*"))


def prepare(case: str, tmp_path: Path) -> tuple[Path, dict]:
    """The case's config with placeholders filled in (written under tmp_path) and its expect."""
    folder = CORPUS / case
    expect = json.loads((folder / "expect.json").read_text())
    if "setup" in expect:
        SETUPS[expect["setup"]](tmp_path)
    config = tmp_path / "config.yml"
    src = folder / "config.yml"
    if src.is_file():
        data = src.read_bytes()
        for key, value in {"@MODELS@": MODELS, "@CASE@": folder, "@TMP@": tmp_path}.items():
            data = data.replace(key.encode(), str(value).encode())
        config.write_bytes(data)
    return config, expect


@pytest.mark.parametrize("case", CASES)
def test_bad_input(case, tmp_path):
    config, expect = prepare(case, tmp_path)
    out = tmp_path / "out"
    if expect.get("out") == "file":
        out.write_text("not a folder")
    marker = tmp_path / "code-ran"
    result = run_cli("yaml", config, out, "--quiet", env={MARKER_ENV: str(marker)})
    assert_clean_failure(result, expect, out)
    assert not marker.exists(), "code from a model folder ran"
    if expect.get("out") == "file":
        assert out.read_text() == "not a folder"


@pytest.mark.parametrize("case", ["unknown-parameter", "layer-range-past-end", "corrupt-safetensors-header"])
def test_dry_run_fails_the_same_way(case, tmp_path):
    config, expect = prepare(case, tmp_path)
    out = tmp_path / "out"
    for args in (["plan", config], ["yaml", config, out, "--dry-run"]):
        assert_clean_failure(run_cli(*args), expect, out)


def test_verbose_adds_the_traceback(tmp_path):
    config, expect = prepare("unknown-parameter", tmp_path)
    result = run_cli("yaml", config, tmp_path / "out", "-v")
    assert result.exit_code == 2 and "Traceback" in result.stderr and "densty" in result.stderr.splitlines()[-1]


def test_corpus_is_big_and_small():
    assert len(CASES) >= 20
    size = sum(p.stat().st_size for p in CORPUS.rglob("*") if p.is_file())
    assert size < 200_000, size


def test_usage_error_exits_2(tmp_path):
    result = run_cli("yaml", "--no-such-flag", tmp_path / "c.yml", tmp_path / "out")
    assert result.exit_code == 2 and "No such option" in result.stderr


def test_internal_error_is_one_line(tmp_path, monkeypatch):
    import mergefast.plan

    def boom(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(mergefast.plan, "build_plan", boom)
    config, _ = prepare("zero-sum-linear-weights", tmp_path)
    result = run_cli("yaml", config, tmp_path / "out")
    assert result.exit_code == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (
        "mergefast: internal error: ZeroDivisionError: a bug (run with -v for the traceback)"
    )


def test_trust_remote_code_never_runs_model_code(tmp_path):
    """A model folder with auto_map and a modeling file with a side effect: merging it (even
    with --trust-remote-code) reads config.json as JSON and never imports the file."""
    marker = tmp_path / "code-ran"
    folders = []
    for name in ("ft-a", "ft-b"):
        folder = _copy_model(name, tmp_path / name)
        config = json.loads((folder / "config.json").read_text())
        config["auto_map"] = {
            "AutoConfig": "configuration_x.XConfig",
            "AutoModelForCausalLM": "modeling_x.XForCausalLM",
        }
        (folder / "config.json").write_text(json.dumps(config))
        side_effect = f"open({str(marker)!r}, 'w').write('ran')\n"
        (folder / "modeling_x.py").write_text(side_effect + "class XForCausalLM: pass\n")
        (folder / "configuration_x.py").write_text(side_effect + "class XConfig: pass\n")
        folders.append(folder)
    config = tmp_path / "config.yml"
    config.write_text(
        "merge_method: passthrough\nslices:\n"
        f"  - sources:\n      - {{model: {folders[0]}, layer_range: [0, 2]}}\n"
        f"  - sources:\n      - {{model: {folders[1]}, layer_range: [2, 4]}}\n"
    )
    out = tmp_path / "out"
    result = run_cli("yaml", config, out, "--trust-remote-code", "--quiet")
    assert result.exit_code == 0, result.stderr
    assert not marker.exists()
    assert (out / "model.safetensors").is_file()
    assert not (out / "modeling_x.py").exists()


def test_nonfinite_input_warns_per_tensor(tmp_path):
    """A non-finite input is a warning naming the model and tensor; the non-finite output it
    causes is then the one error line."""
    setup_inf_model(tmp_path)
    config = tmp_path / "config.yml"
    config.write_text(
        f"merge_method: linear\nmodels:\n  - model: {MODELS / 'ft-a'}\n    parameters: {{weight: 1}}\n"
        f"  - model: {tmp_path / 'inf'}\n    parameters: {{weight: 1}}\n"
    )
    out = tmp_path / "out"
    result = run_cli("yaml", config, out, "--quiet")
    warnings = [line for line in result.stderr.splitlines() if line.startswith("mergefast: warning:")]
    errors = [line for line in result.stderr.splitlines() if line.startswith("mergefast: error:")]
    assert result.exit_code == 1 and len(warnings) == 1 and len(errors) == 1, result.stderr
    assert str(tmp_path / "inf") in warnings[0] and "model.layers.0.self_attn.q_proj.weight" in warnings[0]
    assert "4 inf" in warnings[0] and str(tmp_path / "inf") in errors[0]
    assert not out.exists()


def test_ties_warns_for_a_nan_input_and_merges(tmp_path, monkeypatch):
    """TIES drops NaN deltas in its sign election, so the merge succeeds with one warning
    for the NaN input; the inputs the C++ kernel proved finite are not scanned again."""
    import mergefast.checks as checks

    folder = _copy_model("ft-b", tmp_path / "nan")
    tensors = load_file(folder / "model.safetensors")
    tensors["model.layers.0.self_attn.q_proj.weight"][0, :3] = float("nan")
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    scanned = []
    warn = checks.warn_nonfinite_inputs

    def counting(job_name, sources, tensors, known_finite=()):  # the inputs it scans
        tensors = list(tensors)
        scanned.extend(t.numel() for t in tensors if t.data_ptr() not in known_finite)
        return warn(job_name, sources, tensors, known_finite)

    monkeypatch.setattr(checks, "warn_nonfinite_inputs", counting)
    config = tmp_path / "config.yml"
    config.write_text(
        f"merge_method: ties\nbase_model: {MODELS / 'base'}\nmodels:\n"
        f"  - model: {MODELS / 'ft-a'}\n    parameters: {{weight: 1, density: 0.5}}\n"
        f"  - model: {folder}\n    parameters: {{weight: 1, density: 0.5}}\n"
    )
    result = run_cli("yaml", config, tmp_path / "out", "--quiet")
    warnings = [line for line in result.stderr.splitlines() if line.startswith("mergefast: warning:")]
    assert result.exit_code == 0 and len(warnings) == 1, result.stderr
    assert str(folder) in warnings[0] and "3 NaN" in warnings[0]
    from mergefast import kernels

    if kernels.backend("cpu") == "cpu-ext":  # only the NaN job's 3 inputs are scanned
        assert len(scanned) == 3


def test_warn_nonfinite_inputs_does_not_raise(caplog):
    from mergefast.checks import warn_nonfinite_inputs

    good, bad = torch.ones(8), torch.tensor([1.0, float("nan"), float("-inf")])
    with caplog.at_level("WARNING", logger="mergefast"):
        assert warn_nonfinite_inputs("x.weight", [("m1", "x.weight"), ("m2", "x.weight")], [good, bad]) == 1
    assert "model m2: input tensor x.weight" in caplog.text and "1 NaN and 1 inf" in caplog.text
