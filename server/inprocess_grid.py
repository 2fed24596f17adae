"""A Flower Grid that hands each message to a ClientApp in this process: the real apps, no transport.

`fl-medlego compare`'s federated rows and the default scenario's golden test run the real ServerApp
code (discovery, the strategy, the summary) against the real ClientApp handlers through this grid,
so a change to the round reaches them exactly as it reaches `flwr run`. It is not an engine: one
message at a time, in order, no Ray, no SuperLink. A handler's exception becomes an error reply, as
a SuperNode reports a failed ClientApp, so the coordinator sees what it would see in a deployment.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from uuid import uuid4

from flwr.app import Context, Error, Message, RecordDict
from flwr.app.message.message import make_message
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid

ClientAppCall = Callable[[Message, Context], Message]


class InProcessGrid(Grid):
    """nodes: node id -> that node's Context (its node config says which sites it hosts).

    tamper: node id -> a function applied to that node's replies on their way back (hostile-site tests).
    """

    def __init__(self, client_app: ClientAppCall, nodes: dict[int, Context],
                 tamper: dict[int, Callable[[Message], Message]] | None = None) -> None:
        self.client_app, self.nodes, self.tamper = client_app, nodes, dict(tamper or {})
        self._run = None
        self._replies: dict[str, Message] = {}

    def set_run(self, run) -> None:
        self._run = run

    @property
    def run(self):
        return self._run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.nodes)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = uuid4().hex  # as Flower's grids do on push
            message.metadata.__dict__["_src_node_id"] = 0
            self._replies[message.metadata.message_id] = self._deliver(message)
            ids.append(message.metadata.message_id)
        return ids

    def _deliver(self, message: Message) -> Message:
        node = message.metadata.dst_node_id
        try:
            reply = self.client_app(message, self.nodes[node])
        except Exception as err:  # noqa: BLE001  a failed ClientApp is an error reply, as a SuperNode sends it
            reason = f"<class '{type(err).__name__}'>:<'{err}'>"
            error = Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason)
            reply = make_message(_reply_metadata(message), error=error)
        else:
            reply = make_message(_reply_metadata(message), content=reply.content)
        if node in self.tamper:
            reply = self.tamper[node](reply)
        return reply

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self.pull_messages(list(self.push_messages(messages)))


def _metadata(message_type: str, src: int, dst: int, *, run_id: int = 1, reply_to: str = "", group_id: str = "1",
              created_at: float | None = None, ttl: float = 3600):
    """Metadata as Flower's runtime sets it on a delivered message (a fresh message id, routing, timing)."""
    from flwr.app import Metadata

    return Metadata(run_id=run_id, message_id=uuid4().hex, src_node_id=src, dst_node_id=dst,
                    reply_to_message_id=reply_to, group_id=group_id,
                    created_at=time.time() if created_at is None else created_at, ttl=ttl, message_type=message_type)


def _reply_metadata(message: Message):
    """The metadata of a reply to `message`: from its destination node back to the coordinator."""
    sent = message.metadata
    return _metadata(sent.message_type, sent.dst_node_id, 0, run_id=sent.run_id, reply_to=sent.message_id,
                     group_id=sent.group_id, created_at=sent.created_at, ttl=sent.ttl)


def delivered_message(content: RecordDict | None, message_type: str, src: int = 0, dst: int = 1,
                      error: str = "") -> Message:
    """A message as Flower's runtime delivers it (ids and routing set), for driving handlers and strategies
    directly: a site's reply (src: its node) or an error reply with `error` as its reason."""
    metadata = _metadata(message_type, src, dst)
    if error:
        return make_message(metadata, error=Error(code=0, reason=error))
    return make_message(metadata, content)
