"""What a site does, without Flower: build its model, train its adapter and head, evaluate.

The Flower ClientApp (`fl_medlego.clients`) only moves `SiteState` in and out of the node's context
state and adapters in and out of messages; everything else happens here.
"""

from __future__ import annotations

import dataclasses
import logging
import zlib
from dataclasses import dataclass

import torch

from .config import RunConfig
from .data import SiteData, load_site, parse_sites
from .lora import Adapter, adapter_updates, get_adapter, inject_svd_lora, set_adapter
from .models import SiteModel, create_backbone, preset_image_size, shared_base
from .train import evaluate, fit

log = logging.getLogger(__name__)


@dataclass
class SiteState:
    """What a site keeps between rounds. Never sent anywhere."""

    head: dict[str, torch.Tensor]
    specialist: Adapter  # the adapter trained from scratch in the site's first round (the ceiling)
    specialist_head: dict[str, torch.Tensor]


def load_site_data(cfg: RunConfig, site_name: str, data_root: str | None = None) -> SiteData:
    sites = {s.name: s for s in parse_sites(cfg.sites)}
    if site_name not in sites:
        raise ValueError(f"site {site_name!r} is not in this scenario's sites {sorted(sites)}")
    d = cfg.data
    return load_site(sites[site_name], data_root or d.root, d.image_size, d.partition, d.dirichlet_alpha,
                     d.max_train, d.max_eval, cfg.seed)


def build_site_model(cfg: RunConfig, num_classes: int, site_name: str = "") -> SiteModel:
    """Shared frozen base (same on every site: seeded or from a checkpoint) + adapter + the site's head."""
    backbone, base_fingerprint = shared_base(cfg.model_name, cfg.pretrained, cfg.seed)
    # Adapter init and head differ by site, reproducibly, without touching the caller's random state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed * 7919 + zlib.crc32(site_name.encode()))
        inject_svd_lora(backbone, dataclasses.replace(cfg.lora, rank=site_rank(cfg, site_name)))
        model = SiteModel(backbone, num_classes)
    model.base_fingerprint = base_fingerprint
    return model


def site_rank(cfg: RunConfig, site_name: str) -> int:
    names = [s.name for s in parse_sites(cfg.sites)]
    return cfg.rank_of(names.index(site_name)) if site_name in names else cfg.lora.rank


def adapter_template(cfg: RunConfig) -> dict[str, tuple[int, int]]:
    """Matrix name -> (d_out, d_in) of every adapted matrix: what a valid site update must look like."""
    with torch.device("meta"):
        backbone = create_backbone(cfg.model_name, num_classes=0)
        inject_svd_lora(backbone, cfg.lora)
    return {name: (u.lora_B.shape[0], u.lora_A.shape[1]) for name, u in adapter_updates(backbone).items()}


def train_site(cfg: RunConfig, data: SiteData, merged: Adapter | None, state: SiteState | None,
               progress: bool = False) -> tuple[Adapter, SiteState, dict[str, float]]:
    """One round of local training: from scratch (no merged adapter yet) or from the merged adapter."""
    model = build_site_model(cfg, data.num_classes, data.site.name)
    if state is not None:
        model.head.load_state_dict(state.head)
    if merged is not None:
        set_adapter(model.backbone, merged)
    train_cfg = dataclasses.replace(cfg.train, progress=progress)
    result = fit(model, data.train, data.val, data.task, preset_image_size(cfg.model_name), train_cfg)
    adapter = get_adapter(model.backbone, metadata={"site": data.site.name, "base": model.base_fingerprint})
    head = {k: v.clone() for k, v in model.head.state_dict().items()}
    if state is None:  # first training from scratch: this is the site's specialist
        state = SiteState(head=head, specialist=adapter, specialist_head=head)
    else:
        state = SiteState(head=head, specialist=state.specialist, specialist_head=state.specialist_head)
    last = result.history[result.best_epoch - 1]
    metrics = {"val-acc": result.best_val_acc, "best-epoch": float(result.best_epoch),
               "train-loss": last["train_loss"], "num-examples": float(result.num_examples)}
    log.info("site %s trained on %d examples (%s): best val acc %.4f at epoch %d", data.site.name,
             result.num_examples, data.source, result.best_val_acc, result.best_epoch)
    return adapter, state, metrics


def evaluate_site(cfg: RunConfig, data: SiteData, adapter: Adapter, head: dict[str, torch.Tensor],
                  split: str = "test") -> dict[str, float]:
    """Metrics of `adapter` with the given head of this site on one of its splits (test by default)."""
    model = build_site_model(cfg, data.num_classes, data.site.name)
    model.head.load_state_dict(head)
    set_adapter(model.backbone, adapter)
    return evaluate(model, getattr(data, split), data.task, preset_image_size(cfg.model_name))


def sites_for_node(cfg: RunConfig, node_config: dict) -> list[str]:
    """The sites a node hosts: the `site` its SuperNode names (deployment), else its share (simulation).

    In simulation, site i of the scenario lives on simulated node i mod num-partitions, so a site is
    always served by the same node and keeps its state there.
    """
    all_sites = [s.name for s in parse_sites(cfg.sites)]
    if "site" in node_config:
        named = [s.strip() for s in str(node_config["site"]).split(",") if s.strip()]
        unknown = sorted(set(named) - set(all_sites))
        if unknown:
            raise ValueError(f"this node's --node-config names site(s) {unknown}, which the scenario does not "
                             f"declare (sites: {all_sites}); fix --node-config \"site='...'\"")
        return named
    if "partition-id" in node_config:
        return all_sites[int(node_config["partition-id"])::int(node_config["num-partitions"])]
    raise ValueError("this node names no site: start the SuperNode with --node-config \"site='NAME'\"")


def learning_curve(cfg: RunConfig, data: SiteData, start: Adapter | None, epochs: int) -> dict[str, list[float]]:
    """Fine-tune a new task from `start` (e.g. a merged adapter) or from the bare base (None), with a fresh
    head, and record validation and test ACC after every epoch (Med-LEGO Fig. 2). Keeps no state."""
    model = build_site_model(cfg, data.num_classes, data.site.name)
    if start is not None:
        set_adapter(model.backbone, start)
    train_cfg = dataclasses.replace(cfg.train, epochs=epochs)
    result = fit(model, data.train, data.val, data.task, preset_image_size(cfg.model_name), train_cfg, watch=data.test)
    return {"val-acc": [h["val_acc"] for h in result.history], "test-acc": [h["watch_acc"] for h in result.history]}
