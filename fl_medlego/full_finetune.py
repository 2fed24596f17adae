"""The two non-adapter baselines of the paper's table: fully fine-tuned specialists (averaged into
"ViT averaging", a model soup) and one multi-task model fine-tuned on every task at once.

The multi-task model is centralised: it needs every site's data in one place, which a federation
cannot do. It is a reference row, not a federated method.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from .config import RunConfig
from .data import SiteData
from .models import SiteModel, create_backbone, preset_image_size, shared_base
from .train import TrainConfig, evaluate, fit, task_loss, to_model_input

log = logging.getLogger(__name__)

# The strategy name that switches sites from adapters to full fine-tuning with weight averaging.
FULL_WEIGHT_STRATEGY = "vit_avg"


def full_train_config(cfg: RunConfig, progress: bool = False) -> TrainConfig:
    return TrainConfig(epochs=cfg.train.epochs, batch_size=cfg.train.batch_size, lr=cfg.full_lr,
                       weight_decay=cfg.train.weight_decay, orth_weight=0.0, seed=cfg.seed, progress=progress)


def train_full_site(cfg: RunConfig, data: SiteData, progress: bool = False) -> SiteModel:
    """Fine-tune every backbone weight and the head on one site; the best validation epoch is kept."""
    backbone, _ = shared_base(cfg.model_name, cfg.pretrained, cfg.seed)
    model = SiteModel(backbone, data.num_classes)
    fit(model, data.train, data.val, data.task, preset_image_size(cfg.model_name), full_train_config(cfg, progress))
    return model


def average_backbones(states: list[dict[str, torch.Tensor]], weights: list[float] | None = None
                      ) -> dict[str, torch.Tensor]:
    """Weighted (default: uniform) average of full backbone weights (model soup / FedAvg of full models)."""
    w = torch.tensor(weights if weights is not None else [1.0 / len(states)] * len(states), dtype=torch.float64)
    return {k: torch.einsum("n,n...->...", w, torch.stack([s[k].double() for s in states])).to(states[0][k].dtype)
            for k in states[0]}


@dataclass
class FullSiteState:
    """What a fully fine-tuning site keeps between rounds (never sent anywhere)."""

    head: dict[str, torch.Tensor]
    specialist_backbone: dict[str, torch.Tensor]  # trained from the base in the site's first round
    specialist_head: dict[str, torch.Tensor]


def backbone_template(cfg: RunConfig) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of the shared backbone: what a valid full-weight update must look like."""
    with torch.device("meta"):
        backbone = create_backbone(cfg.model_name, num_classes=0)
    return {k: tuple(v.shape) for k, v in backbone.state_dict().items()}


def train_full_round(cfg: RunConfig, data: SiteData, backbone: dict[str, torch.Tensor] | None,
                     state: FullSiteState | None) -> tuple[dict[str, torch.Tensor], FullSiteState, dict, str]:
    """One round of full fine-tuning from the averaged backbone (or the base in round 1).

    Returns the trained backbone weights, the new site state, metrics, and the base fingerprint.
    """
    base, base_fingerprint = shared_base(cfg.model_name, cfg.pretrained, cfg.seed)
    model = SiteModel(base, data.num_classes)
    if backbone is not None:
        model.backbone.load_state_dict(backbone)
    if state is not None:
        model.head.load_state_dict(state.head)
    result = fit(model, data.train, data.val, data.task, preset_image_size(cfg.model_name), full_train_config(cfg))
    trained = {k: v.detach().clone() for k, v in model.backbone.state_dict().items()}
    head = {k: v.detach().clone() for k, v in model.head.state_dict().items()}
    state = state or FullSiteState(head, trained, head)
    state = FullSiteState(head, state.specialist_backbone, state.specialist_head)
    metrics = {"val-acc": result.best_val_acc, "best-epoch": float(result.best_epoch),
               "train-loss": result.history[result.best_epoch - 1]["train_loss"],
               "num-examples": float(result.num_examples)}
    return trained, state, metrics, base_fingerprint


def evaluate_full(cfg: RunConfig, data: SiteData, backbone: dict[str, torch.Tensor],
                  head: dict[str, torch.Tensor]) -> dict[str, float]:
    model = SiteModel(create_backbone(cfg.model_name, num_classes=0, seed=cfg.seed), data.num_classes)
    model.backbone.load_state_dict(backbone)
    model.head.load_state_dict(head)
    return evaluate(model, data.test, data.task, preset_image_size(cfg.model_name))


class MultiTaskModel(nn.Module):
    def __init__(self, backbone: nn.Module, num_classes: dict[str, int]) -> None:
        super().__init__()
        self.backbone = backbone
        self.heads = nn.ModuleDict({site: nn.Linear(backbone.num_features, n) for site, n in num_classes.items()})

    def site_model(self, site: str) -> SiteModel:
        """A view with one task's head (shares the backbone)."""
        view = SiteModel.__new__(SiteModel)
        nn.Module.__init__(view)
        view.backbone, view.head = self.backbone, self.heads[site]
        return view


def train_multitask(cfg: RunConfig, sites: dict[str, SiteData], progress: bool = False) -> MultiTaskModel:
    """Fine-tune one backbone on all tasks, one head per task, batches of the tasks interleaved at random.

    The epoch kept is the one with the best mean validation ACC over the tasks.
    """
    size = preset_image_size(cfg.model_name)
    backbone, _ = shared_base(cfg.model_name, cfg.pretrained, cfg.seed)
    model = MultiTaskModel(backbone, {s: d.num_classes for s, d in sites.items()})
    tc = full_train_config(cfg, progress)
    optimizer = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    generator = torch.Generator().manual_seed(tc.seed)
    best, best_state = -1.0, None
    for epoch in range(1, tc.epochs + 1):
        model.train()
        batches = [(s, b) for s, d in sites.items()
                   for b in torch.randperm(len(d.train), generator=generator).split(tc.batch_size)]
        order = torch.randperm(len(batches), generator=generator).tolist()
        for i in tqdm(order, desc=f"multi-task epoch {epoch}/{tc.epochs}", disable=not progress, leave=False):
            site, batch = batches[i]
            d = sites[site]
            logits = model.heads[site](model.backbone(to_model_input(d.train.images[batch], size)))
            loss = task_loss(logits, d.train.labels[batch], d.task)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        val = [evaluate(model.site_model(s), d.val, d.task, size)["acc"] for s, d in sites.items()]
        mean_val = sum(val) / len(val)
        log.info("multi-task epoch %d: mean val acc %.4f", epoch, mean_val)
        if mean_val > best:
            best, best_state = mean_val, {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    return model
