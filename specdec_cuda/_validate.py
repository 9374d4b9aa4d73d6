"""Argument checks the Python wrappers do before reaching the native op.

The native kernels check everything (shapes, dtypes, devices, index ranges);
the wrappers only turn Python-level mistakes (a tensor where a list belongs, a
non-tensor element) into errors that name the op and the argument.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def tensor_list(op: str, arg: str, value: object) -> list[torch.Tensor]:
    """Accept a tensor or a sequence of tensors; return a list of tensors."""
    if isinstance(value, torch.Tensor):
        return [value]
    if not isinstance(value, Sequence) or isinstance(value, (str, bytes)):
        raise TypeError(f"{op}: {arg} must be a tensor or a list of tensors, got {type(value).__name__}")
    out = list(value)
    for i, t in enumerate(out):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: {arg}[{i}] must be a tensor, got {type(t).__name__}")
    return out


def tensor(op: str, arg: str, value: object) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{op}: {arg} must be a tensor, got {type(value).__name__}")
    return value
