"""MedMNIST data for sites: loading (bundled sample, a named folder, download) and partitioning."""

from .medmnist_source import BUNDLED, DataLocation, canonical_flag, load_medmnist, locate_medmnist
from .partition import dirichlet_partition, iid_partition, partition
from .sites import SiteData, SiteSpec, Split, load_site, parse_sites

__all__ = [
    "BUNDLED", "DataLocation", "SiteData", "SiteSpec", "Split", "canonical_flag", "dirichlet_partition",
    "iid_partition", "load_medmnist", "load_site", "locate_medmnist", "parse_sites", "partition",
]
