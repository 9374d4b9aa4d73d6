"""Philox4x32-10 in pure PyTorch, bit-identical to ``csrc/include/specdec/philox.h``.

The reference implementations and tests draw their random numbers here, so that
they match the CPU and CUDA kernels bit for bit.  Everything is vectorised over
tensors and runs on the device of its inputs (CPU or CUDA).

uint32 words are held in int64 tensors (values in ``[0, 2**32)``).  A 32 x 32-bit
product needs 64 unsigned bits, which overflows int64, so :func:`_mulhilo`
splits the constant multiplier into 16-bit halves and keeps every intermediate
below ``2**49``.

The stream definition (the same as the C++ header)::

    uniform(seed, offset, index)
      = Philox4x32-10 with key     = (seed low 32 bits, seed high 32 bits)
                      and counter = (index low, index high, offset low, offset high);
        result = to_unit_double(out[0], out[1])

Each (seed, offset) pair is one stream; ``index`` enumerates the uniforms inside
it.  int64 seeds, offsets and indices are read as uint64 (two's complement), so
negative values are valid.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["philox4x32_10", "uniforms", "to_unit_double"]

_MASK32 = 0xFFFFFFFF
_MUL0 = 0xD2511F53
_MUL1 = 0xCD9E8D57
_WEYL0 = 0x9E3779B9
_WEYL1 = 0xBB67AE85
_ROUNDS = 10


def _mulhilo(a: Tensor, m: int) -> tuple[Tensor, Tensor]:
    """High and low 32-bit words of ``a * m`` (``a``: int64 holding uint32, ``m``: a uint32 constant).

    ``m = m_hi * 2**16 + m_lo``; ``a * m_lo`` and ``a * m_hi`` are below ``2**48``,
    so every intermediate fits in int64.
    """
    m_lo = m & 0xFFFF
    m_hi = m >> 16
    p_lo = a * m_lo  # < 2**48
    p_hi = a * m_hi  # < 2**48
    low_sum = p_lo + ((p_hi & 0xFFFF) << 16)  # < 2**48 + 2**32
    lo = low_sum & _MASK32
    hi = (p_hi >> 16) + (low_sum >> 32)  # < 2**32 (it is the high word of a 64-bit product)
    return hi, lo


def _philox_words(
    c0: Tensor, c1: Tensor, c2: Tensor, c3: Tensor, k0: Tensor, k1: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Philox4x32-10 on separate, mutually broadcastable int64 word tensors (uint32 values)."""
    for r in range(_ROUNDS):
        if r > 0:
            k0 = (k0 + _WEYL0) & _MASK32
            k1 = (k1 + _WEYL1) & _MASK32
        hi0, lo0 = _mulhilo(c0, _MUL0)
        hi1, lo1 = _mulhilo(c2, _MUL1)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    # Broadcast every word to the common shape (a word may not depend on every input).
    c0, c1, c2, c3 = torch.broadcast_tensors(c0, c1, c2, c3)
    return c0, c1, c2, c3


def _check_int64(name: str, t: Tensor) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"philox: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype != torch.int64:
        raise TypeError(f"philox: {name} must be int64, got {t.dtype}")


def philox4x32_10(ctr: Tensor, key: Tensor) -> Tensor:
    """Philox4x32-10 (Salmon et al., SC'11; Random123), vectorised.

    Args:
        ctr: int64 ``[..., 4]``, the counter words (uint32 values; only the low
            32 bits of each entry are used).
        key: int64 ``[..., 2]``, the key words (same convention).  The leading
            dimensions of ``ctr`` and ``key`` broadcast against each other.

    Returns:
        int64 ``[..., 4]`` (the broadcast leading shape), the four output words,
        each in ``[0, 2**32)``, on the device of the inputs.
    """
    _check_int64("ctr", ctr)
    _check_int64("key", key)
    if ctr.dim() < 1 or ctr.shape[-1] != 4:
        raise ValueError(f"philox4x32_10: ctr must have shape [..., 4], got {tuple(ctr.shape)}")
    if key.dim() < 1 or key.shape[-1] != 2:
        raise ValueError(f"philox4x32_10: key must have shape [..., 2], got {tuple(key.shape)}")
    if ctr.device != key.device:
        raise ValueError(
            f"philox4x32_10: ctr and key must be on one device, got {ctr.device} and {key.device}"
        )
    c = ctr & _MASK32
    k = key & _MASK32
    words = _philox_words(c[..., 0], c[..., 1], c[..., 2], c[..., 3], k[..., 0], k[..., 1])
    return torch.stack(words, dim=-1)


def to_unit_double(a: Tensor, b: Tensor) -> Tensor:
    """A float64 uniform in ``[0, 1)`` with 53 random bits from two uint32 words.

    ``((a >> 5) * 2**26 + (b >> 6)) * 2**-53``; every step is exact in float64.

    Args:
        a, b: int64 tensors (broadcastable) holding uint32 values.

    Returns:
        float64, the broadcast shape.
    """
    return ((a >> 5).to(torch.float64) * 67108864.0 + (b >> 6).to(torch.float64)) * (1.0 / 9007199254740992.0)


def uniforms(seed: Tensor, offset: Tensor, index: Tensor) -> Tensor:
    """The uniforms ``index`` of the streams ``(seed[b], offset[b])``.

    ``out[b, m] = uniform(seed[b], offset[b], index[m])`` of the stream definition
    in the module docstring (and in ``specdec/philox.h``).

    Args:
        seed: int64 ``[B]``, one seed per row (read as uint64, two's complement).
        offset: int64 ``[B]``, one offset per row (read as uint64).
        index: int64 ``[M]``, the positions inside each stream (read as uint64).

    Returns:
        float64 ``[B, M]`` in ``[0, 1)``, on the device of the inputs.
    """
    for name, t in (("seed", seed), ("offset", offset), ("index", index)):
        _check_int64(name, t)
        if t.dim() != 1:
            raise ValueError(f"philox uniforms: {name} must be 1-D, got shape {tuple(t.shape)}")
    if seed.shape != offset.shape:
        raise ValueError(
            f"philox uniforms: seed and offset must have the same shape [B], got "
            f"{tuple(seed.shape)} and {tuple(offset.shape)}"
        )
    if not (seed.device == offset.device == index.device):
        raise ValueError(
            f"philox uniforms: seed, offset and index must be on one device, got "
            f"{seed.device}, {offset.device}, {index.device}"
        )
    # Arithmetic shift then mask: the two's-complement words of a negative int64.
    s = seed[:, None]
    o = offset[:, None]
    i = index[None, :]
    out = _philox_words(
        i & _MASK32,
        (i >> 32) & _MASK32,
        o & _MASK32,
        (o >> 32) & _MASK32,
        s & _MASK32,
        (s >> 32) & _MASK32,
    )
    return to_unit_double(out[0], out[1])
