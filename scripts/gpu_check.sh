#!/usr/bin/env bash
# The GPU pass on a lent machine (the device tool), from the repository root, in
# one call that fits the lease: 15 minutes of device time per session, start-up
# included, 10 minutes per command.  This script stays under 8 minutes: every
# step has its own timeout, and the steps run in order of value, so a slow step
# costs only what comes after it.  Everything goes to $OUT; the last lines
# printed are the summary table.
#
# That image has no GoogleTest and no network: carry its sources.  Here, once:
#   cp -r /usr/src/googletest .gtest      (.gtest/ is git-ignored)
# then: device run, carry [".gtest"], command "bash scripts/gpu_check.sh", timeout 540.
# On the GPU machine the image provides python3, torch, nvcc and compute-sanitizer.
#
# Step budgets (seconds), estimated from this project's CPU machines (2 cores):
#   build      180  a clean CUDA build here costs about 27 s of host front end per
#                   .cu file plus about 12 s per architecture (5 .cu files), and
#                   10-25 s per C++ source (about 25 of them): about 6 minutes of
#                   core time for two architectures.  The GPU machine has 16 cores
#                   and builds one architecture (sm_90a): the sources compile in
#                   parallel, so the wall time is the longest file, attention_cuda.cu
#                   (about 60-90 s), plus linking.  180 s is twice that.
#   ctest       40  the C++ CUDA cases (-R Cuda) are small launches, under a second
#                   each once the CUDA context exists (about 10 s of context start).
#   pytest     120  only the CUDA-parametrised cases (-k cuda): the whole suite takes
#                   about 3.5 minutes here on an idle 2-core machine, most of it CPU
#                   kernels and float64 references; the CUDA half runs the same
#                   references (on 16 faster cores) plus kernels of milliseconds.
#   memcheck    40  compute-sanitizer slows kernels 10-100x; the C++ CUDA cases
#   racecheck   40  launch small problems (ctest's long tail is the emulated tests,
#                   which are not run here).
#   bench       50  python/bench_ops.py --op all --quick --json: the main shape of
#                   each op, 10 timed runs after 3 warm-ups on CUDA.
#   total      470  under 8 minutes even if every step used its whole budget.
set -uo pipefail
OUT="${OUT:-$PWD/build/gpu_out}"
mkdir -p "$OUT"
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}" PYTHONUNBUFFERED=1 PYTHONPATH="$PWD"
PY="$(command -v python3)"
B=build/gpu
declare -a SUMMARY=()
status=0

# step NAME SECONDS LOG COMMAND...: run with a timeout, record the outcome.
step() {
  local name="$1" budget="$2" log="$3"
  shift 3
  printf '\n=== %s (budget %ss)\n' "$name" "$budget"
  local t0=$SECONDS rc
  timeout --kill-after=10 "$budget" "$@" >"$OUT/$log" 2>&1
  rc=$?
  local verdict=ok
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then verdict="TIMEOUT"; status=1
  elif [ "$rc" != 0 ]; then verdict="FAILED (rc $rc)"; status=1; fi
  tail -4 "$OUT/$log"
  SUMMARY+=("$(printf '%-28s %-16s %4ss' "$name" "$verdict" "$((SECONDS - t0))")")
}

{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  "$PY" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
} | tee "$OUT/device.txt"

step "build (sm_90a)" 180 build.log bash -c "
  cmake -S . -B '$B' -G Ninja -DPython_EXECUTABLE='$PY' -DSPECDEC_CUDA=ON -DSPECDEC_CUDA_ARCHS=9.0a \
    -DSPECDEC_PYTHON_OUTPUT_DIR='$PWD/specdec_cuda' -DSPECDEC_BUILD_TESTS=ON \
    -DSPECDEC_GTEST_SOURCE_DIR='$PWD/.gtest' && cmake --build '$B' -j \"\$(nproc)\" &&
  '$PY' -m specdec_cuda info > '$OUT/info.json'"
if [ ! -f "$B/specdec_cpp_tests" ]; then
  printf '%s\n' "${SUMMARY[@]}"
  exit 1
fi
step "ctest (CUDA cases)" 40 ctest.log ctest --test-dir "$B" --output-on-failure -R Cuda
step "pytest (CUDA cases)" 120 pytest.log "$PY" -m pytest tests -q -p no:cacheprovider -k cuda
for tool in memcheck racecheck; do
  step "compute-sanitizer $tool" 40 "$tool.log" compute-sanitizer --tool "$tool" --error-exitcode 99 \
    "$B/specdec_cpp_tests" --gtest_filter='*Cuda*'
done
step "bench_ops --quick --json" 50 bench.jsonl "$PY" python/bench_ops.py --op all --quick --json

printf '\n=== summary (logs in %s)\n' "$OUT"
printf '%s\n' "${SUMMARY[@]}" | tee "$OUT/summary.txt"
exit $status
