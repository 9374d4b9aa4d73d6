#!/usr/bin/env bash
# Every test: the C++ tests (ctest) and the Python tests (pytest).  Extra
# arguments go to pytest (e.g. -k paged).  Exits non-zero if either fails.
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
ensure_all
cd "$ROOT"
status=0
say "ctest"
"$VENV/bin/ctest" --test-dir "$BUILD_DIR" --output-on-failure -j "$CMAKE_BUILD_PARALLEL_LEVEL" || status=1
say "pytest"
"$PY" -m pytest tests -q -p no:cacheprovider "$@" || status=1
exit $status
