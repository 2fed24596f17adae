"""The coordinator's strategy: one message per site, validated replies, a registered low-rank merge."""

from __future__ import annotations

import logging
import math
import resource
import time
from collections import Counter
from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fl_medlego import wire
from fl_medlego.lora import Adapter
from fl_medlego.merging import merge_adapters, normalize_weights
from fl_medlego.results import RunResults

log = logging.getLogger(__name__)


def peak_rss_mb() -> float:
    """Peak resident memory of this (server) process so far, in MB."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


class LowRankMergeStrategy(FedAvg):
    """FedAvg's loop, but each site is addressed by name and only low-rank factors are merged.

    site_nodes: site name -> the node that hosts it (sticky for the whole run).
    template: matrix name -> (d_out, d_in); replies that do not fit it are rejected with a logged reason.
    """

    def __init__(self, site_nodes: dict[str, int], template: dict[str, tuple[int, int]], method: str,
                 options: dict, weighting: str, results: RunResults) -> None:
        super().__init__(min_available_nodes=0)
        self.site_nodes, self.template = dict(site_nodes), template
        self.method, self.options, self.weighting = method, options, weighting
        self.results = results
        self.base_fingerprint: str | None = None
        self.specialist: dict[str, dict] = {}
        self.merged: dict[str, dict] = {}
        self.round_started = time.monotonic()

    def summary(self) -> None:
        log.info("\t├──> sites: %s", self.site_nodes)
        log.info("\t└──> merge: %s %s, weighting %s", self.method, self.options, self.weighting)

    def _messages(self, arrays: ArrayRecord, config: ConfigRecord, server_round: int, kind: str) -> list[Message]:
        messages = []
        for site, node in self.site_nodes.items():
            site_config = ConfigRecord({**config, wire.SERVER_ROUND: server_round, wire.SITE: site})
            content = RecordDict({wire.ARRAYS: arrays, wire.CONFIG: site_config})
            messages.append(Message(content=content, message_type=kind, dst_node_id=node))
        return messages

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self.round_started = time.monotonic()
        return self._messages(arrays, config, server_round, MessageType.TRAIN)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        if len(arrays) == 0:  # nothing merged yet (every reply of round 1 was rejected)
            return []
        config = ConfigRecord({**config, wire.WITH_SPECIALIST: True})
        return self._messages(arrays, config, server_round, MessageType.EVALUATE)

    def _site_of_reply(self, msg: Message) -> str:
        if msg.has_error():
            raise wire.InvalidUpdate(f"the node reported an error: {msg.error.reason}")
        try:
            site = str(msg.content[wire.SITE_INFO][wire.SITE])
        except KeyError:
            raise wire.InvalidUpdate(f"the reply has no '{wire.SITE_INFO}' record naming its site") from None
        if self.site_nodes.get(site) != msg.metadata.src_node_id:
            raise wire.InvalidUpdate(f"node {msg.metadata.src_node_id} answered for site {site!r}, "
                                     f"which it does not host")
        return site

    def _check_train_reply(self, msg: Message) -> tuple[str, Adapter, dict[str, float]]:
        site = self._site_of_reply(msg)
        if wire.METRICS not in msg.content or wire.ARRAYS not in msg.content:
            raise wire.InvalidUpdate(f"site {site}: reply lacks '{wire.ARRAYS}' or '{wire.METRICS}'")
        metrics = dict(msg.content[wire.METRICS])
        n = metrics.get(wire.NUM_EXAMPLES, 0)
        if not isinstance(n, (int, float)) or not math.isfinite(n) or n <= 0:
            raise wire.InvalidUpdate(f"site {site}: '{wire.NUM_EXAMPLES}' must be a positive number, got {n!r}")
        try:
            adapter = wire.decode(msg.content[wire.ARRAYS].to_torch_state_dict(), self.template)
        except wire.InvalidUpdate as err:
            raise wire.InvalidUpdate(f"site {site}: {err}") from None
        adapter.metadata = {k: msg.content[wire.SITE_INFO].get(k) for k in (wire.BASE_FINGERPRINT, wire.DATA_SOURCE)}
        return site, adapter, metrics

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None,
                                                                                      MetricRecord | None]:
        accepted: dict[str, tuple[Adapter, dict]] = {}
        for msg in replies:
            try:
                site, adapter, metrics = self._check_train_reply(msg)
            except wire.InvalidUpdate as err:
                log.warning("round %d: rejected a reply from node %d: %s", server_round, msg.metadata.src_node_id, err)
                self.results.log("rejected", round=server_round, node=msg.metadata.src_node_id, reason=str(err))
                continue
            accepted[site] = (adapter, metrics)
        accepted = self._same_base(server_round, accepted)
        if not accepted:
            log.warning("round %d: no valid site update; keeping the previous merged adapter", server_round)
            return None, None
        sites = sorted(accepted)
        weights = None  # uniform 1/N
        if self.weighting == "examples":
            weights = normalize_weights([accepted[s][1][wire.NUM_EXAMPLES] for s in sites], len(sites))
        merged = merge_adapters([accepted[s][0] for s in sites], self.method, weights, **self.options)
        path = self.results.save_merged(server_round, merged)
        ranks = sorted({f.rank for f in merged.factors.values()})
        log.info("round %d: merged %d sites with %s -> ranks %s, saved %s", server_round, len(sites), self.method,
                 ranks, path)
        for site in sites:
            self.results.log("train", round=server_round, site=site, data_source=accepted[site][0].metadata.get(
                wire.DATA_SOURCE), **accepted[site][1])
        mean = {k: sum(accepted[s][1][k] for s in sites) / len(sites) for k in ("val-acc", "train-loss")}
        return (ArrayRecord(wire.encode(merged)),
                MetricRecord({**mean, "sites-merged": len(sites), "merged-max-rank": max(ranks)}))

    def _same_base(self, server_round: int, accepted: dict[str, tuple[Adapter, dict]]) -> dict:
        """Adapters only merge over the same frozen base: pin the majority fingerprint, drop the rest."""
        prints = {site: a.metadata.get(wire.BASE_FINGERPRINT) for site, (a, _) in accepted.items()}
        if self.base_fingerprint is None and prints:
            self.base_fingerprint = Counter(prints.values()).most_common(1)[0][0]
        kept = {}
        for site, entry in accepted.items():
            if prints[site] != self.base_fingerprint:
                reason = f"site {site}: base model {prints[site]} differs from the federation's {self.base_fingerprint}"
                log.warning("round %d: rejected: %s", server_round, reason)
                self.results.log("rejected", round=server_round, site=site, reason=reason)
            else:
                kept[site] = entry
        return kept

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        per_site = {}
        for msg in replies:
            try:
                site = self._site_of_reply(msg)
            except wire.InvalidUpdate as err:
                log.warning("round %d: evaluation reply dropped: %s", server_round, err)
                continue
            metrics = dict(msg.content[wire.METRICS])
            per_site[site] = metrics
            own = {k.removeprefix(wire.SPECIALIST_PREFIX): v for k, v in metrics.items()
                   if k.startswith(wire.SPECIALIST_PREFIX)}
            if own:
                self.specialist[site] = own
            self.merged[site] = {k: v for k, v in metrics.items() if not k.startswith(wire.SPECIALIST_PREFIX)}
            self.merged[site]["round"] = server_round
            self.results.log("evaluate", round=server_round, site=site, **metrics)
        self.results.log("round", round=server_round, seconds=round(time.monotonic() - self.round_started, 3),
                         server_peak_rss_mb=peak_rss_mb())
        if not per_site:
            return None
        keys = [k for k in wire.EVAL_METRICS if all(k in m for m in per_site.values())]
        return MetricRecord({k: sum(m[k] for m in per_site.values()) / len(per_site) for k in keys})
