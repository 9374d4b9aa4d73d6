"""Draft trees: chains, static (Medusa-style choice lists) and their tensor forms.

A tree of N nodes is a parent array (``parents[0] = -1``, ``parents[i] < i``);
node 0 is the root, the last committed token.  Static trees are given as a
*choice list*: each entry is the path of child ranks from the root, e.g.
``[[0], [1], [0, 0], [0, 1], [1, 0]]`` is the root's two most probable children,
the two best children of the first and the best child of the second.  A node's
token is the draft's ``rank``-th most probable token after its parent.

Dynamic (EAGLE-2 style) trees are grown by
:class:`specdec_cuda.drafters.DynamicTreeDrafter`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["StaticTree", "chain", "static_tree", "chain_parents", "DEFAULT_TREE"]

# A 16-node tree (root + 15), 4 levels: wide near the root, a long main branch.
DEFAULT_TREE: list[list[int]] = [
    [0],
    [1],
    [2],
    [0, 0],
    [0, 1],
    [1, 0],
    [2, 0],
    [0, 0, 0],
    [0, 0, 1],
    [0, 1, 0],
    [1, 0, 0],
    [0, 0, 0, 0],
    [0, 0, 0, 1],
    [0, 0, 1, 0],
    [0, 0, 0, 0, 0],
]


@dataclass(frozen=True)
class StaticTree:
    """A tree shape with a child rank per node (node 0: the root, rank -1).

    ``parents[i]`` is node i's parent, ``ranks[i]`` the rank of node i's token in
    its parent's draft distribution (0 = most probable), ``depth[i]`` its depth.
    Nodes are ordered by depth (breadth first), siblings by rank.
    """

    parents: tuple[int, ...]
    ranks: tuple[int, ...]
    depth: tuple[int, ...]

    @property
    def num_nodes(self) -> int:
        return len(self.parents)

    @property
    def max_depth(self) -> int:
        return max(self.depth)

    def nodes_at(self, depth: int) -> list[int]:
        return [i for i, d in enumerate(self.depth) if d == depth]

    def max_rank(self) -> int:
        return max(self.ranks) + 1 if self.num_nodes > 1 else 0


def static_tree(choices: Sequence[Sequence[int]]) -> StaticTree:
    """Build a :class:`StaticTree` from a Medusa-style choice list.

    Every path's proper prefixes must be in the list too (a node's parent
    exists); ranks are ``>= 0``; no duplicates.  Raises ``ValueError`` naming the
    offending entry otherwise.
    """
    paths = []
    for c in choices:
        if isinstance(c, (str, bytes)) or not isinstance(c, Sequence) or len(c) == 0:
            raise ValueError(f"static_tree: each choice must be a non-empty list of ranks, got {c!r}")
        path = tuple(int(r) for r in c)
        if any(r < 0 for r in path):
            raise ValueError(f"static_tree: ranks must be >= 0, got {list(path)}")
        paths.append(path)
    if len(set(paths)) != len(paths):
        raise ValueError("static_tree: the choice list has duplicate paths")
    known = set(paths)
    for p in paths:
        if len(p) > 1 and p[:-1] not in known:
            raise ValueError(f"static_tree: choice {list(p)} needs its parent {list(p[:-1])} in the list")
    paths.sort(key=lambda p: (len(p), p))
    index = {(): 0}
    parents, ranks, depth = [-1], [-1], [0]
    for i, p in enumerate(paths, start=1):
        index[p] = i
        parents.append(index[p[:-1]])
        ranks.append(p[-1])
        depth.append(len(p))
    return StaticTree(tuple(parents), tuple(ranks), tuple(depth))


def chain(k: int) -> StaticTree:
    """A chain of ``k`` drafts: ``parents = [-1, 0, 1, ..., k-1]``, every rank 0."""
    if k < 0:
        raise ValueError(f"chain: k must be >= 0, got {k}")
    return static_tree([[0] * d for d in range(1, k + 1)])


def chain_parents(batch: int, n: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """int32 ``[batch, n]`` parents of a chain of n nodes: ``[-1, 0, ..., n-2]``."""
    row = torch.arange(-1, n - 1, dtype=torch.int32, device=device)
    return row.expand(batch, n).contiguous()
