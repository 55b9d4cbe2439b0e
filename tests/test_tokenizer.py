"""Tokenizer configs (mergekit 0.1.5 §5): output vocabulary, embedding permutation, padding,
vocabulary mismatches, chat templates and tied/untied heads, on tiny models written here.

Models (float32, 2 layers, hidden 16), all with the word-level tokenizer of make_models:
- base: 32 tokens (<unk> <s> </s> <pad> w0..w27);
- ft: base + noise, same vocabulary;
- chatml: 34 rows: base's 32 tokens + added specials <|im_start|> (32), <|im_end|> (33);
- big: 36 rows: <unk> <s> </s> <pad> w0..w31 (w28..w31 are ordinary tokens base lacks).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from make_models import make_tiny_llama, write_tokenizer
from safetensors.torch import load_file

from mergefast import merge
from mergefast.errors import ConfigError

SIZES = dict(hidden=16, intermediate=32, heads=2, kv_heads=1, layers=2, dtype=torch.float32)
EMBED, HEAD = "model.embed_tokens.weight", "lm_head.weight"


def add_special_tokens(folder: Path, tokens: list[str], first_id: int) -> None:
    """Append added special tokens with ids first_id.. to a make_models tokenizer."""
    tj = json.loads((folder / "tokenizer.json").read_text())
    tc = json.loads((folder / "tokenizer_config.json").read_text())
    for i, tok in enumerate(tokens, start=first_id):
        entry = {
            "id": i,
            "content": tok,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        tj["added_tokens"].append(entry)
        tc["added_tokens_decoder"][str(i)] = {k: v for k, v in entry.items() if k != "id"}
    (folder / "tokenizer.json").write_text(json.dumps(tj))
    (folder / "tokenizer_config.json").write_text(json.dumps(tc))


def write_vocabularies(root: Path, names=("base", "ft", "chatml", "big"), dtype=torch.float32) -> dict[str, Path]:
    """The models base, ft, chatml and big of the module docstring under `root`, named `names`
    (also tests/fuzz_configs.py's vocabulary family); name -> folder."""
    sizes = {**SIZES, "dtype": dtype}
    base_name, ft, chatml, big = names
    base = make_tiny_llama(root / base_name, seed=0, vocab=32, **sizes)
    make_tiny_llama(root / ft, seed=1, base=base, vocab=32, **sizes)
    make_tiny_llama(root / chatml, seed=2, vocab=34, **sizes)
    write_tokenizer(root / chatml, 32)
    add_special_tokens(root / chatml, ["<|im_start|>", "<|im_end|>"], 32)
    make_tiny_llama(root / big, seed=3, vocab=36, **sizes)
    return {name: root / name for name in names}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tokzoo")
    write_vocabularies(root)
    tied = make_tiny_llama(root / "tied", seed=4, vocab=32, tie_word_embeddings=True, **SIZES)
    make_tiny_llama(root / "tied2", seed=5, base=tied, vocab=32, tie_word_embeddings=True, **SIZES)
    return {p.name: p for p in root.iterdir()}


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def run(zoo, tmp_path, body: str, *, models=("base", "chatml"), weights_=None, name="out", **options) -> Path:
    weights_ = weights_ or [0.5] * len(models)
    entries = "".join(f"  - model: {zoo[m]}\n    parameters: {{weight: {w}}}\n" for m, w in zip(models, weights_))
    text = f"merge_method: linear\nbase_model: {zoo[models[0]]}\nmodels:\n{entries}dtype: float32\n{body}"
    out = tmp_path / name
    merge(text, str(out), quiet=True, **options)
    return out


def out_vocab(out: Path) -> dict[str, int]:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(out)).get_vocab()


def config_of(out: Path) -> dict:
    return json.loads((out / "config.json").read_text())


# -- no tokenizer config / plain copies ---------------------------------------------------


