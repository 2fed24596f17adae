"""Sites: which data each site holds and its private train / val / test shards.

A sites spec lists sites, comma-separated:
- a MedMNIST set, one site: `blood`; or split across N sites: `pneumonia:3` (sites pneumonia-1..3). Every
  split of a set is partitioned across its sites (a hospital has its own test set);
- a site with its own images, named by its node: any other name, e.g. `cxr` (the SuperNode's
  `--node-config "dataset='cxr'"` names a dataset registered there with `fl-medlego site data add`);
- a site with its own images named here (simulation, or one machine): `cxr=folder:/data/cxr`,
  `cxr=manifest:/data/cxr/manifest.csv`, `cxr=datalist:/data/cxr/datalist.json` or `cxr=dataset:NAME`
  (a registered dataset of this machine).
A name too close to a MedMNIST set's (`pneumona`) is refused as a likely typo: write `pneumona=node`.
"""

from __future__ import annotations

import difflib
import functools
import re
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import ConfigError, UnknownNameError
from ..seeds import data_seed
from .medmnist_source import DOWNLOAD, SPLITS, LoadedSet, _medmnist_info, canonical_flag, download_folder, load_medmnist
from .partition import partition, subsample

NODE = "node"  # a site's own data, named by its node
SAMPLE = "sample"  # data.partition: each site draws its own images from the whole split (scale tests)
OWN_SOURCES = ("folder", "manifest", "datalist", "dataset")
SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class SiteSpec:
    name: str  # e.g. "blood" or "pneumonia-2"
    flag: str  # e.g. "bloodmnist"; "" for a site with its own images
    index: int  # position among the sites of this modality
    count: int  # how many sites share this modality
    source: str = ""  # "": the MedMNIST set `flag`; "node": the node names it; "folder:PATH", "dataset:NAME", ...

    @property
    def own_data(self) -> bool:
        return bool(self.source)

    @property
    def data_key(self) -> str:
        """What seeds the site's draws: its MedMNIST set, or its own name."""
        return self.flag or self.name


def _own_site(name: str, source: str, item: str) -> SiteSpec:
    if not SITE_NAME.match(name):
        raise ConfigError(f"bad site entry {item!r}: a site name uses letters, digits, '-', '_' or '.'")
    kind, sep, where = source.partition(":")
    if source != NODE and (not sep or kind not in OWN_SOURCES or not where.strip()):
        raise ConfigError(f"bad site entry {item!r}: write 'name=node' or 'name=SOURCE:PATH' with SOURCE one of "
                          f"{', '.join(OWN_SOURCES)} (e.g. cxr=folder:/data/cxr, cxr=dataset:cxr)")
    return SiteSpec(name, "", 0, 1, source if source == NODE else f"{kind}:{where.strip()}")


def _named_site(name: str, item: str) -> SiteSpec:
    """A bare name: a MedMNIST set, else a site whose node supplies its data (refused when it looks like a typo)."""
    try:
        flag = canonical_flag(name)
    except UnknownNameError as err:
        sets = [k.removesuffix("mnist") for k in _medmnist_info().INFO if not k.endswith("3d")]
        if difflib.get_close_matches(name.lower().removesuffix("mnist"), sets, n=1, cutoff=0.8):
            raise UnknownNameError(err.what, err.name, err.known,
                                   f"a site with its own images that really is named so: write '{name}=node'") from None
        return _own_site(name, NODE, item)
    return SiteSpec(flag.removesuffix("mnist"), flag, 0, 1)


def parse_sites(spec: str) -> list[SiteSpec]:
    sites: list[SiteSpec] = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        name, own, source = item.partition("=")
        if own:
            sites.append(_own_site(name.strip(), source.strip(), item))
            continue
        name, _, count_text = item.partition(":")
        try:
            count = int(count_text) if count_text else 1
        except ValueError:
            raise ConfigError(f"bad site entry {item!r}: write 'modality' or 'modality:N' with N an integer") from None
        if count < 1:
            raise ConfigError(f"bad site entry {item!r}: N must be >= 1")
        site = _named_site(name.strip(), item)
        if site.own_data:
            if count_text:
                raise ConfigError(f"bad site entry {item!r}: 'name:N' splits a MedMNIST set; a site with its own "
                                  "images is one site")
            sites.append(site)
            continue
        short = site.name
        sites += [SiteSpec(short if count == 1 else f"{short}-{i + 1}", site.flag, i, count) for i in range(count)]
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
    class_names: tuple[str, ...] = ()  # in class-index order
    prompt_template: str = ""  # a site's own: how the cross-modal kind words its class names ("" = the default)

    @property
    def flips_keep_labels(self) -> bool:
        """Whether a mirror image keeps its label (not where classes name a side: organA's "left kidney")."""
        from ..augment import flips_keep_labels

        return flips_keep_labels(self.site.flag, self.class_names)


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
        cap = max_train if split == "train" else max_eval
        if scheme == SAMPLE:  # the site's own draw from the whole split: sites may share images
            rng = np.random.default_rng([base_seed + 10 + s, site.index])
            idx = np.sort(rng.choice(len(arrays.labels), size=min(cap, len(arrays.labels)), replace=False))
        else:
            parts = _parts_cached(site.flag, key, size, split, site.count, scheme, alpha, base_seed + s)
            idx = subsample(parts[site.index], cap, base_seed + 10 + s)
        images = arrays.images[idx]
        if images.ndim == 3:  # grayscale: add the channel axis
            images = images[..., None]
        labels = torch.from_numpy(arrays.labels[idx])
        shards[split] = Split(torch.from_numpy(np.ascontiguousarray(images)), labels)
    labels = _medmnist_info().INFO[site.flag]["label"]
    return SiteData(site, loaded.task, loaded.num_classes, loaded.source, loaded.origin,
                    shards["train"], shards["val"], shards["test"], tuple(labels[str(i)] for i in range(len(labels))))
