#!/usr/bin/env bash
# Style checks, run by .ci/run: ruff (lint + format) on the Python code and
# clang-format on the C++ / CUDA code.  Configuration: pyproject.toml
# ([tool.ruff]) and .clang-format.  `bash scripts/lint.sh --fix` rewrites the
# files instead of checking them.
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
ensure_venv
cd "$ROOT"
mapfile -t PY_FILES < <(git ls-files '*.py')
mapfile -t CXX_FILES < <(git ls-files '*.h' '*.cpp' '*.cu' '*.cuh')
if [ "${1:-}" = "--fix" ]; then
  "$VENV/bin/ruff" check --fix "${PY_FILES[@]}"
  "$VENV/bin/ruff" format "${PY_FILES[@]}"
  "$VENV/bin/clang-format" -i "${CXX_FILES[@]}"
  exit 0
fi
status=0
say "ruff check (${#PY_FILES[@]} Python files)"
"$VENV/bin/ruff" check "${PY_FILES[@]}" || status=1
say "ruff format --check"
"$VENV/bin/ruff" format --check "${PY_FILES[@]}" || status=1
say "clang-format --dry-run (${#CXX_FILES[@]} C++/CUDA files)"
"$VENV/bin/clang-format" --dry-run -Werror "${CXX_FILES[@]}" || status=1
exit $status
