"""The coordinator's strategy: one message per site, validated replies, a registered low-rank merge."""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Iterable

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fl_medlego import wire
from fl_medlego.full_finetune import average_backbones
from fl_medlego.lora import Adapter
from fl_medlego.memory import peak_rss_mb
from fl_medlego.merging import merge_adapters, normalize_weights
from fl_medlego.results import RunResults

log = logging.getLogger(__name__)


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

    def decode_update(self, tensors: dict[str, torch.Tensor]) -> Adapter:
        """A site's update from the wire (raises wire.InvalidUpdate)."""
        return wire.decode(tensors, self.template)

    def merge_updates(self, server_round: int, updates: list[Adapter], weights) -> tuple[ArrayRecord, dict]:
        """The merged model to send back, and numbers about it; saves it in the run folder."""
        merged = merge_adapters(updates, self.method, weights, **self.options)
        path = self.results.save_merged(server_round, merged)
        ranks = sorted({f.rank for f in merged.factors.values()})
        log.info("round %d: merged %d sites with %s -> ranks %s, saved %s", server_round, len(updates), self.method,
                 ranks, path)
        return ArrayRecord(wire.encode(merged)), {"merged-max-rank": max(ranks)}

    def _check_train_reply(self, msg: Message) -> tuple[str, object, dict[str, float], dict]:
        site = self._site_of_reply(msg)
        if wire.METRICS not in msg.content or wire.ARRAYS not in msg.content:
            raise wire.InvalidUpdate(f"site {site}: reply lacks '{wire.ARRAYS}' or '{wire.METRICS}'")
        metrics = dict(msg.content[wire.METRICS])
        n = metrics.get(wire.NUM_EXAMPLES, 0)
        if not isinstance(n, (int, float)) or not math.isfinite(n) or n <= 0:
            raise wire.InvalidUpdate(f"site {site}: '{wire.NUM_EXAMPLES}' must be a positive number, got {n!r}")
        try:
            update = self.decode_update(msg.content[wire.ARRAYS].to_torch_state_dict())
        except wire.InvalidUpdate as err:
            raise wire.InvalidUpdate(f"site {site}: {err}") from None
        info = {k: msg.content[wire.SITE_INFO].get(k) for k in (wire.BASE_FINGERPRINT, wire.DATA_SOURCE)}
        return site, update, metrics, info

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None,
                                                                                      MetricRecord | None]:
        accepted: dict[str, tuple[object, dict, dict]] = {}
        for msg in replies:
            try:
                site, update, metrics, info = self._check_train_reply(msg)
            except wire.InvalidUpdate as err:
                log.warning("round %d: rejected a reply from node %d: %s", server_round, msg.metadata.src_node_id, err)
                self.results.log("rejected", round=server_round, node=msg.metadata.src_node_id, reason=str(err))
                continue
            accepted[site] = (update, metrics, info)
        accepted = self._same_base(server_round, accepted)
        if not accepted:
            log.warning("round %d: no valid site update; keeping the previous merged model", server_round)
            return None, None
        sites = sorted(accepted)
        weights = None  # uniform 1/N
        if self.weighting == "examples":
            weights = normalize_weights([accepted[s][1][wire.NUM_EXAMPLES] for s in sites], len(sites))
        arrays, about = self.merge_updates(server_round, [accepted[s][0] for s in sites], weights)
        for site in sites:
            self.results.log("train", round=server_round, site=site, data_source=accepted[site][2][wire.DATA_SOURCE],
                             **accepted[site][1])
        mean = {k: sum(accepted[s][1][k] for s in sites) / len(sites) for k in ("val-acc", "train-loss")}
        return arrays, MetricRecord({**mean, "sites-merged": len(sites), **about})

    def _same_base(self, server_round: int, accepted: dict[str, tuple[object, dict, dict]]) -> dict:
        """Updates only merge over the same base model: pin the majority fingerprint, drop the rest."""
        prints = {site: info.get(wire.BASE_FINGERPRINT) for site, (_, _, info) in accepted.items()}
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


class FullWeightStrategy(LowRankMergeStrategy):
    """ViT averaging: sites fine-tune the whole backbone and the server averages the weights (FedAvg / a
    model soup). The non-adapter baseline of the paper's table, with the same site addressing, reply
    checks and summary as the adapter strategies.

    template: tensor name -> shape of the backbone's state dict.
    """

    def decode_update(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        missing, extra = sorted(set(self.template) - set(tensors)), sorted(set(tensors) - set(self.template))
        if missing or extra:
            raise wire.InvalidUpdate(f"backbone keys do not fit: missing {missing[:4]}, unexpected {extra[:4]}")
        for key, shape in self.template.items():
            tensor = tensors[key]
            if tuple(tensor.shape) != shape or not tensor.is_floating_point():
                raise wire.InvalidUpdate(f"{key}: {tensor.dtype} {tuple(tensor.shape)}, expected float {shape}")
            if not torch.isfinite(tensor).all():
                raise wire.InvalidUpdate(f"{key} holds NaN or Inf values")
        return tensors

    def merge_updates(self, server_round: int, updates: list[dict], weights) -> tuple[ArrayRecord, dict]:
        averaged = average_backbones(updates, None if weights is None else weights.tolist())
        path = self.results.save_backbone(server_round, averaged)
        log.info("round %d: averaged %d full backbones, saved %s", server_round, len(updates), path)
        return ArrayRecord(averaged), {}
