"""How a federated run splits one dataset among its clients.

- **IID**: a seeded random permutation cut into ``n_clients`` parts of equal size (±1).
- **Dirichlet(alpha) over labels** (Hsu, Qi & Brown 2019, "Measuring the Effects of Non-Identical Data
  Distribution"): for every class, the shares of its records that each client gets are drawn from
  ``Dir(alpha, ..., alpha)``; small ``alpha`` gives each client a few dominant classes (0.5 is the usual
  "moderately non-IID" setting of the Byzantine-robustness papers), large ``alpha`` tends to IID. A split
  that leaves a client with fewer than ``min_size`` records is drawn again (NIID-Bench's rule), so every
  client can train.

Both are pure functions of the labels, the client count, ``alpha`` and the seed: every process of a
federation (the simulation's actors, or real supernodes) computes the same split and takes its own part.
"""

from __future__ import annotations

import numpy as np

from ..errors import UsageError

__all__ = ["dirichlet_partition", "iid_partition", "partition"]

_MAX_DRAWS = 1000


def iid_partition(n: int, n_clients: int, seed: int) -> list[np.ndarray]:
    """``n_clients`` disjoint index arrays covering ``range(n)``, of sizes differing by at most one."""
    _check(n, n_clients)
    perm = np.random.default_rng(seed).permutation(n)
    return [np.sort(part) for part in np.array_split(perm, n_clients)]


def dirichlet_partition(
    labels: np.ndarray, n_clients: int, alpha: float, seed: int, min_size: int = 10
) -> list[np.ndarray]:
    """Disjoint index arrays, one per client, with each class's records shared by ``Dir(alpha)`` proportions."""
    labels = np.asarray(labels)
    _check(labels.shape[0], n_clients)
    if not alpha > 0 or not np.isfinite(alpha):
        raise UsageError(f"alpha must be a positive number (0.5: non-IID; large: close to IID), got {alpha!r}")
    if labels.shape[0] < n_clients * min_size:
        raise UsageError(
            f"{labels.shape[0]} records cannot give {n_clients} clients {min_size} each: use fewer clients"
        )
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    for _ in range(_MAX_DRAWS):
        parts: list[list[int]] = [[] for _ in range(n_clients)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(labels == c))
            shares = rng.dirichlet(np.full(n_clients, alpha))
            cuts = (np.cumsum(shares)[:-1] * idx.size).astype(int)
            for part, chunk in zip(parts, np.split(idx, cuts), strict=True):
                part.extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_size:
            return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]
    raise UsageError(
        f"no Dirichlet({alpha}) split in {_MAX_DRAWS} draws gave each of {n_clients} clients {min_size} records: "
        "raise alpha or use fewer clients"
    )


def partition(labels: np.ndarray, n_clients: int, alpha: float | None, seed: int) -> list[np.ndarray]:
    """IID when ``alpha`` is None, else Dirichlet(``alpha``) over the labels."""
    if alpha is None:
        return iid_partition(len(labels), n_clients, seed)
    return dirichlet_partition(labels, n_clients, alpha, seed)


def _check(n: int, n_clients: int) -> None:
    if isinstance(n_clients, bool) or not isinstance(n_clients, int) or n_clients < 2:
        raise UsageError(f"a federation needs at least 2 clients, got {n_clients!r}")
    if n < n_clients:
        raise UsageError(f"{n} records cannot be split among {n_clients} clients: use fewer clients")
