"""O_DIRECT output files (mergefast/io/direct.py) and the writer's choice between them and
the page cache. Every pwrite is checked against O_DIRECT's alignment rules, so the block
logic is tested on any filesystem (where O_DIRECT is refused, without the flag)."""

import ctypes
import errno
import mmap
import os
import random
import threading

import pytest
import torch
from safetensors.torch import load_file

from mergefast.io import direct
from mergefast.io.direct import BLOCK, DirectFile, direct_io_works
from mergefast.io.writer import OutputTensor, ShardedWriter


@pytest.fixture
def aligned_pwrites(monkeypatch, tmp_path):
    """Every pwrite of io/direct.py, checked for O_DIRECT's alignment: (offset, length)."""
    if not direct_io_works(tmp_path):  # the same block logic, through the page cache
        monkeypatch.setattr(direct, "_O_DIRECT", 0)
    calls, real = [], os.pwrite

    def pwrite(fd, data, offset):
        view = memoryview(data)
        address = ctypes.addressof(ctypes.c_char.from_buffer(view))
        assert offset % BLOCK == 0 and len(view) % BLOCK == 0 and address % BLOCK == 0
        calls.append((offset, len(view)))
        return real(fd, data, offset)

    def pwritev(fd, pieces, offset):  # one call, each piece aligned
        views = [memoryview(p) for p in pieces]
        for view in views:
            address = ctypes.addressof(ctypes.c_char.from_buffer(view))
            assert len(view) % BLOCK == 0 and address % BLOCK == 0
        assert offset % BLOCK == 0
        calls.append((offset, sum(len(v) for v in views)))
        return real_v(fd, pieces, offset)

    real_v = os.pwritev
    monkeypatch.setattr(direct.os, "pwrite", pwrite)
    monkeypatch.setattr(direct.os, "pwritev", pwritev)
    return calls


def _file(tmp_path, size):
    path = tmp_path / "f.bin"
    with open(path, "wb") as f:
        f.truncate(size)
    return DirectFile(path, size)


SIZES = [1, 5, BLOCK - 1, BLOCK, BLOCK + 1, 3 * BLOCK + 17, direct.STAGE_BYTES + 3 * BLOCK + 5]


