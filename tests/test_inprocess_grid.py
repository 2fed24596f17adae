"""The in-process grid delivers as Flower's runtime does: a reply is addressed back from the node it was sent to,
names the message it answers, and a handler's exception comes back as an error reply."""

from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict

from fl_medlego.cli.local_run import set_task_identity
from fl_medlego.server.inprocess_grid import InProcessGrid, delivered_message

NODE = 7


def _echo(msg: Message, context: Context) -> Message:
    if msg.content["config"]["fail"]:
        raise RuntimeError("the handler broke")
    return Message(RecordDict({"config": ConfigRecord({"node": context.node_id})}), reply_to=msg)


def _grid() -> InProcessGrid:
    set_task_identity()
    return InProcessGrid(_echo, {NODE: Context(run_id=1, node_id=NODE, node_config={}, state=RecordDict(),
                                               run_config={})})


def test_a_reply_comes_back_from_the_node_it_was_sent_to_naming_the_message_it_answers():
    grid = _grid()
    sent = [Message(RecordDict({"config": ConfigRecord({"fail": fail})}), dst_node_id=NODE,
                    message_type=MessageType.QUERY) for fail in (False, True)]
    ok, failed = grid.send_and_receive(sent)
    for reply, message in ((ok, sent[0]), (failed, sent[1])):
        meta = reply.metadata
        assert (meta.src_node_id, meta.dst_node_id, meta.message_type) == (NODE, 0, MessageType.QUERY)
        assert meta.reply_to_message_id == message.metadata.message_id and meta.message_id not in (
            "", message.metadata.message_id)
        assert (meta.run_id, meta.group_id, meta.ttl) == (message.metadata.run_id, message.metadata.group_id,
                                                          message.metadata.ttl)
    assert ok.content["config"]["node"] == NODE and not ok.has_error()
    assert failed.has_error() and "the handler broke" in failed.error.reason


def test_a_delivered_message_carries_fresh_ids_and_its_routing():
    set_task_identity()
    first, second = (delivered_message(RecordDict(), MessageType.TRAIN, src=3, dst=0) for _ in range(2))
    assert (first.metadata.src_node_id, first.metadata.dst_node_id) == (3, 0)
    assert first.metadata.message_id and first.metadata.message_id != second.metadata.message_id
    error = delivered_message(None, MessageType.TRAIN, src=3, dst=0, error="boom")
    assert error.has_error() and error.error.reason == "boom"
