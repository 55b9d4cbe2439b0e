"""The methods added for mergekit 0.1.5 parity: DARE, breadcrumbs, DELLA, model_stock,
nuslerp, multislerp, karcher, sce, nearswap, ram, ramplus_tl, arcee_fusion.

Deterministic methods are checked against literal values derived by hand in the comments;
random ones (DARE, DELLA) for reproducibility, chunking/thread independence and statistics.
"""

from __future__ import annotations

import math

import pytest
import torch
from helpers import method_yaml
from safetensors.torch import load_file

import mergefast
from mergefast.errors import ConfigError, MergeError
from mergefast.kernels.fused import merge_group
from mergefast.methods import random as rng
from mergefast.methods.arcee_fusion import arcee_fusion
from mergefast.methods.karcher import karcher
from mergefast.methods.model_stock import model_stock
from mergefast.methods.multislerp import AntipodalError, multislerp
from mergefast.methods.nearswap import nearswap
from mergefast.methods.nuslerp import nuslerp, nuslerp_t
from mergefast.methods.ram import ram, ramplus_tl
from mergefast.methods.registry import MERGEKIT_METHODS, METHODS
from mergefast.methods.sce import sce
from mergefast.methods.task_arithmetic import (
    DellaRangeError,
    della_keep_probability,
    della_mask,
    l1_rescale,
    outlier_mask,
    random_mask,
    sparsify_delta,
    task_arithmetic,
)

F32, F64 = torch.float32, torch.float64
R2 = math.sqrt(0.5)  # 0.70710678...


def T(values, dtype=F32):
    return torch.tensor(values, dtype=dtype)


def close(actual, expected, atol=1e-6, rtol=1e-6):
    torch.testing.assert_close(actual, T(expected, actual.dtype), atol=atol, rtol=rtol)


def run(name, tensors, base_index, g=None, m=None, *, seed=0, tensor_name="t", out_dtype=F32):
    """merge_group with the method's defaults, overridden by `g` / per-model `m`."""
    spec = METHODS[name]
    gp = {p.name: p.default for p in spec.global_params}
    gp.update(g or {})
    mp = []
    for i in range(len(tensors)):
        params = {} if (i == base_index and not spec.base_params) else {p.name: p.default for p in spec.model_params}
        if params and m:
            params.update(m[i])
        mp.append(params)
    return merge_group(spec, tensors, base_index, gp, mp, out_dtype, seed=seed, tensor_name=tensor_name)


# ------------------------------------------------------------------ registry


def test_every_mergekit_method_is_registered():
    assert len(MERGEKIT_METHODS) == 20
    assert set(MERGEKIT_METHODS) == set(METHODS)


def test_every_method_but_passthrough_runs_on_a_kernel_and_mergefast_env_says_so():
    """The kernel adapters (kernels/fused.py) and what `mergefast env` lists per backend
    (kernels/dispatch.py) name the same methods: every method but passthrough, a plain copy."""
    from mergefast.kernels.dispatch import KERNEL_METHODS
    from mergefast.kernels.fused import FUSED

    kernel_methods = set(MERGEKIT_METHODS) - {"passthrough"}
    assert set(FUSED) - {"passthrough"} == kernel_methods
    for backend in ("cpu-ext", "triton"):
        assert set(KERNEL_METHODS[backend]) == kernel_methods, backend


@pytest.mark.parametrize(
    "name, normalize, rescale",
    [
        ("dare_ties", False, True),
        ("dare_linear", False, True),
        ("breadcrumbs", False, False),
        ("breadcrumbs_ties", False, False),
        ("della", True, True),
        ("della_linear", False, True),
    ],
)
def test_task_arithmetic_family_defaults(name, normalize, rescale):
    spec = METHODS[name]
    assert spec.needs_base and not spec.base_params
    assert spec.param("normalize").default is normalize
    assert spec.param("rescale").default is rescale
    assert spec.param("lambda").default == 1.0 and spec.param("int8_mask").default is False
    assert spec.param("weight").required and spec.param("density").default == 1.0
    if "breadcrumbs" in name:
        assert spec.param("gamma").default == 0.01 and spec.param("gamma") in spec.model_params
    if "della" in name:
        assert spec.param("epsilon").default == 0.15 and spec.param("epsilon") in spec.model_params


