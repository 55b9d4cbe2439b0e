import json
import random
import threading

import pytest
import torch
from checkpoints import random_tensors
from safetensors import safe_open
from safetensors.torch import load_file

from mergefast.errors import ConfigError
from mergefast.io.reader import CheckpointReader
from mergefast.io.writer import OutputTensor, ShardedWriter, plan_shards
from mergefast.options import parse_size


def _out(tensors):
    return [OutputTensor(k, v.dtype, tuple(v.shape)) for k, v in tensors.items()]


def _names(shards):
    return [[t.name for t in s] for s in shards]


def test_output_tensor_nbytes():
    assert OutputTensor("a", torch.bfloat16, (3, 4)).nbytes == 24
    assert OutputTensor("a", torch.float64, ()).nbytes == 8
    assert OutputTensor("a", torch.float32, (0, 5)).nbytes == 0


def test_plan_shards_by_hand():
    ts = [OutputTensor(n, torch.uint8, (s,)) for n, s in [("a", 4), ("b", 4), ("c", 3), ("d", 20), ("e", 1), ("f", 10)]]
    # limit 10: a+b=8, +c=11>10 -> new; c=3, +d=23 -> new; d alone (bigger than the limit); e; e+f=11 -> new
    assert _names(plan_shards(ts, 10)) == [["a", "b"], ["c"], ["d"], ["e"], ["f"]]
    # exactly at the limit stays in the shard (the rule is strictly greater)
    assert _names(plan_shards(ts[:3], 11)) == [["a", "b", "c"]]
    assert _names(plan_shards(ts, 0)) == [["a", "b", "c", "d", "e", "f"]]
    assert _names(plan_shards(ts, -1)) == [["a", "b", "c", "d", "e", "f"]]
    assert _names(plan_shards([], 10)) == [[]]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64, torch.int64], ids=str)
