#!/usr/bin/env bash
# The GPU pass, in one command on a lent GPU machine (the device tool), from the
# repository root: build with that machine's python3/torch/nvcc for sm_90a, run
# the C++ and Python tests (CUDA cases included), compute-sanitizer memcheck and
# racecheck on the CUDA tests, and the benchmarks.  Logs and tables go to $OUT.
#
# That image has no GoogleTest and no network: carry its sources.  Here, once:
#   cp -r /usr/src/googletest .gtest      (.gtest/ is git-ignored)
# then: device run, carry [".gtest"], command "bash python/gpu_check.sh".
set -uo pipefail
OUT="${OUT:-$PWD/build/gpu_out}"
mkdir -p "$OUT"
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}" PYTHONUNBUFFERED=1 PYTHONPATH="$PWD"
PY="$(command -v python3)"
B=build/gpu
status=0
step() { printf '\n=== %s\n' "$*"; }

step "device"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
"$PY" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"

step "build (sm_90a)"
cmake -S . -B "$B" -G Ninja -DPython_EXECUTABLE="$PY" -DSPECDEC_CUDA=ON -DSPECDEC_CUDA_ARCHS=9.0a \
  -DSPECDEC_PYTHON_OUTPUT_DIR="$PWD/specdec_cuda" -DSPECDEC_BUILD_TESTS=ON \
  -DSPECDEC_GTEST_SOURCE_DIR="$PWD/.gtest" >"$OUT/build.log" 2>&1 &&
  cmake --build "$B" -j "$(nproc)" >>"$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
"$PY" -m specdec_cuda info | tee "$OUT/info.json"

step "ctest"
ctest --test-dir "$B" --output-on-failure >"$OUT/ctest.log" 2>&1 || status=1
tail -4 "$OUT/ctest.log"

step "pytest (CPU and CUDA)"
"$PY" -m pytest tests -q -p no:cacheprovider >"$OUT/pytest.log" 2>&1 || status=1
tail -3 "$OUT/pytest.log"

for tool in memcheck racecheck; do
  step "compute-sanitizer $tool on the CUDA C++ tests"
  compute-sanitizer --tool "$tool" --error-exitcode 99 "$B/specdec_cpp_tests" --gtest_filter='*Cuda*' \
    >"$OUT/$tool.log" 2>&1 || status=1
  grep -E "ERROR SUMMARY|RACECHECK SUMMARY|PASSED|FAILED" "$OUT/$tool.log" | tail -4
done
step "compute-sanitizer memcheck on the CUDA Python tests"
compute-sanitizer --tool memcheck --error-exitcode 99 "$PY" -m pytest tests -q -p no:cacheprovider \
  -k cuda >"$OUT/memcheck_py.log" 2>&1 || status=1
grep -E "ERROR SUMMARY|passed|failed" "$OUT/memcheck_py.log" | tail -3

step "benchmarks"
"$PY" python/bench_ops.py --op all | tee "$OUT/bench.txt"
"$PY" python/bench_ops.py --op all --json >"$OUT/bench.jsonl"
exit $status
