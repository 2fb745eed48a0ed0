"""Client partitioners: IID, Dirichlet label skew (Hsu et al. 2019), log-normal quantity skew.

Every partitioner assigns each training index to exactly one client; all randomness comes from `seed`.
"""

from __future__ import annotations

import numpy as np

from privfed.errors import ConfigError, DataError

MIN_PER_CLIENT = 2
_MAX_DIRICHLET_DRAWS = 200


def partition_indices(labels: np.ndarray, *, num_clients: int, scheme: str, seed: int, alpha: float = 0.5,
                      quantity_sigma: float = 1.0, min_per_client: int = MIN_PER_CLIENT) -> list[np.ndarray]:
    """Split `range(len(labels))` into `num_clients` disjoint, sorted index arrays that cover everything."""
    labels = np.asarray(labels)
    n = len(labels)
    if num_clients < 1:
        raise ConfigError(f"clients must be >= 1; got {num_clients}")
    if n < num_clients * min_per_client:
        raise DataError(f"{num_clients} clients need at least {num_clients * min_per_client} training samples "
                        f"({min_per_client} each); the dataset has {n}")
    rng = np.random.default_rng(seed)
    if scheme == "iid":
        parts = np.array_split(rng.permutation(n), num_clients)
    elif scheme == "dirichlet":
        if not alpha > 0:
            raise ConfigError(f"alpha must be > 0; got {alpha}")
        parts = _dirichlet(labels, num_clients, alpha, rng, min_per_client)
    elif scheme == "quantity":
        parts = _quantity(n, num_clients, quantity_sigma, rng, min_per_client)
    else:
        raise ConfigError(f"unknown partition {scheme!r}; use iid, dirichlet or quantity")
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def _dirichlet(labels, num_clients, alpha, rng, min_per_client):
    classes = np.unique(labels)
    for _ in range(_MAX_DIRICHLET_DRAWS):
        parts = [[] for _ in range(num_clients)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(labels == c))
            props = rng.dirichlet(np.full(num_clients, alpha))
            cuts = (np.cumsum(props)[:-1] * len(idx)).astype(int)
            for k, chunk in enumerate(np.split(idx, cuts)):
                parts[k].extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_per_client:
            return parts
    raise DataError(f"Dirichlet partition with alpha={alpha} left a client with fewer than {min_per_client} "
                    f"samples in {_MAX_DIRICHLET_DRAWS} draws; use a larger alpha or fewer clients")


def _quantity(n, num_clients, sigma, rng, min_per_client):
    weights = rng.lognormal(0.0, sigma, num_clients)
    spare = n - num_clients * min_per_client
    sizes = np.full(num_clients, min_per_client) + np.floor(weights / weights.sum() * spare).astype(int)
    sizes[np.argmax(weights)] += n - sizes.sum()
    return np.split(rng.permutation(n), np.cumsum(sizes)[:-1])


def client_summary(labels: np.ndarray, parts: list[np.ndarray], *, num_classes: int) -> list[dict]:
    """Counts only: per client, the number of samples and the count per class label."""
    rows = []
    for cid, idx in enumerate(parts):
        counts = np.bincount(np.asarray(labels)[idx], minlength=num_classes)
        rows.append({"client": cid, "n": int(len(idx)), "label_counts": {str(c): int(v) for c, v in enumerate(counts)}})
    return rows
