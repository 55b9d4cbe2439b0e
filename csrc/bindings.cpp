// mergefast._C: Python bindings of the CPU merge kernels (see cpu/kernels.h).
// The public API and all argument checks a user can trigger live in mergefast/kernels/.
#include <torch/extension.h>

#include "cpu/common.h"
#include "cpu/kernels.h"
#include "cpu/speculative.h"

namespace py = pybind11;

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "mergefast CPU merge kernels (OpenMP); call them through mergefast.kernels";
  m.def("linear", &mergefast::linear_cpu, py::arg("xs"), py::arg("weights"), py::arg("divide"),
        py::arg("total"), py::arg("out"), py::call_guard<py::gil_scoped_release>());
  m.def("task_arithmetic", &mergefast::task_arithmetic_cpu, py::arg("base"), py::arg("xs"),
        py::arg("weights"), py::arg("keep"), py::arg("sparsify"), py::arg("consensus"),
        py::arg("normalize"), py::arg("divisor"), py::arg("lambda_"), py::arg("out"),
        py::arg("speculate") = true, py::call_guard<py::gil_scoped_release>());
  m.def("speculation_counts", &mergefast::speculation_counts);
  m.def("magnitude_keep", &mergefast::magnitude_keep_cpu, py::arg("base"), py::arg("x"),
        py::arg("keep"), py::arg("mask"), py::call_guard<py::gil_scoped_release>());
  m.def("slerp_dots", &mergefast::slerp_dots_cpu, py::arg("a"), py::arg("b"),
        py::call_guard<py::gil_scoped_release>());
  m.def("slerp_apply", &mergefast::slerp_apply_cpu, py::arg("a"), py::arg("b"), py::arg("c0"),
        py::arg("c1"), py::arg("out"), py::call_guard<py::gil_scoped_release>());
  m.attr("SPARSIFY_NONE") = 0;
  m.attr("SPARSIFY_MAGNITUDE") = 1;
  m.attr("BLOCK") = mergefast::kBlock;
}
