"""The CPU pool's retired buffers (staging/host.py, `HostStaging._carve`) and the job order that
retires the largest ones early (plan.py, `pooled_order`)."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from checkpoints import write_checkpoint

from mergefast.io.reader import CheckpointReader
from mergefast.plan import pooled_order
from mergefast.staging.host import CARVE_ALIGN, HostStaging

BIG, SMALL = 1 << 19, 1 << 16  # float32 elements: a 2 MiB and a 256 KiB tensor


def _plan(reader, order):
    """A stand-in plan reading tensors `order` of one model (one job each, float32 out)."""
    jobs = []
    for name in order:
        info = reader.info(name)
        source = SimpleNamespace(model="m", tensor=name, info=info)
        jobs.append(
            SimpleNamespace(name=name, copy=False, sources=[source], input_bytes=(info.nbytes,), out_bytes=info.nbytes)
        )
    models = {"m": SimpleNamespace(reader=reader)}
    return SimpleNamespace(models=models, jobs=jobs), jobs


def _inside(inner: torch.Tensor, outer: torch.Tensor) -> bool:
    """Whether `inner` starts inside `outer`'s bytes."""
    return outer.data_ptr() <= inner.data_ptr() < outer.data_ptr() + outer.numel()


def test_a_size_no_later_job_reads_is_carved_into_the_next_sizes(tmp_path):
    """The 2 MiB buffer retires after its only job; the next reads take slices of it, 4 KiB
    apart, and read their tensors intact."""
    tensors = {
        "big": torch.arange(BIG, dtype=torch.float32),
        "a": torch.full((SMALL,), 2.0),
        "b": torch.full((SMALL,), 3.0),
    }
    with CheckpointReader(write_checkpoint(tmp_path / "m", tensors)) as reader:
        plan, (big, a, b) = _plan(reader, ["big", "a", "b"])
        staging = HostStaging(plan)
        first = staging.read(big)
        staging.merge(big, first, lambda job, xs: xs[0] * 1)  # the result is a fresh tensor
        retired = first.buffers[0]
        staged_a = staging.read(a)  # no later job reads 2 MiB: "a" takes a slice of its buffer
        staged_b = staging.read(b)
        assert _inside(staged_a.buffers[0], retired) and _inside(staged_b.buffers[0], retired)
        assert (
            staged_b.buffers[0].data_ptr() - staged_a.buffers[0].data_ptr()
            == -(-SMALL * 4 // CARVE_ALIGN) * CARVE_ALIGN
        )
        assert torch.equal(staged_a.tensors[0], tensors["a"]) and torch.equal(staged_b.tensors[0], tensors["b"])


def test_a_size_a_later_job_reads_stays_pooled(tmp_path):
    """A size still to be read keeps its buffer whole, for that later job."""
    tensors = {"big": torch.arange(BIG, dtype=torch.float32), "a": torch.ones(SMALL), "big2": torch.ones(BIG)}
    with CheckpointReader(write_checkpoint(tmp_path / "m", tensors)) as reader:
        plan, (big, a, big2) = _plan(reader, ["big", "a", "big2"])
        staging = HostStaging(plan)
        first = staging.read(big)
        staging.merge(big, first, lambda job, xs: xs[0] * 1)
        assert not _inside(staging.read(a).buffers[0], first.buffers[0])  # fresh: "big2" needs it
        assert staging.read(big2).buffers[0].data_ptr() == first.buffers[0].data_ptr()


def test_idle_buffers_of_a_size_retire_when_its_last_job_is_read(tmp_path):
    """Two buffers of a size (two jobs in flight); once the last job of that size has been
    read, the one idle in the pool retires too, and is carved first."""
    tensors = {"big": torch.arange(BIG, dtype=torch.float32), "big2": torch.ones(BIG), "a": torch.ones(SMALL)}
    with CheckpointReader(write_checkpoint(tmp_path / "m", tensors)) as reader:
        plan, (big, big2, a) = _plan(reader, ["big", "big2", "a"])
        staging = HostStaging(plan)
        first, second = staging.read(big), staging.read(big2)
        staging.merge(big, first, lambda job, xs: xs[0] * 1)  # back to the pool: big2's output is to come
        assert staging._free[BIG * 4] == [first.buffers[0]]
        staging.merge(big2, second, lambda job, xs: xs[0] * 1)
        assert not staging._free
        assert _inside(staging.read(a).buffers[0], first.buffers[0])


def test_an_output_living_in_a_carved_input_keeps_its_buffer(tmp_path):
    """A method returning its (carved) input unchanged: that slice is not given back while
    the writer still has to write it."""
    tensors = {"big": torch.arange(BIG, dtype=torch.float32), "a": torch.full((SMALL,), 2.0), "b": torch.ones(SMALL)}
    with CheckpointReader(write_checkpoint(tmp_path / "m", tensors)) as reader:
        plan, (big, b0, a, b, _) = _plan(reader, ["big", "b", "a", "b", "b"])  # "b" thrice: SMALL stays pooled
        staging = HostStaging(plan)
        staging.merge(big, staging.read(big), lambda job, xs: xs[0] * 1)
        held = staging.read(b0)  # the first slice; "a" takes the second, not at the buffer's start
        staged = staging.read(a)
        result = staging.merge(a, staged, lambda job, xs: xs[0])  # the input is the output
        assert result.buffer is None and not staging._free
        again = staging.read(b)
        assert again.buffers[0].data_ptr() not in (staged.buffers[0].data_ptr(), held.buffers[0].data_ptr())
        assert torch.equal(result.tensor, tensors["a"])


def _job(nbytes: int, file, out: int | None = None):
    """A stand-in job of two sources of `nbytes` each in `file`."""
    info = SimpleNamespace(nbytes=nbytes, file=file)
    return SimpleNamespace(
        copy=False, sources=[SimpleNamespace(info=info)] * 2, read_bytes=2 * nbytes, out_bytes=out or nbytes
    )


def test_pooled_order_brings_the_few_largest_jobs_together(tmp_path):
    here, gone = tmp_path / "here.safetensors", tmp_path / "downloading.safetensors"
    here.write_bytes(b"x")
    mb = 1 << 20
    embed, lm_head = _job(64 * mb, here), _job(64 * mb, here)
    layers = [_job(6 * mb, here) for _ in range(6)]  # a common size: keeps its place
    norms = [_job(2048, here) for _ in range(2)]  # small: keeps its place
    jobs = [embed, *layers[:3], norms[0], *layers[3:], norms[1], lm_head]
    assert pooled_order(jobs) == [embed, lm_head, *layers[:3], norms[0], *layers[3:], norms[1]]
    waiting = _job(64 * mb, gone)  # its file is still downloading: it keeps its place
    assert pooled_order([embed, *layers, waiting]) == [embed, *layers, waiting]
    five = [_job(64 * mb, here) for _ in range(5)]  # more than REGROUP_MAX_JOBS: file order
    mixed = [five[0], layers[0], *five[1:]]
    assert pooled_order(mixed) == mixed
