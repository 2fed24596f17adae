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


def test_each_reply_is_handed_over_with_its_message_as_it_arrives():
    grid = FakeGrid()
    sent = messages({1: 3, 2: 2})
    window = WindowedGrid(grid, per_node=1)
    seen = []
    window.on_reply = lambda reply, request: seen.append((reply, request, len(grid.pushed)))
    replies = window.send_and_receive(sent, timeout=30)
    assert [r for r, _, _ in seen] == replies
    assert all(r.metadata.reply_to_message_id == m.metadata.message_id for r, m, _ in seen)
    assert seen[0][2] < len(sent)  # the first reply came while messages were still waiting to be sent


def test_a_round_reads_its_replies_as_they_arrive_and_drops_their_arrays(tmp_path):
    """With the window (messages-per-node > 0) the strategy reads each train reply when it arrives: by the time
    the round is combined, no reply Flower still holds carries its update."""
    from flwr.app import MessageType as Type

    from fl_medlego.cli.local_run import run_local_federation
    from fl_medlego.clients.app import app as site_app
    from fl_medlego.server import strategy as strategy_module
    from fl_medlego.server.window import WindowedGrid as Window

    held = []
    original = Window.send_and_receive

    def spy(self, messages, *, timeout=None):
        replies = original(self, messages, timeout=timeout)
        held.append([(r.metadata.message_type, strategy_module.wire.ARRAYS in r.content) for r in replies
                     if not r.has_error()])
        return replies

    config = {"sites": "breast,pneumonia", "num-rounds": 1, "train.local-epochs": 1, "data.max-train": 24,
              "data.max-eval": 24, "lora.rank": 2, "output-dir": str(tmp_path / "out")}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Window, "send_and_receive", spy)
        fed = run_local_federation(config, tmp_path / "state", client_app=site_app)
    train_rounds = [r for r in held if r and r[0][0] == Type.TRAIN]
    assert train_rounds and all(not has_arrays for round_ in train_rounds for _, has_arrays in round_)
    assert (fed.run_dir / "summary.json").is_file()
