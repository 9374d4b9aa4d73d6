// specdec_cuda._C: the thin Python face of libspecdec_ops.  Importing it loads
// the library, whose static initialisers register every torch.ops.specdec op.
// It holds no kernels and no op bindings: ops are called via torch.ops.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "ops/build_info.h"

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "specdec_cuda native library: registers torch.ops.specdec.* and reports build facts";
  const specdec::BuildInfo& info = specdec::build_info();
  m.attr("__version__") = info.version;
  m.attr("torch_version") = info.torch_version;
  m.attr("cuda_compiled") = info.cuda_compiled;
  m.attr("cuda_version") = info.cuda_version;
  m.attr("cuda_archs") = info.cuda_archs;
  m.def("op_names", &specdec::op_names, "Names of the ops in torch.ops.specdec");
  m.def("op_backends", &specdec::op_backends, py::arg("op"),
        "Backends (CPU, CUDA) with a kernel registered for one op");
}