def test_no_tokenizer_config_copies_base_tokenizer(zoo, tmp_path):
    out = run(zoo, tmp_path, "", models=("base", "ft"))
    assert (out / "tokenizer.json").read_bytes() == (zoo["base"] / "tokenizer.json").read_bytes()
    assert config_of(out)["vocab_size"] == 32


# every merged model has the same vocabulary: each of these is the base's, whose files are copied
SAME_VOCAB_SOURCES = [
    "tokenizer_source: base\n",
    "tokenizer_source: union\n",
    "tokenizer: {source: union}\n",
    "tokenizer: {source: base}\n",
    "tokenizer: {source: FT}\n",
]


@pytest.mark.parametrize("body", SAME_VOCAB_SOURCES, ids=["base", "union", "block-union", "block-base", "block-model"])
def test_same_vocab_is_a_plain_copy(zoo, tmp_path, body):
    out = run(zoo, tmp_path, body.replace("FT", str(zoo["ft"])), models=("base", "ft"))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert (out / name).read_bytes() == (zoo["base"] / name).read_bytes()
    assert config_of(out)["vocab_size"] == 32
    a, b, m = weights(zoo["base"]), weights(zoo["ft"]), weights(out)
    torch.testing.assert_close(m[EMBED], 0.5 * a[EMBED] + 0.5 * b[EMBED])


def test_union_of_one_size_but_other_ids_is_built(zoo, tmp_path):
    """Two words swapped in ft's table: the same size, not the same vocabulary, so the union
    is built and ft's rows follow their tokens."""
    import shutil

    swapped = tmp_path / "swapped"
    shutil.copytree(zoo["ft"], swapped)
    tj = json.loads((swapped / "tokenizer.json").read_text())
    vocab = tj["model"]["vocab"]
    vocab["w0"], vocab["w1"] = vocab["w1"], vocab["w0"]
    (swapped / "tokenizer.json").write_text(json.dumps(tj))
    zoo = {**zoo, "swapped": swapped}
    out = run(zoo, tmp_path, "tokenizer_source: union\n", models=("base", "swapped"))
    vocab = out_vocab(out)
    assert len(vocab) == 32
    a, b, m = weights(zoo["base"]), weights(swapped), weights(out)
    w0, w1 = vocab["w0"], vocab["w1"]
    order = list(range(32))
    order[w0], order[w1] = w1, w0  # swapped's rows in the output's (the base's) token order
    for name in (EMBED, HEAD):
        torch.testing.assert_close(m[name], 0.5 * a[name] + 0.5 * b[name][order])


def test_vocab_mismatch_without_tokenizer_config_is_one_line_error(zoo, tmp_path):
    with pytest.raises(ConfigError) as err:
        run(zoo, tmp_path, "")
    message = str(err.value)
    assert "\n" not in message
    assert "different vocabulary sizes" in message and "tokenizer_source: union" in message
    assert "--unsafe-truncate-embeddings" in message and "32" in message and "34" in message
    assert not (tmp_path / "out").exists()


def test_unsafe_truncate_embeddings(zoo, tmp_path):
    out = run(zoo, tmp_path, "", unsafe_truncate_embeddings=True)
    a, c, m = weights(zoo["base"]), weights(zoo["chatml"]), weights(out)
    for name in (EMBED, HEAD):
        assert m[name].shape == (32, 16)
        torch.testing.assert_close(m[name], 0.5 * a[name] + 0.5 * c[name][:32])
    assert config_of(out)["vocab_size"] == 32


# -- built tokenizers -----------------------------------------------------------------------


def test_source_base_with_different_vocab(zoo, tmp_path):
    out = run(zoo, tmp_path, "tokenizer_source: base\n")
    vocab = out_vocab(out)
    assert len(vocab) == 32 and "<|im_start|>" not in vocab
    a, c, m = weights(zoo["base"]), weights(zoo["chatml"]), weights(out)
    torch.testing.assert_close(m[EMBED], 0.5 * a[EMBED] + 0.5 * c[EMBED][:32])
    assert config_of(out)["vocab_size"] == 32


