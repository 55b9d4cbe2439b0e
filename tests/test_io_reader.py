import json
import os
import threading

import pytest
import torch
from checkpoints import FORMATS, random_tensors, write_checkpoint
from safetensors.torch import save_file

from mergefast.errors import ModelError
from mergefast.io import reader as reader_mod
from mergefast.io.reader import CheckpointReader, MissingTensorError, read_safetensors_header

DTYPES = [torch.bfloat16, torch.float16, torch.float32, torch.float64, torch.int64]
SHAPES = {
    "model.embed_tokens.weight": (11, 6),
    "model.layers.0.self_attn.q_proj.weight": (6, 6),
    "model.layers.0.input_layernorm.weight": (6,),
    "model.norm.weight": (6,),
    "lm_head.weight": (11, 6),
    "scalar": (),
    "empty": (0, 3),
}


def _tensors(dtype):
    return random_tensors(SHAPES, dtype=dtype, seed=1)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_round_trip(tmp_path, fmt, dtype):
    tensors = _tensors(dtype)
    folder = write_checkpoint(tmp_path / "m", tensors, fmt=fmt, shards=3)
    with CheckpointReader(folder) as r:
        assert r.format == ("safetensors" if fmt in ("safetensors", "sharded") else "bin")
        assert sorted(r.names()) == sorted(tensors)
        for name, t in tensors.items():
            assert name in r
            i = r.info(name)
            assert (i.dtype, i.shape, i.nbytes) == (dtype, tuple(t.shape), t.numel() * t.element_size())
            assert i.file.is_absolute() and i.file.parent == folder.absolute()
            got = r.read(name)
            assert got.dtype == dtype and got.shape == t.shape
            assert torch.equal(got, t)
        assert "nope" not in r


def test_names_in_file_and_offset_order(tmp_path):
    tensors = _tensors(torch.float32)
    folder = write_checkpoint(tmp_path / "m", tensors, fmt="sharded", shards=2)
    with CheckpointReader(folder) as r:
        infos = [r.info(n) for n in r.names()]
    keys = [(str(i.file), i.data_offsets[0]) for i in infos]
    assert keys == sorted(keys)


def test_detection_order_prefers_safetensors(tmp_path):
    folder = write_checkpoint(tmp_path / "m", {"a": torch.ones(2)}, fmt="bin")
    write_checkpoint(folder, {"b": torch.ones(2)}, fmt="safetensors")
    with CheckpointReader(folder) as r:
        assert r.format == "safetensors" and r.names() == ["b"]


def test_info_reads_headers_only(tmp_path, monkeypatch):
    """info() and names() never read tensor data: the data part of the file is cut off
    (a header-only file would be 'truncated'), so prove it by counting bytes read instead."""
    folder = write_checkpoint(tmp_path / "m", _tensors(torch.float32))
    reads = []
    _Counting.bytes_read = 0
    monkeypatch.setattr(reader_mod.os, "preadv", lambda *a: reads.append(a) or 0)
    real_open = open

    def spy_open(path, mode="r", *a, **k):
        f = real_open(path, mode, *a, **k)
        if "b" in mode:
            real_read = f.read
            f = _Counting(f, real_read)
        return f

    monkeypatch.setattr("builtins.open", spy_open)
    with CheckpointReader(folder) as r:
        i = r.info("lm_head.weight")
        r.names()
    assert reads == []
    total = (folder / "model.safetensors").stat().st_size
    header = 8 + int.from_bytes((folder / "model.safetensors").read_bytes()[:8], "little")
    assert _Counting.bytes_read <= header < total
    assert i.data_offsets[0] >= header


class _Counting:
    bytes_read = 0

    def __init__(self, f, read):
        self._f, self._read = f, read

    def read(self, n=-1):
        data = self._read(n)
        _Counting.bytes_read += len(data)
        return data

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()

    def __getattr__(self, name):
        return getattr(self._f, name)


def test_info_bin_touches_no_data(tmp_path, monkeypatch):
    folder = write_checkpoint(tmp_path / "m", _tensors(torch.float16), fmt="bin")
    calls = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(k) or real_load(*a, **k))
    with CheckpointReader(folder) as r:
        i = r.info("lm_head.weight")
        assert i.data_offsets is None and i.shape == (11, 6)
    assert calls == [{"weights_only": True, "mmap": True, "map_location": "cpu"}]


