"""MedMNIST data for sites: loading (bundled sample, local roots, download) and partitioning."""

from .medmnist_source import BUNDLED, canonical_flag, load_medmnist
from .partition import dirichlet_partition, iid_partition, partition
from .sites import SiteData, SiteSpec, Split, load_site, parse_sites

__all__ = [
    "BUNDLED", "SiteData", "SiteSpec", "Split", "canonical_flag", "dirichlet_partition", "iid_partition",
    "load_medmnist", "load_site", "parse_sites", "partition",
]
