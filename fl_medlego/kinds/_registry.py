"""Site kinds by name: what a site trains and sends, and how the server combines it.

A kind is a class with one job per method. The apps (`clients/`, `server/`), the strategy and
`fl-medlego compare` are written once over `SiteKind`; a new kind of site (a cross-modal pair of
towers, say) is a new module here, not new branches there.

    kind = kind_for_strategy("medlego")     # the adapter kind
    result = kind.train(cfg, data, start=None, state=None)
    update = kind.decode(kind.encode(result.update), kind.template(cfg))
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from .. import wire
from ..augment import flips_keep_labels
from ..errors import UnknownNameError
from ..models import SiteModel, shared_base
from ..seeds import training_seed
from ..train import EpochReport, PlainSteps, TrainConfig, evaluate, fit

if TYPE_CHECKING:
    from ..config import MergeSettings, RunConfig
    from ..data import SiteData

Update = Any  # a kind's own update type: an Adapter, a backbone state dict, ...
Template = dict  # what a valid update must look like (the kind decides)


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


class SiteKind(ABC):
    name: ClassVar[str]
    summary: ClassVar[str]
    specialist_label: ClassVar[str]  # how comparison tables name this kind's specialists
    train_metrics: ClassVar[tuple[str, ...]] = (wire.VAL_ACC, wire.TRAIN_LOSS, wire.BEST_EPOCH, wire.NUM_EXAMPLES)
    # What its evaluations report beside wire.EVAL_METRICS (each declared in wire.METRIC_SCHEMA).
    evaluate_metrics: ClassVar[tuple[str, ...]] = ()
    needs_reference: ClassVar[bool] = False  # an update's size is a change from the weights the round started at
    supports_privacy: ClassVar[bool] = False  # its training step may be wrapped in DP-SGD (fl_medlego.privacy.site)
    # Runs only when the run config names it (`kind`): its strategies are another kind's names too.
    chosen_explicitly: ClassVar[bool] = False
    zero_shot: ClassVar[bool] = False  # its untrained model classifies already (prompts): compare reports it
    # Its own settings: a dataclass with a PREFIX whose fields are declared with fl_medlego.settings.setting
    # (the run config parses every kind's group; RunConfig.kind_settings holds the run's kind's).
    settings_type: ClassVar[type | None] = None

    # -- which strategies run this kind, and their options ---------------------------------------
    @abstractmethod
    def strategies(self) -> list[str]:
        """The strategy names (run config `strategy`) that run sites of this kind."""

    @abstractmethod
    def merge_options(self, strategy: str, shared: dict, options: dict) -> object | None:
        """The strategy's validated options object (None when it has none); raises on a bad option.

        shared: options the run config sets for every method that has them (merge.energy, merge.max-rank);
        options: the strategy's own (merge.options).
        """

    def option_grid(self, strategy: str) -> list[dict]:
        """Option values `fl-medlego compare` tries on validation splits (one empty dict: nothing to tune)."""
        return [{}]

    # -- the update on the wire and on disk ------------------------------------------------------
    @abstractmethod
    def template(self, cfg: RunConfig) -> Template:
        """What a valid update of the shared model looks like (built on the meta device: no weights)."""

    @abstractmethod
    def size_bound(self, template: Template) -> int:
        """The most values a valid encoded update can hold: larger replies are refused before they are read."""

    @abstractmethod
    def norm(self, update: Update, reference: Update | None) -> float:
        """The update's size (Frobenius norm of what it changes, against `reference` where the kind needs one)."""

    @abstractmethod
    def scaled(self, update: Update, factor: float, reference: Update | None) -> Update:
        """The update with what it changes scaled by `factor` (norm clipping)."""

    @abstractmethod
    def encode(self, update: Update) -> dict[str, torch.Tensor]: ...

    @abstractmethod
    def decode(self, tensors: dict[str, torch.Tensor], template: Template) -> Update:
        """The update in `tensors`, or wire.InvalidUpdate naming what is wrong."""

    @abstractmethod
    def save(self, update: Update, directory: Path, cfg: RunConfig, base_fingerprint: str | None) -> Path: ...

    @abstractmethod
    def load(self, directory: Path, cfg: RunConfig, base_fingerprint: str | None) -> Update: ...

    # -- the server ---------------------------------------------------------------------------
    @abstractmethod
    def combine(self, updates: Sequence[Update], weights: torch.Tensor | None, merge: MergeSettings) -> Update:
        """The federation's update from the sites' (weights: None for uniform, else summing to 1)."""

    def describe(self, update: Update) -> dict[str, float]:
        """Numbers about a combined update, for the round's aggregate metrics (wire names)."""
        return {}

    def shared_base(self, cfg: RunConfig) -> tuple[torch.nn.Module, str]:
        """A fresh copy of the frozen shared base and the fingerprint every site must report."""
        return shared_base(cfg.model_name, cfg.pretrained, cfg.seed)

    # -- the site -------------------------------------------------------------------------------
    @abstractmethod
    def build_model(self, cfg: RunConfig, data: SiteData, update: Update | None,
                    head: dict[str, torch.Tensor] | None) -> SiteModel:
        """The site's model: the shared base carrying `update` (None: the untrained start) and a head."""

    @abstractmethod
    def extract(self, model: SiteModel) -> Update:
        """The trained update of `model` (a copy: it must not change when training goes on)."""

    @abstractmethod
    def train_config(self, cfg: RunConfig) -> TrainConfig: ...

    def site_train_config(self, cfg: RunConfig, data: SiteData) -> TrainConfig:
        """The kind's training settings for this site's data (flips only where they keep the labels)."""
        return dataclasses.replace(self.train_config(cfg), flips=flips_keep_labels(data.site.flag))

    def head_state(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The site's own head (kept at the site between rounds; empty for a kind without one)."""
        return {k: v.detach().clone() for k, v in model.head.state_dict().items()}

    def train(self, cfg: RunConfig, data: SiteData, start: Update | None, state: SiteState | None,
              on_epoch: Callable[[EpochReport], None] | None = None, server_round: int = 1,
              steps: type[PlainSteps] | object = PlainSteps, precision: str | None = None) -> TrainResult:
        """One round of local training from `start` (None in round 1: from the base), keeping the best epoch.

        steps: how each optimiser step is taken (plain by default; the privacy layer passes DP-SGD's,
        fl_medlego.privacy.site); precision: overrides the kind's (DP-SGD checks float32 only).
        """
        model = self.build_model(cfg, data, start, state.head if state is not None else None)
        train_cfg = self.site_train_config(cfg, data)
        if precision is not None:
            train_cfg = dataclasses.replace(train_cfg, precision=precision)
        result = fit(model, data.train, data.val, data.task, model.image_size, train_cfg, on_epoch=on_epoch,
                     steps=steps, draws_seed=training_seed(cfg.seed, data.site.name, server_round))
        update = self.extract(model)
        head = self.head_state(model)
        if state is None:  # the first training from the base: this is the site's specialist
            state = SiteState(head=head, specialist=update, specialist_head=head)
        else:
            state = SiteState(head=head, specialist=state.specialist, specialist_head=state.specialist_head)
        best = result.history[result.best_epoch - 1]
        values = (result.best_val_acc, best["train_loss"], float(result.best_epoch), float(result.num_examples))
        return TrainResult(update, state, dict(zip(self.train_metrics, values)), model.base_fingerprint,
                           result.steps)

    def evaluate(self, cfg: RunConfig, data: SiteData, update: Update, head: dict[str, torch.Tensor],
                 split: str = "test") -> dict[str, float]:
        """Metrics of `update` with the given head of this site on one of its splits."""
        model, train_cfg = self.build_model(cfg, data, update, head), self.train_config(cfg)
        return evaluate(model, getattr(data, split), data.task, model.image_size, device=train_cfg.device,
                        precision=train_cfg.precision)

    def learning_curve(self, cfg: RunConfig, data: SiteData, start: Update | None, epochs: int,
                       on_epoch: Callable[[EpochReport], None] | None = None) -> dict[str, list[float]]:
        """Learn a new task from `start` (e.g. a merged update) or the bare base (None) with a fresh head,
        recording validation and test ACC after every epoch (Med-LEGO Fig. 2). Keeps no state."""
        model = self.build_model(cfg, data, start, None)
        train_cfg = dataclasses.replace(self.site_train_config(cfg, data), epochs=epochs)
        result = fit(model, data.train, data.val, data.task, model.image_size, train_cfg, watch=data.test,
                     on_epoch=on_epoch)
        return {wire.VAL_ACC: [h["val_acc"] for h in result.history],
                wire.TEST_ACC: [h["watch_acc"] for h in result.history]}


_KINDS: dict[str, SiteKind] = {}
# Whose specialists are the ceiling of the normalized ACC (the paper's: SVD-LoRA adapters).
REFERENCE_KIND = "adapter"


def register_kind(cls: type[SiteKind]) -> type[SiteKind]:
    """Class decorator: register one instance of the kind under its `name`."""
    if cls.name in _KINDS:
        raise ValueError(f"site kind {cls.name!r} is registered twice")
    _KINDS[cls.name] = cls()
    return cls


def get_kind(name: str) -> SiteKind:
    try:
        return _KINDS[name]
    except KeyError:
        raise UnknownNameError("site kind", name, list_kinds()) from None


def list_kinds() -> list[str]:
    return sorted(_KINDS)


def kind_for_strategy(strategy: str) -> SiteKind:
    """The kind whose sites a strategy runs on (unless the run config names one); an unknown strategy lists
    every known one."""
    for kind in _KINDS.values():
        if not kind.chosen_explicitly and strategy in kind.strategies():
            return kind
    raise UnknownNameError("strategy", strategy, all_strategies())


def all_strategies() -> list[str]:
    """Every strategy name of the kinds a strategy name selects by itself (each name once)."""
    return [s for name in list_kinds() if not _KINDS[name].chosen_explicitly for s in _KINDS[name].strategies()]




