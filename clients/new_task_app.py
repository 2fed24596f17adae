"""The new_task scenario's site (Med-LEGO Fig. 2): the ordinary site, plus learning a held-out task.

A `train.curve` message carries a start (the merged update, or none: the bare base); the site learns
its task from it with a fresh head for the given epochs and replies with the validation and test ACC
after every epoch. It keeps no state: a learning curve is a measurement, not a round.
"""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fl_medlego import wire
from fl_medlego.site import load_site_data

from .app import evaluate, halves, progress, query, reply, run_setup, site_of, start_update, train

app = ClientApp()
app.query()(query)
app.train()(train)
app.evaluate()(evaluate)


@app.train(wire.CURVE_ACTION)
def learning_curve(msg: Message, context: Context) -> Message:
    """Validation and test ACC per epoch of learning this site's task from the message's start."""
    cfg, template = run_setup(context)
    site, (trainer, codec) = site_of(msg, context, cfg), halves(cfg)
    data = load_site_data(cfg, site, context.node_config)
    epochs = int(msg.content[wire.CONFIG][wire.CURVE_EPOCHS])
    curve = trainer.learning_curve(data, start_update(msg, codec, template), epochs, on_epoch=progress(site))
    return reply(msg, {wire.NUM_EXAMPLES: float(len(data.train)), **curve}, {wire.SITE: site})