def test_other_method_parameters():
    assert METHODS["nuslerp"].param("nuslerp_flatten").default is True
    assert METHODS["nuslerp"].param("nuslerp_row_wise").default is False
    assert METHODS["multislerp"].param("eps").default == 1e-8
    assert METHODS["karcher"].param("max_iter").default == 10 and METHODS["karcher"].param("tol").default == 1e-5
    assert METHODS["sce"].param("select_topk").default == 1.0
    assert METHODS["ramplus_tl"].param("r").default == 0.1 and METHODS["ramplus_tl"].param("alpha").default == 0.2
    assert METHODS["ram"].param("epsilon").default == 1e-5
    assert METHODS["nearswap"].param("t").required
    assert METHODS["model_stock"].param("filter_wise").default is False


@pytest.mark.parametrize(
    "name, n, has_base, ok",
    [
        ("nuslerp", 2, False, True),
        ("nuslerp", 3, True, True),
        ("nuslerp", 2, True, False),
        ("nuslerp", 3, False, False),
        ("model_stock", 2, True, False),
        ("model_stock", 3, True, True),
        ("nearswap", 3, True, False),
        ("arcee_fusion", 2, True, True),
        ("sce", 2, False, False),
        ("multislerp", 1, True, False),
        ("multislerp", 1, False, True),
        ("karcher", 3, False, True),
    ],
)
def test_input_rules(name, n, has_base, ok):
    assert (METHODS[name].input_error(n, has_base) is None) is ok


def test_merge_group_enforces_input_rules_naming_the_tensor():
    with pytest.raises(ConfigError, match="tensor model.norm.weight: nuslerp"):
        run("nuslerp", [T([1.0]), T([2.0]), T([3.0])], None, m=[{"weight": 1}] * 3, tensor_name="model.norm.weight")


# ------------------------------------------------------------------ counter-based generator


def _splitmix64_reference(state: int, count: int) -> list[int]:
    """Textbook splitmix64 (independent of the module): state += golden; mix."""
    out = []
    for _ in range(count):
        state = (state + 0x9E3779B97F4A7C15) % 2**64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % 2**64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % 2**64
        out.append(z ^ (z >> 31))
    return out


def test_splitmix64_known_answer():
    # splitmix64 seeded with 0 starts e220a8397b1dcdaf, 6e789e6aa1b965f4 (published vector).
    assert _splitmix64_reference(0, 2) == [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4]
    assert rng.mix64_int(0x9E3779B97F4A7C15) == 0xE220A8397B1DCDAF


def test_uniform_is_the_top_24_bits_of_a_splitmix64_stream():
    key = rng.stream_key(7, "model.layers.0.mlp.up_proj.weight", 2)
    expected = [(z >> 40) / 2**24 for z in _splitmix64_reference(key, 64)]
    u = rng.uniform(7, "model.layers.0.mlp.up_proj.weight", 2, 64)
    assert u.dtype == F32 and torch.equal(u, T(expected))


def test_uniform_golden_values():
    # Pinned so C++/Triton kernels can check bit-exactness: (bits >> 40) for seed 0,
    # tensor "a", model 0, elements 0..3.
    u = rng.uniform(0, "a", 0, 4)
    assert [int(v) for v in (u * 2**24).tolist()] == [15288136, 7597750, 12048047, 16007116]


def test_uniform_chunks_equal_whole():
    whole = rng.uniform(3, "w", 1, 10_001)
    parts = torch.cat([rng.uniform(3, "w", 1, 4_000), rng.uniform(3, "w", 1, 6_001, start=4_000)])
    assert torch.equal(whole, parts)


def test_uniform_keys():
    base = rng.uniform(0, "w", 0, 256)
    assert torch.equal(base, rng.uniform(0, "w", 0, 256))
    for other in (rng.uniform(1, "w", 0, 256), rng.uniform(0, "v", 0, 256), rng.uniform(0, "w", 1, 256)):
        assert not torch.equal(base, other)
    assert float(base.min()) >= 0 and float(base.max()) < 1


def test_uniform_independent_of_thread_count():
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = rng.uniform(5, "w", 0, 200_000)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, rng.uniform(5, "w", 0, 200_000))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")
def test_uniform_same_on_cuda():
    assert torch.equal(rng.uniform(5, "w", 0, 100_000, device="cuda").cpu(), rng.uniform(5, "w", 0, 100_000))


