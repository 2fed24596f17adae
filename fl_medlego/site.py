"""Which sites a node hosts and where their data comes from, without Flower.

What a site trains and sends is its kind's business (`fl_medlego.kinds`); the Flower ClientApp only
moves the kind's state in and out of the node's context and its updates in and out of messages.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from . import wire
from .data import SiteData, load_site
from .errors import UserError

if TYPE_CHECKING:
    from .config import RunConfig


def data_root_for_node(node_config: Mapping, scenario_root: str) -> str:
    """The data root a node's sites read: the node's `data-root` whenever it sets one, even '' (which means
    $MEDMNIST_ROOT, else ~/.medmnist, downloading what is missing there), else the scenario's data.root.
    A folder means that folder alone (`fl_medlego.data.medmnist_source`).

    The one place this is decided: the start-up check of a real site and its training both use it.
    """
    if wire.NODE_DATA_ROOT in node_config:
        return str(node_config[wire.NODE_DATA_ROOT])
    return scenario_root


def dataset_for_node(node_config: Mapping) -> str | None:
    """The registered dataset a node names for its site (`--node-config "dataset='NAME'"`), if any."""
    name = str(node_config.get(wire.NODE_DATASET, "")).strip()
    return name or None


def load_site_data(cfg: RunConfig, site_name: str, node_config: Mapping | None = None,
                   progress: Callable[[int, int], None] | None = None) -> SiteData:
    """The site's private shards: the dataset its node names, else its own images the sites spec names,
    else its MedMNIST set from the data root the node names (or the scenario's).
    progress: (done, total) while own images are decoded into the cache (their first pass only)."""
    d, site, node_config = cfg.data, cfg.site(site_name), node_config or {}
    node_dataset = dataset_for_node(node_config)
    if node_dataset and not site.own_data:
        raise UserError(f"this node names its dataset {node_dataset!r}, but the run declares site {site.name!r} as "
                        f"the MedMNIST set {site.flag}: a site with its own images must be declared so, e.g. "
                        f"sites='{site.name}=node' (or a name that is no MedMNIST set)")
    hosted = [s for s in str(node_config.get(wire.NODE_SITE, "")).split(",") if s.strip()]
    if node_dataset and len(hosted) > 1:
        raise UserError(f"this node names one dataset ({node_dataset!r}) for several sites ({', '.join(hosted)}): "
                        "one SuperNode per own-data site")
    if node_dataset or site.own_data:
        from .data.own.site_data import load_own_site, record_for

        return load_own_site(site, record_for(site, node_dataset), cfg.image_size, d.max_train, d.max_eval,
                             cfg.seed, progress)
    root = data_root_for_node(node_config, d.root)
    return load_site(site, root, d.image_size, d.partition, d.dirichlet_alpha, d.max_train, d.max_eval, cfg.seed)


def sites_for_node(cfg: RunConfig, node_config: Mapping) -> list[str]:
    """The sites a node hosts: the `site` its SuperNode names (deployment), else its share (simulation).

    In simulation, site i of the scenario lives on simulated node i mod num-partitions, so a site is
    always served by the same node and keeps its state there.
    """
    all_sites = cfg.site_names
    if wire.NODE_SITE in node_config:
        named = [s.strip() for s in str(node_config[wire.NODE_SITE]).split(",") if s.strip()]
        unknown = sorted(set(named) - set(all_sites))
        if unknown:
            raise ValueError(f"this node's --node-config names site(s) {unknown}, which the scenario does not "
                             f"declare (sites: {all_sites}); fix --node-config \"{wire.NODE_SITE}='...'\"")
        return named
    if wire.NODE_PARTITION_ID in node_config:
        return all_sites[int(node_config[wire.NODE_PARTITION_ID])::int(node_config[wire.NODE_NUM_PARTITIONS])]
    raise ValueError(f"this node names no site: start the SuperNode with --node-config \"{wire.NODE_SITE}='NAME'\"")
