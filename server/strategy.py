"""The coordinator's strategy: one message per site, and each round a short named pipeline over one ledger.

    read -> check (installed layers, e.g. privacy) -> guard -> quorum -> combine -> record

Written once over site kinds. Nothing a site sends can raise out of it (`replies.py` reads every reply
into checked values or a rejection), a site has one reply per round, no update is larger than the
guard allows, and a round that combines fewer sites than the run requires fails the run with the
reasons, instead of letting it end "completed". The round is committed to disk (the resume point) by
`commit_round`, which `Strategy.start` calls after the round's evaluation (its `evaluate_fn` hook).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fl_medlego import wire
from fl_medlego.config import RunConfig
from fl_medlego.memory import peak_rss_mb
from fl_medlego.merging import normalize_weights
from fl_medlego.privacy.coordinator import LAYER_NAME as PRIVACY_LAYER
from fl_medlego.results import RoundLedger, RunResults

from .guard import capped_examples, check_combined, guard_updates
from .replies import read_evaluate_reply, read_train_reply
from .window import WindowedGrid

log = logging.getLogger(__name__)

# A read reply's arrays are dropped at once: the decoded update holds the same numbers, and Flower keeps
# the round's replies until the round ends (10,000 sites' rank-4 factors are half a GB). Off only in
# benchmarks.coordinator's before / after comparison.
RELEASE_READ_REPLIES = True


def release_arrays(msg: Message) -> None:
    """Drop a read reply's update from the message Flower still holds (its metrics and identity stay)."""
    content = msg.content
    if wire.ARRAYS in content:
        msg.content = RecordDict({key: value for key, value in content.items() if key != wire.ARRAYS})


@dataclass
class Arrivals:
    """A train round's replies read as they arrived: the round's ledger, and which replies it holds."""

    ledger: RoundLedger
    sites: dict[int, str]  # id() of each message sent -> its site
    read: set[int] = field(default_factory=set)  # id() of the replies read


class RoundFailed(RuntimeError):
    """A round combined fewer sites than the run requires: the run must not look completed."""


