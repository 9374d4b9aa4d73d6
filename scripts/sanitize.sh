#!/usr/bin/env bash
# The CPU kernels and the C++ tests built with AddressSanitizer and
# UndefinedBehaviorSanitizer (no CUDA, no Python module), then run under ctest.
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
ensure_gtest
ensure_venv
SAN_DIR="$ROOT/build/asan"
if [ ! -f "$SAN_DIR/CMakeCache.txt" ]; then
  "$VENV/bin/cmake" -S "$ROOT" -B "$SAN_DIR" -G Ninja -DCMAKE_MAKE_PROGRAM="$VENV/bin/ninja" \
    -DPython_EXECUTABLE="$PY" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DSPECDEC_CUDA=OFF -DSPECDEC_SANITIZE=ON -DSPECDEC_BUILD_PYTHON=OFF \
    -DSPECDEC_BUILD_TESTS=ON >/dev/null
fi
say "building the ASan + UBSan CPU library and C++ tests"
"$VENV/bin/cmake" --build "$SAN_DIR" | grep -vE '^\[[0-9]+/[0-9]+\] (Building|Linking)' || true
test "${PIPESTATUS[0]}" = 0
# libtorch itself is not instrumented: its leaks at exit and STL container
# annotations are not ours to judge, so leak and container-overflow checks are off.
export ASAN_OPTIONS="detect_leaks=0:detect_container_overflow=0:abort_on_error=1:halt_on_error=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
say "ctest under ASan + UBSan"
"$VENV/bin/ctest" --test-dir "$SAN_DIR" --output-on-failure -j "$CMAKE_BUILD_PARALLEL_LEVEL"
