"""The kernel API as callers outside `mergefast yaml` use it (notebooks, merge searches,
training code): argument mistakes, autograd, aliasing, layouts and memory errors."""

from __future__ import annotations

import pytest
import torch

from mergefast import kernels, methods


@pytest.fixture
def auto(monkeypatch):
    """Automatic dispatch with clean failure records."""
    monkeypatch.delenv("MERGEFAST_BACKEND", raising=False)
    monkeypatch.setattr(kernels, "_broken", {})
    monkeypatch.setattr(kernels, "_warned", set())
    return kernels.backend("cpu")


def _inputs(n=64, k=2, seed=0, **kw):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, generator=g, **kw)
    return base, [torch.randn(n, generator=g, **kw) for _ in range(k)]


def test_a_bad_argument_does_not_switch_the_backend_off(auto):
    base, xs = _inputs()
    with pytest.raises(TypeError):
        kernels.slerp(xs[0], xs[1], None)
    with pytest.raises(TypeError):
        kernels.ties(base, xs, [0.5, 0.5], [0.5, 0.5], lambda_=None)
    with pytest.raises(ValueError):
        kernels.ties(base, xs, [0.5, 0.5], [0.5, 0.5], lambda_="big")
    assert kernels._broken == {} and kernels.backend("cpu") == auto


def test_out_of_memory_raises_and_does_not_switch_the_backend_off(auto, monkeypatch):
    if auto != "cpu-ext":
        pytest.skip("needs the C++ CPU kernels")
    from mergefast.kernels import cpu

    def no_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("pretend: out of memory")

    monkeypatch.setattr(cpu, "linear", no_memory)
    with pytest.raises(torch.OutOfMemoryError):
        kernels.linear(_inputs()[1], [0.5, 0.5])
    assert kernels._broken == {} and kernels.backend("cpu") == "cpu-ext"


@pytest.mark.parametrize("op", ["linear", "ties", "task_arithmetic", "slerp"])
def test_inputs_that_need_gradients_get_them(auto, op):
    """The kernels compute without a graph: such calls take the reference, whose gradients
    reach the tensors (they were silently detached)."""
    base, xs = _inputs(requires_grad=True)
    calls = {
        "linear": lambda m: m.linear(xs, [0.3, 0.7]),
        "ties": lambda m: m.ties(base, xs, [0.3, 0.7], [0.5, 0.5]),
        "task_arithmetic": lambda m: m.task_arithmetic(base, xs, [0.3, 0.7]),
        "slerp": lambda m: m.slerp(xs[0], xs[1], 0.3),
    }
    grads = []
    for module in (kernels, methods):
        out = calls[op](module)
        assert out.grad_fn is not None
        grads.append(torch.autograd.grad(out.square().sum(), xs))
    for got, want in zip(*grads):
        assert torch.equal(got, want)
    with torch.no_grad():
        assert calls[op](kernels).grad_fn is None  # no graph wanted: the kernels run


def test_a_weight_that_wants_a_gradient_is_an_error(auto):
    """Weights, lambda and t are read as numbers; a tensor that requires grad would silently
    get none."""
    base, xs = _inputs()
    w = torch.tensor(0.7, requires_grad=True)
    for call in (
        lambda: kernels.task_arithmetic(base, xs[:1], [w]),
        lambda: kernels.ties(base, xs[:1], [1.0], [0.5], lambda_=w),
        lambda: kernels.linear(xs[:1], [w]),
        lambda: kernels.slerp(xs[0], xs[1], w),
    ):
        with pytest.raises(TypeError, match="requires grad"):
            call()
    with torch.no_grad():
        kernels.task_arithmetic(base, xs[:1], [w])
    assert kernels.task_arithmetic(base, xs[:1], [w.detach()]).grad_fn is None


def test_results_never_alias_the_inputs(auto):
    x = torch.zeros(4)
    for out in (kernels.passthrough(x), kernels.passthrough(x, 1.0), kernels.task_arithmetic(x, [], [])):
        out += 1
        assert torch.equal(x, torch.zeros(4))


def test_sparse_inputs_are_a_clear_error(auto):
    s = torch.zeros(4).to_sparse()
    with pytest.raises(TypeError, match="to_dense"):
        kernels.linear([s, s], [0.5, 0.5])
    with pytest.raises(TypeError, match="to_dense"):
        methods.linear([s, s], [0.5, 0.5])


def test_reference_rejects_short_parameter_lists():
    base, xs = _inputs()
    for kw in (dict(densities=[0.5]), dict(gammas=[0.1]), dict(epsilons=[0.1])):
        with pytest.raises(ValueError, match="2 tensors and 1"):
            methods.task_arithmetic(base, xs, [1.0, 1.0], sparsify="magnitude", **kw)


def test_slerp_of_huge_values_keeps_its_angle(auto):
    """|x| ~ 3e19 overflows float32 sums of squares; the reference normalises first, and the
    kernel call takes it there (it fell back to a straight lerp)."""
    a, b = torch.tensor([3e19, 3e19]), torch.tensor([3e19, -1e19])
    assert torch.equal(kernels.slerp(a, b, 0.5), methods.slerp(a, b, 0.5))
    assert not torch.allclose(kernels.slerp(a, b, 0.5), 0.5 * a + 0.5 * b)


def test_selection_options_are_checked_and_frozen():
    """SelectionOptions picks how the magnitude selection runs, never what it selects: bad
    values are refused when built, and it cannot be changed afterwards."""
    import dataclasses

    from mergefast.kernels import SelectionOptions

    for bad in (
        dict(two_pass="radix"),
        dict(candidates="sort"),
        dict(one_read_min=0),
        dict(one_read_block=1000),
        dict(hist_programs_per_sm=0),
    ):
        with pytest.raises(ValueError):
            SelectionOptions(**bad)
    with pytest.raises(dataclasses.FrozenInstanceError):
        SelectionOptions().one_read = False
    base, xs = _inputs()
    with pytest.raises(TypeError, match="SelectionOptions"):
        kernels.ties(base, xs, [0.5, 0.5], [0.5, 0.5], selection={"one_read": False})


def test_every_selection_gives_the_same_merge(auto):
    from mergefast.kernels import SelectionOptions

    base, xs = _inputs(n=70_001, k=3)
    want = methods.ties(base, xs, [0.5, -0.3, 0.9], [0.5, 0.2, 0.7])
    for options in (SelectionOptions(), SelectionOptions(one_read=False), SelectionOptions(one_read_min=1 << 16)):
        assert torch.equal(kernels.ties(base, xs, [0.5, -0.3, 0.9], [0.5, 0.2, 0.7], selection=options), want)
