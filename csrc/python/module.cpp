// specdec_cuda._C: the thin Python face of libspecdec_ops.  Importing it loads
// the library, whose static initialisers register every torch.ops.specdec op.
// It holds no kernels and no op bindings: ops are called via torch.ops.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <cstdint>

#include "ops/build_info.h"
#include "specdec/philox.h"

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

  // The torch-free Philox header, exposed for the tests (bit-exact comparison
  // with the pure-PyTorch twin in specdec_cuda/_philox.py).
  m.def(
      "philox_uniform",
      [](int64_t seed, int64_t offset, int64_t index) {
        return specdec::philox::uniform(static_cast<uint64_t>(seed), static_cast<uint64_t>(offset),
                                        static_cast<uint64_t>(index));
      },
      py::arg("seed"), py::arg("offset"), py::arg("index"),
      "uniform(seed, offset, index) of specdec/philox.h: a float in [0, 1); the int64\n"
      "arguments are reinterpreted as uint64 (two's complement)");
  m.def(
      "philox4x32_10",
      [](const std::array<uint32_t, 4>& ctr, const std::array<uint32_t, 2>& key) {
        const specdec::philox::U32x4 out = specdec::philox::philox4x32_10(
            specdec::philox::U32x4{{ctr[0], ctr[1], ctr[2], ctr[3]}}, specdec::philox::U32x2{{key[0], key[1]}});
        return py::make_tuple(out.v[0], out.v[1], out.v[2], out.v[3]);
      },
      py::arg("ctr"), py::arg("key"),
      "Philox4x32-10 of specdec/philox.h: ctr (4 ints in [0, 2**32)), key (2 ints)\n"
      "-> tuple of 4 ints");
}