def test_source_base_without_base_model_is_the_first_models(zoo, tmp_path):
    """mergekit takes an arbitrary model's tokenizer there; mergefast the first model's, as
    without a tokenizer config (it once rejected the config)."""

    def merged(first, second, name):
        text = (
            f"merge_method: linear\nmodels:\n  - model: {zoo[first]}\n    parameters: {{weight: 0.5}}\n"
            f"  - model: {zoo[second]}\n    parameters: {{weight: 0.5}}\ndtype: float32\n"
            "tokenizer_source: base\n"
        )
        merge(text, str(tmp_path / name), quiet=True)
        return tmp_path / name

    out = merged("ft", "base", "copy")
    assert (out / "tokenizer.json").read_bytes() == (zoo["ft"] / "tokenizer.json").read_bytes()
    out = merged("chatml", "base", "built")
    vocab = out_vocab(out)
    assert len(vocab) == 34 and vocab["<|im_start|>"] == 32
    a, c, m = weights(zoo["base"]), weights(zoo["chatml"]), weights(out)
    torch.testing.assert_close(m[EMBED][:32], 0.5 * a[EMBED] + 0.5 * c[EMBED][:32])
    torch.testing.assert_close(m[EMBED][32:], c[EMBED][32:])  # only chatml has them
    assert config_of(out)["vocab_size"] == 34


def test_union_adds_tokens_and_picks_rows(zoo, tmp_path):
    out = run(zoo, tmp_path, "tokenizer_source: union\n", models=("base", "chatml", "big"), weights_=[0.25, 0.5, 0.25])
    vocab = out_vocab(out)
    # base's 32, the ordinary words only `big` has, then chatml's specials
    assert len(vocab) == 38
    assert [vocab[f"w{i}"] for i in range(28, 32)] == [32, 33, 34, 35]
    assert vocab["<|im_start|>"] == 36 and vocab["<|im_end|>"] == 37
    a, c, b, m = weights(zoo["base"]), weights(zoo["chatml"]), weights(zoo["big"]), weights(out)
    for name in (EMBED, HEAD):
        got = m[name]
        assert got.shape == (38, 16)
        # shared tokens: every model's own row
        torch.testing.assert_close(got[:32], 0.25 * a[name][:32] + 0.5 * c[name][:32] + 0.25 * b[name][:32])
        # w28..w31 only in big: every model takes big's row (ids 32..35 in big)
        torch.testing.assert_close(got[32:36], b[name][32:36])
        # the chatml specials only in chatml (ids 32, 33 there)
        torch.testing.assert_close(got[36:38], c[name][32:34])
    assert config_of(out)["vocab_size"] == 38


def test_union_takes_a_models_added_definition_over_anothers_ordinary_token(zoo, tmp_path):
    """w28 is an ordinary token of `big` and an added special token of `spec`: the union adds it
    as the special token (mergekit's priority); the base's own w0 stays ordinary although
    `spec` also defines it as special."""
    from transformers import AutoTokenizer

    spec = tmp_path / "spec"
    make_tiny_llama(spec, seed=7, vocab=34, **SIZES)
    write_tokenizer(spec, 32)
    add_special_tokens(spec, ["w28", "w0"], 32)
    zoo = {**zoo, "spec": spec}
    out = run(zoo, tmp_path, "tokenizer_source: union\n", models=("base", "big", "spec"), weights_=[0.4, 0.3, 0.3])
    tok = AutoTokenizer.from_pretrained(str(out))
    defs = {str(t): t for t in tok.added_tokens_decoder.values()}
    assert defs["w28"].special and "w0" not in defs
    assert tok.tokenize("w0") == ["w0"]
    vocab, b, sp, m = tok.get_vocab(), weights(zoo["big"]), weights(spec), weights(out)
    # w28 in big (id 32) and spec (id 32), not in the base: the mean of their rows
    torch.testing.assert_close(m[EMBED][vocab["w28"]], (b[EMBED][32] + sp[EMBED][32]) / 2)