class SiteMergeStrategy(Strategy):
    """Each site addressed by name on its node; its update read, checked and combined by its kind.

    site_nodes: site name -> the node that hosts it (sticky for the whole run).
    template: what a valid update looks like (the kind's template of the shared model).
    base_fingerprint: the frozen base every site must have trained on (from the run's configuration).
    reference: what the round starts from, for kinds whose update size is a change from it (full weights).
    layers: cross-cutting checks installed for this run (fl_medlego.privacy.coordinator): each may refuse
        a reply (`check`), records what it needs after the round (`record`) and keeps its own state.
    resumed: the last complete round of the run and its state (a resumed run goes on from there).
    """

    def __init__(self, site_nodes: dict[str, int], template: dict, cfg: RunConfig, results: RunResults,
                 base_fingerprint: str, reference: object | None = None, declared: list[str] | None = None,
                 resumed: tuple[int, dict] = (0, {}), layers: Sequence = ()) -> None:
        self.site_nodes, self.template, self.cfg = dict(site_nodes), template, cfg
        self.kind, self.merge = cfg.kind_server(), cfg.merge  # the kind's server half
        self.results = results
        self.base_fingerprint, self.reference = base_fingerprint, reference
        self.declared = list(declared or site_nodes)
        self.layers = list(layers)
        self.offset, state = resumed  # Flower counts this process's rounds from 1; the run goes on counting
        self.specialist: dict[str, dict] = dict(state.get("specialist", {}))
        self.merged: dict[str, dict] = dict(state.get("merged", {}))
        # site -> {"state": merged | accepted (its round failed) | rejected | missing, "round", "reason"}
        self.status: dict[str, dict] = dict(state.get("status", {}))
        self.round_started = time.monotonic()
        self._sent: list[tuple[Message, str]] = []
        self._arrivals: Arrivals | None = None

    @property
    def privacy(self) -> dict[str, dict]:
        """What each DP-SGD site reports it has spent (empty in a run without the privacy layer)."""
        return next((layer.state() for layer in self.layers if layer.name == PRIVACY_LAYER), {})

    def summary(self) -> None:
        log.info("\t├──> sites: %s", self.site_nodes)
        log.info("\t└──> %s sites, combined with %s %s, weighting %s, parts %s, guard %s, layers %s",
                 self.kind.kind.name, self.merge.method, self.merge.options, self.merge.weighting,
                 self.merge.parts.describe() if self.merge.parts else "none", self.cfg.guard,
                 [layer.name for layer in self.layers])

    # -- sending -------------------------------------------------------------------------------------
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
        messages = self._messages(arrays, config, server_round + self.offset, MessageType.TRAIN)
        if isinstance(grid, WindowedGrid):  # read each reply as it arrives (see _read_arrived)
            self._arrivals = Arrivals(RoundLedger(server_round + self.offset), {id(m): s for m, s in self._sent})
            grid.on_reply = self._read_arrived
        return messages

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        if isinstance(grid, WindowedGrid):
            grid.on_reply = None  # evaluation replies are metrics: read with the round's evaluation
        if len(arrays) == 0:  # nothing combined yet
            return []
        # A specialist does not change after its site's first training: each is evaluated once (a resumed
        # run knows the ones evaluated before it stopped).
        ask = {site: {wire.WITH_SPECIALIST: site not in self.specialist} for site in self.site_nodes}
        return self._messages(arrays, config, server_round + self.offset, MessageType.EVALUATE, per_site=ask)

    # -- the round's pipeline ------------------------------------------------------------------------
    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None,
                                                                                      MetricRecord | None]:
        arrivals, self._arrivals = self._arrivals, None
        early = arrivals is not None and arrivals.ledger.round == server_round + self.offset
        ledger = arrivals.ledger if early else RoundLedger(server_round + self.offset)
        try:
            self._read(ledger, [m for m in replies if not early or id(m) not in arrivals.read])
            self._check(ledger)
            self._guard(ledger)
            self._require_quorum(ledger)
            if not ledger.kept:
                return None, None
            combined = self._combine(ledger)
            return self._record(ledger, combined)
        finally:
            self.results.record_events(ledger)

    def _read_arrived(self, reply: Message, request: Message) -> None:
        """A train reply read as it arrives, into the round's ledger, its arrays dropped: a round of 10,000 sites
        then holds each update once, decoded, instead of also as Flower's messages until the last one is in."""
        arrivals = self._arrivals
        if arrivals is None:
            return
        site = arrivals.sites.get(id(request))
        self._read(arrivals.ledger, [reply], {request.metadata.message_id: site} if site else {})
        arrivals.read.add(id(reply))

    def _read(self, ledger: RoundLedger, replies: Iterable[Message], sent: dict[str, str] | None = None) -> None:
        """Every reply read at the trust boundary: into the ledger's accepted replies, or a rejection.
        sent: message id -> site of the messages the replies answer (default: every message of the round)."""
        sent = self._sent_sites() if sent is None else sent
        optional = tuple(name for layer in self.layers for name in layer.reply_metrics)
        for msg in replies:
            try:
                reply = read_train_reply(msg, self.site_nodes, self.kind, self.template, sent, optional=optional)
                if RELEASE_READ_REPLIES:
                    release_arrays(msg)
                if reply.site in ledger.accepted:
                    raise wire.InvalidUpdate(f"site {reply.site}: a second reply in round {ledger.round}",
                                             site=reply.site)
                if reply.base_fingerprint != self.base_fingerprint:
                    raise wire.InvalidUpdate(f"site {reply.site}: base model {reply.base_fingerprint} differs from "
                                             f"the federation's {self.base_fingerprint}", site=reply.site)
                ledger.accepted[reply.site] = reply
            except wire.InvalidUpdate as err:
                self._reject(ledger, err, msg.metadata.src_node_id)

    def _check(self, ledger: RoundLedger) -> None:
        """The installed layers' checks, then what each layer records of the replies it let through (an update
        the guard rejects later was still trained: what it spent counts)."""
        for layer in self.layers:
            for site, reply in list(ledger.accepted.items()):
                try:
                    layer.check(site, reply.metrics)
                except wire.InvalidUpdate as err:
                    del ledger.accepted[site]
                    self._reject(ledger, err, self.site_nodes[site])
            ledger.events += layer.record(ledger.round, {s: r.metrics for s, r in ledger.accepted.items()})

    def _reject(self, ledger: RoundLedger, err: wire.InvalidUpdate, node: int, stage: str = "train") -> None:
        """Record why a reply is not used, naming the node and, once the reply is attributed, its site."""
        log.warning("round %d: rejected a %s reply of node %d (site %s): %s", ledger.round, stage, node, err.site, err)
        ledger.event("rejected", node=node, site=err.site, reason=str(err), **({"stage": stage} if stage != "train"
                                                                                 else {}))
        if err.internal:
            log.error("round %d: %s\n%s", ledger.round, err, err.internal)
            self.results.log_internal_error(f"round {ledger.round}, site {err.site}: {err}", err.internal)
        if err.site is not None:
            reason = str(err) if stage == "train" else f"evaluation: {err}"
            self.status[err.site] = {"state": "rejected", "round": ledger.round, "reason": reason}

    def _guard(self, ledger: RoundLedger) -> None:
        """Over-bound updates clipped to the bound or left out (guard.action)."""
        updates = {s: r.update for s, r in ledger.accepted.items()}
        ledger.kept, ledger.decisions = guard_updates(updates, self.kind, self.reference, self.cfg.guard)
        for d in ledger.decisions:
            if d.action != "kept":
                reason = f"update norm {d.norm:.4g} over the bound {d.bound:.4g}: {d.action}"
                log.warning("round %d: site %s: %s", ledger.round, d.site, reason)
                ledger.event("guard", site=d.site, norm=d.norm, bound=d.bound, action=d.action)
                if d.action == "rejected":
                    self.status[d.site] = {"state": "rejected", "round": ledger.round, "reason": reason}
        for site in ledger.kept:  # valid and within the guard; "merged" once the round counts
            self.status[site] = {"state": "accepted", "round": ledger.round, "reason": ""}

    def _require_quorum(self, ledger: RoundLedger) -> None:
        combined = set(ledger.kept)  # a set: with 10,000 sites a list made this scan seconds a round
        for site in self.declared:
            if site not in combined and self.status.get(site, {}).get("round") != ledger.round:
                reason = "no node hosts it" if site not in self.site_nodes else "no reply within round-timeout"
                self.status[site] = {"state": "missing", "round": ledger.round, "reason": reason}
        required = self.cfg.required_sites(ledger.round, len(self.declared))
        if len(combined) < required:
            why = "; ".join(f"{s}: {self.status[s]['state']} ({self.status[s]['reason']})"
                            for s in self.declared if s not in combined)
            self._fail(ledger, f"round {ledger.round} combined {len(combined)} of {len(self.declared)} sites, fewer "
                               f"than min-sites requires ({required}): {why}")

    def _fail(self, ledger: RoundLedger, message: str) -> None:
        ledger.event("round-failed", reason=message)
        raise RoundFailed(message)

    def _combine(self, ledger: RoundLedger) -> object:
        """The kept updates combined by the kind, with the run's site weights; refused if implausibly large."""
        sites = sorted(ledger.kept)
        weights = None  # uniform 1/N
        if self.merge.weighting == "examples":
            examples = capped_examples({s: ledger.accepted[s].metrics[wire.NUM_EXAMPLES] for s in sites})
            weights = normalize_weights([examples[s] for s in sites], len(sites))
        merge = self.merge.for_round(ledger.round)
        combined = self.kind.combine([ledger.kept[s] for s in sites], weights, merge)
        bound = min((d.bound for d in ledger.decisions), default=float("inf"))
        # The run's own part weights scale the combination on purpose: the honest bound grows with them.
        bound *= max([1.0, *merge.parts.weights.values()])
        problem = check_combined(self.kind.norm(combined, self.reference), len(sites), bound)
        if problem:
            self._fail(ledger, f"round {ledger.round}: {problem}")
        return combined

    def _record(self, ledger: RoundLedger, combined: object) -> tuple[ArrayRecord, MetricRecord]:
        """Save the combined update (staged until the round commits), mark the sites merged, log the round."""
        sites = sorted(ledger.kept)
        path = self.kind.save(combined, self.results.staging_dir(ledger.round), self.base_fingerprint)
        about = self.kind.describe(combined)
        log.info("round %d: combined %d sites with %s %s, saved %s", ledger.round, len(sites), self.merge.method,
                 about, path)
        for site in sites:
            self.status[site] = {"state": "merged", "round": ledger.round, "reason": ""}
            reply = ledger.accepted[site]
            served = {"served_by": reply.served_by} if reply.served_by else {}  # which Ray node, in a simulation
            ledger.event("train", site=site, data_source=reply.data_origin, **served, **reply.metrics)
        if self.reference is not None:
            self.reference = combined  # the next round's changes are measured from here
        mean = {k: _mean(ledger.accepted[s].metrics[k] for s in sites) for k in wire.ROUND_MEAN_METRICS}
        return (ArrayRecord(self.kind.encode(combined)),
                MetricRecord({**mean, wire.SITES_MERGED: len(sites), **about}))

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        ledger = RoundLedger(server_round + self.offset)
        try:
            return self._read_evaluations(ledger, replies)
        finally:
            self.results.record_events(ledger)

    def _read_evaluations(self, ledger: RoundLedger, replies: Iterable[Message]) -> MetricRecord | None:
        merged_now = [s for s in self.declared if self.status.get(s, {}).get("state") == "merged"
                      and self.status[s].get("round") == ledger.round]
        per_site, sent = {}, self._sent_sites()
        for msg in replies:
            try:
                reply = read_evaluate_reply(msg, self.site_nodes, self.kind, sent)
                if reply.site in per_site:
                    raise wire.InvalidUpdate(f"site {reply.site}: a second evaluation in round {ledger.round}",
                                             site=reply.site)
            except wire.InvalidUpdate as err:
                self._reject(ledger, err, msg.metadata.src_node_id, stage="evaluate")
                continue
            per_site[reply.site] = reply.merged
            if reply.specialist and reply.site not in self.specialist:  # only the one asked for counts
                self.specialist[reply.site] = reply.specialist
            self.merged[reply.site] = {**reply.merged, "round": ledger.round}
            ledger.event("evaluate", site=reply.site, **reply.merged,
                         **{wire.SPECIALIST_PREFIX + k: v for k, v in reply.specialist.items()})
        ledger.event("round", seconds=round(time.monotonic() - self.round_started, 3),
                     server_peak_rss_mb=peak_rss_mb())
        evaluated = sorted(per_site)
        required = min(self.cfg.required_sites(ledger.round, len(self.declared)), len(merged_now))
        if len(evaluated) < required:
            self._fail(ledger, f"round {ledger.round}: only {len(evaluated)} sites evaluated the combined update "
                               f"({', '.join(evaluated) or 'none'}), fewer than min-sites requires ({required})")
        if not per_site:
            return None
        keys = [k for k in wire.EVAL_METRICS if all(k in m for m in per_site.values())]
        return MetricRecord({k: sum(m[k] for m in per_site.values()) / len(per_site) for k in keys})

    def commit_round(self, server_round: int, arrays: ArrayRecord) -> None:
        """Strategy.start's evaluate_fn: the round is complete, so its state goes in last and its folder moves
        into place (the resume point). Round 0 (before any training) has nothing to commit."""
        if server_round == 0:
            return None
        state = {"round": server_round + self.offset, "status": self.status, "specialist": self.specialist,
                 "merged": self.merged, "base_fingerprint": self.base_fingerprint,
                 **{layer.name: layer.state() for layer in self.layers}}
        self.results.finish_round(server_round + self.offset, state)
        return None


def _mean(values: Iterable[float]) -> float:
    """Mean of the defined values (a DP-SGD site sends no training loss); NaN when none is."""
    defined = [v for v in values if not math.isnan(v)]
    return sum(defined) / len(defined) if defined else float("nan")
