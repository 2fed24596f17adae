"""The coordinator's strategy: one message per site, replies read at the trust boundary, updates bounded,
then combined by the site kind.

Written once over site kinds. Nothing a site sends can raise out of it (`replies.py` reads every reply
into checked values or a rejection), a site has one reply per round, no update is larger than the
guard allows, and a round that combines fewer sites than the run requires fails the run with the
reasons, instead of letting it end "completed".
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fl_medlego import wire
from fl_medlego.config import RunConfig
from fl_medlego.memory import peak_rss_mb
from fl_medlego.merging import normalize_weights
from fl_medlego.privacy.settings import MAX_DELTA
from fl_medlego.results import RunResults

from .guard import capped_examples, check_combined, guard_updates
from .replies import TrainReply, read_evaluate_reply, read_train_reply

log = logging.getLogger(__name__)


class RoundFailed(RuntimeError):
    """A round combined fewer sites than the run requires: the run must not look completed."""


class SiteMergeStrategy(FedAvg):
    """FedAvg's loop, but each site is addressed by name and its update is checked and combined by its kind.

    site_nodes: site name -> the node that hosts it (sticky for the whole run).
    template: what a valid update looks like (the kind's template of the shared model).
    base_fingerprint: the frozen base every site must have trained on (from the run's configuration).
    reference: what the round starts from, for kinds whose update size is a change from it (full weights).
    """

    def __init__(self, site_nodes: dict[str, int], template: dict, cfg: RunConfig, results: RunResults,
                 base_fingerprint: str, reference: object | None = None, declared: list[str] | None = None,
                 resumed: tuple[int, dict] = (0, {})) -> None:
        """resumed: the last complete round of the run and its state (a resumed run goes on from there)."""
        super().__init__(min_available_nodes=0)
        self.site_nodes, self.template, self.cfg = dict(site_nodes), template, cfg
        self.kind, self.merge = cfg.kind, cfg.merge
        self.results = results
        self.base_fingerprint, self.reference = base_fingerprint, reference
        self.declared = list(declared or site_nodes)
        self.specialist: dict[str, dict] = {}
        self.merged: dict[str, dict] = {}
        # site -> {"state": merged | accepted (its round failed) | rejected | missing, "round", "reason"}
        self.status: dict[str, dict] = {}
        self.offset, state = resumed  # Flower counts this process's rounds from 1; the run goes on counting
        self.specialist.update(state.get("specialist", {}))
        self.merged.update(state.get("merged", {}))
        self.status.update(state.get("status", {}))
        # site -> {"epsilon", "delta", "round"}: what each DP-SGD site reports it has spent (its own claim)
        self.privacy: dict[str, dict] = dict(state.get("privacy", {}))
        self.round_started = time.monotonic()
        self._sent: list[tuple[Message, str]] = []

    def summary(self) -> None:
        log.info("\t├──> sites: %s", self.site_nodes)
        log.info("\t└──> %s sites, combined with %s %s, weighting %s, guard %s", self.kind.name, self.merge.method,
                 self.merge.options, self.merge.weighting, self.cfg.guard)

    def _sent_sites(self) -> dict[str, str]:
        """Message id -> site of the messages sent this round (Flower sets the ids when it pushes them)."""
        return {m.metadata.message_id: site for m, site in self._sent if m.metadata.message_id}

    def _messages(self, arrays: ArrayRecord, config: ConfigRecord, server_round: int, kind: str,
                  per_site: dict[str, dict] | None = None) -> list[Message]:
        messages = []
        for site, node in self.site_nodes.items():
            site_config = ConfigRecord({**config, **(per_site or {}).get(site, {}), wire.SERVER_ROUND: server_round,
                                        wire.SITE: site, wire.RUN_KEY: self.results.run_dir.name})
            content = RecordDict({wire.ARRAYS: arrays, wire.CONFIG: site_config})
            messages.append(Message(content=content, message_type=kind, dst_node_id=node))
        self._sent = list(zip(messages, self.site_nodes))
        return messages

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self.round_started = time.monotonic()
        return self._messages(arrays, config, server_round + self.offset, MessageType.TRAIN)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        if len(arrays) == 0:  # nothing combined yet
            return []
        # A specialist does not change after its site's first training: each is evaluated once (a resumed
        # run knows the ones evaluated before it stopped).
        ask = {site: {wire.WITH_SPECIALIST: site not in self.specialist} for site in self.site_nodes}
        return self._messages(arrays, config, server_round + self.offset, MessageType.EVALUATE, per_site=ask)

    def _reject(self, server_round: int, err: wire.InvalidUpdate, node: int) -> None:
        """Log why a reply is not used, naming the node and, once the reply is attributed, its site."""
        log.warning("round %d: rejected a reply of node %d (site %s): %s", server_round, node, err.site, err)
        self.results.log("rejected", round=server_round, node=node, site=err.site, reason=str(err))
        if err.site is not None:
            self.status[err.site] = {"state": "rejected", "round": server_round, "reason": str(err)}

    def _read_replies(self, server_round: int, replies: Iterable[Message]) -> dict[str, TrainReply]:
        accepted: dict[str, TrainReply] = {}
        sent = self._sent_sites()
        for msg in replies:
            try:
                reply = read_train_reply(msg, self.site_nodes, self.kind, self.template, sent)
                if reply.site in accepted:
                    raise wire.InvalidUpdate(f"site {reply.site}: a second reply in round {server_round}",
                                             site=reply.site)
                if reply.base_fingerprint != self.base_fingerprint:
                    raise wire.InvalidUpdate(f"site {reply.site}: base model {reply.base_fingerprint} differs from "
                                             f"the federation's {self.base_fingerprint}", site=reply.site)
                self._check_privacy(reply)
                accepted[reply.site] = reply
            except wire.InvalidUpdate as err:
                self._reject(server_round, err, msg.metadata.src_node_id)
        return accepted

    def _check_privacy(self, reply: TrainReply) -> None:
        """In a DP-SGD run, an update must come with the privacy it spent, within the run's budget.

        The coordinator cannot verify a site's noise; it can refuse an update that does not claim to be
        private, so that a site running without DP-SGD never looks private in the summary.
        """
        settings = self.cfg.privacy
        if not settings.private:
            return
        spent, delta = (reply.metrics.get(k) for k in wire.PRIVACY_METRICS)
        if spent is None or delta is None:
            raise wire.InvalidUpdate(f"site {reply.site}: this run requires DP-SGD (privacy.mode={settings.mode!r}) "
                                     "and the reply reports no privacy spent", site=reply.site)
        if spent > settings.epsilon + 0.01 or delta > (settings.delta or MAX_DELTA):
            raise wire.InvalidUpdate(f"site {reply.site}: reports (epsilon {spent:.3g}, delta {delta:.2g}), over the "
                                     f"run's budget (epsilon {settings.epsilon:g}, delta at most "
                                     f"{settings.delta or MAX_DELTA:.2g})", site=reply.site)

    def _check_quorum(self, server_round: int, combined: list[str]) -> None:
        for site in self.declared:
            if site not in combined and self.status.get(site, {}).get("round") != server_round:
                reason = "no node hosts it" if site not in self.site_nodes else "no reply within round-timeout"
                self.status[site] = {"state": "missing", "round": server_round, "reason": reason}
        required = self.cfg.required_sites(server_round, len(self.declared))
        if len(combined) < required:
            why = "; ".join(f"{s}: {self.status[s]['state']} ({self.status[s]['reason']})"
                            for s in self.declared if s not in combined)
            message = (f"round {server_round} combined {len(combined)} of {len(self.declared)} sites, fewer than "
                       f"min-sites requires ({required}): {why}")
            self.results.log("round-failed", round=server_round, reason=message)
            raise RoundFailed(message)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None,
                                                                                      MetricRecord | None]:
        server_round += self.offset
        accepted = self._read_replies(server_round, replies)
        updates, decisions = guard_updates({s: r.update for s, r in accepted.items()}, self.kind, self.reference,
                                           self.cfg.guard)
        for d in decisions:
            if d.action != "kept":
                reason = f"update norm {d.norm:.4g} over the bound {d.bound:.4g}: {d.action}"
                log.warning("round %d: site %s: %s", server_round, d.site, reason)
                self.results.log("guard", round=server_round, site=d.site, norm=d.norm, bound=d.bound,
                                 action=d.action)
                if d.action == "rejected":
                    self.status[d.site] = {"state": "rejected", "round": server_round, "reason": reason}
        sites = sorted(updates)
        for site in sites:  # valid and within the guard; "merged" once the round counts
            self.status[site] = {"state": "accepted", "round": server_round, "reason": ""}
        self._check_quorum(server_round, sites)
        if not sites:
            return None, None
        weights = None  # uniform 1/N
        if self.merge.weighting == "examples":
            examples = capped_examples({s: accepted[s].metrics[wire.NUM_EXAMPLES] for s in sites})
            weights = normalize_weights([examples[s] for s in sites], len(sites))
        combined = self.kind.combine([updates[s] for s in sites], weights, self.merge)
        bound = min((d.bound for d in decisions), default=float("inf"))
        problem = check_combined(self.kind.norm(combined, self.reference), len(sites), bound)
        if problem:
            self.results.log("round-failed", round=server_round, reason=problem)
            raise RoundFailed(f"round {server_round}: {problem}")
        path = self.kind.save(combined, self.results.staging_dir(server_round), self.cfg, self.base_fingerprint)
        about = self.kind.describe(combined)
        log.info("round %d: combined %d sites with %s %s, saved %s", server_round, len(sites), self.merge.method,
                 about, path)
        for site in sites:
            self.status[site] = {"state": "merged", "round": server_round, "reason": ""}
            self.results.log("train", round=server_round, site=site, data_source=accepted[site].data_origin,
                             **accepted[site].metrics)
        for site, reply in accepted.items():  # a rejected update was still trained: its spending counts
            if wire.EPSILON_SPENT in reply.metrics:
                self.privacy[site] = {"epsilon": reply.metrics[wire.EPSILON_SPENT],
                                      "delta": reply.metrics[wire.PRIVACY_DELTA], "round": server_round}
        if self.reference is not None:
            self.reference = combined  # the next round's changes are measured from here
        mean = {k: _mean(accepted[s].metrics[k] for s in sites) for k in wire.ROUND_MEAN_METRICS}
        return (ArrayRecord(self.kind.encode(combined)),
                MetricRecord({**mean, wire.SITES_MERGED: len(sites), **about}))

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        server_round += self.offset
        merged_now = [s for s in self.declared if self.status.get(s, {}).get("state") == "merged"
                      and self.status[s].get("round") == server_round]
        per_site = {}
        sent = self._sent_sites()
        for msg in replies:
            try:
                reply = read_evaluate_reply(msg, self.site_nodes, sent)
                if reply.site in per_site:
                    raise wire.InvalidUpdate(f"site {reply.site}: a second evaluation in round {server_round}",
                                             site=reply.site)
            except wire.InvalidUpdate as err:
                log.warning("round %d: evaluation reply dropped: %s", server_round, err)
                if err.site is not None:
                    self.status[err.site] = {"state": "rejected", "round": server_round,
                                             "reason": f"evaluation: {err}"}
                self.results.log("rejected", round=server_round, node=msg.metadata.src_node_id, site=err.site,
                                 reason=str(err), stage="evaluate")
                continue
            per_site[reply.site] = reply.merged
            if reply.specialist and reply.site not in self.specialist:  # only the one asked for counts
                self.specialist[reply.site] = reply.specialist
            self.merged[reply.site] = {**reply.merged, "round": server_round}
            self.results.log("evaluate", round=server_round, site=reply.site, **reply.merged,
                             **{wire.SPECIALIST_PREFIX + k: v for k, v in reply.specialist.items()})
        self.results.log("round", round=server_round, seconds=round(time.monotonic() - self.round_started, 3),
                         server_peak_rss_mb=peak_rss_mb())
        evaluated = sorted(per_site)
        required = min(self.cfg.required_sites(server_round, len(self.declared)), len(merged_now))
        if len(evaluated) < required:
            message = (f"round {server_round}: only {len(evaluated)} sites evaluated the combined update "
                       f"({', '.join(evaluated) or 'none'}), fewer than min-sites requires ({required})")
            self.results.log("round-failed", round=server_round, reason=message)
            raise RoundFailed(message)
        # The round is complete: its state goes in last, then the folder moves into place (resume point).
        self.results.finish_round(server_round, {"round": server_round, "status": self.status,
                                                 "specialist": self.specialist, "merged": self.merged,
                                                 "privacy": self.privacy,
                                                 "base_fingerprint": self.base_fingerprint})
        if not per_site:
            return None
        keys = [k for k in wire.EVAL_METRICS if all(k in m for m in per_site.values())]
        return MetricRecord({k: sum(m[k] for m in per_site.values()) / len(per_site) for k in keys})


def _mean(values: Iterable[float]) -> float:
    """Mean of the defined values (a DP-SGD site sends no training loss); NaN when none is."""
    defined = [v for v in values if not math.isnan(v)]
    return sum(defined) / len(defined) if defined else float("nan")