def test_union_sees_a_token_declared_only_in_tokenizer_config(zoo, tmp_path):
    """Equal tokenizer.json files, 34 rows for 32 tokens; `x` declares <x> only in its
    tokenizer_config.json (transformers adds it at id 32 on load): not a plain copy, the union
    has <x> with x's row."""
    base, x = tmp_path / "spare", tmp_path / "x"
    make_tiny_llama(base, seed=8, vocab=34, **SIZES)
    make_tiny_llama(x, seed=9, vocab=34, **SIZES)
    for folder in (base, x):
        write_tokenizer(folder, 32)
    cfg = json.loads((x / "tokenizer_config.json").read_text())
    (x / "tokenizer_config.json").write_text(json.dumps({**cfg, "extra_special_tokens": ["<x>"]}))
    out = run({**zoo, "spare": base, "x": x}, tmp_path, "tokenizer_source: union\n", models=("spare", "x"))
    vocab = out_vocab(out)
    assert vocab["<x>"] == 32 and config_of(out)["vocab_size"] == 33
    torch.testing.assert_close(weights(out)[EMBED][32], weights(x)[EMBED][32])


def test_union_with_a_model_without_tokenizer_files_says_so(zoo, tmp_path):
    bare = tmp_path / "bare"
    make_tiny_llama(bare, seed=10, vocab=32, **SIZES)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (bare / name).unlink(missing_ok=True)
    with pytest.raises(ConfigError, match="has no tokenizer files"):
        run({**zoo, "bare": bare}, tmp_path, "tokenizer_source: union\n", models=("base", "bare"))


def test_tokenizer_block_defaults_to_union_and_mean_rule(zoo, tmp_path):
    # no base among the models: tokens in two models (not the base) get the mean of their rows
    text = (
        f"merge_method: linear\nmodels:\n  - model: {zoo['chatml']}\n    parameters: {{weight: 1.0}}\n"
        f"  - model: {zoo['big']}\n    parameters: {{weight: 0.0}}\n"
        f"  - model: {zoo['base']}\n    parameters: {{weight: 0.0}}\n"
        "dtype: float32\ntokenizer: {}\n"
    )
    out = tmp_path / "out"
    merge(text, str(out), quiet=True)
    vocab = out_vocab(out)
    c, b, m = weights(zoo["chatml"]), weights(zoo["big"]), weights(out)
    assert len(vocab) == 38  # chatml's 34 (base of the union: first model), w28..w31
    assert vocab["<|im_start|>"] == 32 and vocab["w28"] == 34
    # weight 1 on chatml: rows are chatml's own where it has the token, else the default,
    # here "only in big" -> big's row
    torch.testing.assert_close(m[EMBED][:34], c[EMBED])
    torch.testing.assert_close(m[EMBED][34:], b[EMBED][32:36])


def test_source_model(zoo, tmp_path):
    out = run(zoo, tmp_path, f"tokenizer_source: {zoo['chatml']}\n", models=("base", "ft"))
    vocab = out_vocab(out)
    assert len(vocab) == 34 and vocab["<|im_end|>"] == 33
    a, f, m = weights(zoo["base"]), weights(zoo["ft"]), weights(out)
    torch.testing.assert_close(m[EMBED][:32], 0.5 * a[EMBED] + 0.5 * f[EMBED])
    # in no merged model: zeros (with a warning)
    assert torch.count_nonzero(m[EMBED][32:]) == 0


