"""Tests for the README.md model card (mergefast/io/card.py)."""

from __future__ import annotations

import socket

import pytest
import yaml

from mergefast.io import card as card_mod
from mergefast.io.card import (
    MERGE_METHODS,
    looks_like_hf_repo,
    model_card,
    split_model_reference,
    write_model_card,
)

TIES_CONFIG = """\
merge_method: ties
base_model: meta-llama/Llama-3.1-8B
models:
  - model: org/ft-a
    parameters: {density: 0.5, weight: 0.5}
  - model: ./local/ft-b
    parameters: {density: 0.5, weight: 0.5}
dtype: bfloat16
"""

ALL_MERGEKIT_METHODS = [
    "linear",
    "slerp",
    "nuslerp",
    "multislerp",
    "karcher",
    "passthrough",
    "task_arithmetic",
    "ties",
    "dare_ties",
    "dare_linear",
    "breadcrumbs",
    "breadcrumbs_ties",
    "della",
    "della_linear",
    "sce",
    "ram",
    "ramplus_tl",
    "nearswap",
    "model_stock",
    "arcee_fusion",
]


def front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    end = text.index("\n---\n", 4)
    return yaml.safe_load(text[4:end])


def section(text: str, title: str) -> str:
    start = text.index(title + "\n") + len(title) + 1
    nxt = text.find("\n#", start)
    return text[start : nxt if nxt >= 0 else len(text)]


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the model card must not touch the network")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_every_mergekit_method_has_name_and_link():
    assert set(ALL_MERGEKIT_METHODS) <= set(MERGE_METHODS)
    for name in ALL_MERGEKIT_METHODS:
        pretty, url = MERGE_METHODS[name]
        assert pretty
        if name != "passthrough":
            assert url and url.startswith("https://")


def test_ties_card_structure(in_tmp):
    text = model_card(
        TIES_CONFIG,
        method="ties",
        base_model="meta-llama/Llama-3.1-8B",
        models=["org/ft-a", "./local/ft-b"],
        out_name="my-merge",
    )
    meta = front_matter(text)
    assert meta == {
        "base_model": ["meta-llama/Llama-3.1-8B", "org/ft-a"],
        "library_name": "transformers",
        "tags": ["merge", "mergefast"],
    }
    # keys are written sorted
    raw = text[4 : text.index("\n---\n", 4)]
    keys = [line.split(":")[0] for line in raw.splitlines() if line and not line.startswith(("-", " "))]
    assert keys == sorted(keys)

    assert "\n# my-merge\n" in text
    assert "mergefast" in section(text, "# my-merge")
    assert "## Merge Details\n### Merge Method\n" in text
    method = section(text, "### Merge Method")
    assert "[TIES](https://arxiv.org/abs/2306.01708)" in method
    assert "using [meta-llama/Llama-3.1-8B](https://huggingface.co/meta-llama/Llama-3.1-8B) as a base" in method

    merged = section(text, "### Models Merged")
    bullets = [line for line in merged.splitlines() if line.startswith("* ")]
    assert bullets == ["* [org/ft-a](https://huggingface.co/org/ft-a)", "* ./local/ft-b"]

    assert text.endswith("```yaml\n" + TIES_CONFIG + "```\n")


def test_config_text_is_verbatim_even_without_trailing_newline():
    cfg = "merge_method: linear\nmodels:\n  - model: a/b\n    parameters: {weight: 1}  # keep me"
    text = model_card(cfg, method="linear", base_model=None, models=["a/b"], out_name="x")
    assert "```yaml\n" + cfg + "\n```\n" in text


def test_fence_longer_than_backticks_in_config():
    cfg = "merge_method: linear\n# a comment with ``` inside\nmodels: []\n"
    text = model_card(cfg, method="linear", base_model=None, models=[], out_name="x")
    assert text.endswith("````yaml\n" + cfg + "````\n")


def test_slerp_lists_base_as_ordinary_model():
    text = model_card(
        "merge_method: slerp\n",
        method="slerp",
        base_model="org/base",
        models=["org/base", "org/other"],
        out_name="s",
    )
    method = section(text, "### Merge Method")
    assert "[SLERP](https://en.wikipedia.org/wiki/Slerp)" in method
    assert "as a base" not in method
    bullets = [line for line in section(text, "### Models Merged").splitlines() if line.startswith("* ")]
    assert bullets == [
        "* [org/base](https://huggingface.co/org/base)",
        "* [org/other](https://huggingface.co/org/other)",
    ]
    assert front_matter(text)["base_model"] == ["org/base", "org/other"]


