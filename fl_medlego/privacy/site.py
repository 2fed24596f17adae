"""A site's side of DP-SGD: a wrapper around its kind's training step, installed only in private runs.

The kind trains as always; this wrapper plans the site's budget (once per run), refuses a round that
would overspend it before any step, hands the kind DP-SGD's steps, counts the round in the ledger and
adds to the reply what anyone needs to recompute the site's epsilon. A private site does not send its
training loss: it is computed on the private images, outside the guarantee. The update is what DP-SGD
released, and the validation ACC is measured on other images.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import TYPE_CHECKING

from .. import wire
from ..errors import ConfigError
from ..files import write_text_atomic
from ..kinds import get_kind, list_kinds
from .accountant import PrivacyLedger
from .coordinator import DP_STEPS, EPSILON_SPENT, NOISE_MULTIPLIER, PRIVACY_DELTA, SAMPLE_RATE
from .dpsgd import private_steps
from .settings import PrivacySettings

if TYPE_CHECKING:
    from ..kinds import KindSite, SiteKind, TrainResult


def trains_privately(kind: SiteKind) -> bool:
    """Whether DP-SGD can wrap the kind's training step (the kind says so; only this layer asks)."""
    return kind.supports_privacy


def check_private_kind(settings: PrivacySettings, kind: SiteKind, strategy: str) -> None:
    """Refuse a private run of a kind whose training DP-SGD cannot wrap, naming the kinds it can."""
    if settings.private and not trains_privately(kind):
        private_kinds = [k for k in list_kinds() if trains_privately(get_kind(k))]
        raise ConfigError(f"privacy.mode={settings.mode!r} is not available for strategy {strategy!r} (site kind "
                          f"{kind.name!r}); it is for the strategies of site kind(s) {private_kinds}")


@dataclasses.dataclass(frozen=True)
class PrivateTraining:
    """DP-SGD around a kind's site half's `train` under a site's ledger for a run of `num_rounds` rounds."""

    settings: PrivacySettings
    num_rounds: int

    def train(self, site: KindSite, data, start, state, ledger: PrivacyLedger | None, server_round: int,
              on_epoch=None) -> tuple[TrainResult, PrivacyLedger]:
        """The round's result (its metrics with the privacy spent) and the ledger with the round recorded.

        ledger: the site's ledger of this run, None before its first private round (a new one is planned
        for the whole run). Raises PrivacyBudgetExhausted, before any step, when the round would overspend.
        """
        train_cfg = site.site_train_config(data)
        ledger = ledger or PrivacyLedger.plan(self.settings, len(data.train), train_cfg.batch_size, train_cfg.epochs,
                                              self.num_rounds)
        ledger.check_room(data.site.name, train_cfg.epochs * ledger.epoch_steps)
        # Opacus's per-example gradients are checked in float32 only: no bf16 autocast under DP-SGD.
        result = site.train(data, start, state, on_epoch=on_epoch, server_round=server_round,
                            steps=private_steps(self.settings, ledger, len(data.train)), precision="float32")
        ledger.record(server_round, result.steps)
        metrics = {**result.metrics, wire.TRAIN_LOSS: math.nan, EPSILON_SPENT: ledger.spent(),
                   PRIVACY_DELTA: ledger.delta, NOISE_MULTIPLIER: ledger.noise_multiplier,
                   SAMPLE_RATE: ledger.sample_rate, DP_STEPS: float(result.steps)}
        return dataclasses.replace(result, metrics=metrics), ledger


def train_from_base(settings: PrivacySettings, num_rounds: int, site: KindSite, data) -> TrainResult:
    """A site's first training from the base, as round 1 of a run trains it: with DP-SGD under a new ledger
    in a private run (its metrics carry the privacy spent), plainly otherwise. For callers that train
    specialists outside a federation (fl-medlego compare's one-shot rows)."""
    if not settings.private:
        return site.train(data, None, None)
    return PrivateTraining(settings, num_rounds).train(site, data, None, None, None, server_round=1)[0]


def load_ledger(folder: Path, site: str) -> PrivacyLedger | None:
    """The site's privacy ledger for this run, kept with its state in `folder` (the node's state folder of the
    run; None before its first private round)."""
    path = folder / site / "privacy.json"
    if not path.is_file():
        return None
    try:
        return PrivacyLedger.from_json(path.read_text())
    except (ValueError, TypeError) as err:
        # Never start a fresh budget over a broken record: that would forget what was spent.
        raise RuntimeError(f"site {site}: its privacy ledger {path.name} is unreadable ({err}); it will not train "
                           "until the file is restored or the run is started anew") from err


def save_ledger(folder: Path, site: str, ledger: PrivacyLedger) -> None:
    (folder / site).mkdir(parents=True, exist_ok=True)
    write_text_atomic(folder / site / "privacy.json", ledger.to_json())