def test_random_draws_ignore_torch_global_rng():
    torch.manual_seed(1)
    a = random_mask(torch.ones(1000), 0.5, seed=0, tensor_name="w", model_index=0)
    torch.manual_seed(2)
    torch.rand(10)
    b = random_mask(torch.ones(1000), 0.5, seed=0, tensor_name="w", model_index=0)
    assert torch.equal(a, b)


# ------------------------------------------------------------------ DARE


def test_dare_mask_reproducible_per_seed():
    d = torch.ones(4096)
    a = random_mask(d, 0.5, seed=1, tensor_name="w", model_index=0)
    assert torch.equal(a, random_mask(d, 0.5, seed=1, tensor_name="w", model_index=0))
    assert not torch.equal(a, random_mask(d, 0.5, seed=2, tensor_name="w", model_index=0))


def test_dare_mask_is_uniform_below_density_whole_or_chunked():
    # mask_i = u_i < density, so a mask computed in two chunks by element index matches.
    d = torch.ones(3, 1000)
    mask = random_mask(d, 0.3, seed=4, tensor_name="w", model_index=1).flatten()
    chunks = torch.cat([rng.uniform(4, "w", 1, 1200) < 0.3, rng.uniform(4, "w", 1, 1800, start=1200) < 0.3])
    assert torch.equal(mask, chunks)


def test_dare_kept_fraction_is_density():
    # 2M Bernoulli(0.3) draws: std of the fraction 3.2e-4; allow 0.002 (6 sigma).
    mask = random_mask(torch.ones(2_000_000), 0.3, seed=0, tensor_name="big", model_index=0)
    assert abs(mask.float().mean().item() - 0.3) < 0.002


@pytest.mark.parametrize("density, kept", [(1.0, 100), (1.5, 100), (0.0, 0), (-1.0, 0)])
def test_dare_density_edges(density, kept):
    assert int(random_mask(torch.ones(100), density, seed=0, tensor_name="w", model_index=0).sum()) == kept


def test_dare_rescale_restores_l1():
    delta = torch.linspace(-1, 1, 100_001)
    out = sparsify_delta(delta, "random", 0.2, rescale=True, seed=3, tensor_name="w")
    assert (out != 0).float().mean().item() == pytest.approx(0.2, abs=0.01)
    assert out.abs().sum().item() == pytest.approx(delta.abs().sum().item(), rel=1e-5)


def test_dare_linear_end_to_end_values_with_density_one():
    # density 1 keeps everything, rescale factor 1: base + 0.5*(x - base) = [0.5, 1, 2].
    out = run("dare_linear", [T([0.0, 0.0, 1.0]), T([1.0, 2.0, 3.0])], 0, m=[{}, {"weight": 0.5}])
    close(out, [0.5, 1.0, 2.0])


def test_dare_masks_differ_per_model_tensor_and_seed():
    base, x = torch.zeros(4096), torch.ones(4096)
    m = [{}, {"weight": 1, "density": 0.5}, {"weight": 1, "density": 0.5}]

    def dare(**kw):
        return run("dare_linear", [base, x, x], 0, m=m, g={"rescale": False}, **kw)

    one = dare()
    # two independent masks (one per model): values 0, 1 and 2 all appear
    assert set(one.unique().tolist()) == {0.0, 1.0, 2.0}
    assert torch.equal(one, dare())
    assert not torch.equal(one, dare(tensor_name="u"))
    assert not torch.equal(one, dare(seed=9))


# ------------------------------------------------------------------ rescale


def test_l1_rescale_hand_values():
    # magnitude keeps [0, 0, 3, 4] of [1, 2, 3, 4] (density 0.5); L1 10 / 7 -> [0, 0, 30/7, 40/7].
    out = sparsify_delta(T([1.0, 2.0, 3.0, 4.0]), "magnitude", 0.5, rescale=True)
    close(out, [0.0, 0.0, 30 / 7, 40 / 7])


def test_l1_rescale_skipped_for_tiny_norms():
    tiny = T([1e-8, 0.0])
    assert torch.equal(l1_rescale(tiny, T([1.0, 1.0])), tiny)
    assert torch.equal(l1_rescale(T([1.0, 0.0]), T([5e-8, 0.0])), T([1.0, 0.0]))


