"""Split one modality's examples across several sites: IID or Dirichlet label skew, deterministic by seed."""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError, UnknownNameError

SCHEMES = ("iid", "dirichlet")  # partitions; "sample" (each site's own draw, fl_medlego.data.sites) is not one


def iid_partition(n: int, num_sites: int, seed: int) -> list[np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    return [np.sort(part) for part in np.array_split(order, num_sites)]


def dirichlet_partition(labels: np.ndarray, num_sites: int, alpha: float, seed: int,
                        min_size: int = 2, max_tries: int = 100) -> list[np.ndarray]:
    """Per class, share its examples across sites by proportions drawn from Dir(alpha).

    Small alpha gives strong label skew. Draws again (bounded) until every site has `min_size` examples.
    """
    if alpha <= 0:
        raise ConfigError(f"Dirichlet alpha must be > 0, got {alpha}")
    labels = labels.reshape(len(labels), -1)[:, 0]  # multi-label sets skew on their first label
    rng = np.random.default_rng(seed)
    for _ in range(max_tries):
        parts: list[list[int]] = [[] for _ in range(num_sites)]
        for cls in np.unique(labels):
            idx = rng.permutation(np.flatnonzero(labels == cls))
            cuts = (np.cumsum(rng.dirichlet(np.full(num_sites, alpha))) * len(idx)).astype(int)[:-1]
            for site, chunk in enumerate(np.split(idx, cuts)):
                parts[site].extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_size:
            return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]
    raise ConfigError(
        f"could not give each of {num_sites} sites {min_size} examples with Dirichlet alpha={alpha} "
        f"from {len(labels)} examples: use fewer sites or a larger alpha"
    )


def partition(labels: np.ndarray, num_sites: int, scheme: str, alpha: float, seed: int) -> list[np.ndarray]:
    if num_sites == 1:
        return [np.arange(len(labels))]
    if scheme == "iid":
        return iid_partition(len(labels), num_sites, seed)
    if scheme == "dirichlet":
        return dirichlet_partition(labels, num_sites, alpha, seed)
    raise UnknownNameError("partition scheme", scheme, SCHEMES)


def subsample(indices: np.ndarray, cap: int, seed: int) -> np.ndarray:
    """At most `cap` of the indices (all when cap <= 0), chosen by seed, kept in order."""
    if cap <= 0 or len(indices) <= cap:
        return indices
    return np.sort(np.random.default_rng(seed).choice(indices, size=cap, replace=False))
