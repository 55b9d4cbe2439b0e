"""Nothing from a model folder ever runs: a tokenizer (or config) that needs custom code via
`auto_map` is refused with one ConfigError line, even with "y" on stdin for transformers'
"Do you wish to run the custom code? [y/N]" prompt and with --trust-remote-code.

Each merge is fed "y\\n" on stdin, as a user at a terminal would answer the prompt: in this
process (helpers.run_cli), and one case in a fresh `python -m mergefast` process as well.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import run_cli, run_cli_process
from make_models import make_tiny_llama

pytest.importorskip("transformers")

SIZES = dict(hidden=16, intermediate=32, heads=2, kv_heads=1, layers=2, vocab=32, dtype=torch.float32)


def _side_effect(marker: Path) -> str:
    """Python source that leaves `marker` behind when it is imported."""
    return f"open({str(marker)!r}, 'w').write('pwned')\n"


def make_evil_tokenizer(folder: Path, marker: Path) -> None:
    """tokenizer_config.json names a tokenizer class only `tokenization_evil.py` defines."""
    path = folder / "tokenizer_config.json"
    tc = json.loads(path.read_text())
    tc["tokenizer_class"] = "EvilTokenizer"
    tc["auto_map"] = {"AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]}
    path.write_text(json.dumps(tc))
    (folder / "tokenization_evil.py").write_text(
        _side_effect(marker) + "from transformers import PreTrainedTokenizerFast\n\n\n"
        "class EvilTokenizer(PreTrainedTokenizerFast):\n    pass\n"
    )


def make_evil_config(folder: Path, marker: Path) -> None:
    """config.json's model type exists only in `configuration_evil.py`, and the tokenizer
    config names no class, so transformers would load the config (and its code) to find one."""
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config["model_type"] = "evil"
    config["auto_map"] = {"AutoConfig": "configuration_evil.EvilConfig"}
    path.write_text(json.dumps(config))
    tc_path = folder / "tokenizer_config.json"
    tc = json.loads(tc_path.read_text())
    del tc["tokenizer_class"]
    tc_path.write_text(json.dumps(tc))
    (folder / "configuration_evil.py").write_text(
        _side_effect(marker) + "from transformers import PretrainedConfig\n\n\n"
        "class EvilConfig(PretrainedConfig):\n    model_type = 'evil'\n"
    )


def merge(tmp_path: Path, good: Path, evil: Path, tokenizer: str, *extra: str, process=False):
    """`mergefast yaml` of good + evil with "y" on stdin, in this process or (`process`) in a
    fresh one; (exit code, stdout, stderr)."""
    config = tmp_path / "config.yml"
    config.write_text(
        f"merge_method: linear\nbase_model: {good}\nmodels:\n  - model: {good}\n"
        f"  - model: {evil}\nparameters: {{weight: 0.5}}\ndtype: float32\n{tokenizer}"
    )
    args = ("yaml", config, tmp_path / "out", "--quiet", *extra)
    if process:
        proc = run_cli_process(*args, input="y\n")
        return proc.returncode, proc.stdout, proc.stderr
    result = run_cli(*args, input="y\n")
    return result.exit_code, result.stdout, result.stderr


def swap_two_tokens(folder: Path) -> None:
    """Swap the ids of two words in tokenizer.json: the same size, another vocabulary."""
    path = folder / "tokenizer.json"
    tj = json.loads(path.read_text())
    vocab = tj["model"]["vocab"]
    vocab["w0"], vocab["w1"] = vocab["w1"], vocab["w0"]
    path.write_text(json.dumps(tj))


@pytest.fixture()
def models(tmp_path) -> tuple[Path, Path, Path]:
    """(good model, evil model, marker path the evil code would write). Their vocabularies
    differ: with equal ones a tokenizer config copies the donor's files and loads no tokenizer
    (tests/test_tokenizer.py), so the evil one would never be looked at."""
    base = make_tiny_llama(tmp_path / "good", seed=0, **SIZES)
    make_tiny_llama(tmp_path / "evil", seed=1, base=base, **SIZES)
    swap_two_tokens(tmp_path / "evil")
    return tmp_path / "good", tmp_path / "evil", tmp_path / "PWNED"


TOKENIZER_BLOCKS = ["tokenizer_source: union\n", "tokenizer:\n  source: base\n", "tokenizer:\n  source: {evil}\n"]


def assert_refused(ran, tmp_path: Path, evil: Path) -> None:
    """The merge (exit code, stdout, stderr) failed with exactly one ConfigError line naming
    the model and the way out."""
    code, stdout, stderr = ran
    assert code == 2, stderr
    assert "Traceback" not in stderr and "[y/N]" not in stdout + stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mergefast: error:"), stderr
    assert str(evil) in lines[0] and "custom code" in lines[0] and "tokenizer_source" in lines[0]
    assert "trust_remote_code=True" not in lines[0]
    assert not (tmp_path / "out").exists()


# the flag is tried with one block; that case runs in a fresh process too (~4 s)
@pytest.mark.parametrize(
    "block, extra",
    [
        (TOKENIZER_BLOCKS[0], ()),
        (TOKENIZER_BLOCKS[0], ("--trust-remote-code",)),
        (TOKENIZER_BLOCKS[1], ()),
        (TOKENIZER_BLOCKS[2], ()),
    ],
    ids=["union", "union-trust-flag", "block", "source-model"],
)
def test_custom_tokenizer_code_never_runs(models, tmp_path, block, extra):
    good, evil, marker = models
    make_evil_tokenizer(evil, marker)
    ran = merge(tmp_path, good, evil, block.format(evil=evil), *extra)
    assert not marker.exists(), "code from a model folder ran"
    assert_refused(ran, tmp_path, evil)


@pytest.mark.slow
def test_custom_tokenizer_code_never_runs_in_a_fresh_process(models, tmp_path):
    """As a user at a terminal: `python -m mergefast` answered "y" with --trust-remote-code."""
    good, evil, marker = models
    make_evil_tokenizer(evil, marker)
    ran = merge(tmp_path, good, evil, TOKENIZER_BLOCKS[0], "--trust-remote-code", process=True)
    assert not marker.exists(), "code from a model folder ran"
    assert_refused(ran, tmp_path, evil)


@pytest.mark.parametrize("block", TOKENIZER_BLOCKS, ids=["union", "block", "source-model"])
def test_custom_config_code_never_runs(models, tmp_path, block):
    """Whether transformers can then load the tokenizer from tokenizer.json alone depends on
    its version: either the merge succeeds or it is refused cleanly; the code never runs."""
    good, evil, marker = models
    make_evil_config(evil, marker)
    ran = merge(tmp_path, good, evil, block.format(evil=evil), "--trust-remote-code")
    assert not marker.exists(), "code from a model folder ran"
    if ran[0] == 0:
        assert (tmp_path / "out" / "tokenizer.json").is_file()
    else:
        assert_refused(ran, tmp_path, evil)
