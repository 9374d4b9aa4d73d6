#!/usr/bin/env bash
# The main job: build what is missing, then run it.  Until the decoding demo
# exists, the main job prints the build facts and the ops' backends.
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
ensure_all
cd "$ROOT"
exec "$PY" -m specdec_cuda info
