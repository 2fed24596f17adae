"""The site: a Flower ClientApp that trains and evaluates the adapters of the sites this node hosts.

Only adapter factors and metrics go back to the server; images, labels and the site's head stay here.
"""

from __future__ import annotations

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fl_medlego import wire
from fl_medlego.config import parse_run_config
from fl_medlego.site import (
    adapter_template,
    evaluate_site,
    learning_curve,
    load_site_data,
    sites_for_node,
    train_site,
)

from .state import load_state, save_state

app = ClientApp()


def _site_of(msg: Message, context: Context) -> str:
    """The site a message is for; a node never serves a site it does not host."""
    cfg = parse_run_config(context.run_config)
    site = str(msg.content[wire.CONFIG][wire.SITE])
    hosted = sites_for_node(cfg, context.node_config)
    if site not in hosted:
        raise ValueError(f"this node hosts sites {hosted}, not {site!r}: refusing the message")
    return site


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Tell the server which sites this node hosts."""
    sites = sites_for_node(parse_run_config(context.run_config), context.node_config)
    return Message(RecordDict({wire.SITE_INFO: ConfigRecord({wire.SITES: ",".join(sites)})}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    cfg = parse_run_config(context.run_config)
    site = _site_of(msg, context)
    data = load_site_data(cfg, site, context.node_config.get("data-root"))
    tensors = msg.content[wire.ARRAYS].to_torch_state_dict()
    merged = wire.decode(tensors, adapter_template(cfg)) if tensors else None  # round 1: train from scratch
    if msg.content[wire.CONFIG].get(wire.LEARNING_CURVE, False):
        epochs = int(msg.content[wire.CONFIG][wire.CURVE_EPOCHS])
        curve = learning_curve(cfg, data, merged, epochs)
        metrics = MetricRecord({wire.NUM_EXAMPLES: float(len(data.train)), **curve})
        return Message(RecordDict({wire.METRICS: metrics, wire.SITE_INFO: ConfigRecord({wire.SITE: site})}),
                       reply_to=msg)
    adapter, state, metrics = train_site(cfg, data, merged, load_state(context.state, site))
    save_state(context.state, site, state)
    info = ConfigRecord({wire.SITE: site, wire.BASE_FINGERPRINT: adapter.metadata["base"],
                         wire.DATA_SOURCE: data.source})
    content = RecordDict({wire.ARRAYS: ArrayRecord(wire.encode(adapter)),
                          wire.METRICS: MetricRecord(metrics), wire.SITE_INFO: info})
    return Message(content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Test metrics of the given (merged) adapter with this site's head, and of its own specialist."""
    cfg = parse_run_config(context.run_config)
    site = _site_of(msg, context)
    state = load_state(context.state, site)
    if state is None:
        raise ValueError(f"site {site!r} has not trained yet: it has no head to evaluate with")
    data = load_site_data(cfg, site, context.node_config.get("data-root"))
    adapter = wire.decode(msg.content[wire.ARRAYS].to_torch_state_dict(), adapter_template(cfg))
    metrics = evaluate_site(cfg, data, adapter, state.head)
    if msg.content[wire.CONFIG].get(wire.WITH_SPECIALIST, False):
        own = evaluate_site(cfg, data, state.specialist, state.specialist_head)
        metrics |= {wire.SPECIALIST_PREFIX + k: v for k, v in own.items()}
    metrics[wire.NUM_EXAMPLES] = float(len(data.test))
    content = RecordDict({wire.METRICS: MetricRecord(metrics), wire.SITE_INFO: ConfigRecord({wire.SITE: site})})
    return Message(content, reply_to=msg)