@pytest.mark.parametrize("size", SIZES)
def test_pieces_in_any_order_give_the_exact_file(tmp_path, aligned_pwrites, size):
    rng = random.Random(size)
    data = bytes(rng.getrandbits(8) for _ in range(min(size, 4096))) * (size // 4096 + 1)
    data = data[:size]
    cuts = sorted({0, size, *(rng.randrange(size) for _ in range(6)), min(size, BLOCK), max(0, size - 1)})
    pieces = list(zip(cuts, cuts[1:]))
    rng.shuffle(pieces)
    f = _file(tmp_path, size)
    for i, (a, b) in enumerate(pieces):  # read-only and writable buffers
        f.write(data[a:b] if i % 2 else bytearray(data[a:b]), a)
    f.close()
    assert f.path.read_bytes() == data
    assert sum(n for _, n in aligned_pwrites) == -(-size // BLOCK) * BLOCK  # every block once
    assert len({o for o, _ in aligned_pwrites}) == len(aligned_pwrites)


def test_threads_writing_neighbouring_tensors(tmp_path, aligned_pwrites):
    sizes = [random.Random(i).choice([2, 6, 4094, 4100, 70001]) for i in range(60)]
    offsets = [sum(sizes[:i]) for i in range(len(sizes))]
    data = torch.randint(0, 256, (sum(sizes),), dtype=torch.uint8)
    f = _file(tmp_path, sum(sizes))
    order = list(range(len(sizes)))
    random.Random(1).shuffle(order)

    def write(ks):
        for k in ks:
            f.write(data[offsets[k] : offsets[k] + sizes[k]].numpy(), offsets[k])

    threads = [threading.Thread(target=write, args=(order[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    f.close()
    assert f.path.read_bytes() == data.numpy().tobytes()


def test_a_missing_piece_is_an_error_at_close(tmp_path, aligned_pwrites):
    f = _file(tmp_path, 3 * BLOCK)
    f.write(bytes(BLOCK + 10), 0)
    f.write(bytes(BLOCK), 2 * BLOCK)
    assert f.pending_bytes() == 10
    with pytest.raises(RuntimeError, match="10 bytes left in partially written blocks"):
        f.close()
    f.close(sync=False)  # an aborted output: no error


def _tensors():
    g = torch.Generator().manual_seed(0)
    shapes = {"embed": (300, 37), "norm": (37,), "odd": (3, 5), "empty": (0, 4), "big": (2100, 3)}
    dtypes = {"big": torch.float32}
    return {k: torch.randn(s, generator=g).to(dtypes.get(k, torch.bfloat16)) for k, s in shapes.items()}


def _write_all(folder, tensors, shard_size):
    w = ShardedWriter(folder, [OutputTensor(k, v.dtype, tuple(v.shape)) for k, v in tensors.items()], shard_size)
    for k in reversed(list(tensors)):
        w.write(k, tensors[k])
    return w, w.finish()


@pytest.mark.parametrize("shard_size", [0, 5000])
def test_writer_files_are_the_same_either_way(tmp_path, monkeypatch, aligned_pwrites, shard_size):
    tensors = _tensors()
    w, files = _write_all(tmp_path / "direct", tensors, shard_size)
    assert w.direct_io == bool(direct._O_DIRECT) and aligned_pwrites
    monkeypatch.undo()  # the page-cache writes need no alignment
    monkeypatch.setattr("mergefast.io.writer.direct_io_works", lambda folder: False)
    cached, cached_files = _write_all(tmp_path / "cached", tensors, shard_size)
    assert not cached.direct_io
    assert [p.name for p in files] == [p.name for p in cached_files]
    for a, b in zip(files, cached_files):
        assert a.read_bytes() == b.read_bytes()
    loaded = {k: v for p in files if p.suffix == ".safetensors" for k, v in load_file(str(p)).items()}
    assert all(torch.equal(loaded[k], v) for k, v in tensors.items())
    assert not list((tmp_path / "direct").glob(".mergefast-direct-io-probe"))


def test_a_filesystem_without_o_direct_is_written_through_the_page_cache(tmp_path, monkeypatch):
    real_open = os.open

    def refuse_direct(path, flags, *args):
        if flags & getattr(os, "O_DIRECT", 0):
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)

    monkeypatch.setattr(direct.os, "open", refuse_direct)
    assert not direct_io_works(tmp_path)
    assert not list(tmp_path.iterdir())  # no probe file left behind
    tensors = _tensors()
    w, files = _write_all(tmp_path / "out", tensors, 0)
    assert not w.direct_io
    loaded = load_file(str(files[0]))
    assert all(torch.equal(loaded[k], v) for k, v in tensors.items())


def test_consecutive_pieces_are_gathered_into_whole_stage_writes(tmp_path, aligned_pwrites):
    """Parts written one after the other (host/parts.py) go out in pwrites of STAGE_BYTES;
    a piece that does not follow on writes out what was gathered first; `close` writes the
    rest, and `close(drop=True)` (an aborted run) drops it."""
    stage = direct.STAGE_BYTES
    piece = stage // 2
    size = 2 * stage + 3 * BLOCK
    data = bytes(random.Random(7).getrandbits(8) for _ in range(4096)) * (size // 4096)
    f = _file(tmp_path, size)
    for a in range(0, 2 * stage, piece):
        f.write(data[a : a + piece], a)
    assert aligned_pwrites == [(0, stage), (stage, stage)]
    f.write(data[2 * stage + BLOCK :], 2 * stage + BLOCK)  # gathered: nothing written yet
    f.write(data[2 * stage : 2 * stage + BLOCK], 2 * stage)  # not following on: a flush first
    assert aligned_pwrites[2] == (2 * stage + BLOCK, 2 * BLOCK)
    f.close()
    assert aligned_pwrites[3] == (2 * stage, BLOCK) and f.path.read_bytes() == data

    dropped = _file(tmp_path, size)
    dropped.write(data[:piece], 0)
    dropped.close(sync=False, drop=True)
    assert len(aligned_pwrites) == 4


def test_pieces_that_meet_inside_a_block_are_gathered_with_it(tmp_path, aligned_pwrites):
    """Tensors and parts whose ends fall inside a block (any offset after a safetensors
    header): the block their meeting completes joins the gathered bytes, so they go out in
    pwrites of STAGE_BYTES one after the other, not a 4 KiB pwrite for each such block."""
    stage = direct.STAGE_BYTES
    size = 3 * stage + 1000
    data = bytes(random.Random(3).getrandbits(8) for _ in range(4096)) * (size // 4096 + 1)
    cuts = [0, 88, *range(88 + 5000, size, 300_001), size]
    f = _file(tmp_path, size)
    for a, b in zip(cuts, cuts[1:]):
        f.write(data[a:b], a)
    f.close()
    assert f.path.read_bytes() == data[:size]
    assert aligned_pwrites == [(k * stage, stage) for k in range(3)] + [(3 * stage, BLOCK)]


def _placed(data: bytes, offset: int) -> memoryview:
    """`data` in a fresh buffer at an address congruent to `offset` modulo BLOCK, as the
    torch-free engine places its outputs (host/staging.py)."""
    buf = mmap.mmap(-1, len(data) + BLOCK)
    view = memoryview(buf)[offset % BLOCK : offset % BLOCK + len(data)]
    view[:] = data
    return view


@pytest.mark.parametrize("order", ["in order", "shuffled"])
def test_pieces_placed_like_their_offsets_are_written_where_they_lie(tmp_path, aligned_pwrites, monkeypatch, order):
    """Parts of ~2^20 elements after an unaligned header: each one's aligned middle goes out from
    its own buffer, in one pwritev with the block where it meets the part before (in order: one
    call per part); nothing but those meeting blocks is copied into a staging buffer."""
    copied, real_memmove = [], ctypes.memmove
    monkeypatch.setattr(direct.ctypes, "memmove", lambda dst, src, n: copied.append(n) or real_memmove(dst, src, n))
    size = 5 * direct.STAGE_BYTES + 777
    data = bytes(random.Random(5).getrandbits(8) for _ in range(4096)) * (size // 4096 + 1)
    cuts = [0, 88, *range(88 + 1000, size, direct.STAGE_BYTES), size]
    pieces = list(zip(cuts, cuts[1:]))
    if order == "shuffled":
        random.Random(1).shuffle(pieces)
    f = _file(tmp_path, size)
    for a, b in pieces:
        f.write(_placed(data[a:b], a), a)
    f.close()
    assert f.path.read_bytes() == data[:size]
    assert sum(copied) <= len(pieces) * BLOCK
    assert sum(n for _, n in aligned_pwrites) == -(-size // BLOCK) * BLOCK  # every block once
    if order == "in order":
        assert len(aligned_pwrites) <= len(pieces) + 1


def test_a_failed_gathered_write_raises_its_error_and_the_file_still_closes(tmp_path, monkeypatch):
    """A disk-full pwrite of gathered bytes raises ENOSPC, and closing the file after it
    (an aborted run) raises nothing more (a BufferError once hid the real error)."""
    size = direct.STAGE_BYTES + BLOCK
    f = _file(tmp_path, size)
    buffer = bytearray(size + 1)
    start = 0 if ctypes.addressof(ctypes.c_char.from_buffer(buffer)) % BLOCK else 1  # never written in place
    f.write(memoryview(buffer)[start : start + size], 0)  # a block gathered, the stage flushed

    def full(fd, data, offset):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(direct.os, "pwrite", full)
    with pytest.raises(OSError, match="No space left"):
        f.close()
    f.close(sync=False, drop=True)