def test_no_base_and_local_paths_only(in_tmp):
    (in_tmp / "models" / "a").mkdir(parents=True)
    (in_tmp / "models" / "b").mkdir(parents=True)
    text = model_card(
        "merge_method: linear\n",
        method="linear",
        base_model=None,
        models=["models/a", "models/b"],
        out_name="lin",
    )
    meta = front_matter(text)
    assert "base_model" not in meta  # nothing on the Hub to point at
    assert meta["library_name"] == "transformers"
    assert "as a base" not in text
    bullets = [line for line in section(text, "### Models Merged").splitlines() if line.startswith("* ")]
    assert bullets == ["* models/a", "* models/b"]  # existing local paths are not linked


def test_base_not_repeated_in_models_merged():
    text = model_card("x\n", method="task_arithmetic", base_model="o/base", models=["o/base", "o/ft"], out_name="t")
    bullets = [line for line in section(text, "### Models Merged").splitlines() if line.startswith("* ")]
    assert bullets == ["* [o/ft](https://huggingface.co/o/ft)"]
    assert "[Task Arithmetic](https://arxiv.org/abs/2212.04089)" in text


def test_unknown_method_is_named_without_link():
    text = model_card("x\n", method="my_method", base_model=None, models=["o/a"], out_name="u")
    assert "the my_method merge method" in text


def test_passthrough_without_link():
    text = model_card("x\n", method="passthrough", base_model=None, models=["o/a"], out_name="p")
    assert "Passthrough merge method" in text
    assert "[Passthrough]" not in text


@pytest.mark.parametrize(
    "ref, expected",
    [
        ("meta-llama/Llama-3.1-8B", True),
        ("org/name@v1.0", True),
        ("Qwen/Qwen2.5-0.5B-Instruct", True),
        ("gpt2", False),  # no org: treated as local/ambiguous, never linked
        ("examples/models/base", False),  # more than one slash
        ("/abs/path", False),
        ("./rel/path", False),
        ("../up", False),
        ("org/", False),
        ("a/b/c", False),
        ("C:\\models\\x", False),
        ("org/na me", False),
        ("org/..", False),
    ],
)
def test_looks_like_hf_repo_by_shape(ref, expected, in_tmp):
    assert looks_like_hf_repo(ref) is expected


def test_existing_local_org_name_path_is_not_hf(in_tmp):
    assert looks_like_hf_repo("models/base")
    (in_tmp / "models" / "base").mkdir(parents=True)
    assert not looks_like_hf_repo("models/base")


def test_split_model_reference():
    assert split_model_reference("org/m@rev+org/lora@r2") == ("org/m", "org/lora")
    assert split_model_reference("org/m") == ("org/m", None)


def test_lora_reference_display():
    text = model_card("x\n", method="linear", base_model=None, models=["org/m+org/lora"], out_name="l")
    assert "* [org/m](https://huggingface.co/org/m) + [org/lora](https://huggingface.co/org/lora)" in text
    assert front_matter(text)["base_model"] == ["org/m"]


def test_revision_is_dropped_from_front_matter():
    text = model_card("x\n", method="linear", base_model=None, models=["org/m@main"], out_name="r")
    assert front_matter(text)["base_model"] == ["org/m"]


def test_write_model_card(tmp_path):
    out = tmp_path / "merged-model"
    write_model_card(out, TIES_CONFIG, method="ties", base_model="o/b", models=["o/a"])
    readme = (out / "README.md").read_text()
    assert "\n# merged-model\n" in readme
    assert (out / "mergekit_config.yml").read_text() == TIES_CONFIG


def test_card_is_deterministic():
    kw = dict(method="ties", base_model="o/b", models=["o/a", "o/c"], out_name="d")
    assert model_card(TIES_CONFIG, **kw) == model_card(TIES_CONFIG, **kw)


def test_module_does_not_import_hub():
    assert "huggingface_hub" not in vars(card_mod)
