"""Whole input tensors mapped instead of read (mergefast/io/mapped.py, CheckpointReader.map_whole):
the same bytes as a read, private to the process, and read instead where a map does not fit."""

from __future__ import annotations

import errno
import json
import os

import numpy as np
import pytest
import torch
from checkpoints import write_checkpoint
from helpers import example_config, run_cli
from safetensors.torch import save_file

from mergefast import host
from mergefast.errors import ModelError
from mergefast.io import mapped
from mergefast.io.reader import CheckpointReader

BIG = (mapped.MAP_MIN_BYTES // 2 + 3, 1)  # bf16: just over MAP_MIN_BYTES, not a whole page


def _read(reader: CheckpointReader, name: str) -> bytes:
    buffer = np.zeros(reader.info(name).nbytes, dtype=np.uint8)
    return bytes(reader.read_into(name, buffer).data)


def test_a_large_tensor_maps_to_its_bytes(tmp_path):
    tensors = {"small": torch.randn(8), "w": torch.randn(BIG).bfloat16(), "v": torch.randn(BIG).bfloat16()}
    save_file(tensors, tmp_path / "model.safetensors")
    with CheckpointReader(tmp_path) as r:
        for name in ("w", "v"):  # both start mid-page, "w" past the first page: each map starts at its page
            array = r.map_whole(name)
            assert array is not None and (array.dtype, array.shape) == ("bfloat16", BIG)
            assert bytes(array.data) == _read(r, name)
        assert r.map_whole("small") is None  # below MAP_MIN_BYTES: read into a pooled buffer


def test_writes_into_a_mapped_tensor_stay_in_the_process(tmp_path):
    save_file({"w": torch.ones(BIG).bfloat16()}, tmp_path / "model.safetensors")
    before = (tmp_path / "model.safetensors").read_bytes()
    with CheckpointReader(tmp_path) as r:
        array = r.map_whole("w")
        array.data[:4] = b"\xff\xff\xff\xff"
        assert bytes(array.data[:4]) == b"\xff\xff\xff\xff"
        del array
    assert (tmp_path / "model.safetensors").read_bytes() == before


def test_a_misaligned_tensor_is_read(tmp_path, monkeypatch):
    """A float32 tensor after 3 bytes of uint8 starts off its 4-byte alignment: read, not mapped."""
    monkeypatch.setattr(mapped, "MAP_MIN_BYTES", 1)
    header = {
        "a": {"dtype": "U8", "shape": [3], "data_offsets": [0, 3]},
        "b": {"dtype": "F32", "shape": [2], "data_offsets": [3, 11]},
    }
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    (tmp_path / "model.safetensors").write_bytes(len(raw).to_bytes(8, "little") + raw + bytes(range(11)))
    with CheckpointReader(tmp_path) as r:
        assert r.map_whole("b") is None
        assert r.map_whole("a") is not None  # one-byte elements are always aligned


def test_bin_weights_are_read(tmp_path, monkeypatch):
    monkeypatch.setattr(mapped, "MAP_MIN_BYTES", 1)
    folder = write_checkpoint(tmp_path / "m", {"w": torch.randn(64)}, fmt="bin")
    with CheckpointReader(folder) as r:
        assert r.map_whole("w") is None


def test_a_file_truncated_after_its_header_was_read_is_a_model_error(tmp_path):
    save_file({"w": torch.randn(BIG).bfloat16()}, tmp_path / "model.safetensors")
    with CheckpointReader(tmp_path) as r:
        r.info("w")
        os.truncate(tmp_path / "model.safetensors", os.path.getsize(tmp_path / "model.safetensors") - 2)
        with pytest.raises(ModelError, match="truncated") as e:
            r.map_whole("w")
    assert "model.safetensors" in str(e.value) and "'w'" in str(e.value)


@pytest.mark.parametrize("name", ["ties.yml", "slerp-gradient.yml"])
def test_a_merge_from_mapped_inputs_writes_the_bytes_of_one_from_read_inputs(name, family, tmp_path, monkeypatch):
    """The torch-free engine's output is the same whether its inputs are read or mapped."""
    from mergefast import execute

    monkeypatch.setattr(execute, "torch_free", lambda plan, options: host.refusal(plan, options) is None)
    config = tmp_path / "c.yml"
    config.write_text(example_config(name, family))
    maps = []
    real_map = mapped.map_tensor
    monkeypatch.setattr(mapped, "map_tensor", lambda fd, info: maps.append(info.name) or real_map(fd, info))
    outs = []
    for smallest in (mapped.MAP_MIN_BYTES, 1):  # the tiny family's tensors: all read, then all mapped
        monkeypatch.setattr(mapped, "MAP_MIN_BYTES", smallest)
        outs.append(tmp_path / f"out-{smallest}" / "out")  # the model card names the folder: "out" both times
        assert run_cli("yaml", config, outs[-1], "--quiet").exit_code == 0
        assert bool(maps) is (smallest == 1)
    for f in outs[0].iterdir():
        assert f.read_bytes() == (outs[1] / f.name).read_bytes(), f.name


def test_a_filesystem_that_cannot_map_is_read(tmp_path, monkeypatch):
    """mmap fails (ENODEV on some FUSE filesystems): the tensor is read instead."""
    save_file({"w": torch.randn(BIG).bfloat16()}, tmp_path / "model.safetensors")

    def no_map(*args, **kwargs):
        raise OSError(errno.ENODEV, "No such device")

    monkeypatch.setattr(mapped.mmap, "mmap", no_map)
    with CheckpointReader(tmp_path) as r:
        assert r.map_whole("w") is None
