"""Fuzzing Hub inputs: random configs of every method (tests/fuzz_configs.py) merged from
local folders and from the same models as repos of a fake Hub (tests/fake_hub.py), downloaded
or streamed (--stream-inputs), on either CPU engine. The model folders are byte-identical
but for the files that name the inputs (the model card and mergekit_config.yml), or both
merges refuse with the same exit code."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from fake_hub import FakeHub, use_fake_hub
from fuzz_checks import NAMES_THE_INPUTS, merge_on
from fuzz_configs import ARCHITECTURES, FINE_TUNES, LAYERS, METHODS, configs, names_a_model, to_yaml
from helpers import fuzz_settings, scratch
from hypothesis import given
from hypothesis import strategies as st

from mergefast import kernels

pytestmark = [
    pytest.mark.slow,  # each example is two whole merges, one over HTTP
    pytest.mark.skipif(kernels.backend("cpu") != "cpu-ext", reason="no C++ kernel library"),
    pytest.mark.skipif(ARCHITECTURES, reason="the Hub fuzz merges the Llama families only"),
]


@pytest.fixture(scope="module")
def hub(fuzz_families, tmp_path_factory):
    """A fake Hub serving every model of the families the configs draw (LAYERS) as
    `org/<family>-<model>`."""
    fake = FakeHub().start()
    for family in LAYERS:
        for name, folder in fuzz_families[family].items():
            fake.add_repo(f"org/{family}-{name}", folder)
    with pytest.MonkeyPatch.context() as m:
        use_fake_hub(m, fake, tmp_path_factory.mktemp("hf"))
        yield fake
    fake.stop()


def _repos(config: dict, family: str) -> dict:
    """`config` with its model names turned into the Hub repos of `family`."""
    if isinstance(config, list):
        return [_repos(v, family) for v in config]
    if not isinstance(config, dict):
        return config
    named = {k: v for k, v in config.items() if names_a_model(k, v) and v in ("base", *FINE_TUNES)}
    return {k: (f"org/{family}-{v}" if k in named else _repos(v, family)) for k, v in config.items()}


def _merge(config: dict, root: Path, name: str, engine: str, *options: str):
    """fuzz_checks.merge_on of `config` into root/name; (exit code, the output's files but
    those naming the inputs, by name: none for a refusal, whose message names the inputs)."""
    (root / f"{name}.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    code, files = merge_on(root / f"{name}.yml", root / name, engine, options)
    return code, {} if code else {k: v for k, v in files.items() if k not in NAMES_THE_INPUTS}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_hub_merges_are_the_local_ones(method, fuzz_families, hub, tmp_path_factory):
    _hub_merge_is_the_local_one(method, fuzz_families, hub, tmp_path_factory)


@fuzz_settings(3)  # each is a Hub merge: ~0.3 s on 2 CPUs
@given(example=st.data(), stream=st.booleans(), torch_free=st.booleans())
def _hub_merge_is_the_local_one(method, fuzz_families, hub, tmp_path_factory, example, stream, torch_free):
    """A random config of `method` merges from the Hub as from the local folders."""
    family, config = example.draw(configs(method))
    engine = "read" if torch_free else "torch"  # "read": the real rule, nothing patched
    with scratch(tmp_path_factory, "hub-merge") as root:
        local = _merge(yaml.safe_load(to_yaml(config, fuzz_families[family])), root, "local", engine)
        # --stream-inputs refuses pickles not in the cache yet (io/hub_fetch.py): the order of
        # the examples would decide
        options = ("--stream-inputs",) if stream and family != "bf16-bin" else ()
        remote = _merge(_repos(config, family), root, "hub", engine, *options)
        assert remote[0] == local[0], (remote[0], local[0])
        assert remote[1].keys() == local[1].keys()
        different = [k for k in local[1] if remote[1][k] != local[1][k]]
        assert not different, different
