"""A site's privacy budget: the noise calibrated for the whole run, and what its training has spent.

The ledger lists every round of DP-SGD the site has run (noise multiplier, sampling rate, steps);
epsilon is computed from that history by Opacus's accountant, so it is what the site really did,
whatever rounds it missed or repeated. It lives with the site's state (clients/state.py), so a
resumed run goes on counting from where it stopped; nothing in it ever leaves the site except
the epsilon spent.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import asdict, dataclass, field

from ..errors import UnknownNameError
from .settings import ACCOUNTANTS, PrivacySettings


class PrivacyBudgetExhausted(RuntimeError):
    """Training further would spend more than the site's budget."""


def steps_per_epoch(num_train: int, batch_size: int) -> int:
    """Steps in one local epoch; the Poisson sampling rate is its inverse (as Opacus's DPDataLoader has it)."""
    return max(1, math.ceil(num_train / batch_size))


def epsilon_of(history: list[tuple[float, float, int]], delta: float, accountant: str) -> float:
    """Epsilon at `delta` after the DP-SGD steps in `history` ((noise multiplier, sampling rate, steps) each)."""
    if accountant not in ACCOUNTANTS:  # Opacus knows more than the two this project supports and checks
        raise UnknownNameError("privacy accountant", accountant, ACCOUNTANTS)
    if not history:
        return 0.0
    from opacus.accountants import create_accountant

    tracker = create_accountant(mechanism=accountant)
    tracker.history = list(history)
    return float(tracker.get_epsilon(delta=delta))


def calibrate_noise(settings: PrivacySettings, delta: float, sample_rate: float, steps: int) -> float:
    """The smallest noise multiplier (to Opacus's 0.01 epsilon tolerance) that spends at most
    settings.epsilon over `steps` Poisson-sampled steps."""
    from opacus.accountants.utils import get_noise_multiplier

    with warnings.catch_warnings():  # the search tries tiny noise levels, whose optimal RDP order is off the grid
        warnings.filterwarnings("ignore", message="Optimal order is the (largest|smallest) alpha")
        return float(get_noise_multiplier(target_epsilon=settings.epsilon, target_delta=delta,
                                          sample_rate=sample_rate, steps=steps, accountant=settings.accountant,
                                          epsilon_tolerance=0.01))


@dataclass
class PrivacyLedger:
    epsilon_budget: float
    delta: float
    accountant: str
    noise_multiplier: float
    sample_rate: float
    planned_steps: int  # rounds x local epochs x steps per epoch: what the noise was calibrated for
    rounds: list[dict] = field(default_factory=list)  # {"round", "noise_multiplier", "sample_rate", "steps"}

    @classmethod
    def plan(cls, settings: PrivacySettings, num_train: int, batch_size: int, epochs: int,
             num_rounds: int) -> PrivacyLedger:
        """A new ledger whose noise spends the budget over every planned round of the run."""
        delta = settings.delta_for(num_train)
        per_epoch = steps_per_epoch(num_train, batch_size)
        planned = num_rounds * epochs * per_epoch
        sigma = calibrate_noise(settings, delta, 1.0 / per_epoch, planned)
        return cls(settings.epsilon, delta, settings.accountant, sigma, 1.0 / per_epoch, planned)

    @property
    def epoch_steps(self) -> int:
        """DP-SGD steps in one local epoch at this ledger's sampling rate (what a round spends per epoch)."""
        return round(1 / self.sample_rate)

    @property
    def history(self) -> list[tuple[float, float, int]]:
        return [(r["noise_multiplier"], r["sample_rate"], r["steps"]) for r in self.rounds]

    def spent(self, more: list[tuple[float, float, int]] = ()) -> float:
        """Epsilon spent so far (and after `more` steps, when given)."""
        return epsilon_of(self.history + list(more), self.delta, self.accountant)

    def check_room(self, site: str, steps: int) -> None:
        """Raise PrivacyBudgetExhausted if `steps` more steps would spend more than the budget."""
        after = self.spent([(self.noise_multiplier, self.sample_rate, steps)])
        # The calibration's own tolerance: the planned run itself may land a hair above the budget.
        if after > self.epsilon_budget + 0.01:
            raise PrivacyBudgetExhausted(
                f"site {site}: privacy budget exhausted: it has spent epsilon {self.spent():.3f} of "
                f"{self.epsilon_budget:g} (delta {self.delta:.2g}) in {len(self.rounds)} round(s), and another round "
                f"({steps} steps) would bring it to {after:.3f}. It will not train further in this run; start a new "
                "run (a new budget) or raise privacy.epsilon")

    def record(self, server_round: int, steps: int) -> None:
        self.rounds.append({"round": server_round, "noise_multiplier": self.noise_multiplier,
                            "sample_rate": self.sample_rate, "steps": steps})

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> PrivacyLedger:
        return cls(**json.loads(text))