def test_ties_with_rescale_true():
    # one model, delta [1,2,3,4], density 0.5 -> [0,0,3,4] -> x 10/7; weight 1, normalize:
    # divisor 1 where kept -> base + [0, 0, 30/7, 40/7].
    out = run(
        "ties",
        [torch.zeros(4), T([1.0, 2.0, 3.0, 4.0])],
        0,
        g={"rescale": True},
        m=[{}, {"weight": 1.0, "density": 0.5}],
    )
    close(out, [0.0, 0.0, 30 / 7, 40 / 7])


# ------------------------------------------------------------------ breadcrumbs


def test_outlier_mask_keeps_middle_band():
    # n=8, density 0.5, gamma 0.125: target 4, n_top 1, n_bot 3. |d| ascending (ties by index):
    # 0(i5) .5(i0) 1(i2) 1(i7) 2(i4) 2(i6) 3(i3) 4(i1); positions [3, 7) = i7 i4 i6 i3.
    d = T([0.5, -4.0, 1.0, 3.0, -2.0, 0.0, 2.0, 1.0])
    assert outlier_mask(d, 0.5, 0.125).tolist() == [False, False, False, True, True, False, True, True]


def test_outlier_mask_small_tensor_default_gamma_keeps_top_target():
    # 0.1.5 fix: n=8, gamma 0.01 -> n_top 0, n_bot 4: positions [4, 8) = i4 i6 i3 i1.
    d = T([0.5, -4.0, 1.0, 3.0, -2.0, 0.0, 2.0, 1.0])
    assert outlier_mask(d, 0.5).tolist() == [False, True, False, True, True, False, True, False]


def test_outlier_mask_negative_n_bot_shrinks_n_top():
    # n=10, density 0.9, gamma 0.2: target 9, n_top 2, n_bot -1 -> n_top 1, n_bot 0:
    # keep the 9 smallest, drop only the largest (10 at index 3).
    d = T([3.0, 1.0, 4.0, 10.0, 5.0, 9.0, 2.0, 6.0, 8.0, 7.0])
    assert outlier_mask(d, 0.9, 0.2).tolist() == [True] * 3 + [False] + [True] * 6


def test_outlier_mask_keeps_exactly_target():
    d = torch.randn(10_007, generator=torch.Generator().manual_seed(0))
    for density, gamma in [(0.3, 0.01), (0.5, 0.1), (0.05, 0.5), (0.99, 0.05)]:
        assert int(outlier_mask(d, density, gamma).sum()) == int(density * d.numel())


def test_breadcrumbs_and_breadcrumbs_ties_values():
    # density 0.5, gamma 0.25, n=4: target 2, n_top 1, n_bot 1 -> keep sorted positions 1, 2.
    # x1 = [1,2,3,4] -> [0,2,3,0]; x2 = [-4,-3,2,1] (|.| 4,3,2,1) -> keep i2, i1 -> [0,-3,2,0].
    # breadcrumbs: sum -> [0,-1,5,0]. ties: signs of the sum [+,-,+,+]; agreeing parts
    # [0,-3,5,0]; normalize is off by default.
    tensors = [torch.zeros(4), T([1.0, 2.0, 3.0, 4.0]), T([-4.0, -3.0, 2.0, 1.0])]
    m = [{}, {"weight": 1.0, "density": 0.5, "gamma": 0.25}, {"weight": 1.0, "density": 0.5, "gamma": 0.25}]
    close(run("breadcrumbs", tensors, 0, m=m), [0.0, -1.0, 5.0, 0.0])
    close(run("breadcrumbs_ties", tensors, 0, m=m), [0.0, -3.0, 5.0, 0.0])


# ------------------------------------------------------------------ DELLA


def test_della_keep_probability_hand_values():
    # |d| = [.1, .4, .2, .3, 0] ranks (0-based) [1, 4, 2, 3, 0]; p = 0.4 + r/4 * 0.2.
    p = della_keep_probability(T([0.1, -0.4, 0.2, 0.3, 0.0]), 0.5, 0.1)
    close(p, [0.45, 0.6, 0.5, 0.55, 0.4])


def test_della_keep_probability_is_per_row_with_ties_by_index():
    # rows ranked separately; [1, 1] -> ranks 0, 1 -> [0.4, 0.6]; [3, -1] -> [0.6, 0.4].
    close(della_keep_probability(T([[1.0, 1.0], [3.0, -1.0]]), 0.5, 0.1), [[0.4, 0.6], [0.6, 0.4]])


def test_della_single_column_rows_get_density():
    close(della_keep_probability(T([[1.0], [2.0]]), 0.5, 0.1), [[0.5], [0.5]])


