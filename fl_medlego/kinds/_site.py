"""A kind's site half: what a site builds, trains, evaluates and keeps (the ClientApp's side).

    site = kind.site(context)
    result = site.train(data, start=None, state=None)       # round 1: from the base
    metrics = site.evaluate(data, result.update, result.state.head)
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from .. import wire
from ..models import SiteModel
from ..seeds import training_seed
from ..train import EpochReport, PlainSteps, TrainConfig, evaluate, fit
from ._context import KindContext

if TYPE_CHECKING:
    from ..data import SiteData

Update = Any  # a kind's own update type: an Adapter, a backbone state dict, ...


@dataclass
class SiteState:
    """What a site keeps between rounds. Never sent anywhere."""

    head: dict[str, torch.Tensor]
    specialist: Update  # the update trained from the base in the site's first round (the ceiling)
    specialist_head: dict[str, torch.Tensor]


@dataclass
class TrainResult:
    update: Update
    state: SiteState
    metrics: dict[str, float]  # the kind's `train_metrics`, by their wire names
    base_fingerprint: str  # of the frozen base the site trained on: updates merge only over one base
    steps: int = 0  # optimiser steps taken (what a DP-SGD ledger counts)


class KindSite(ABC):
    """The site half of a kind, bound to the run's kind context."""

    def __init__(self, kind, context: KindContext) -> None:
        self.kind, self.context = kind, context

    @abstractmethod
    def build_model(self, data: SiteData, update: Update | None, head: dict[str, torch.Tensor] | None) -> SiteModel:
        """The site's model: the shared base carrying `update` (None: the untrained start) and a head."""

    @abstractmethod
    def extract(self, model: SiteModel) -> Update:
        """The trained update of `model` (a copy: it must not change when training goes on)."""

    def train_config(self) -> TrainConfig:
        return self.context.train

    def site_train_config(self, data: SiteData) -> TrainConfig:
        """The kind's training settings for this site's data (flips only where they keep the labels)."""
        return dataclasses.replace(self.train_config(), flips=data.flips_keep_labels)

    def head_state(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The site's own head (kept at the site between rounds; empty for a kind without one)."""
        return {k: v.detach().clone() for k, v in model.head.state_dict().items()}

    def train(self, data: SiteData, start: Update | None, state: SiteState | None,
              on_epoch: Callable[[EpochReport], None] | None = None, server_round: int = 1,
              steps: type[PlainSteps] | object = PlainSteps, precision: str | None = None) -> TrainResult:
        """One round of local training from `start` (None in round 1: from the base), keeping the best epoch.

        steps: how each optimiser step is taken (plain by default; the privacy layer passes DP-SGD's,
        fl_medlego.privacy.site); precision: overrides the kind's (DP-SGD checks float32 only).
        """
        model = self.build_model(data, start, state.head if state is not None else None)
        train_cfg = self.site_train_config(data)
        if precision is not None:
            train_cfg = dataclasses.replace(train_cfg, precision=precision)
        result = fit(model, data.train, data.val, data.task, model.image_size, train_cfg, on_epoch=on_epoch,
                     steps=steps, draws_seed=training_seed(self.context.seed, data.site.name, server_round),
                     name=data.site.name)
        update = self.extract(model)
        head = self.head_state(model)
        if state is None:  # the first training from the base: this is the site's specialist
            state = SiteState(head=head, specialist=update, specialist_head=head)
        else:
            state = SiteState(head=head, specialist=state.specialist, specialist_head=state.specialist_head)
        best = result.history[result.best_epoch - 1]
        measured = {wire.VAL_ACC: result.best_val_acc, wire.TRAIN_LOSS: best["train_loss"],
                    wire.BEST_EPOCH: float(result.best_epoch), wire.NUM_EXAMPLES: float(result.num_examples)}
        # By name, not position: a kind may order its train_metrics as it likes; one that declares more adds them
        # to this result in its own train.
        metrics = {name: measured[name] for name in self.kind.train_metrics if name in measured}
        return TrainResult(update, state, metrics, model.base_fingerprint, result.steps)

    def evaluate(self, data: SiteData, update: Update | None, head: dict[str, torch.Tensor] | None,
                 split: str = "test") -> dict[str, float]:
        """Metrics of `update` with the given head of this site on one of its splits."""
        model, train_cfg = self.build_model(data, update, head), self.train_config()
        return evaluate(model, getattr(data, split), data.task, model.image_size, device=train_cfg.device,
                        precision=train_cfg.precision)

    @property
    def tuning_metric(self) -> str:
        """The name of what `tuning_score` measures."""
        return wire.ACC

    def tuning_score(self, data: SiteData, update: Update | None, head: dict[str, torch.Tensor] | None) -> float:
        """What `fl-medlego compare` chooses a merge's options on, for this site: its validation ACC."""
        return self.evaluate(data, update, head, "val")[wire.ACC]

    def learning_curve(self, data: SiteData, start: Update | None, epochs: int,
                       on_epoch: Callable[[EpochReport], None] | None = None) -> dict[str, list[float]]:
        """Learn a new task from `start` (e.g. a merged update) or the bare base (None) with a fresh head,
        recording validation and test ACC after every epoch (Med-LEGO Fig. 2). Keeps no state."""
        model = self.build_model(data, start, None)
        train_cfg = dataclasses.replace(self.site_train_config(data), epochs=epochs)
        result = fit(model, data.train, data.val, data.task, model.image_size, train_cfg, watch=data.test,
                     on_epoch=on_epoch, draws_seed=training_seed(self.context.seed, data.site.name, 1),
                     name=data.site.name)
        return {wire.VAL_ACC: [h["val_acc"] for h in result.history],
                wire.TEST_ACC: [h["watch_acc"] for h in result.history]}
