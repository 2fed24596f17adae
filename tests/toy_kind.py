"""A toy site kind defined in one module, known to no other file but its test: each site sends a 4-value
vector computed from its training labels, the server averages the vectors, and an evaluation scores the
majority label the site saw. It has its own settings group (`toy.*`), metrics and report column."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from safetensors.torch import load_file, save_file

from fl_medlego import wire
from fl_medlego.files import atomic_path
from fl_medlego.kinds import KindServer, KindSite, ReportColumns, SiteKind, SiteState, TrainResult
from fl_medlego.settings import check_group, setting

NAME = "toy"
STRATEGY = "toy_mean"
VECTOR = "toy-vector"
SPREAD = "toy-spread"  # a train metric of its own
SCORE = "toy-score"  # an evaluation metric of its own
SIZE = 4


@dataclass(frozen=True)
class ToySettings:
    PREFIX: ClassVar[str] = "toy."

    shift: float = setting(0.25, "toy sites: added to every value they send", low=0)

    def __post_init__(self) -> None:
        check_group(self)


def _majority(data) -> int:
    labels = data.train.labels.reshape(len(data.train), -1)[:, 0].long()
    return int(torch.bincount(labels).argmax())


class ToySite(KindSite):
    def build_model(self, data, update, head):
        raise NotImplementedError("a toy site has no model")

    def extract(self, model):
        raise NotImplementedError("a toy site has no model")

    def train(self, data, start, state, on_epoch=None, server_round=1, **_) -> TrainResult:
        share = float((data.train.labels.reshape(len(data.train), -1)[:, 0].long() == _majority(data)).float().mean())
        update = torch.full((SIZE,), share + self.context.settings.shift)
        if start is not None:
            update = (update + start) / 2
        state = state or SiteState(head={}, specialist=update, specialist_head={})
        metrics = {wire.VAL_ACC: share, wire.TRAIN_LOSS: 1 - share, wire.BEST_EPOCH: 1.0,
                   wire.NUM_EXAMPLES: float(len(data.train)), SPREAD: float(update.std())}
        return TrainResult(update, SiteState({}, state.specialist, {}), metrics, "00aa")

    def evaluate(self, data, update, head, split="test") -> dict[str, float]:
        labels = getattr(data, split).labels.reshape(len(getattr(data, split)), -1)[:, 0].long()
        acc = float((labels == _majority(data)).float().mean())
        score = 1 / (1 + math.exp(-float(update.mean()))) if update is not None else 0.5
        return {"acc": acc, "auc": 0.5, "f1": acc / 2, "loss": 1.0, SCORE: score}


class ToyServer(KindServer):
    def template(self) -> dict:
        return {VECTOR: (SIZE,)}

    def size_bound(self, template: dict) -> int:
        return SIZE

    def encode(self, update: torch.Tensor) -> dict[str, torch.Tensor]:
        return {VECTOR: update.float()}

    def decode(self, tensors: dict, template: dict) -> torch.Tensor:
        vector = tensors.get(VECTOR)
        if set(tensors) != {VECTOR} or vector.shape != (SIZE,) or not torch.isfinite(vector).all():
            raise wire.InvalidUpdate(f"a toy update is one finite vector '{VECTOR}' of {SIZE} values")
        return vector.float()

    def save(self, update: torch.Tensor, directory: Path, base_fingerprint: str | None) -> Path:
        path = Path(directory) / "toy.safetensors"
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            save_file(self.encode(update), str(tmp))
        return path

    def load(self, directory: Path, base_fingerprint: str | None) -> torch.Tensor:
        return self.decode(load_file(str(Path(directory) / "toy.safetensors")), self.template())

    def norm(self, update, reference) -> float:
        return float(update.norm())

    def scaled(self, update, factor, reference):
        return update * factor

    def combine(self, updates, weights, merge) -> torch.Tensor:
        w = torch.full((len(updates),), 1 / len(updates)) if weights is None else weights.float()
        return torch.einsum("n,nd->d", w, torch.stack(list(updates)))

    def shared_base(self):
        return None, "00aa"


class ToyKind(SiteKind):
    name = NAME
    summary = "a 4-value vector per site, averaged"
    specialist_label = "toy vector"
    settings_type = ToySettings
    train_metrics = (*SiteKind.train_metrics, SPREAD)
    evaluate_metrics = (SCORE,)
    metric_schema = {SPREAD: (0.0, 1e6, False), SCORE: (0.0, 1.0, False)}
    report = ReportColumns(title="Toy", columns={SCORE: "toy score"}, summary_text=("Toy kind: its own score.",),
                           compare_text="Toy kind: its own score, mean over the sites.")
    site_type = ToySite
    server_type = ToyServer

    def strategies(self) -> list[str]:
        return [STRATEGY]

    def merge_options(self, strategy, shared, options):
        return None
