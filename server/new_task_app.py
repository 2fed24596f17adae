"""new_task (Med-LEGO Fig. 2): merge every site but one, then learn the held-out task from the merged
adapter and from the bare base, and compare their learning curves."""

from __future__ import annotations

import json
import logging

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

from fl_medlego import wire
from fl_medlego.config import parse_run_config
from fl_medlego.errors import ConfigError
from fl_medlego.files import write_text_atomic
from fl_medlego.report import learning_curve_figure

from .app import Federation, refused_in_one_line, run_federation
from .replies import read_curve_reply

log = logging.getLogger(__name__)
app = ServerApp()


@app.main()
@refused_in_one_line
def main(grid: Grid, context: Context) -> None:
    held = parse_run_config(context.run_config).new_task.site
    if not held:
        raise ConfigError("the new_task scenario needs new-task.site: the site whose task is held out of the merge")
    run_federation(grid, context, held_out=(held,), after_rounds=lambda fed: held_out_curves(grid, fed, held))


def held_out_curves(grid: Grid, fed: Federation, held: str) -> None:
    """The held-out site's learning curves, written into the run folder (while the run still holds it)."""
    curves = learning_curves(grid, fed, held)
    write_text_atomic(fed.run_dir / "new_task.json", json.dumps({"site": held, "curves": curves}, indent=2))
    learning_curve_figure(held, curves, fed.run_dir / "new_task.png")
    for label, curve in curves.items():
        print(f"fl-medlego: {held} {label}: test ACC per epoch " + " ".join(f"{a:.3f}" for a in curve[wire.TEST_ACC]))
    print(f"fl-medlego: learning curves written to {fed.run_dir / 'new_task.png'}", flush=True)


def learning_curves(grid: Grid, fed: Federation, held: str) -> dict[str, dict[str, list[float]]]:
    """The held-out site's learning curves from the merged update and from the bare base, each reply read at
    the trust boundary (server/replies.py); a missing or malformed reply fails the run with its reason."""
    starts = {"from merged adapter": fed.merged, "from base model": ArrayRecord()}
    epochs = fed.cfg.new_task.epochs
    messages = {}
    for label, arrays in starts.items():
        config = ConfigRecord({wire.SITE: held, wire.CURVE_EPOCHS: epochs})
        messages[label] = Message(RecordDict({wire.ARRAYS: arrays, wire.CONFIG: config}),
                                  message_type=f"{MessageType.TRAIN}.{wire.CURVE_ACTION}",
                                  dst_node_id=fed.site_nodes[held])
    replies = list(grid.send_and_receive(list(messages.values()), timeout=fed.cfg.round_timeout))
    label_of = {m.metadata.message_id: label for label, m in messages.items()}
    curves = {}
    for msg in replies:
        label = label_of.get(msg.metadata.reply_to_message_id)
        try:
            if label is None or label in curves:
                raise wire.InvalidUpdate("a reply to no learning-curve message of this run, or a second one")
            curves[label] = read_curve_reply(msg, {held: fed.site_nodes[held]}, epochs,
                                             {m.metadata.message_id: held for m in messages.values()}).curve
        except wire.InvalidUpdate as err:
            raise RuntimeError(f"the held-out site {held}'s learning curve ({label or 'unknown'}) is not usable: "
                               f"{err}") from None
    missing = [label for label in starts if label not in curves]
    if missing:
        raise RuntimeError(f"the held-out site {held} sent no learning curve {missing} within round-timeout")
    return curves
