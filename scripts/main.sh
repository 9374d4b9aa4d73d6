#!/usr/bin/env bash
# The main job: build what is missing, then run the demo: the bundled tiny
# model pair, plain vs speculative decoding, a table and a plot (results/demo).
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
ensure_all
cd "$ROOT"
exec "$PY" -m specdec_cuda demo "$@"
