"""new_task (Med-LEGO Fig. 2): merge every site but one, then learn the held-out task from the merged
adapter and from the bare base, and compare their learning curves."""

from __future__ import annotations

import json
import logging

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

from fl_medlego import wire
from fl_medlego.config import parse_run_config
from fl_medlego.report import learning_curve_figure

from .app import run_federation

log = logging.getLogger(__name__)
app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    held = parse_run_config(context.run_config).new_task.site
    if not held:
        raise ValueError("the new_task scenario needs new-task.site: the site whose task is held out of the merge")
    fed = run_federation(grid, context, held_out=(held,))
    if held not in fed.site_nodes:
        raise RuntimeError(f"no node hosts the held-out site {held!r}")
    starts = {"from merged adapter": fed.merged, "from base model": ArrayRecord()}
    messages = []
    for arrays in starts.values():
        config = ConfigRecord({wire.SITE: held, wire.LEARNING_CURVE: True, wire.CURVE_EPOCHS: fed.cfg.new_task.epochs})
        messages.append(Message(RecordDict({wire.ARRAYS: arrays, wire.CONFIG: config}),
                                message_type=MessageType.TRAIN, dst_node_id=fed.site_nodes[held]))
    replies = list(grid.send_and_receive(messages, timeout=fed.cfg.round_timeout))
    by_id = {m.metadata.message_id: label for m, label in zip(messages, starts)}
    curves = {}
    for reply in replies:
        label = by_id[reply.metadata.reply_to_message_id]
        if reply.has_error():
            raise RuntimeError(f"the held-out site failed to train ({label}): {reply.error.reason}")
        metrics = reply.content[wire.METRICS]
        curves[label] = {key: list(metrics[key]) for key in (wire.VAL_ACC, wire.TEST_ACC)}
    (fed.run_dir / "new_task.json").write_text(json.dumps({"site": held, "curves": curves}, indent=2))
    learning_curve_figure(held, curves, fed.run_dir / "new_task.png")
    for label, curve in curves.items():
        print(f"fl-medlego: {held} {label}: test ACC per epoch " + " ".join(f"{a:.3f}" for a in curve[wire.TEST_ACC]))
    print(f"fl-medlego: learning curves written to {fed.run_dir / 'new_task.png'}", flush=True)
