"""The coordinator's side of DP-SGD: a layer over the round, installed only in private runs.

The coordinator cannot verify a site's noise; it can refuse an update that does not claim to be
private, or claims more than the run's budget, so that a site running without DP-SGD never looks
private in the summary. It records what each site reports (epsilon and delta spent so far, and the
numbers anyone needs to recompute them: noise multiplier, sampling rate, steps, accountant) in the
run's events and its summary. None of these numbers is private.
"""

from __future__ import annotations

from .. import wire
from .settings import MAX_DELTA, PrivacySettings

EPSILON_SPENT = "epsilon-spent"  # the epsilon a site's training has spent so far in this run
PRIVACY_DELTA = "privacy-delta"  # ... and the delta it holds at
NOISE_MULTIPLIER = "noise-multiplier"  # this round's DP-SGD noise multiplier
SAMPLE_RATE = "sample-rate"  # this round's Poisson sampling rate
DP_STEPS = "dp-steps"  # this round's DP-SGD steps
REPORTED = (EPSILON_SPENT, PRIVACY_DELTA, NOISE_MULTIPLIER, SAMPLE_RATE, DP_STEPS)
STEP_PARAMETERS = (NOISE_MULTIPLIER, SAMPLE_RATE, DP_STEPS)  # one round's entry of the accountant's history
LAYER_NAME = "privacy"  # the privacy layer's name: its key in the round state, and how the summary finds it

wire.declare_metrics({EPSILON_SPENT: (0.0, 1e6, False), PRIVACY_DELTA: (0.0, 1.0, False),
                      NOISE_MULTIPLIER: (0.0, 1e6, False), SAMPLE_RATE: (0.0, 1.0, False),
                      DP_STEPS: (0, 10**9, True)})


class PrivacyCheck:
    """Refuses updates without a private claim within budget; keeps each site's last claim (its own word) and the
    history of its rounds' DP-SGD parameters, from which `fl_medlego.privacy.epsilon_of` recomputes the claim:

        epsilon_of(entry["history"], entry["delta"], entry["accountant"])  # == entry["epsilon"]

    (history: [noise multiplier, sampling rate, steps] per round it recorded, history_rounds: those rounds)."""

    name = LAYER_NAME
    reply_metrics = REPORTED  # what a private site's train reply may carry beyond its kind's metrics

    def __init__(self, settings: PrivacySettings, resumed: dict | None = None) -> None:
        self.settings = settings
        # site -> its last claim, the round it made it and its rounds' history (a resumed run's state has them)
        self.sites: dict[str, dict] = {site: dict(entry) for site, entry in (resumed or {}).items()}

    def check(self, site: str, metrics: dict[str, float]) -> None:
        """Raise wire.InvalidUpdate if the reply does not claim DP-SGD within the run's budget."""
        spent, delta = metrics.get(EPSILON_SPENT), metrics.get(PRIVACY_DELTA)
        mode, budget, max_delta = self.settings.mode, self.settings.epsilon, self.settings.delta or MAX_DELTA
        if spent is None or delta is None:
            raise wire.InvalidUpdate(f"site {site}: this run requires DP-SGD (privacy.mode={mode!r}) and the reply "
                                     "reports no privacy spent", site=site)
        if spent > budget + 0.01 or delta > max_delta:
            raise wire.InvalidUpdate(f"site {site}: reports (epsilon {spent:.3g}, delta {delta:.2g}), over the run's "
                                     f"budget (epsilon {budget:g}, delta at most {max_delta:.2g})", site=site)

    def record(self, server_round: int, trained: dict[str, dict[str, float]]) -> list[dict]:
        """Keep every trained site's claim (a rejected update was still trained: its spending counts);
        return the round's privacy events for metrics.jsonl."""
        events = []
        for site, metrics in trained.items():
            if EPSILON_SPENT not in metrics:
                continue
            steps = {k.replace("-", "_"): metrics[k] for k in STEP_PARAMETERS if k in metrics}
            claim = {"epsilon": metrics[EPSILON_SPENT], "delta": metrics[PRIVACY_DELTA], "round": server_round,
                     "accountant": self.settings.accountant}
            before = self.sites.get(site, {})
            history, rounds = list(before.get("history", [])), list(before.get("history_rounds", []))
            if len(steps) == len(STEP_PARAMETERS):  # a claim without them cannot be recomputed: nothing to add
                history.append([metrics[k] for k in STEP_PARAMETERS])
                rounds.append(server_round)
            self.sites[site] = {**claim, "history": history, "history_rounds": rounds}
            events.append({"event": "privacy", "site": site, **claim, **steps})
        return events

    def state(self) -> dict:
        return self.sites

    def summary(self) -> dict:
        s = self.settings
        return {"mode": s.mode, "epsilon_budget": s.epsilon, "accountant": s.accountant,
                "max_grad_norm": s.max_grad_norm, "sites": self.sites}


def coordinator_layers(settings: PrivacySettings, resumed: dict) -> list[PrivacyCheck]:
    """The layers a run's coordinator installs for privacy: the check in a private run, none otherwise."""
    return [PrivacyCheck(settings, resumed.get(LAYER_NAME))] if settings.private else []


def privacy_summary(layers: list, settings: PrivacySettings) -> dict:
    """The summary's privacy section: the privacy layer's among the run's installed layers, found by its name
    (another layer's summary is not privacy), or the run's mode where none is installed."""
    for layer in layers:
        if layer.name == LAYER_NAME:
            return layer.summary()
    return summary_without_layer(settings)


def summary_without_layer(settings: PrivacySettings) -> dict:
    """What the summary says of privacy in a run that has none."""
    return {"mode": settings.mode}


def privacy_lines(privacy: dict) -> list[str]:
    """The privacy section of summary.md: each DP-SGD site's (epsilon, delta) as it reported them."""
    if privacy.get("mode", "none") == "none":
        return ["", "Privacy: no differential privacy (privacy.mode = none): only what leaves a site is limited."]
    lines = ["", f"Privacy: {privacy['mode']}, budget epsilon {privacy['epsilon_budget']:g} per site for the whole "
             f"run, accountant {privacy['accountant']}, clipping bound {privacy['max_grad_norm']:g}. Spent, as each "
             "site reported it with its last update:", "",
             "| site | epsilon | delta | last round |", "|---|---|---|---|"]
    for site, spent in sorted(privacy.get("sites", {}).items()):
        lines.append(f"| {site} | {spent['epsilon']:.3f} | {spent['delta']:.2g} | {spent['round']} |")
    return lines
