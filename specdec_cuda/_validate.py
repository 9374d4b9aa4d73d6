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


def optional_tensor(op: str, arg: str, value: object) -> torch.Tensor | None:
    return None if value is None else tensor(op, arg, value)


def number(op: str, arg: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{op}: {arg} must be a number, got {type(value).__name__}")
    return value


# ---------------------------------------------------------------------------
# The shape, dtype and device checks of csrc/ops/checks.h, with the same
# messages, for the fake kernels: under torch.compile (FakeTensor) or with meta
# tensors the real kernels never run, so the fakes must refuse what the real
# ones would refuse, not return uninitialised memory.
# ---------------------------------------------------------------------------


def _shape(t: torch.Tensor) -> str:
    return "[" + ", ".join(str(int(s)) for s in t.shape) + "]"


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def check_dim(op: str, arg: str, t: torch.Tensor, dim: int, layout: str) -> None:
    if t.dim() != dim:
        raise ValueError(f"{op}: {arg} must be a {dim}-D tensor {layout}, got shape {_shape(t)}")


def check_size(op: str, arg: str, t: torch.Tensor, dim: int, expected: int, what: str) -> None:
    if t.shape[dim] != expected:
        raise ValueError(f"{op}: {arg}.size({dim}) must equal {what} = {expected}, got shape {_shape(t)}")


def check_dtype(op: str, arg: str, t: torch.Tensor, dtypes) -> None:
    dtypes = (dtypes,) if isinstance(dtypes, torch.dtype) else tuple(dtypes)
    if t.dtype not in dtypes:
        want = (
            " or ".join(_dtype_name(d) for d in dtypes)
            if len(dtypes) < 3
            else (", ".join(_dtype_name(d) for d in dtypes[:-1]) + " or " + _dtype_name(dtypes[-1]))
        )
        raise TypeError(f"{op}: {arg} must have dtype {want}, got {_dtype_name(t.dtype)}")


def check_device(op: str, arg: str, t: torch.Tensor, device: torch.device) -> None:
    if t.device != device:
        raise ValueError(f"{op}: {arg} must be on {device} like the other arguments, got {t.device}")


FLOATS = (torch.float32, torch.float16, torch.bfloat16)


def check_tensors(op: str, device: torch.device, specs) -> None:
    """``specs``: (name, tensor, rank, layout, dtypes) rows: rank, dtype and device of each."""
    for name, t, rank, layout, dtypes in specs:
        check_dim(op, name, t, rank, layout)
        check_dtype(op, name, t, dtypes)
        check_device(op, name, t, device)
