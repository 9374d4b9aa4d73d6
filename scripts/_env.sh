# Sourced by the README commands (scripts/main.sh, scripts/test.sh) and .ci/run.
# Creates or reuses .venv/, installs what the project needs, and builds the
# extension with CMake into build/release (incremental: a second run only
# checks).  Nothing here needs to be installed by hand first.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
BUILD_DIR="${SPECDEC_BUILD_DIR:-$ROOT/build/release}"
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"

say() { printf '[specdec] %s\n' "$*" >&2; }

# GoogleTest for the C++ tests (Debian's libgtest-dev; we are root here).
ensure_gtest() {
  if [ -f /usr/include/gtest/gtest.h ] || [ -f /usr/local/include/gtest/gtest.h ]; then
    return
  fi
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing GoogleTest (apt-get install libgtest-dev)"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libgtest-dev >/dev/null
  else
    say "GoogleTest is missing: install libgtest-dev (Debian/Ubuntu) and run again"
    exit 1
  fi
}

# .venv with the pinned requirements; reinstalls only when requirements change.
ensure_venv() {
  if [ ! -x "$PY" ]; then
    say "creating .venv"
    python3 -m venv "$VENV"
  fi
  local stamp="$VENV/.specdec-requirements"
  local want
  want="$(sha256sum "$ROOT/requirements-dev.txt" | cut -d' ' -f1)"
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    say "installing requirements-dev.txt into .venv (torch 2.14.1: about 2 minutes the first time)"
    "$PY" -m pip install -q --upgrade pip
    "$PY" -m pip install -q -r "$ROOT/requirements-dev.txt"
    echo "$want" >"$stamp"
  fi
}

# CMake build of libspecdec_ops, specdec_cuda._C and the C++ tests; the
# native libraries land in specdec_cuda/ (an in-place build).
ensure_build() {
  local cmake="$VENV/bin/cmake"
  if [ ! -f "$BUILD_DIR/CMakeCache.txt" ]; then
    say "configuring $BUILD_DIR"
    "$cmake" -S "$ROOT" -B "$BUILD_DIR" -G Ninja -DCMAKE_MAKE_PROGRAM="$VENV/bin/ninja" \
      -DPython_EXECUTABLE="$PY" -DCMAKE_BUILD_TYPE=Release \
      -DSPECDEC_PYTHON_OUTPUT_DIR="$ROOT/specdec_cuda" -DSPECDEC_BUILD_TESTS=ON \
      ${SPECDEC_CMAKE_ARGS:-} >/dev/null
  fi
  say "building (CUDA kernels included when nvcc is found; several minutes the first time)"
  "$cmake" --build "$BUILD_DIR" | grep -vE '^\[[0-9]+/[0-9]+\] (Building|Linking)' || true
  test "${PIPESTATUS[0]}" = 0
  # The editable install lets `import specdec_cuda` work from any folder; its
  # build step reuses the same CMake build folder, so it finds nothing to do.
  local stamp="$VENV/.specdec-editable"
  if [ ! -f "$stamp" ]; then
    say "installing specdec_cuda into .venv (editable)"
    SPECDEC_BUILD_DIR="$BUILD_DIR" "$PY" -m pip install -q --no-build-isolation --no-deps -e "$ROOT"
    touch "$stamp"
  fi
}

ensure_all() {
  ensure_gtest
  ensure_venv
  ensure_build
}