def test_della_mask_is_uniform_below_p():
    d = torch.randn(64, 256, generator=torch.Generator().manual_seed(1))
    mask = della_mask(d, 0.4, 0.2, seed=2, tensor_name="w", model_index=0)
    assert torch.equal(mask, rng.uniform_like(d, 2, "w", 0) < della_keep_probability(d, 0.4, 0.2))


def test_della_statistics():
    # mean keep probability = density; the largest quarter of each row is kept more often
    # (p near density + eps) than the smallest quarter (p near density - eps).
    d = torch.randn(256, 1024, generator=torch.Generator().manual_seed(2))
    mask = della_mask(d, 0.5, 0.3, seed=0, tensor_name="w", model_index=0)
    assert mask.float().mean().item() == pytest.approx(0.5, abs=0.005)
    ranks = d.abs().argsort(dim=-1).argsort(dim=-1)
    assert mask[ranks >= 768].float().mean() > 0.7 and mask[ranks < 256].float().mean() < 0.3


def test_della_rescale_restores_l1():
    d = torch.randn(128, 512, generator=torch.Generator().manual_seed(3))
    out = sparsify_delta(d, "della", 0.3, epsilon=0.1, rescale=True, seed=1, tensor_name="w")
    assert out.abs().sum().item() == pytest.approx(d.abs().sum().item(), rel=1e-5)


@pytest.mark.parametrize("density, epsilon", [(0.1, 0.15), (0.9, 0.15), (0.5, 0.5)])
def test_della_range_error(density, epsilon):
    with pytest.raises(DellaRangeError, match="tensor w"):
        della_mask(torch.ones(4, 4), density, epsilon, seed=0, tensor_name="w", model_index=0)
    with pytest.raises(ConfigError, match=rf"tensor model.x.weight: .*density={density}, epsilon={epsilon}"):
        run(
            "della",
            [torch.zeros(4), torch.ones(4)],
            0,
            m=[{}, {"weight": 1, "density": density, "epsilon": epsilon}],
            tensor_name="model.x.weight",
        )


def test_della_density_one_skips_range_check():
    out = run("della_linear", [torch.zeros(3), T([1.0, 2.0, 3.0])], 0, m=[{}, {"weight": 1, "density": 1.0}])
    close(out, [1.0, 2.0, 3.0])


def test_della_reproducible():
    tensors = [torch.zeros(64, 64), torch.randn(64, 64, generator=torch.Generator().manual_seed(4))]
    m = [{}, {"weight": 1.0, "density": 0.5}]
    a = run("della", tensors, 0, m=m, seed=1)
    assert torch.equal(a, run("della", tensors, 0, m=m, seed=1))
    assert not torch.equal(a, run("della", tensors, 0, m=m, seed=2))


def test_task_arithmetic_none_and_magnitude_unchanged_by_new_arguments():
    base, x = torch.zeros(6), T([1.0, -5.0, 2.0, 0.5, 3.0, -1.0])
    for sparsify in ("none", "magnitude"):
        plain = task_arithmetic(base, [x], [0.7], densities=[0.5], sparsify=sparsify)
        keyed = task_arithmetic(base, [x], [0.7], densities=[0.5], sparsify=sparsify, seed=5, tensor_name="q")
        assert torch.equal(plain, keyed)


# ------------------------------------------------------------------ model_stock


def test_model_stock_hand_values():
    # o1 = [3,4], o2 = [4,3]: cos = 24/25; t = 2(24/25)/(1 + 24/25) = 48/49.
    # mean = [4.5, 4.5]; 48/49 * 4.5 + 1/49 * 1 = 217/49 = 31/7.
    out = model_stock(T([1.0, 1.0]), [T([4.0, 5.0]), T([5.0, 4.0])])
    close(out, [31 / 7, 31 / 7])


def test_model_stock_antiparallel_guard_gives_base():
    # o1 = -o2: cos = -1, 1 + (N-1)cos = 0 -> t = 0 -> base.
    close(model_stock(T([2.0, 2.0]), [T([3.0, 2.0]), T([1.0, 2.0])]), [2.0, 2.0])


def test_model_stock_three_orthogonal_gives_base():
    base = torch.zeros(3)
    close(model_stock(base, [T([1.0, 0, 0]), T([0, 1.0, 0]), T([0, 0, 1.0])]), [0.0, 0.0, 0.0])


