// Declarations of the CPU merge kernels bound in ../bindings.cpp as mergefast._C.
// Python (mergefast/kernels/cpu.py) validates arguments, computes the scalar constants the
// way the torch references do, allocates `out`, and calls these.
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

namespace mergefast {

// Sparsification of each task vector. Only None and Magnitude are implemented; the other
// values are reserved for breadcrumbs and DARE/DELLA (template parameter of the apply pass).
enum class Sparsify : int { None = 0, Magnitude = 1, MagnitudeOutliers = 2, Random = 3 };

void linear_cpu(const std::vector<at::Tensor>& xs, const std::vector<double>& weights,
                bool divide, double total, at::Tensor out);

// Returns true when every delta x_i - base was finite (so base and every x_i are).
// speculate: magnitude selection in one read of the inputs where it can (speculative.h);
// false forces the two-pass scheme (for tests and benchmarks).
bool task_arithmetic_cpu(const at::Tensor& base, const std::vector<at::Tensor>& xs,
                         const std::vector<double>& weights, const std::vector<int64_t>& keep,
                         int64_t sparsify, bool consensus, bool normalize, double divisor,
                         double lambda, at::Tensor out, bool speculate);

void magnitude_keep_cpu(const at::Tensor& base, const at::Tensor& x, int64_t keep, at::Tensor mask);

std::vector<double> slerp_dots_cpu(const at::Tensor& a, const at::Tensor& b);

void slerp_apply_cpu(const at::Tensor& a, const at::Tensor& b, double c0, double c1,
                     at::Tensor out);

}  // namespace mergefast
