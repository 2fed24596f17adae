"""The site ClientApp, except that site `blood` multiplies its packed factors by 10**6.5
before sending them (B, E and A each: the update x10**19.5).

For testing the coordinator's update guard in a real `flwr run` (tests/test_hostile_site.py); it is
not part of the package.
"""

from flwr.app import ArrayRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from fl_medlego import wire
from fl_medlego.clients import app as honest

HOSTILE_SITE = "blood"
FACTOR = 10 ** 6.5  # on B, E and A: the update x10**19.5

app = ClientApp()


@app.query()
def query(msg: Message, context: Context) -> Message:
    return honest.query(msg, context)


@app.train()
def train(msg: Message, context: Context) -> Message:
    reply = honest.train(msg, context)
    if msg.content[wire.CONFIG][wire.SITE] != HOSTILE_SITE or wire.ARRAYS not in reply.content:
        return reply
    tensors = reply.content[wire.ARRAYS].to_torch_state_dict()
    tensors[wire.PACKED] = tensors[wire.PACKED] * FACTOR
    content = RecordDict({wire.ARRAYS: ArrayRecord(tensors), wire.METRICS: reply.content[wire.METRICS],
                          wire.SITE_INFO: reply.content[wire.SITE_INFO]})
    return Message(content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    return honest.evaluate(msg, context)
