"""A federation of real ClientApp handlers and the real strategy, without Flower's transport: messages are
handed from one to the other in this process. For runs with hostile sites, where a site's reply is
changed on its way to the coordinator."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context, MessageType, RecordDict

from fl_medlego import wire
from fl_medlego.clients.app import evaluate, train
from fl_medlego.config import parse_run_config, settings_table
from fl_medlego.models import shared_base
from fl_medlego.results import RunResults
from fl_medlego.server.strategy import SiteMergeStrategy

from flower_mocks import message, set_task_identity


def run(run_config: dict, out: Path, tamper: dict[str, Callable] | None = None, stop_after: int | None = None,
        resume: bool = False) -> SiteMergeStrategy:
    """All rounds; `tamper[site](reply) -> reply` changes that site's train replies. Returns the strategy.

    stop_after: end after that round (as a stopped coordinator would); resume: go on from the run folder's
    last complete round, as `resume=RUN_DIR` does (the sites find their state again under `out`)."""
    set_task_identity()
    cfg = parse_run_config(run_config)
    sites = cfg.site_names
    nodes = {site: 100 + i for i, site in enumerate(sites)}
    contexts = {site: Context(run_id=7, node_id=nodes[site], node_config={wire.NODE_SITE: site,
                                                                         wire.NODE_STATE_DIR: str(out / "state")},
                              state=RecordDict(), run_config=dict(run_config)) for site in sites}
    results = RunResults(out / "run", settings_table(cfg), resume=resume)
    base = shared_base(cfg.model_name, cfg.pretrained, cfg.seed)[1]
    done, state = results.last_complete_round() if resume else (0, {})
    strategy = SiteMergeStrategy(nodes, cfg.kind.template(cfg), cfg, results, base, resumed=(done, state))
    arrays = ArrayRecord(cfg.kind.encode(cfg.kind.load(results.round_dir(done), cfg, base))) if done else ArrayRecord()
    for server_round in range(1, (stop_after or cfg.num_rounds) - done + 1):
        replies = []
        for msg in strategy.configure_train(server_round, arrays, ConfigRecord(), grid=None):
            site = msg.content[wire.CONFIG][wire.SITE]
            request = message(msg.content, MessageType.TRAIN, src=0, dst=nodes[site])
            reply = train(request, contexts[site])
            if tamper and site in tamper:
                reply = tamper[site](reply)
            replies.append(message(reply.content, MessageType.TRAIN, src=nodes[site], dst=0))
        combined, _ = strategy.aggregate_train(server_round, replies)
        arrays = combined if combined is not None else arrays
        evaluations = []
        for msg in strategy.configure_evaluate(server_round, arrays, ConfigRecord(), grid=None):
            site = msg.content[wire.CONFIG][wire.SITE]
            reply = evaluate(message(msg.content, MessageType.EVALUATE, src=0, dst=nodes[site]), contexts[site])
            evaluations.append(message(reply.content, MessageType.EVALUATE, src=nodes[site], dst=0))
        strategy.aggregate_evaluate(server_round, evaluations)
    return strategy


def scaled_reply(factor: float) -> Callable:
    """A site that multiplies its update by factor**2 (both low-rank factors by factor) before sending it."""
    def tamper(reply):
        tensors = reply.content[wire.ARRAYS].to_torch_state_dict()
        tensors[wire.PACKED] = tensors[wire.PACKED] * factor
        content = RecordDict({wire.ARRAYS: ArrayRecord(tensors), wire.METRICS: reply.content[wire.METRICS],
                              wire.SITE_INFO: reply.content[wire.SITE_INFO]})
        return message(content, MessageType.TRAIN)
    return tamper
