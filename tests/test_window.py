"""WindowedGrid: a bounded number of messages in flight per node, every reply collected, the round timeout kept."""

import uuid
from collections import Counter

import pytest
from flwr.app import Message, MessageType, RecordDict

from fl_medlego.cli.local_run import set_task_identity
from fl_medlego.server.inprocess_grid import delivered_message as message
from fl_medlego.server.window import WindowedGrid


class FakeGrid:
    """Stores pushed messages; each pull answers the oldest unanswered message of every node that `serves`."""

    def __init__(self, refuse: frozenset = frozenset(), serves=lambda node: True) -> None:
        self.unanswered: dict[str, Message] = {}
        self.in_flight, self.most_in_flight = Counter(), Counter()
        self.pushed: list[int] = []
        self.refuse, self.serves = refuse, serves
        self.node_ids = [1, 2, 3]

    def get_node_ids(self):
        return self.node_ids

    def push_messages(self, messages):
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = uuid.uuid4().hex
            self.pushed.append(msg.metadata.dst_node_id)
            if msg.metadata.dst_node_id in self.refuse:
                continue
            self.unanswered[msg.metadata.message_id] = msg
            self.in_flight[msg.metadata.dst_node_id] += 1
            self.most_in_flight[msg.metadata.dst_node_id] = max(self.most_in_flight[msg.metadata.dst_node_id],
                                                                self.in_flight[msg.metadata.dst_node_id])
            ids.append(msg.metadata.message_id)
        return ids

    def pull_messages(self, message_ids):
        replies, answered_nodes = [], set()
        for msg_id in list(self.unanswered):
            msg = self.unanswered[msg_id]
            node = msg.metadata.dst_node_id
            if msg_id in message_ids and node not in answered_nodes and self.serves(node):
                answered_nodes.add(node)
                del self.unanswered[msg_id]
                self.in_flight[node] -= 1
                replies.append(Message(RecordDict(), reply_to=msg))
        return replies


def messages(per_node: dict[int, int]) -> list[Message]:
    set_task_identity()
    return [message(RecordDict(), MessageType.TRAIN, src=0, dst=node)
            for node, count in per_node.items() for _ in range(count)]


def test_every_message_is_answered_with_at_most_the_window_in_flight_per_node():
    grid = FakeGrid()
    sent = messages({1: 5, 2: 3, 3: 1})
    replies = WindowedGrid(grid, per_node=2).send_and_receive(sent, timeout=30)
    assert sorted(r.metadata.reply_to_message_id for r in replies) == sorted(m.metadata.message_id for m in sent)
    assert grid.most_in_flight == Counter({1: 2, 2: 2, 3: 1})


def test_time_up_returns_the_replies_so_far_and_never_sends_the_rest():
    grid = FakeGrid(serves=lambda node: node != 2)  # node 2 never answers
    sent = messages({1: 2, 2: 4})
    replies = WindowedGrid(grid, per_node=1).send_and_receive(sent, timeout=0.5)
    assert len(replies) == 2  # node 1's
    assert Counter(grid.pushed) == Counter({1: 2, 2: 1})  # node 2's other three waited for room and never went


def test_a_message_the_link_refuses_does_not_block_its_node():
    grid = FakeGrid(refuse=frozenset({3}))
    replies = WindowedGrid(grid, per_node=1).send_and_receive(messages({1: 1, 3: 2}), timeout=5)
    assert len(replies) == 1 and Counter(grid.pushed) == Counter({1: 1, 3: 2})


def test_everything_else_is_the_wrapped_grids():
    assert WindowedGrid(FakeGrid(), per_node=1).get_node_ids() == [1, 2, 3]
    with pytest.raises(ValueError, match="per_node"):
        WindowedGrid(FakeGrid(), per_node=0)
