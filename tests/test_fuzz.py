"""Fuzzing the parser and the reader: random and mutated configs, index files and safetensors
headers either work or raise MergefastError, never another exception."""

from __future__ import annotations

import json
import struct
import tempfile
from pathlib import Path

import pytest
import yaml
from helpers import fuzz_settings
from hypothesis import given
from hypothesis import strategies as st

from mergefast.config import parse_config
from mergefast.errors import MergefastError
from mergefast.io.reader import CheckpointReader, read_safetensors_header

pytestmark = pytest.mark.slow  # hypothesis runs each test on many examples

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.yml"))
EXAMPLE_DATA = [yaml.safe_load(p.read_text()) for p in EXAMPLES]
FUZZ = fuzz_settings(150)  # MERGEFAST_FUZZ_EXAMPLES=3000 hunts

KEYS = [
    "merge_method",
    "models",
    "slices",
    "sources",
    "model",
    "parameters",
    "layer_range",
    "base_model",
    "dtype",
    "out_dtype",
    "weight",
    "density",
    "t",
    "filter",
    "value",
    "normalize",
    "lambda",
    "scale",
    "tokenizer_source",
    "path",
    "revision",
    "name",
    "int8_mask",
    "rescale",
    "residual_weight",
    "epsilon",
]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-10, 10),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.sampled_from(KEYS),
    st.sampled_from(["ties", "linear", "slerp", "bf16"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=6)), inner, max_size=4),
    ),
    max_leaves=12,
)


def _paths(node, prefix=()):
    """Every path (tuple of keys/indices) into a nested dict/list structure."""
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, prefix + (i,))


def _get(node, path):
    for p in path:
        node = node[p]
    return node


@st.composite
def mutated_configs(draw):
    """An example config with a few random mutations: replace a value, rename/drop/add a key."""
    data = json.loads(json.dumps(draw(st.sampled_from(EXAMPLE_DATA))))
    for _ in range(draw(st.integers(1, 4))):
        paths = list(_paths(data))
        path = draw(st.sampled_from(paths))
        action = draw(st.sampled_from(["replace", "rename", "drop", "add"]))
        if not path:
            if action == "replace":
                data = draw(values)
            continue
        parent, key = _get(data, path[:-1]), path[-1]
        if not isinstance(parent, (dict, list)):
            continue
        if action == "replace":
            parent[key] = draw(values)
        elif action == "drop":
            del parent[key]
        elif action == "rename" and isinstance(parent, dict):
            parent[draw(st.one_of(st.sampled_from(KEYS), st.text(max_size=6)))] = parent.pop(key)
        elif action == "add" and isinstance(parent, dict):
            parent[draw(st.sampled_from(KEYS))] = draw(values)
        elif action == "add":
            parent.append(draw(values))
    return data


def _works_or_our_error(fn, *args):
    try:
        fn(*args)
    except MergefastError:
        pass


@FUZZ
@given(mutated_configs())
def test_mutated_configs(data):
    _works_or_our_error(parse_config, yaml.safe_dump(data, sort_keys=False), "fuzz.yml")


@FUZZ
@given(st.sampled_from(EXAMPLES), st.data())
def test_mutated_yaml_text(path, data):
    """Byte-level mutations of the example YAML text (syntax errors, odd tokens)."""
    text = path.read_text()
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(text)))
        j = data.draw(st.integers(i, min(len(text), i + 5)))
        text = text[:i] + data.draw(st.text(alphabet=":-[]{}&*!|>'\"#%@` \n\t,?0aZ", max_size=4)) + text[j:]
    _works_or_our_error(parse_config, text, "fuzz.yml")


@FUZZ
@given(values)
def test_random_configs(data):
    _works_or_our_error(parse_config, yaml.safe_dump({"merge_method": "linear", "models": data}), "fuzz.yml")


# -- safetensors headers and index files ---------------------------------------------------


@st.composite
def header_entries(draw):
    """A valid-looking entry (dtype, shape, offsets that fit) with up to two fields mutated."""
    dtype = draw(st.sampled_from(["BF16", "F16", "F32", "I64", "BOOL", "U8"]))
    shape = draw(st.lists(st.integers(0, 3), max_size=3))
    size = {"BF16": 2, "F16": 2, "F32": 4, "I64": 8, "BOOL": 1, "U8": 1}[dtype]
    for d in shape:
        size *= d
    entry = {"dtype": dtype, "shape": shape, "data_offsets": [0, size]}
    for _ in range(draw(st.integers(0, 2))):
        key = draw(st.sampled_from(["dtype", "shape", "data_offsets", "extra"]))
        choice = draw(st.integers(0, 3))
        if choice == 0:
            entry.pop(key, None)
        elif key == "shape":
            entry[key] = draw(
                st.lists(st.one_of(st.integers(-2, 2**40), st.floats(), st.booleans(), st.text(max_size=2)), max_size=3)
            )
        elif key == "data_offsets":
            entry[key] = draw(st.lists(st.one_of(st.integers(-8, 2**63), st.floats(), st.booleans()), max_size=3))
        elif key == "dtype":
            entry[key] = draw(st.one_of(st.sampled_from(["F8_E4M3", "F8_E5M2", "U64", "Q4", "", "bf16"]), values))
        else:
            entry[key] = draw(values)
    return entry


headers = st.dictionaries(
    st.one_of(st.text(max_size=8), st.just("__metadata__")),
    st.one_of(header_entries(), header_entries(), values),
    max_size=4,
)


@st.composite
def safetensors_files(draw):
    """(file bytes) from a random header: sometimes valid, often not; with mutations."""
    header = draw(headers)
    raw = json.dumps(header).encode() if draw(st.booleans()) else draw(st.binary(max_size=40))
    declared = len(raw) if draw(st.integers(0, 3)) else draw(st.integers(0, 2**64 - 1))
    blob = struct.pack("<Q", declared) + raw + draw(st.binary(max_size=64))
    if draw(st.booleans()) and blob:
        cut = draw(st.integers(0, len(blob)))
        blob = blob[:cut]
    return blob


@FUZZ
@given(safetensors_files())
def test_safetensors_headers(blob):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.safetensors"
        path.write_bytes(blob)
        _works_or_our_error(read_safetensors_header, path)

        def use_reader(folder):
            with CheckpointReader(folder) as reader:
                for name in reader.names():
                    reader.info(name)
                    reader.read(name)

        _works_or_our_error(use_reader, tmp)


@FUZZ
@given(
    st.one_of(
        st.fixed_dictionaries(
            {
                "weight_map": st.dictionaries(
                    st.text(max_size=6),
                    st.one_of(
                        st.sampled_from(
                            [
                                "model-00001-of-00001.safetensors",
                                "../x.safetensors",
                                "/etc/passwd",
                                "",
                                ".",
                                "sub/",
                                "model.safetensors.index.json",
                                "\x00",
                            ]
                        ),
                        st.text(max_size=10),
                        values,
                    ),
                    max_size=4,
                )
            }
        ),
        values,
    )
)
def test_index_files(index):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "m"
        folder.mkdir()
        blob = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
        (folder / "model-00001-of-00001.safetensors").write_bytes(struct.pack("<Q", len(blob)) + blob + b"\0" * 8)
        (folder / "sub").mkdir()
        (folder / "model.safetensors.index.json").write_text(json.dumps(index))

        def use_reader():
            with CheckpointReader(folder) as reader:
                for name in reader.names():
                    reader.read(name)

        _works_or_our_error(use_reader)
