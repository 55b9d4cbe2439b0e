"""The --cuda pipeline (CudaStaging) on the CPU: merges through a fake device queue whose copies
are delayed must equal the CPU path bit for bit, with a bounded ring that neither leaks nor
deadlocks, chunked linear merges, tiny budgets and failures mid-run."""

import threading

import pytest
import torch
from helpers import example_config
from safetensors.torch import load_file
from test_staging_fake import FakeQueue

import mergefast
from mergefast import execute
from mergefast.staging import cuda as cuda_staging
from mergefast.staging import pinned_ring
from mergefast.staging.cuda import CudaStaging

METHODS = ["linear.yml", "ties.yml", "slerp-gradient.yml", "passthrough-stack.yml"]
TINY_RING = {"slot_bytes": 200, "slots": 2}  # most tiny-model tensors are larger: chunks everywhere
_cpu_outputs: dict = {}


def merge_outputs(text, out, **options):
    """Merge in a thread (a deadlock fails the test instead of hanging it); the output tensors."""
    errors = []

    def run():
        try:
            mergefast.merge(text, out, quiet=True, write_model_card=False, copy_tokenizer=False, **options)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(60)
    assert not thread.is_alive(), "the merge did not finish: deadlock?"
    if errors:
        raise errors[0]
    return load_file(out / "model.safetensors")


def cpu_outputs(name, family, tmp_path_factory):
    if name not in _cpu_outputs:
        _cpu_outputs[name] = merge_outputs(example_config(name, family), tmp_path_factory.mktemp("cpu") / "out")
    return _cpu_outputs[name]


@pytest.fixture
def fake_gpu(monkeypatch):
    """fake_gpu(**ring) routes execute's staging through CudaStaging on a FakeQueue; returns
    the list of stagings made (for their queue and ring)."""
    made = []

    def use(queue=None, **ring):
        def staging_for(plan, device, budget):
            made.append(CudaStaging(plan, queue or FakeQueue(seed=len(made)), budget, **ring))
            return made[-1]

        monkeypatch.setattr(execute, "staging_for", staging_for)
        return made

    return use


def assert_same(merged, expected):
    assert set(merged) == set(expected)
    for name, tensor in expected.items():
        assert torch.equal(merged[name], tensor), name


@pytest.mark.parametrize("ring", [{}, TINY_RING], ids=["budget-sized", "tiny-ring"])
@pytest.mark.parametrize("name", METHODS)
def test_fake_gpu_merge_is_bit_identical_to_the_cpu_path(name, ring, family, tmp_path, tmp_path_factory, fake_gpu):
    expected = cpu_outputs(name, family, tmp_path_factory)
    made = fake_gpu(**ring)
    assert_same(merge_outputs(example_config(name, family), tmp_path / "out"), expected)
    staging = made[0]
    assert staging.ring.held == 0  # every slot came back: no leak
    assert staging.queue.pinned_allocs == staging.ring.allocated <= staging.ring.slots
    if not ring:  # no chunks: one H2D copy per input of a job that computes; plain copies stay on the host
        computed = [job for job in staging.plan.jobs if not job.copy]
        assert staging.queue.h2d_calls == sum(len(job.sources) for job in computed)
        assert staging.queue.d2h_calls == len(computed)


@pytest.mark.slow
def test_linear_merged_in_chunks_equals_merged_whole(tied_family, tmp_path, fake_gpu, monkeypatch):
    text = example_config("linear.yml", tied_family)  # float32 inputs, bfloat16 output
    fake_gpu(slot_bytes=1 << 20)
    whole = merge_outputs(text, tmp_path / "whole")
    names, real = [], execute.merge_job
    monkeypatch.setattr(execute, "merge_job", lambda plan, job, *a: names.append(job.name) or real(plan, job, *a))
    fake_gpu(slot_bytes=84, slots=2)  # 21 float32 elements per chunk: boundaries off any SIMD width
    assert_same(merge_outputs(text, tmp_path / "chunked"), whole)
    assert "model.embed_tokens.weight[0:21]" in names and "model.norm.weight" not in names


@pytest.mark.parametrize("ring", [{}, TINY_RING], ids=["budget-sized", "tiny-ring"])
def test_a_budget_smaller_than_one_job_completes(ring, family, tmp_path, tmp_path_factory, fake_gpu):
    expected = cpu_outputs("ties.yml", family, tmp_path_factory)
    made = fake_gpu(**ring)
    assert_same(merge_outputs(example_config("ties.yml", family), tmp_path / "out", max_memory="1"), expected)
    assert made[0].ring.slot_bytes <= pinned_ring.MIN_SLOT


@pytest.mark.parametrize("name", ["linear.yml", "ties.yml"])
def test_a_device_failure_mid_run_leaves_no_output(name, family, tmp_path, fake_gpu):
    fake_gpu(queue=FakeQueue(fail_h2d_at=30), **TINY_RING)
    with pytest.raises(RuntimeError, match="illegal memory access"):
        merge_outputs(example_config(name, family), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if ".mergefast-" in p.name]


def test_the_fake_catches_a_slot_reused_before_its_copy(family, tmp_path, tmp_path_factory, fake_gpu, monkeypatch):
    expected = cpu_outputs("ties.yml", family, tmp_path_factory)
    monkeypatch.setattr(pinned_ring.PinnedRing, "release_after", lambda ring, slot, event: ring.release(slot))
    fake_gpu(queue=FakeQueue(early=0.0))
    merged = merge_outputs(example_config("ties.yml", family), tmp_path / "out")
    assert not all(torch.equal(merged[k], t) for k, t in expected.items())


def test_the_fake_catches_a_result_read_before_its_copy(family, tmp_path, tmp_path_factory, fake_gpu, monkeypatch):
    expected = cpu_outputs("ties.yml", family, tmp_path_factory)

    def write_without_waiting(result, sink):
        sink(result.host)
        result.ring.release(result.slot)

    monkeypatch.setattr(cuda_staging._SlotResult, "write", write_without_waiting)
    fake_gpu(queue=FakeQueue(early=0.0))
    merged = merge_outputs(example_config("ties.yml", family), tmp_path / "out")
    assert not any(torch.equal(merged[k], t) for k, t in expected.items())