def test_model_stock_filter_wise_vs_flat():
    # rows: [3,4]/[4,3] -> t = 48/49, mean 3.5 -> 24/7; [1,0]/[0,1] -> cos 0 -> t 0 -> base 0.
    # flat: dot 24, norms sqrt(26) -> cos 12/13, t = 24/25; mean [3.5,3.5,.5,.5] * 24/25.
    base = torch.zeros(2, 2)
    xs = [T([[3.0, 4.0], [1.0, 0.0]]), T([[4.0, 3.0], [0.0, 1.0]])]
    close(model_stock(base, xs, filter_wise=True), [[24 / 7, 24 / 7], [0.0, 0.0]])
    close(model_stock(base, xs), [[3.36, 3.36], [0.48, 0.48]])


# ------------------------------------------------------------------ nuslerp


def test_nuslerp_t():
    assert nuslerp_t(1, 3) == 0.75 and nuslerp_t(1, -1) == 0.5 and nuslerp_t(2, 2) == 0.5


def test_nuslerp_flat_values():
    # orthogonal unit vectors, t = 0.5: sin(pi/4) (x0 + x1) / 1.
    close(nuslerp([T([1.0, 0.0]), T([0.0, 1.0])], [1.0, 1.0]), [R2, R2])
    # t = 0.75, raw norms 2: [2 sin(pi/8), 2 sin(3pi/8)] = [0.76536686, 1.84775907].
    close(nuslerp([T([2.0, 0.0]), T([0.0, 2.0])], [1.0, 3.0]), [0.76536686, 1.84775907])


def test_nuslerp_with_base_slerps_task_vectors():
    # deltas [1,0], [0,1] -> base + [R2, R2].
    close(nuslerp([T([2.0, 1.0]), T([1.0, 2.0])], [1.0, 1.0], T([1.0, 1.0])), [1 + R2, 1 + R2])


def test_nuslerp_rows_and_columns():
    x0, x1 = T([[1.0, 0.0], [0.0, 1.0]]), T([[0.0, 1.0], [0.0, 1.0]])
    # last axis: row0 orthogonal -> [R2, R2]; row1 identical (collinear) -> lerp [0, 1].
    close(nuslerp([x0, x1], [1, 1], flatten=False), [[R2, R2], [0.0, 1.0]])
    # axis 0: col0 [1,0] vs [0,0] (norm clamped, cos 0) -> [R2, 0];
    # col1 [0,1] vs [1,1]: theta = pi/4, sin(pi/8)/sin(pi/4) = 0.5411961 times [0,1]+[1,1].
    close(nuslerp([x0, x1], [1, 1], flatten=False, row_wise=True), [[R2, 0.5411961], [0.0, 1.0823922]])


# ------------------------------------------------------------------ multislerp


def test_multislerp_values():
    # units [1,0], [0,1]; w normalised [.25, .75]; m = [1,3]/sqrt(10); the tangent sum is 0,
    # so the result is m * sum(w n) = m.
    close(multislerp([T([1.0, 0.0]), T([0.0, 1.0])], [1.0, 3.0]), [0.31622777, 0.94868330])
    # norms 2 and 4, equal weights: [R2, R2] * 3.
    close(multislerp([T([2.0, 0.0]), T([0.0, 4.0])], [1.0, 1.0]), [3 * R2, 3 * R2])
    # with a base the task vectors are combined and the base added back.
    close(multislerp([T([3.0, 1.0]), T([1.0, 5.0])], [1.0, 1.0], T([1.0, 1.0])), [1 + 3 * R2, 1 + 3 * R2])


def test_multislerp_single_input_and_antipodal():
    close(multislerp([T([1.0, 2.0])], [0.3]), [1.0, 2.0])
    # two antipodal inputs fall back to w0 x0 + w1 x1 = 0; three raise.
    close(multislerp([T([1.0, 0.0]), T([-1.0, 0.0])], [1.0, 1.0]), [0.0, 0.0])
    with pytest.raises(AntipodalError):
        multislerp([T([1.0, 0.0]), T([-1.0, 0.0]), T([0.0, 0.0])], [1.0, 1.0, 1.0])
    with pytest.raises(MergeError, match="tensor w"):
        run("multislerp", [T([1.0, 0.0]), T([-1.0, 0.0]), T([0.0, 0.0])], None, m=[{"weight": 1}] * 3, tensor_name="w")


