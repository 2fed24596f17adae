"""The real ServerApp and ClientApp in this process (fl_medlego.cli.local_run), with the hooks hostile-site and
resume tests need: a site's reply changed on its way to the coordinator, a coordinator stopped after a round."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from flwr.app import ArrayRecord, MessageType, RecordDict

from fl_medlego import wire
from fl_medlego.cli.local_run import run_local_federation
from fl_medlego.clients.app import app as site_app
from fl_medlego.server.inprocess_grid import delivered_message as message
from fl_medlego.server.strategy import SiteMergeStrategy


class CoordinatorStopped(BaseException):
    """The coordinator process ended between two rounds (not an Exception: nothing in the apps catches it)."""


def run(run_config: dict, out: Path, tamper: dict[str, Callable] | None = None, stop_after: int | None = None,
        resume: bool = False) -> SiteMergeStrategy:
    """All rounds; `tamper[site](reply) -> reply` changes that site's train replies. Returns the strategy.

    stop_after: end after that round (as a stopped coordinator would); resume: go on from the run folder's
    last complete round, as `resume=RUN_DIR` does (the sites find their state again under `out`)."""
    config = {**run_config, "output-dir": str(out / "runs")}
    if resume:
        (run_dir,) = (out / "runs").iterdir()
        config["resume"] = str(run_dir)
    client_app, seen = site_app, {}

    def stopping_app(msg, context):
        if int(msg.content[wire.CONFIG].get(wire.SERVER_ROUND, 1)) > stop_after:
            raise CoordinatorStopped
        return site_app(msg, context)

    if stop_after is not None:
        client_app = stopping_app

    def keep_strategy(grid, context):
        from fl_medlego.server.app import run_federation

        try:
            return run_federation(grid, context, on_strategy=lambda s: seen.setdefault("strategy", s))
        except CoordinatorStopped:
            return None

    only_train = {site: _train_only(f) for site, f in (tamper or {}).items()}
    run_local_federation(config, out / "state", tamper=only_train, client_app=client_app, main=keep_strategy)
    return seen["strategy"]


def _train_only(tamper: Callable) -> Callable:
    """The tampered train reply, still routed as the site's reply to its message (a hostile site changes
    what it sends, not where it comes from); evaluation replies pass unchanged."""
    def train_reply(reply):
        if reply.metadata.message_type != MessageType.TRAIN or reply.has_error():
            return reply
        return _as_reply_to(reply, tamper(reply).content)
    return train_reply


def scaled_reply(factor: float) -> Callable:
    """A site that multiplies its packed factors by `factor` before sending them: B, E and A each, so the
    update B diag(E) A grows by factor**3."""
    def tamper(reply):
        tensors = reply.content[wire.ARRAYS].to_torch_state_dict()
        tensors[wire.PACKED] = tensors[wire.PACKED] * factor
        content = RecordDict({wire.ARRAYS: ArrayRecord(tensors), wire.METRICS: reply.content[wire.METRICS],
                              wire.SITE_INFO: reply.content[wire.SITE_INFO]})
        return message(content, MessageType.TRAIN)
    return tamper


def _as_reply_to(reply, content: RecordDict):
    """A message with new content and the original reply's routing (who sent it, which message it answers)."""
    forged = message(content, reply.metadata.message_type, src=reply.metadata.src_node_id, dst=0)
    forged.metadata.__dict__["_reply_to_message_id"] = reply.metadata.reply_to_message_id
    return forged
