"""specdec_cuda: speculative-decoding kernels as ``torch.ops.specdec.*`` custom ops.

Importing the package loads the native library (``specdec_cuda._C``), which
registers every op with PyTorch's dispatcher, and the fake (meta) kernels that
``torch.compile`` needs.  Typed, documented wrappers live in
:mod:`specdec_cuda.ops` (the exact semantics: docs/ops.md in the repository);
pure-PyTorch oracles in :mod:`specdec_cuda.reference`; the decoding loop in
:mod:`specdec_cuda.decoding`, and the interface a drafter implements in
:mod:`specdec_cuda.drafting`.
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

from . import cache, drafters, drafting, length_policy, models, ops, reference, tree  # noqa: E402  (registers the fake kernels)  # noqa: E402
from .cache import KVCache, PagedKVCache  # noqa: E402
from .decoding import GenerationOutput, GenerationStats, SpeculativeDecoder  # noqa: E402
from .drafters import (  # noqa: E402
    ChainDrafter,
    DynamicTreeDrafter,
    NoDrafter,
    PromptLookupDrafter,
    StochasticTreeDrafter,
    TreeDrafter,
)
from .drafting import Draft, DraftContext, Drafter, ModelDrafter, StepFeedback  # noqa: E402
from .length_policy import AdaptiveLength  # noqa: E402
from .models import HFModel, UnsupportedModelError  # noqa: E402

__version__: str = _C.__version__

__all__ = [
    "ops",
    "reference",
    "cache",
    "drafters",
    "drafting",
    "length_policy",
    "models",
    "tree",
    "__version__",
    "SpeculativeDecoder",
    "GenerationOutput",
    "GenerationStats",
    "KVCache",
    "PagedKVCache",
    "ChainDrafter",
    "TreeDrafter",
    "DynamicTreeDrafter",
    "PromptLookupDrafter",
    "StochasticTreeDrafter",
    "NoDrafter",
    "Draft",
    "DraftContext",
    "Drafter",
    "ModelDrafter",
    "StepFeedback",
    "AdaptiveLength",
    "HFModel",
    "UnsupportedModelError",
]