# ------------------------------------------------------------------ karcher


def test_karcher_values():
    # two orthogonal directions: the mean direction [R2, R2] is already stationary.
    close(karcher([T([2.0, 0.0]), T([0.0, 4.0])]), [3 * R2, 3 * R2])
    # angles 0, 0, 90 degrees: the Karcher mean on the circle is 30 degrees.
    close(karcher([T([1.0, 0.0]), T([1.0, 0.0]), T([0.0, 1.0])]), [math.sqrt(3) / 2, 0.5], atol=1e-5)


def test_karcher_zero_input_counts_in_the_norm_only():
    # valid [1,0], [0,1] -> direction [R2, R2]; scale = mean of all norms (0+1+1)/3.
    close(karcher([T([0.0, 0.0]), T([1.0, 0.0]), T([0.0, 1.0])]), [2 / 3 * R2, 2 / 3 * R2])
    close(karcher([torch.zeros(2), torch.zeros(2)]), [0.0, 0.0])


# ------------------------------------------------------------------ sce


def test_sce_values():
    # tau1 = [1,2,-1], tau2 = [3,-2,-1]; energies 2 and 14/3 -> omega [.3, .7];
    # sum [4,0,-2] -> signs [+,+,-]; agree1 all, agree2 [1,0,1]:
    # [(.3 + 2.1)/1, .6/.3, (-.3 - .7)/1] = [2.4, 2, -1].
    close(sce(torch.zeros(3), [T([1.0, 2.0, -1.0]), T([3.0, -2.0, -1.0])]), [2.4, 2.0, -1.0])


def test_sce_select_topk():
    # variances [1, 4, 0]: 2 non-zero, select_topk 0.5 -> k 1 -> keep element 1 only.
    # tau -> [0,2,0], [0,-2,0]; omega [.5,.5]; sum 0 -> '+'; only model 1 agrees: 1/.5 = 2.
    close(sce(torch.zeros(3), [T([1.0, 2.0, -1.0]), T([3.0, -2.0, -1.0])], select_topk=0.5), [0.0, 2.0, 0.0])


# ------------------------------------------------------------------ nearswap


def test_nearswap_values():
    # |diff| [.1, 1, 2, 0 -> 1e-6], t .5: w [1, .5, .25, 1] -> [.1, .5, -.5, 0].
    close(nearswap(torch.zeros(4), T([0.1, 1.0, -2.0, 0.0]), 0.5), [0.1, 0.5, -0.5, 0.0])
    close(nearswap(T([1.0, 1.0]), T([3.0, 1.25]), 0.5), [1.5, 1.25])


# ------------------------------------------------------------------ ram / ramplus_tl


def test_ram_values():
    # tau1 = [1,2,0,1e-6], tau2 = [3,0,0,0]; active counts [2,1,0,0]:
    # [(1+3)/2, 2, base, base (1e-6 is below epsilon)].
    close(ram(torch.zeros(4), [T([1.0, 2.0, 0.0, 1e-6]), T([3.0, 0.0, 0.0, 0.0])]), [2.0, 2.0, 0.0, 0.0])


def test_ramplus_tl_values():
    # model 1: shared 1 (element 0), unique 2 -> rho 0.5; default alpha 0.2 clamps it:
    # lambda = 1 + 0.1*0.2 = 1.02. With r .5, alpha 1: lambda = 1.25.
    xs = [T([1.0, 2.0, 4.0, 0.0]), T([3.0, 0.0, 0.0, 0.0])]
    close(ramplus_tl(torch.zeros(4), xs), [2.0, 2.04, 4.08, 0.0])
    close(ramplus_tl(torch.zeros(4), xs, r=0.5, alpha=1.0), [2.0, 2.5, 5.0, 0.0])


def test_ramplus_tl_epsilon_zero_with_an_unchanged_model():
    # model 2 left the tensor unchanged: no shared and no unique active element, so 0 / 0
    # (mergekit: NaN everywhere); its factor is 1 and model 1's unique updates stay as they are
    xs = [T([1.0, 2.0, 0.0]), T([0.0, 0.0, 0.0])]
    close(ramplus_tl(torch.zeros(3), xs, epsilon=0.0), [1.0, 2.0, 0.0])


# ------------------------------------------------------------------ arcee_fusion