def test_tokens_force_model_token_and_zero(zoo, tmp_path):
    body = (
        "tokenizer:\n  source: union\n  tokens:\n"
        f"    w3: {{source: {zoo['chatml']}, force: true}}\n"
        f"    w4: {{source: {{kind: model_token, model: {zoo['base']}, token_id: 10}}}}\n"
        f"    w5: {{source: {{kind: model_token, model: {zoo['chatml']}, token: '<|im_end|>'}}, force: true}}\n"
        "    w6: {source: {kind: zero}, force: true}\n"
        "    <|im_start|>: {source: {kind: zero}}\n"
        "    brand_new: {}\n"
    )
    out = run(zoo, tmp_path, body)
    vocab = out_vocab(out)
    assert vocab["brand_new"] == 34 and len(vocab) == 35
    a, c, m = weights(zoo["base"]), weights(zoo["chatml"]), weights(out)
    e = m[EMBED]
    w3, w4, w5, w6 = (vocab[f"w{i}"] for i in (3, 4, 5, 6))
    torch.testing.assert_close(e[w3], c[EMBED][w3])  # forced: every model takes chatml's row
    torch.testing.assert_close(e[w4], 0.5 * a[EMBED][w4] + 0.5 * c[EMBED][w4])  # not forced: own rows
    torch.testing.assert_close(e[w5], c[EMBED][33])  # forced to chatml's <|im_end|> row
    assert torch.count_nonzero(e[w6]) == 0
    # not forced: chatml keeps its own row, base (lacking it) takes the explicit zero default
    torch.testing.assert_close(e[vocab["<|im_start|>"]], 0.5 * c[EMBED][32])
    assert torch.count_nonzero(e[34]) == 0  # a new token no model has


def test_pad_to_multiple_of(zoo, tmp_path):
    out = run(zoo, tmp_path, "tokenizer:\n  source: union\n  pad_to_multiple_of: 16\n")
    m = weights(out)
    assert config_of(out)["vocab_size"] == 48
    assert len(out_vocab(out)) == 34
    for name in (EMBED, HEAD):
        assert m[name].shape == (48, 16)
        expected = m[name][:34].mean(dim=0)  # linear merge of per-model means = mean of the merge
        torch.testing.assert_close(m[name][34:], expected.expand(14, 16), rtol=1e-5, atol=1e-6)


def test_padding_rows_of_a_bf16_model_are_float32_means(zoo, tmp_path):
    """With dtype: float32 a bf16 model's padding rows are the float32 mean of its rows, as
    mergekit (which casts inputs to dtype first) makes them; they were rounded to bf16."""
    chat16 = tmp_path / "chat16"
    make_tiny_llama(chat16, seed=2, vocab=34, **{**SIZES, "dtype": torch.bfloat16})
    write_tokenizer(chat16, 32)
    add_special_tokens(chat16, ["<|im_start|>", "<|im_end|>"], 32)
    text = (
        f"merge_method: linear\nmodels:\n  - model: {zoo['base']}\n    parameters: {{weight: 0.5}}\n"
        f"  - model: {chat16}\n    parameters: {{weight: 0.5}}\ndtype: float32\n"
        "tokenizer:\n  source: union\n  pad_to_multiple_of: 16\n"
    )
    merge(text, str(tmp_path / "out"), quiet=True)
    a, c, m = weights(zoo["base"]), weights(chat16), weights(tmp_path / "out")
    for name in (EMBED, HEAD):
        c32 = c[name].float()
        aligned = torch.cat([a[name], c32[32:]])  # base lacks the two chat tokens: chat16's rows
        pad_a, pad_c = aligned.mean(dim=0), c32.mean(dim=0)
        assert m[name].dtype == torch.float32 and m[name].shape == (48, 16)
        torch.testing.assert_close(m[name][34:], (0.5 * pad_a + 0.5 * pad_c).expand(14, 16), rtol=1e-6, atol=1e-7)
        assert not torch.equal(pad_c, pad_c.bfloat16().float())  # the rounding would show


