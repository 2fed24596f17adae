"""The multi-task reference of the paper's table: one model fully fine-tuned on every task at once.

It is centralised: it needs every site's data in one place, which a federation cannot do. It is a
reference row of `fl-medlego compare`, not a federated method (nor a site kind).
"""

from __future__ import annotations

import logging

import torch
from torch import nn
from tqdm.auto import tqdm

from .config import RunConfig
from .data import SiteData
from .device import autocast, resolve_device, resolve_precision, to_device
from .kinds.full import FullWeightKind
from .models import SiteModel, shared_base
from .train import evaluate, gather_rows, task_loss, to_model_input

log = logging.getLogger(__name__)


class MultiTaskModel(nn.Module):
    def __init__(self, backbone: nn.Module, num_classes: dict[str, int]) -> None:
        super().__init__()
        self.backbone = backbone
        self.heads = nn.ModuleDict({site: nn.Linear(backbone.num_features, n) for site, n in num_classes.items()})

    def site_model(self, site: str, image_size: int) -> SiteModel:
        """A view with one task's head (shares the backbone)."""
        view = SiteModel.__new__(SiteModel)
        nn.Module.__init__(view)
        view.backbone, view.head = self.backbone, self.heads[site]
        view.image_size, view.base_fingerprint = image_size, ""
        return view


def train_multitask(cfg: RunConfig, sites: dict[str, SiteData], progress: bool = False) -> MultiTaskModel:
    """Fine-tune one backbone on all tasks, one head per task, batches of the tasks interleaved at random.

    The epoch kept is the one with the best mean validation ACC over the tasks.
    """
    size = cfg.image_size
    backbone, _ = shared_base(cfg.model_name, cfg.pretrained, cfg.seed)
    model = MultiTaskModel(backbone, {s: d.num_classes for s, d in sites.items()})
    # The same optimiser settings as full fine-tuning at a site: that kind's, asked by its class, not a name.
    tc = cfg.kind_site(FullWeightKind.name).train_config()
    device = resolve_device(tc.device)
    dtype = resolve_precision(tc.precision, device)
    model.to(device)
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
            with autocast(device, dtype):
                images = to_model_input(to_device(gather_rows(d.train.images, batch), device), size)
                logits = model.heads[site](model.backbone(images))
            loss = task_loss(logits.float(), to_device(d.train.labels[batch], device), d.task)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        val = [evaluate(model.site_model(s, size), d.val, d.task, size, device=device, precision=tc.precision)["acc"]
               for s, d in sites.items()]
        mean_val = sum(val) / len(val)
        log.info("multi-task epoch %d: mean val acc %.4f", epoch, mean_val)
        if mean_val > best:
            best, best_state = mean_val, {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    return model.cpu()