def test_bin_state_dict_wrapper(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    torch.save({"state_dict": {"w": torch.arange(4.0)}}, folder / "pytorch_model.bin")
    with CheckpointReader(folder) as r:
        assert r.names() == ["w"]
        assert torch.equal(r.read("w"), torch.arange(4.0))


def test_bin_of_torchs_legacy_format_is_read_whole(tmp_path):
    """torch.save before torch 1.6 (no zip): torch cannot map it, transformers loads it."""
    folder = tmp_path / "m"
    folder.mkdir()
    tensors = _tensors(torch.bfloat16)
    torch.save(tensors, folder / "pytorch_model.bin", _use_new_zipfile_serialization=False)
    with CheckpointReader(folder) as r:
        assert sorted(r.names()) == sorted(tensors)
        assert all(torch.equal(r.read(n), t) for n, t in tensors.items())


def test_read_into_out_buffer(tmp_path):
    tensors = _tensors(torch.bfloat16)
    for fmt in ("safetensors", "bin"):
        folder = write_checkpoint(tmp_path / fmt, tensors, fmt=fmt)
        buf = torch.empty(1024, dtype=torch.uint8)
        with CheckpointReader(folder) as r:
            got = r.read("lm_head.weight", out=buf)
            assert got.data_ptr() == buf.data_ptr()
            assert torch.equal(got, tensors["lm_head.weight"])
            with pytest.raises(ValueError, match="needs"):
                r.read("lm_head.weight", out=torch.empty(3, dtype=torch.uint8))


def test_concurrent_reads(tmp_path):
    tensors = random_tensors({f"t{i}": (64, 32) for i in range(16)}, dtype=torch.float32)
    folder = write_checkpoint(tmp_path / "m", tensors, fmt="sharded", shards=4)
    errors = []
    with CheckpointReader(folder) as r:

        def work(names):
            for n in names * 3:
                if not torch.equal(r.read(n), tensors[n]):
                    errors.append(n)

        threads = [threading.Thread(target=work, args=(list(tensors)[i::4],)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []


# -- errors ---------------------------------------------------------------------------------


def test_no_weights(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelError, match="model.safetensors.index.json") as e:
        CheckpointReader(tmp_path)
    assert str(tmp_path) in str(e.value)


def test_missing_folder(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        CheckpointReader(tmp_path / "nope")


@pytest.mark.parametrize("fmt", FORMATS)
def test_missing_tensor(tmp_path, fmt):
    folder = write_checkpoint(tmp_path / "m", {"a": torch.ones(2), "b": torch.ones(3)}, fmt=fmt)
    with CheckpointReader(folder) as r:
        with pytest.raises(MissingTensorError) as e:
            r.read("model.norm.weight")
    assert isinstance(e.value, KeyError) and isinstance(e.value, ModelError)
    assert "'model.norm.weight'" in str(e.value) and str(folder) in str(e.value)


def _raw_safetensors(path, header: dict, data: bytes, pad=True):
    raw = json.dumps(header).encode()
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + data)


def test_corrupt_json_header(tmp_path):
    p = tmp_path / "model.safetensors"
    p.write_bytes((10).to_bytes(8, "little") + b"{not json}" + b"\0" * 16)
    with pytest.raises(ModelError, match="invalid JSON") as e:
        CheckpointReader(tmp_path).names()
    assert str(p) in str(e.value)


def test_header_length_past_end(tmp_path):
    p = tmp_path / "model.safetensors"
    p.write_bytes((1 << 20).to_bytes(8, "little") + b"{}")
    with pytest.raises(ModelError, match="truncated") as e:
        read_safetensors_header(p)
    assert str(p) in str(e.value)


def test_truncated_file(tmp_path):
    folder = write_checkpoint(tmp_path / "m", _tensors(torch.float32))
    p = folder / "model.safetensors"
    os.truncate(p, p.stat().st_size - 4)
    with pytest.raises(ModelError, match="truncated") as e:
        CheckpointReader(folder).info("model.norm.weight")
    assert str(p) in str(e.value)


def test_overlapping_ranges(tmp_path):
    hdr = {
        "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
    }
    _raw_safetensors(tmp_path / "model.safetensors", hdr, b"\0" * 12)
    with pytest.raises(ModelError, match="overlap") as e:
        CheckpointReader(tmp_path).names()
    assert "model.safetensors" in str(e.value)


@pytest.mark.parametrize(
    "entry, match",
    [
        ({"dtype": "Q4", "shape": [2], "data_offsets": [0, 8]}, "unsupported dtype 'Q4'"),
        ({"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}, "does not hold"),
        ({"dtype": "F32", "shape": [2]}, "corrupt safetensors header entry"),
    ],
)
def test_bad_entries(tmp_path, entry, match):
    _raw_safetensors(tmp_path / "model.safetensors", {"a": entry}, b"\0" * 8)
    with pytest.raises(ModelError, match=match) as e:
        CheckpointReader(tmp_path).info("a")
    assert "model.safetensors" in str(e.value) and "'a'" in str(e.value)


def _index(folder, weight_map, name="model.safetensors.index.json"):
    (folder / name).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


@pytest.mark.parametrize("target", ["../outside.safetensors", "/abs/outside.safetensors", "sub/../../x.safetensors"])
def test_index_pointing_outside(tmp_path, target):
    folder = tmp_path / "m"
    folder.mkdir()
    save_file({"a": torch.ones(2)}, str(tmp_path / "outside.safetensors"))
    _index(folder, {"a": target.replace("/abs", str(tmp_path))})
    with pytest.raises(ModelError, match="outside the model folder") as e:
        CheckpointReader(folder)
    assert "model.safetensors.index.json" in str(e.value)


def test_index_symlink_outside(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    save_file({"a": torch.ones(2)}, str(tmp_path / "outside.safetensors"))
    (folder / "model-00001-of-00001.safetensors").symlink_to(tmp_path / "outside.safetensors")
    _index(folder, {"a": "model-00001-of-00001.safetensors"})
    with pytest.raises(ModelError, match="symlink") as e:
        CheckpointReader(folder)
    assert "model.safetensors.index.json" in str(e.value)


def test_index_symlink_inside_and_hf_blobs_allowed(tmp_path):
    # huggingface_hub snapshots link every file into ../../blobs: that must keep working.
    repo = tmp_path / "models--org--name"
    snap = repo / "snapshots" / ("a" * 40)
    (repo / "blobs").mkdir(parents=True)
    snap.mkdir(parents=True)
    save_file({"a": torch.ones(2)}, str(repo / "blobs" / "deadbeef"))
    (snap / "model-00001-of-00002.safetensors").symlink_to("../../blobs/deadbeef")
    save_file({"b": torch.zeros(2)}, str(snap / "real.safetensors"))
    (snap / "model-00002-of-00002.safetensors").symlink_to("real.safetensors")
    _index(snap, {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"})
    with CheckpointReader(snap) as r:
        assert torch.equal(r.read("a"), torch.ones(2)) and torch.equal(r.read("b"), torch.zeros(2))


def test_index_missing_shard_and_inconsistent(tmp_path):
    folder = write_checkpoint(tmp_path / "m", {"a": torch.ones(2), "b": torch.ones(3)}, fmt="sharded")
    _index(folder, {"a": "model-00001-of-00002.safetensors", "b": "model-00003-of-00003.safetensors"})
    with pytest.raises(ModelError, match="does not exist"):
        CheckpointReader(folder)
    _index(folder, {"a": "model-00001-of-00002.safetensors", "b": "."})
    with pytest.raises(ModelError, match="is a folder, not a weights file"):
        CheckpointReader(folder)
    _index(folder, {"a": "model-00001-of-00002.safetensors", "b": "model-00001-of-00002.safetensors"})
    with CheckpointReader(folder) as r:
        with pytest.raises(ModelError, match="not in this file"):
            r.info("b")
        with pytest.raises(ModelError, match="not in this file"):
            r.names()


def test_corrupt_index(tmp_path):
    (tmp_path / "model.safetensors.index.json").write_text("{oops")
    with pytest.raises(ModelError, match="model.safetensors.index.json"):
        CheckpointReader(tmp_path)


def test_bad_bin(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"not a zip")
    with pytest.raises(ModelError, match="pytorch_model.bin"):
        CheckpointReader(tmp_path).names()


@pytest.mark.parametrize("entries, why", [({3: torch.zeros(2)}, "not a tensor name"), ({"w": [1, 2]}, "not a tensor")])
def test_bin_entries_must_be_named_tensors(tmp_path, entries, why):
    torch.save(entries, tmp_path / "pytorch_model.bin")
    with pytest.raises(ModelError, match=why):
        CheckpointReader(tmp_path).names()


# -- headers: at least as strict as the safetensors library ------------------------------------

_OK = b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'
_ENTRY_A = b'"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}'
_B_AT_4 = b'"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}'
# (case, header JSON bytes, data bytes, a part of mergefast's message); None: accepted
HEADERS = [
    ("valid", _OK, b"\0" * 4, None),
    ("metadata-null", b'{"__metadata__":null,' + _ENTRY_A + b"}", b"\0" * 4, None),
    ("extra-field", b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":[1]}}', b"\0" * 4, None),
    ("whitespace-padding", b"  " + _OK + b"    ", b"\0" * 4, None),
    ("zero-size-tensors", b'{"z":{"dtype":"F32","shape":[0],"data_offsets":[0,0]},' + _ENTRY_A + b"}", b"\0" * 4, None),
    (
        "duplicate-name",
        b"{" + _ENTRY_A + b"," + _ENTRY_A.replace(b"[0,4]", b"[4,8]") + b"}",
        b"\0" * 8,
        "tensor 'a' is listed twice",
    ),
    ("duplicate-name-same-entry", b"{" + _ENTRY_A + b"," + _ENTRY_A + b"}", b"\0" * 4, "tensor 'a' is listed twice"),
    (
        "duplicate-field",
        b'{"a":{"dtype":"F32","dtype":"F16","shape":[1],"data_offsets":[0,4]}}',
        b"\0" * 4,
        "key 'dtype' appears twice",
    ),
    (
        "duplicate-metadata-key",
        b'{"__metadata__":{"k":"1","k":"2"},' + _ENTRY_A + b"}",
        b"\0" * 4,
        "key 'k' appears twice",
    ),
    ("deep-arrays", b"[" * 100_000 + b"]" * 100_000, b"", "nested deeper than 128 levels"),
    ("deep-objects", b'{"a":' * 100_000 + b"1" + b"}" * 100_000, b"", "nested deeper than 128 levels"),
    (
        "deep-extra-field",
        b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":' + b"[" * 300 + b"]" * 300 + b"}}",
        b"\0" * 4,
        "field 'x' is nested deeper than 128 levels",
    ),
    ("no-tensors", b"{}", b"", "lists no tensors"),
    ("only-metadata", b'{"__metadata__":{"format":"pt"}}', b"", "lists no tensors"),
    ("metadata-number", b'{"__metadata__":{"x":1},' + _ENTRY_A + b"}", b"\0" * 4, "entry 'x' is 1, not a string"),
    ("metadata-list", b'{"__metadata__":[],' + _ENTRY_A + b"}", b"\0" * 4, "__metadata__ is list"),
    ("unknown-dtype", _OK.replace(b"F32", b"F128"), b"\0" * 4, "unsupported dtype 'F128'"),
    ("lowercase-dtype", _OK.replace(b"F32", b"f32"), b"\0" * 4, "unsupported dtype 'f32'"),
    ("gap-at-start", _OK.replace(b"[0,4]", b"[4,8]"), b"\0" * 8, "leaving 4 unused bytes at the start"),
    (
        "gap-between",
        b"{" + _ENTRY_A + b"," + _B_AT_4.replace(b"[4,8]", b"[8,12]") + b"}",
        b"\0" * 12,
        "leaving 4 unused bytes after tensor 'a'",
    ),
    ("trailing-data", _OK, b"\0" * 12, "8 bytes after the end of the last tensor 'a'"),
    (
        "overlap",
        b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},'
        + _B_AT_4.replace(b"[4,8]", b"[4,12]").replace(b"[1]", b"[2]")
        + b"}",
        b"\0" * 12,
        "overlap",
    ),
    ("trailing-nul", _OK + b"\0\0", b"\0" * 4, "invalid JSON"),
    ("not-an-object", b"[]", b"", "not an object"),
    ("float-dimension", _OK.replace(b"[1]", b"[1.0]"), b"\0" * 4, "corrupt safetensors header entry"),
    ("negative-dimension", _OK.replace(b"[1]", b"[-1]"), b"\0" * 4, "negative dimension"),
    ("three-offsets", _OK.replace(b"[0,4]", b"[0,4,8]"), b"\0" * 4, "corrupt safetensors header entry"),
    ("nan", b"{" + _ENTRY_A + b',"b":NaN}', b"\0" * 4, "NaN is not valid JSON"),
    ("size-overflow", _OK.replace(b"[1]", b"[4294967296,4294967296,4294967296]"), b"\0" * 4, "too large to exist"),
    ("not-utf8", _OK.replace(b'"a"', b'"a\xff"'), b"\0" * 4, "invalid JSON"),
    ("utf16", _OK.decode().encode("utf-16"), b"\0" * 4, "invalid JSON"),
    ("lone-surrogate", _OK.replace(b'"a"', b'"a\\ud800"'), b"\0" * 4, "tensor name is not valid UTF-8"),
]
# What mergefast refuses although the safetensors library (0.8) reads it: a tensor listed twice
# with the same entry, a metadata key given twice (the library keeps the last of each), and a
# file without tensors (a weights file that holds no weights).
STRICTER = {"duplicate-name-same-entry", "duplicate-metadata-key", "no-tensors", "only-metadata"}


def _header_file(path, header: bytes, data: bytes):
    path.write_bytes(len(header).to_bytes(8, "little") + header + data)
    return path


@pytest.mark.parametrize("case, header, data, message", HEADERS, ids=[c[0] for c in HEADERS])
def test_header_rules(tmp_path, case, header, data, message):
    path = _header_file(tmp_path / "model.safetensors", header, data)
    if message is None:
        infos, _ = read_safetensors_header(path)
        assert "a" in infos
        return
    with pytest.raises(ModelError, match=message) as e:
        read_safetensors_header(path)
    text = str(e.value)
    assert str(path) in text and "\n" not in text and len(text) < 600


@pytest.mark.parametrize("case, header, data, message", HEADERS, ids=[c[0] for c in HEADERS])
def test_header_rules_are_at_least_the_librarys(tmp_path, case, header, data, message):
    """Every file the safetensors library refuses, mergefast refuses; it accepts what the
    library accepts, except the few it refuses on purpose (STRICTER)."""
    from safetensors import SafetensorError, safe_open

    path = _header_file(tmp_path / "model.safetensors", header, data)
    try:
        with safe_open(str(path), "pt") as f:
            list(f.keys())
        library_refuses = False
    except SafetensorError:
        library_refuses = True
    assert (message is not None) == (library_refuses or case in STRICTER), case


def test_duplicate_name_is_not_silently_the_last(tmp_path):
    """Python's json keeps the last of two equal keys: the second entry (another tensor's bytes)
    would have been merged as `a` without a word."""
    header = b"{" + _ENTRY_A + b"," + _ENTRY_A.replace(b"[0,4]", b"[4,8]") + b"}"
    path = _header_file(tmp_path / "model.safetensors", header, b"\0" * 8)
    with pytest.raises(ModelError, match="listed twice"):
        CheckpointReader(tmp_path).names()
    assert path.is_file()


# -- model files: nothing from outside the folder is read or copied -----------------------------


def _snapshot(root, repo="models--org--name"):
    snap = root / repo / "snapshots" / ("c" * 40)
    snap.mkdir(parents=True)
    (root / repo / "blobs").mkdir()
    return snap


def test_model_file_rules(tmp_path):
    from mergefast.io.model_files import model_file

    folder = tmp_path / "m"
    (folder / "sub").mkdir(parents=True)
    (folder / "real.json").write_text("{}")
    (tmp_path / "secret.json").write_text("{}")
    (folder / "inside.json").symlink_to("real.json")
    (folder / "outside.json").symlink_to(tmp_path / "secret.json")
    (folder / "dangling.json").symlink_to(tmp_path / "missing.json")
    (folder / "linked_dir").symlink_to(tmp_path, target_is_directory=True)
    assert model_file(folder, "real.json") == folder / "real.json"
    assert model_file(folder, "inside.json") == folder / "inside.json"
    assert model_file(folder, "missing.json") is None and model_file(folder, "dangling.json") is None
    assert model_file(folder, "sub") is None  # a folder is no file
    for name in ("outside.json", "linked_dir/secret.json"):
        with pytest.raises(ModelError, match="outside the model folder") as e:
            model_file(folder, name)
        assert str(folder / name) in str(e.value) and str(tmp_path / "secret.json") in str(e.value)
    for name in ("../secret.json", str(tmp_path / "secret.json"), ""):
        with pytest.raises(ModelError, match="outside the model folder"):
            model_file(folder, name)


def test_model_file_in_a_hub_snapshot(tmp_path):
    """Snapshot files link into their own repo's blobs/ (allowed), not into another repo's."""
    from mergefast.io.model_files import model_file

    snap = _snapshot(tmp_path)
    other = _snapshot(tmp_path, "models--evil--repo")
    (tmp_path / "models--org--name" / "blobs" / "abc").write_text("{}")
    (tmp_path / "models--evil--repo" / "blobs" / "def").write_text("{}")
    (snap / "tokenizer.json").symlink_to("../../blobs/abc")
    (snap / "config.json").symlink_to(os.path.relpath(tmp_path / "models--evil--repo" / "blobs" / "def", snap))
    assert model_file(snap, "tokenizer.json") == snap / "tokenizer.json"
    with pytest.raises(ModelError, match="outside the model folder"):
        model_file(snap, "config.json")
    assert other.is_dir()


def test_tokenizer_folder_check_skips_weights(tmp_path):
    """A tokenizer library picks files by itself: every non-weight entry must stay inside; weights
    linked from another disk are the reader's business."""
    from mergefast.io.model_files import check_tokenizer_folder

    folder = tmp_path / "m"
    folder.mkdir()
    (tmp_path / "w.safetensors").write_bytes(b"")
    (tmp_path / "vocab.txt").write_text("a")
    (folder / "model.safetensors").symlink_to(tmp_path / "w.safetensors")
    check_tokenizer_folder(folder)
    (folder / "spiece.model").symlink_to(tmp_path / "vocab.txt")
    with pytest.raises(ModelError, match="spiece.model"):
        check_tokenizer_folder(folder)


def test_copy_tokenizer_refuses_before_copying(tmp_path):
    from mergefast.io.output import copy_tokenizer

    donor, out = tmp_path / "donor", tmp_path / "out"
    donor.mkdir()
    out.mkdir()
    (donor / "tokenizer_config.json").write_text("{}")
    (tmp_path / "id_ed25519").write_text("PRIVATE KEY")
    (donor / "tokenizer.json").symlink_to(tmp_path / "id_ed25519")
    with pytest.raises(ModelError, match="tokenizer.json"):
        copy_tokenizer(donor, out)
    assert not list(out.iterdir())


def test_read_into_elements_reads_that_range(tmp_path):
    """`read_into(..., elements=(start, stop))`: those elements of the flattened tensor, as a
    1-D array, and a range outside the tensor refused."""
    import numpy as np

    t = torch.arange(60, dtype=torch.bfloat16).reshape(6, 10)
    save_file({"w": t}, tmp_path / "model.safetensors")
    with CheckpointReader(tmp_path) as r:
        part = r.read_into("w", np.zeros(64, dtype=np.uint8), (13, 41))
        assert part.shape == (28,) and torch.equal(part.to_torch(), t.reshape(-1)[13:41])
        with pytest.raises(ValueError, match="not in bfloat16"):
            r.read_into("w", np.zeros(64, dtype=np.uint8), (50, 61))
