"""The draft-length policy: :class:`AdaptiveLength`.

Drafters with a draft length (K for chains and prompt lookup, the depth of a
dynamic tree) hold one and the drafter base class feeds it each step's
acceptance; it picks the next length.  It is a policy, not a drafter: it never
touches a model or a tensor beyond the accepted counts it is given.
"""

from __future__ import annotations

import torch

__all__ = ["AdaptiveLength"]


class AdaptiveLength:
    """Online draft length from the measured acceptance.

    Each step contributes, per active row, ``a`` accepted drafts out of ``K``
    proposed, and one rejection when ``a < K``.  The per-token acceptance rate is
    estimated as ``alpha = A / (A + R)`` (the maximum-likelihood estimate for a
    geometric number of accepted drafts truncated at K), with A and R
    exponentially decayed sums (``decay`` per step).  The next K maximises the
    expected speedup of Leviathan et al.,
    ``(1 - alpha^(K+1)) / ((1 - alpha) (K c + 1))``, over ``[k_min, k_max]``,
    where c is the cost of one draft forward relative to one target verification:
    ``cost_ratio`` when set (the model drafters set it from the two models'
    parameter counts unless given one), or, only with ``measure_cost=True``,
    measured online (an exponential average of the timed forwards); with neither,
    c = 0.  So K rises while drafts are accepted and falls when they are not.  With
    ``enabled=False`` K stays fixed.

    Without ``measure_cost`` the chosen K depends only on the acceptance, so a seed
    reproduces its samples exactly; with a measured cost K follows wall-clock timing
    (sampled outputs stay lossless but may differ from run to run).
    """

    def __init__(
        self,
        k: int,
        *,
        k_min: int = 1,
        k_max: int | None = None,
        cost_ratio: float | None = None,
        measure_cost: bool = False,
        decay: float = 0.9,
        enabled: bool = True,
    ):
        k_max = max(k, k_min) * 2 if k_max is None else k_max
        if not 1 <= k_min <= k <= k_max:
            raise ValueError(
                f"AdaptiveLength: need 1 <= k_min <= k <= k_max, got k_min={k_min}, k={k}, k_max={k_max}"
            )
        if cost_ratio is not None and cost_ratio < 0:
            raise ValueError(f"AdaptiveLength: cost_ratio must be >= 0, got {cost_ratio}")
        self.k, self.k_min, self.k_max = int(k), int(k_min), int(k_max)
        self.cost_ratio, self.decay, self.enabled = cost_ratio, float(decay), bool(enabled)
        self.measure_cost = bool(measure_cost)
        self.k_init = self.k
        self.reset()

    def reset(self) -> None:
        """Forget the measurements and go back to the initial k (each generation)."""
        self.k = self.k_init
        self._acc = 0.0
        self._rej = 0.0
        self._cost: float | None = None

    @property
    def alpha(self) -> float | None:
        total = self._acc + self._rej
        return None if total == 0 else self._acc / total

    @property
    def cost(self) -> float | None:
        return self.cost_ratio if self.cost_ratio is not None else self._cost

    def observe_cost(self, draft_s_per_call: float, target_s_per_call: float) -> None:
        """One step's timed draft forward and target verification (ignored unless
        ``measure_cost`` and no fixed ``cost_ratio``)."""
        if not self.measure_cost or self.cost_ratio is not None or target_s_per_call <= 0:
            return
        c = draft_s_per_call / target_s_per_call
        self._cost = c if self._cost is None else 0.8 * self._cost + 0.2 * c

    def observe(self, accepted: torch.Tensor, proposed: int | torch.Tensor) -> None:
        """``accepted``: int ``[rows]`` accepted drafts of the active rows this step;
        ``proposed``: the drafts each row had (one count for all, or int ``[rows]``).
        A row rejected when it accepted fewer than it had."""
        a = accepted.tolist()
        p = proposed.tolist() if isinstance(proposed, torch.Tensor) else [proposed] * len(a)
        self._acc = self.decay * self._acc + float(sum(a))
        self._rej = self.decay * self._rej + float(sum(1 for x, k in zip(a, p) if x < k))
        if self.enabled:
            self.k = self.best_k()

    def best_k(self) -> int:
        alpha, c = self.alpha, self.cost
        if alpha is None:
            return self.k
        c = 0.0 if c is None else c
        alpha = min(max(alpha, 1e-3), 0.995)

        def speedup(k: int) -> float:
            return (1.0 - alpha ** (k + 1)) / ((1.0 - alpha) * (k * c + 1.0))

        return max(range(self.k_min, self.k_max + 1), key=lambda k: (speedup(k), -k))
