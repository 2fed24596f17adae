"""The coordinator's strategy: one message per site, validated replies, combined by the site kind.

Written once over site kinds: the kind decodes each reply (wire.InvalidUpdate on anything that does
not fit) and combines the accepted ones (for adapters: the registered merge of the run config).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fl_medlego import wire
from fl_medlego.config import RunConfig
from fl_medlego.memory import peak_rss_mb
from fl_medlego.merging import normalize_weights
from fl_medlego.results import RunResults

log = logging.getLogger(__name__)


class SiteMergeStrategy(FedAvg):
    """FedAvg's loop, but each site is addressed by name and its update is checked and combined by its kind.

    site_nodes: site name -> the node that hosts it (sticky for the whole run).
    template: what a valid update looks like (the kind's template of the shared model); replies that do
    not fit it are rejected with a logged reason.
    """

    def __init__(self, site_nodes: dict[str, int], template: dict, cfg: RunConfig, results: RunResults) -> None:
        super().__init__(min_available_nodes=0)
        self.site_nodes, self.template, self.cfg = dict(site_nodes), template, cfg
        self.kind, self.merge = cfg.kind, cfg.merge
        self.results = results
        self.base_fingerprint: str | None = None
        self.specialist: dict[str, dict] = {}
        self.merged: dict[str, dict] = {}
        self.round_started = time.monotonic()

    def summary(self) -> None:
        log.info("\t├──> sites: %s", self.site_nodes)
        log.info("\t└──> %s sites, combined with %s %s, weighting %s", self.kind.name, self.merge.method,
                 self.merge.options, self.merge.weighting)

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
        if len(arrays) == 0:  # nothing combined yet (every reply of round 1 was rejected)
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

    def _check_train_reply(self, msg: Message, site: str) -> tuple[object, dict[str, float], dict]:
        try:
            if wire.METRICS not in msg.content or wire.ARRAYS not in msg.content:
                raise wire.InvalidUpdate(f"reply lacks '{wire.ARRAYS}' or '{wire.METRICS}'")
            metrics = wire.read_metrics(msg.content[wire.METRICS], self.kind.train_metrics)
            update = self.kind.decode(msg.content[wire.ARRAYS].to_torch_state_dict(), self.template)
        except wire.InvalidUpdate as err:
            raise wire.InvalidUpdate(f"site {site}: {err}") from None
        info = {k: msg.content[wire.SITE_INFO].get(k) for k in (wire.BASE_FINGERPRINT, wire.DATA_SOURCE)}
        return update, metrics, info

    def _reject(self, server_round: int, reason: str, node: int, site: str | None) -> None:
        """Log why a reply is not used, naming the node and, once the reply is attributed, its site."""
        log.warning("round %d: rejected a reply of node %d (site %s): %s", server_round, node, site, reason)
        self.results.log("rejected", round=server_round, node=node, site=site, reason=reason)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None,
                                                                                      MetricRecord | None]:
        accepted: dict[str, tuple[object, dict, dict]] = {}
        for msg in replies:
            site = None
            try:
                site = self._site_of_reply(msg)
                accepted[site] = self._check_train_reply(msg, site)
            except wire.InvalidUpdate as err:
                self._reject(server_round, str(err), msg.metadata.src_node_id, site)
        accepted = self._same_base(server_round, accepted)
        if not accepted:
            log.warning("round %d: no valid site update; keeping the previous model", server_round)
            return None, None
        sites = sorted(accepted)
        weights = None  # uniform 1/N
        if self.merge.weighting == "examples":
            weights = normalize_weights([accepted[s][1][wire.NUM_EXAMPLES] for s in sites], len(sites))
        combined = self.kind.combine([accepted[s][0] for s in sites], weights, self.merge)
        path = self.kind.save(combined, self.results.round_dir(server_round), self.cfg, self.base_fingerprint)
        about = self.kind.describe(combined)
        log.info("round %d: combined %d sites with %s %s, saved %s", server_round, len(sites), self.merge.method,
                 about, path)
        for site in sites:
            self.results.log("train", round=server_round, site=site, data_source=accepted[site][2][wire.DATA_SOURCE],
                             **accepted[site][1])
        mean = {k: sum(accepted[s][1][k] for s in sites) / len(sites) for k in wire.ROUND_MEAN_METRICS}
        return (ArrayRecord(self.kind.encode(combined)),
                MetricRecord({**mean, wire.SITES_MERGED: len(sites), **about}))

    def _same_base(self, server_round: int, accepted: dict[str, tuple[object, dict, dict]]) -> dict:
        """Updates only combine over the same base model: pin the majority fingerprint, drop the rest."""
        prints = {site: info.get(wire.BASE_FINGERPRINT) for site, (_, _, info) in accepted.items()}
        if self.base_fingerprint is None and prints:
            self.base_fingerprint = Counter(prints.values()).most_common(1)[0][0]
        kept = {}
        for site, entry in accepted.items():
            if prints[site] != self.base_fingerprint:
                self._reject(server_round, f"site {site}: base model {prints[site]} differs from the federation's "
                                           f"{self.base_fingerprint}", self.site_nodes[site], site)
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
