"""The new_task scenario's site (Med-LEGO Fig. 2): the ordinary site, plus learning a held-out task.

A `train.curve` message carries a start (the merged update, or none: the bare base); the site learns
its task from it with a fresh head for the given epochs and replies with the validation and test ACC
after every epoch. It keeps no state: a learning curve is a measurement, not a round.
"""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fl_medlego import wire

from .app import evaluate, open_site, progress, query, reply, start_update, train

app = ClientApp()
app.query()(query)
app.train()(train)
app.evaluate()(evaluate)


@app.train(wire.CURVE_ACTION)
def learning_curve(msg: Message, context: Context) -> Message:
    """Validation and test ACC per epoch of learning this site's task from the message's start."""
    call = open_site(msg, context)
    epochs = int(msg.content[wire.CONFIG][wire.CURVE_EPOCHS])
    curve = call.trainer.learning_curve(call.data, start_update(msg, call.codec, call.template), epochs,
                                        on_epoch=progress(call.site))
    return reply(msg, {wire.NUM_EXAMPLES: float(len(call.data.train)), **curve}, {wire.SITE: call.site})