def test_arcee_fusion_values():
    # One row: KL is one positive scalar, so importance ranks like |delta|.
    # |delta| sorted: .1 .1 .1 .1 .2 .2 .3 5; n=8: Q1 = s[1] = .1, median = s[3] = .1,
    # Q3 = s[5] = .2 -> threshold .1 + 1.5*.1 = .25: keep 5.0 and -0.3.
    base = torch.ones(8)
    delta = T([0.1, -0.1, 0.2, 0.1, -0.2, 0.1, 5.0, -0.3])
    close(arcee_fusion(base, base + delta), [1, 1, 1, 1, 1, 1, 6.0, 0.7])


def test_arcee_fusion_identical_is_base():
    x = T([[1.0, 2.0], [3.0, 4.0]])
    close(arcee_fusion(x, x.clone()), [[1.0, 2.0], [3.0, 4.0]])


# ------------------------------------------------------------------ end to end


E2E = {
    "dare_ties": dict(model_params="weight: 0.5, density: 0.5"),
    "dare_linear": dict(model_params="weight: 0.5, density: 0.5"),
    "breadcrumbs": dict(model_params="weight: 0.5, density: 0.5, gamma: 0.1"),
    "breadcrumbs_ties": dict(model_params="weight: 0.5, density: 0.5"),
    "della": dict(model_params="weight: 0.5, density: 0.5, epsilon: 0.1"),
    "della_linear": dict(model_params="weight: 0.5, density: 0.5"),
    "model_stock": dict(params="filter_wise: false"),
    "nuslerp": dict(model_params="weight: 0.5"),
    "multislerp": dict(base=False, models=("ft-a", "ft-b", "ft-c"), model_params="weight: 1.0"),
    "karcher": dict(base=False, models=("ft-a", "ft-b", "ft-c")),
    "sce": dict(params="select_topk: 0.5"),
    "nearswap": dict(models=("ft-a",), params="t: 0.001"),
    "ram": dict(),
    "ramplus_tl": dict(params="r: 0.2"),
    "arcee_fusion": dict(models=("ft-a",)),
}


@pytest.mark.parametrize("method", sorted(E2E))
def test_end_to_end(method, f32_family, tmp_path):
    out = tmp_path / "out"
    mergefast.merge(method_yaml(method, f32_family, **E2E[method]), out, quiet=True, random_seed=3)
    tensors = (
        load_file(out / "model.safetensors")
        if (out / "model.safetensors").exists()
        else {k: v for f in sorted(out.glob("*.safetensors")) for k, v in load_file(f).items()}
    )
    base = load_file(f32_family["base"] / "model.safetensors")
    assert set(tensors) == set(base)
    for name, t in tensors.items():
        assert t.shape == base[name].shape and torch.isfinite(t).all(), name


def test_end_to_end_dare_reproducible_per_seed(f32_family, tmp_path):
    config = method_yaml("dare_ties", f32_family, **E2E["dare_ties"])
    runs = {}
    for tag, seed in (("a", 1), ("b", 1), ("c", 2)):
        mergefast.merge(config, tmp_path / tag, quiet=True, random_seed=seed)
        runs[tag] = load_file(tmp_path / tag / "model.safetensors")
    name = "model.layers.0.mlp.up_proj.weight"
    assert torch.equal(runs["a"][name], runs["b"][name])
    assert not torch.equal(runs["a"][name], runs["c"][name])


def test_end_to_end_della_range_error(f32_family, tmp_path):
    config = method_yaml("della", f32_family, model_params="weight: 0.5, density: 0.1, epsilon: 0.15")
    with pytest.raises(ConfigError, match=r"density=0.1, epsilon=0.15"):
        mergefast.merge(config, tmp_path / "out", quiet=True)
    assert not (tmp_path / "out").exists()


def test_end_to_end_nuslerp_needs_two_non_base_models(f32_family, tmp_path):
    config = method_yaml("nuslerp", f32_family, base=False, models=("ft-a", "ft-b", "ft-c"), model_params="weight: 1")
    with pytest.raises(ConfigError, match="nuslerp takes exactly 2 model"):
        mergefast.merge(config, tmp_path / "out", quiet=True)


def test_end_to_end_rescale_true_is_accepted(f32_family, tmp_path):
    config = method_yaml("ties", f32_family, model_params="weight: 0.5, density: 0.5", params="rescale: true")
    mergefast.merge(config, tmp_path / "out", quiet=True)
    assert (tmp_path / "out").exists()
