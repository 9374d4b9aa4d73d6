"""The package as a user imports it: under ``python -OO`` (docstrings stripped) too."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_import_under_optimize_2():
    """``python -OO`` strips docstrings; nothing at import time may depend on them."""
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    code = (
        "import specdec_cuda, specdec_cuda.ops as o; assert o.rejection_sample.__doc__ is None; print('ok')"
    )
    out = subprocess.run(
        [sys.executable, "-OO", "-c", code], capture_output=True, text=True, timeout=120, env=env, cwd=REPO
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
