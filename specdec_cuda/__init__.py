"""specdec_cuda: speculative-decoding kernels as ``torch.ops.specdec.*`` custom ops.

Importing the package loads the native library (``specdec_cuda._C``), which
registers every op with PyTorch's dispatcher, and the fake (meta) kernels that
``torch.compile`` needs.  Typed, documented wrappers live in
:mod:`specdec_cuda.ops`; pure-PyTorch oracles in :mod:`specdec_cuda.reference`.
"""

import torch  # noqa: F401  (loads libtorch before our library links against it)

try:
    from . import _C
except ImportError as exc:  # pragma: no cover - only without a build
    raise ImportError(
        "specdec_cuda: the native library specdec_cuda._C is not built or does not match "
        "this torch. Build it with `bash scripts/test.sh` (or `pip install "
        "--no-build-isolation -e .`) from the repository root. Cause: " + str(exc)
    ) from exc

from . import ops, reference  # noqa: E402  (registers the fake kernels)

__version__: str = _C.__version__

__all__ = ["ops", "reference", "__version__"]