def test_single_shard(tmp_path, dtype):
    tensors = random_tensors({"w": (5, 7), "b": (7,), "s": ()}, dtype=dtype)
    w = ShardedWriter(tmp_path, _out(tensors), parse_size("5B"), metadata={"mergekit_version": "x"})
    for k, v in tensors.items():
        w.write(k, v)
    files = w.finish()
    assert files == [tmp_path / "model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]
    loaded = load_file(str(files[0]))
    assert loaded.keys() == tensors.keys()
    for k in tensors:
        assert loaded[k].dtype == dtype and torch.equal(loaded[k], tensors[k])
    with safe_open(str(files[0]), "pt") as f:
        assert f.metadata() == {"format": "pt", "mergekit_version": "x"}


def test_several_shards_out_of_order_threads(tmp_path):
    tensors = random_tensors({f"layers.{i}.w": (16, 8) for i in range(10)}, dtype=torch.float32)
    tensors["norm"] = torch.ones(8)
    tensors["empty"] = torch.empty(0, 4)
    plan = _out(tensors)
    w = ShardedWriter(tmp_path, plan, max_shard_size=1200)  # 512-byte tensors: 2 per shard
    order = list(tensors)
    random.Random(0).shuffle(order)
    threads = [
        threading.Thread(target=lambda ns: [w.write(n, tensors[n]) for n in ns], args=(order[i::3],)) for i in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    files = w.finish()
    n = len(plan_shards(plan, 1200))
    assert n == 5  # 2 x 512 per shard; norm (32) and empty (0) join the last
    shard_names = [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
    assert [p.name for p in files] == shard_names + ["model.safetensors.index.json"]
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert index["metadata"] == {"total_size": sum(t.nbytes for t in plan)}
    assert list(index["weight_map"]) == list(tensors)  # tensor (plan) order
    assert (tmp_path / "model.safetensors.index.json").read_text().startswith('{\n  "metadata"')
    merged = {}
    for name in shard_names:
        merged.update(load_file(str(tmp_path / name)))
    assert merged.keys() == tensors.keys()
    for k, v in tensors.items():
        assert torch.equal(merged[k], v)
        assert index["weight_map"][k] in shard_names
    with CheckpointReader(tmp_path) as r:  # and our own reader agrees
        assert r.names() == list(tensors)


def test_missing_tensor_at_finish(tmp_path):
    tensors = random_tensors({"a": (2,), "b": (3,), "c": (4,)}, dtype=torch.float32)
    w = ShardedWriter(tmp_path, _out(tensors), 0)
    w.write("b", tensors["b"])
    with pytest.raises(RuntimeError, match="2 tensor.*never written: a, c"):
        w.finish()
    w.abort()


def test_wrong_dtype_shape_name_twice(tmp_path):
    w = ShardedWriter(tmp_path, [OutputTensor("a", torch.bfloat16, (2, 3))], 0)
    with pytest.raises(ValueError, match="'a'.*torch.float32.*expects torch.bfloat16"):
        w.write("a", torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"'a'.*\[3, 2\]"):
        w.write("a", torch.zeros(3, 2, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="'zz' is not in the output plan"):
        w.write("zz", torch.zeros(1))
    w.write("a", torch.zeros(2, 3, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="twice"):
        w.write("a", torch.zeros(2, 3, dtype=torch.bfloat16))
    w.finish()
    with pytest.raises(ValueError, match="duplicate|twice"):
        ShardedWriter(tmp_path / "x", [OutputTensor("a", torch.float32, ())] * 2, 0)


def test_non_contiguous_input(tmp_path):
    t = torch.arange(12.0).reshape(3, 4)
    w = ShardedWriter(tmp_path, [OutputTensor("t", torch.float32, (4, 3))], 0)
    w.write("t", t.T)
    w.finish()
    assert torch.equal(load_file(str(tmp_path / "model.safetensors"))["t"], t.T)


def test_files_have_final_size_up_front(tmp_path):
    tensors = random_tensors({"a": (100,), "b": (100,)}, dtype=torch.float32)
    w = ShardedWriter(tmp_path, _out(tensors), 500)
    sizes = {p.name: p.stat().st_size for p in tmp_path.iterdir()}
    for k, v in tensors.items():
        w.write(k, v)
    w.finish()
    assert {p.name: p.stat().st_size for p in tmp_path.glob("*.safetensors")} == sizes
    w2 = ShardedWriter(tmp_path / "aborted", _out(tensors), 0)
    w2.write("a", tensors["a"])
    w2.abort()


def test_loads_with_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(
        vocab_size=32,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=16,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).to(torch.bfloat16)
    sd = {k: v for k, v in model.state_dict().items()}
    w = ShardedWriter(tmp_path, _out(sd), 2000)
    for k, v in reversed(sd.items()):
        w.write(k, v)
    files = w.finish()
    assert len(files) > 2
    cfg.save_pretrained(tmp_path)
    loaded = transformers.LlamaForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16)
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, sd[k]), k


@pytest.mark.parametrize(
    "text, value",
    [
        ("0", 0),
        ("123", 123),
        ("5B", 5_000_000_000),
        ("5b", 5_000_000_000),
        ("500M", 500_000_000),
        ("500m", 500_000_000),
        ("64k", 64_000),
        (" 2K ", 2000),
        (7, 7),
    ],
)
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "5G", "1.5B", "-1", "B", "5 MB", "five"])
def test_parse_size_bad(text):
    with pytest.raises(ConfigError, match="k, m or b suffix"):
        parse_size(text)


def test_round_trip_through_own_reader_all_dtypes(tmp_path):
    dtypes = [
        torch.bool,
        torch.uint8,
        torch.int8,
        torch.int16,
        torch.int32,
        torch.int64,
        torch.float16,
        torch.bfloat16,
        torch.float32,
        torch.float64,
        torch.float8_e4m3fn,
        torch.float8_e5m2,
    ]
    tensors = {str(d): (torch.arange(-6, 6, dtype=torch.float32).reshape(3, 4) / 2).to(d) for d in dtypes}
    w = ShardedWriter(tmp_path, _out(tensors), 40)
    for k, v in tensors.items():
        w.write(k, v)
    assert len(w.finish()) > 2
    with CheckpointReader(tmp_path) as r:
        for k, v in tensors.items():
            got = r.read(k)
            assert got.dtype == v.dtype and torch.equal(got.view(torch.uint8), v.view(torch.uint8)), k


def test_parts_in_any_order_make_the_tensor(tmp_path):
    """A tensor written as parts (host/parts.py) in shuffled order is the same file as one
    written whole; a part past the end, a start twice, a whole write after parts, and a
    tensor whose parts do not cover it are refused."""
    tensors = random_tensors({"a": (3,), "w": (33, 129), "b": (5,)}, seed=3)  # "w" straddles blocks
    name = "w"
    flat = tensors[name].reshape(-1)
    starts = list(range(0, flat.numel(), 7))
    random.Random(0).shuffle(starts)
    whole, parted = tmp_path / "whole", tmp_path / "parted"
    for folder in (whole, parted):
        with ShardedWriter(folder, _out(tensors), 0) as w:
            for k, t in tensors.items():
                if k == name and folder == parted:
                    for s in starts:
                        w.write(k, flat[s : s + 7], s)
                else:
                    w.write(k, t)
            w.finish()
    assert (whole / "model.safetensors").read_bytes() == (parted / "model.safetensors").read_bytes()

    w = ShardedWriter(tmp_path / "bad", _out({name: tensors[name]}), 0)
    with pytest.raises(ValueError, match="at element"):
        w.write(name, flat[:7], flat.numel() - 3)
    w.write(name, flat[:7], 0)
    with pytest.raises(ValueError, match="written twice at 0"):
        w.write(name, flat[:7], 0)
    with pytest.raises(ValueError, match="written twice"):
        w.write(name, tensors[name])
    with pytest.raises(RuntimeError, match="never written"):
        w.finish()
