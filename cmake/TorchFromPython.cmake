# Locate the PyTorch that `Python_EXECUTABLE` imports and describe it as one
# INTERFACE target, `specdec::torch`.
#
# Why not find_package(Torch)?  Torch's CMake config probes the CUDA toolkit as
# soon as the installed torch is a CUDA build, and on machines with a reduced
# toolkit (no cuBLAS headers, nvrtc only in the pip wheels) or with CUDA
# deliberately switched off it fails or needs a pile of cache overrides.  What
# an extension really needs is small: the include folders, the C++ ABI flag and
# a handful of shared libraries, all of which torch reports about itself.
#
# Sets: SPECDEC_TORCH_VERSION, SPECDEC_TORCH_CUDA_VERSION (empty for a CPU
# build), SPECDEC_TORCH_LIB_DIR, SPECDEC_TORCH_NVIDIA_LIB_DIRS, and the targets
#   specdec::torch       c10 + torch_cpu (+ torch)
#   specdec::torch_cuda  c10_cuda + torch_cuda (only for a CUDA build of torch)

if(NOT Python_EXECUTABLE)
  find_package(Python 3.9 REQUIRED COMPONENTS Interpreter)
endif()

# One query, one value per line; lists inside a line are joined with '|' so
# that CMake's ';' list syntax cannot split them.
execute_process(
  COMMAND "${Python_EXECUTABLE}" -c [=[
import os, torch
from torch.utils import cpp_extension as ce
site = os.path.dirname(os.path.dirname(torch.__file__))
nv = os.path.join(site, "nvidia")
nv_libs = sorted(root for root, _, _ in os.walk(nv) if os.path.basename(root) == "lib") \
    if os.path.isdir(nv) else []
print(torch.__version__)
print(torch.version.cuda or "none")
print(int(torch._C._GLIBCXX_USE_CXX11_ABI))
print(os.path.join(os.path.dirname(torch.__file__), "lib"))
print("|".join(ce.include_paths()))
print("|".join(nv_libs) or "none")
]=]
  OUTPUT_VARIABLE _specdec_torch_out
  ERROR_VARIABLE _specdec_torch_err
  RESULT_VARIABLE _specdec_torch_rc
  OUTPUT_STRIP_TRAILING_WHITESPACE)
if(NOT _specdec_torch_rc EQUAL 0)
  message(FATAL_ERROR
    "specdec_cuda: could not import torch with ${Python_EXECUTABLE}:\n${_specdec_torch_err}")
endif()

string(REPLACE "\n" ";" _specdec_torch_lines "${_specdec_torch_out}")
list(GET _specdec_torch_lines 0 SPECDEC_TORCH_VERSION)
list(GET _specdec_torch_lines 1 SPECDEC_TORCH_CUDA_VERSION)
list(GET _specdec_torch_lines 2 _specdec_cxx11_abi)
list(GET _specdec_torch_lines 3 SPECDEC_TORCH_LIB_DIR)
list(GET _specdec_torch_lines 4 _specdec_inc)
list(GET _specdec_torch_lines 5 _specdec_nv)
if(SPECDEC_TORCH_CUDA_VERSION STREQUAL "none")
  set(SPECDEC_TORCH_CUDA_VERSION "")
endif()
if(_specdec_nv STREQUAL "none")
  set(_specdec_nv "")
endif()
string(REPLACE "|" ";" _specdec_torch_includes "${_specdec_inc}")
string(REPLACE "|" ";" SPECDEC_TORCH_NVIDIA_LIB_DIRS "${_specdec_nv}")

message(STATUS "specdec_cuda: torch ${SPECDEC_TORCH_VERSION} "
               "(CUDA '${SPECDEC_TORCH_CUDA_VERSION}') at ${SPECDEC_TORCH_LIB_DIR}")

function(_specdec_torch_lib out name)
  find_library(_lib_${name} NAMES ${name} PATHS "${SPECDEC_TORCH_LIB_DIR}" NO_DEFAULT_PATH NO_CACHE)
  if(NOT _lib_${name})
    message(FATAL_ERROR "specdec_cuda: lib${name}.so not found in ${SPECDEC_TORCH_LIB_DIR}")
  endif()
  set(${out} "${_lib_${name}}" PARENT_SCOPE)
endfunction()

_specdec_torch_lib(_c10 c10)
_specdec_torch_lib(_torch_cpu torch_cpu)
_specdec_torch_lib(_torch torch)

add_library(specdec_torch INTERFACE)
add_library(specdec::torch ALIAS specdec_torch)
target_include_directories(specdec_torch SYSTEM INTERFACE ${_specdec_torch_includes})
target_compile_definitions(specdec_torch INTERFACE
  _GLIBCXX_USE_CXX11_ABI=${_specdec_cxx11_abi})
target_link_libraries(specdec_torch INTERFACE "${_c10}" "${_torch_cpu}" "${_torch}")

if(SPECDEC_TORCH_CUDA_VERSION)
  _specdec_torch_lib(_c10_cuda c10_cuda)
  _specdec_torch_lib(_torch_cuda torch_cuda)
  add_library(specdec_torch_cuda INTERFACE)
  add_library(specdec::torch_cuda ALIAS specdec_torch_cuda)
  # --no-as-needed: nothing in our code calls into libtorch_cuda directly, but
  # loading it registers the CUDA hooks and allocator that tensors need.
  target_link_libraries(specdec_torch_cuda INTERFACE
    "${_c10_cuda}" "-Wl,--no-as-needed" "${_torch_cuda}" "-Wl,--as-needed")
endif()