def test_output_loads_in_transformers(zoo, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = run(zoo, tmp_path, "tokenizer:\n  pad_to_multiple_of: 8\nchat_template: chatml\n")
    model = AutoModelForCausalLM.from_pretrained(str(out))
    tok = AutoTokenizer.from_pretrained(str(out))
    ids = tok("w1 w2 <|im_start|>", return_tensors="pt").input_ids
    assert ids[0, -1].item() == 32
    logits = model(ids).logits
    assert logits.shape == (1, 3, 40) and torch.isfinite(logits).all()
    text = tok.apply_chat_template([{"role": "user", "content": "w1"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\nw1<|im_end|>\n<|im_start|>assistant\n"


# -- chat templates -------------------------------------------------------------------------


def test_chat_template_literal_on_copied_tokenizer(zoo, tmp_path):
    from transformers import AutoTokenizer

    template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    out = run(zoo, tmp_path, f"chat_template: {json.dumps(template)}\n", models=("base", "ft"))
    tok = AutoTokenizer.from_pretrained(str(out))
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == "[user] hi\n"


def test_chat_template_auto_and_builtins(zoo, tmp_path):
    from mergefast.tokenizer.templates import BUILTIN_TEMPLATES, resolve_chat_template

    assert set(BUILTIN_TEMPLATES) == {"alpaca", "chatml", "llama3", "mistral", "exaone"}
    out = run(zoo, tmp_path, "chat_template: llama3\n", models=("base", "ft"))
    assert (out / "chat_template.jinja").read_text() == BUILTIN_TEMPLATES["llama3"]
    # auto: the most common template among the inputs (here: the one `out` now has)
    assert resolve_chat_template("auto", [zoo["base"], out, out]) == BUILTIN_TEMPLATES["llama3"]
    assert resolve_chat_template("auto", [zoo["base"]]) is None


def test_chat_template_auto_compares_without_surrounding_whitespace(tmp_path):
    """One template saved as chat_template.jinja (with a trailing newline) and in
    tokenizer_config.json (without) counts once per model, as in mergekit: 3 against 2."""
    from mergefast.tokenizer.templates import resolve_chat_template

    t, u = "{% for m in messages %}T{{ m['content'] }}{% endfor %}", "{% for m in messages %}U{% endfor %}"
    folders = [tmp_path / f"m{i}" for i in range(5)]
    for f in folders:
        f.mkdir()
    (folders[0] / "chat_template.jinja").write_text(t + "\n")
    (folders[1] / "chat_template.jinja").write_text(t)
    (folders[2] / "tokenizer_config.json").write_text(json.dumps({"chat_template": t + "\n\n"}))
    (folders[3] / "chat_template.jinja").write_text(u)
    (folders[4] / "chat_template.jinja").write_text(u)
    assert resolve_chat_template("auto", [folders[3], folders[4], *folders[:3]]) == t


@pytest.mark.parametrize("value", ["chatmlx", "{{ short }}", "a long string without braces at all"])
def test_chat_template_invalid(zoo, tmp_path, value):
    with pytest.raises(ConfigError, match="chat_template"):
        run(zoo, tmp_path, f"chat_template: {json.dumps(value)}\n", models=("base", "ft"))


def test_config_errors(zoo, tmp_path):
    with pytest.raises(ConfigError, match="not both"):
        run(zoo, tmp_path, "tokenizer_source: union\ntokenizer: {}\n")
    with pytest.raises(ConfigError, match="not one of the merged models"):
        run(zoo, tmp_path, f"tokenizer:\n  tokens:\n    w1: {{source: {zoo['big']}}}\n")
    with pytest.raises(ConfigError, match="has no token"):
        run(
            zoo,
            tmp_path,
            f"tokenizer:\n  tokens:\n    w1: {{source: {{kind: model_token, model: {zoo['base']}, token: nope}}}}\n",
        )


# -- tied embeddings --------------------------------------------------------------------------


def test_tied_models_get_no_lm_head(zoo, tmp_path):
    from transformers import AutoModelForCausalLM

    out = run(zoo, tmp_path, "", models=("tied", "tied2"))
    assert HEAD not in weights(out)
    assert config_of(out)["tie_word_embeddings"] is True
    AutoModelForCausalLM.from_pretrained(str(out))


def test_mixed_tied_and_untied_heads(zoo, tmp_path):
    from transformers import AutoModelForCausalLM

    out = run(zoo, tmp_path, "", models=("tied", "base"))  # donor (base_model) is the tied one
    t, a, m = weights(zoo["tied"]), weights(zoo["base"]), weights(out)
    torch.testing.assert_close(m[HEAD], 0.5 * t[EMBED] + 0.5 * a[HEAD])
    assert config_of(out)["tie_word_embeddings"] is False
    model = AutoModelForCausalLM.from_pretrained(str(out))
    torch.testing.assert_close(model.lm_head.weight.detach(), m[HEAD])
    torch.testing.assert_close(model.model.embed_tokens.weight.detach(), m[EMBED])


# -- more paths ---------------------------------------------------------------------------------


@pytest.mark.slow  # a subprocess
@pytest.mark.parametrize("source", ["base", "union"])
def test_copy_path_needs_no_transformers(zoo, tmp_path, source):
    import subprocess
    import sys

    config = (
        f"merge_method: linear\nbase_model: {zoo['base']}\nmodels:\n  - model: {zoo['base']}\n"
        f"  - model: {zoo['ft']}\nparameters: {{weight: 0.5}}\ntokenizer_source: {source}\n"
    )
    code = (
        "import sys; sys.modules['transformers'] = None; sys.modules['tokenizers'] = None\n"
        "from mergefast import merge\n"
        f"merge({config!r}, {str(tmp_path / 'out')!r}, quiet=True)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parent.parent)
    assert (tmp_path / "out" / "tokenizer.json").read_bytes() == (zoo["base"] / "tokenizer.json").read_bytes()


@pytest.mark.parametrize("body", ["tokenizer: {source: base}", "tokenizer_source: base", "tokenizer_source: union"])
def test_base_tokenizer_is_stripped_to_its_model_vocab(zoo, tmp_path, body):
    import shutil

    surplus = tmp_path / "surplus"
    shutil.copytree(zoo["base"], surplus)
    add_special_tokens(surplus, ["<extra_0>", "<extra_1>"], 32)  # ids past the 32 embedding rows
    text = (
        f"merge_method: linear\nbase_model: {surplus}\nmodels:\n  - model: {surplus}\n"
        f"  - model: {zoo['ft']}\nparameters: {{weight: 0.5}}\ndtype: float32\n{body}\n"
    )
    merge(text, str(tmp_path / "out"), quiet=True)
    vocab = out_vocab(tmp_path / "out")
    assert len(vocab) == 32 and "<extra_0>" not in vocab
    assert weights(tmp_path / "out")[EMBED].shape == (32, 16)


def test_slices_with_union(zoo, tmp_path):
    text = (
        f"merge_method: passthrough\nslices:\n  - sources:\n      - {{model: {zoo['chatml']}, layer_range: [0, 1]}}\n"
        f"  - sources:\n      - {{model: {zoo['base']}, layer_range: [1, 2]}}\ntokenizer_source: union\n"
    )
    merge(text, str(tmp_path / "out"), quiet=True)
    c, a, m = weights(zoo["chatml"]), weights(zoo["base"]), weights(tmp_path / "out")
    torch.testing.assert_close(m[EMBED], c[EMBED])  # first slice: chatml, 34 rows, union = 34 tokens
    # last slice: base only; the rules count the models of each tensor, so the specials (in no
    # input of lm_head) are zeros
    torch.testing.assert_close(m[HEAD], torch.cat([a[HEAD], torch.zeros(2, 16)]))
    assert config_of(tmp_path / "out")["vocab_size"] == 34


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_union_on_cuda_matches_cpu(zoo, tmp_path):
    body = f"tokenizer:\n  pad_to_multiple_of: 16\n  tokens:\n    w3: {{source: {zoo['chatml']}, force: true}}\n"
    cpu = weights(run(zoo, tmp_path, body, models=("base", "chatml", "big"), name="cpu"))
    gpu = weights(run(zoo, tmp_path, body, models=("base", "chatml", "big"), name="gpu", device="cuda"))
    for name in (EMBED, HEAD):
        torch.testing.assert_close(gpu[name], cpu[name])
