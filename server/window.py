"""A Grid whose send_and_receive keeps a bounded number of messages in flight to each node.

Why: Flower 1.41's simulation finds each node's next message by walking the stored, unanswered
messages in order (checking each one's expiry and federation) until one is for that node; a node
with nothing waiting walks them all, and every lookup copies the ids of all stored messages; this
runs for every node ten times a second (`InMemoryLinkState.get_message_ins`). Pushing a whole round
at once stores every site's message for the round; the window stores at most `per_node` a node.
A node serves its messages one at a time anyway, so keeping two queued per node loses nothing:
each node has its next message waiting when it finishes one. With one site per node (a real
federation) every message goes out at once, as before. Measured effect: docs/performance.md, "Scale".
"""

from __future__ import annotations

import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable

from flwr.app import Message
from flwr.serverapp import Grid

PULL_INTERVAL_S = 0.1  # as Flower's in-memory grid


class WindowedGrid:
    """Wraps a Grid: `send_and_receive` pushes at most `per_node` messages per destination node at a time,
    the next one as soon as a reply to an earlier one arrives. Everything else is the wrapped grid's."""

    def __init__(self, grid: Grid, per_node: int) -> None:
        if per_node < 1:
            raise ValueError(f"per_node must be >= 1, got {per_node}")
        self._grid, self.per_node = grid, per_node
        # Called with each reply and the message it answers as it arrives (the strategy reads a train reply at
        # once, so that a round's updates are never all held twice, as Flower's messages and as decoded
        # tensors); None: nothing.
        self.on_reply: Callable[[Message, Message], None] | None = None

    def __getattr__(self, name: str):
        return getattr(self._grid, name)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        """Replies to `messages`, within `timeout` seconds in all (None: wait for every reply), as Flower's grid.

        Messages still waiting for room when the time is up are never sent: their sites have no reply,
        exactly as sites that did not answer in time.
        """
        waiting: dict[int, deque[Message]] = defaultdict(deque)
        for msg in messages:
            waiting[msg.metadata.dst_node_id].append(msg)
        in_flight: dict[str, Message] = {}  # message id -> the message
        per_node: dict[int, int] = defaultdict(int)
        replies: list[Message] = []
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            batch = []
            for node, queue in waiting.items():
                while queue and per_node[node] < self.per_node:
                    batch.append(queue.popleft())
                    per_node[node] += 1
            if batch:
                stored = set(self._grid.push_messages(batch))  # the grid sets each message's id as it pushes
                for msg in batch:
                    if msg.metadata.message_id in stored:
                        in_flight[msg.metadata.message_id] = msg
                    else:  # refused by the SuperLink: no reply will come, make room for the node's next
                        per_node[msg.metadata.dst_node_id] -= 1
            if not in_flight:
                return replies
            for reply in self._grid.pull_messages(set(in_flight)):
                request = in_flight.pop(reply.metadata.reply_to_message_id, None)
                if request is not None:
                    per_node[request.metadata.dst_node_id] -= 1
                    replies.append(reply)
                    if self.on_reply is not None:
                        self.on_reply(reply, request)
            if not in_flight and not any(waiting.values()):
                return replies
            if deadline is not None and time.monotonic() >= deadline:
                return replies
            time.sleep(PULL_INTERVAL_S)
