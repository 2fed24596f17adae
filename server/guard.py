"""The update guard: no site's update may be larger than the run allows, before anything is combined."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from fl_medlego.config import GuardSettings
from fl_medlego.kinds import KindServer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GuardDecision:
    site: str
    norm: float
    bound: float
    action: str  # "kept", "clipped" or "rejected"


def check_combined(norm: float, kept: int, bound: float) -> str | None:
    """Why a combined update cannot be sent back (None if it can): non-finite, or larger than any
    combination of `kept` bounded updates could honestly be (10x slack for methods that rescale). A
    merge of raw factors (lora_avg, pem) can blow up on factors that are balanced badly on purpose."""
    if not norm < float("inf"):
        return "the combined update is not finite"
    if bound < float("inf") and norm > 10 * kept * bound:
        return (f"the combined update's norm {norm:.4g} exceeds 10 x {kept} x the bound {bound:.4g}: some site's "
                "factors are unbalanced (B large, A small); use a merge of the updates (medlego, post_avg)")
    return None


def norm_bound(norms: dict[str, float], settings: GuardSettings) -> float:
    """The round's bound: norm-factor x the lower median of the sites' norms, and max-norm when set."""
    bounds = []
    if settings.norm_factor > 0 and norms:
        lower_median = float(torch.tensor(sorted(norms.values()), dtype=torch.float64).median())
        bounds.append(settings.norm_factor * lower_median)
    if settings.max_norm > 0:
        bounds.append(settings.max_norm)
    return min(bounds) if bounds else float("inf")


def guard_updates(updates: dict[str, object], kind: KindServer, reference: object | None,
                  settings: GuardSettings) -> tuple[dict[str, object], list[GuardDecision]]:
    """The updates to combine (over-bound ones clipped, or left out when the action is reject) and why."""
    norms = {site: kind.norm(update, reference) for site, update in updates.items()}
    bound = norm_bound(norms, settings)
    kept, decisions = {}, []
    for site, update in updates.items():
        norm = norms[site]
        if norm <= bound:
            kept[site] = update
            decisions.append(GuardDecision(site, norm, bound, "kept"))
        elif settings.action == "clip":
            kept[site] = kind.scaled(update, bound / norm, reference)
            decisions.append(GuardDecision(site, norm, bound, "clipped"))
        else:
            decisions.append(GuardDecision(site, norm, bound, "rejected"))
    return kept, decisions


def capped_examples(claims: dict[str, float], factor: float = 2.0) -> dict[str, float]:
    """Example counts for weighting, each capped at `factor` x the lower median claim: a site that claims
    more data than it has gets at most twice the weight of a typical site (with two sites, 2/3 of it)."""
    lower_median = float(torch.tensor(sorted(claims.values()), dtype=torch.float64).median())
    return {site: min(n, factor * lower_median) for site, n in claims.items()}
