"""Sites: which modality each site holds and its private train / val / test shards.

A sites spec lists modalities, one site each, or `name:N` to split a modality across N sites:
`"blood,breast,organa,pneumonia"` or `"pneumonia:3,blood"` (sites pneumonia-1..3 and blood).
Every split of a modality is partitioned across its sites (a hospital has its own test set).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import ConfigError
from ..seeds import data_seed
from .medmnist_source import DOWNLOAD, SPLITS, LoadedSet, canonical_flag, download_folder, load_medmnist
from .partition import partition, subsample


@dataclass(frozen=True)
class SiteSpec:
    name: str  # e.g. "blood" or "pneumonia-2"
    flag: str  # e.g. "bloodmnist"
    index: int  # position among the sites of this modality
    count: int  # how many sites share this modality


def parse_sites(spec: str) -> list[SiteSpec]:
    sites: list[SiteSpec] = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        name, _, count_text = item.partition(":")
        try:
            count = int(count_text) if count_text else 1
        except ValueError:
            raise ConfigError(f"bad site entry {item!r}: write 'modality' or 'modality:N' with N an integer") from None
        if count < 1:
            raise ConfigError(f"bad site entry {item!r}: N must be >= 1")
        flag = canonical_flag(name)
        short = flag.removesuffix("mnist")
        sites += [SiteSpec(short if count == 1 else f"{short}-{i + 1}", flag, i, count) for i in range(count)]
    names = [s.name for s in sites]
    if not sites or len(set(names)) != len(names):
        raise ConfigError(f"sites spec {spec!r} must name at least one site, each once (got {names})")
    return sites


@dataclass
class Split:
    images: torch.Tensor  # uint8 (N, H, W, C)
    labels: torch.Tensor  # int64 (N, L)

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class SiteData:
    site: SiteSpec
    task: str
    num_classes: int
    source: str  # where the images came from, with the folder (stays at the site)
    origin: str  # the same without any path (what the site reports to the coordinator)
    train: Split
    val: Split
    test: Split


def _root_key(root: str) -> tuple[str, str]:
    """A data root as a cache key: the download root ("") reads the folder the environment names now."""
    return root, str(download_folder()) if root == DOWNLOAD else ""


@functools.lru_cache(maxsize=8)
def _load_cached(flag: str, root: tuple[str, str], size: int) -> LoadedSet:
    # Simulated nodes serve many messages in one process: read each data set once.
    return load_medmnist(flag, root[0], size)


@functools.lru_cache(maxsize=16)
def _parts_cached(flag: str, root: tuple[str, str], size: int, split: str, count: int, scheme: str, alpha: float,
                  seed: int) -> list[np.ndarray]:
    # Every site of a modality needs the same partition of a split: drawing it per message grew with
    # the number of sites (about 5 ms a message with 1000 organA sites, 0.05 ms cached).
    return partition(_load_cached(flag, root, size).splits[split].labels, count, scheme, alpha, seed)


def load_site(site: SiteSpec, root: str, size: int = 28, scheme: str = "iid", alpha: float = 0.5,
              max_train: int = 0, max_eval: int = 0, seed: int = 0) -> SiteData:
    """The site's shard of each split, capped (0 = no cap), identical on every machine for the same seed."""
    key = _root_key(root)
    loaded = _load_cached(site.flag, key, size)
    base_seed = data_seed(seed, site.flag)
    shards = {}
    for s, split in enumerate(SPLITS):
        arrays = loaded.splits[split]
        parts = _parts_cached(site.flag, key, size, split, site.count, scheme, alpha, base_seed + s)
        cap = max_train if split == "train" else max_eval
        idx = subsample(parts[site.index], cap, base_seed + 10 + s)
        images = arrays.images[idx]
        if images.ndim == 3:  # grayscale: add the channel axis
            images = images[..., None]
        labels = torch.from_numpy(arrays.labels[idx])
        shards[split] = Split(torch.from_numpy(np.ascontiguousarray(images)), labels)
    return SiteData(site, loaded.task, loaded.num_classes, loaded.source, loaded.origin,
                    shards["train"], shards["val"], shards["test"])
