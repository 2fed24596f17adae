"""The site: a Flower ClientApp that trains and evaluates the adapters of the sites this node hosts.

Only adapter factors and metrics go back to the server (whole backbones with strategy `vit_avg`, the
full-weight averaging baseline); images, labels and the site's head stay here.
"""

from __future__ import annotations

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fl_medlego import wire
from fl_medlego.config import parse_run_config
from fl_medlego.full_finetune import FULL_WEIGHT_STRATEGY, evaluate_full, train_full_round
from fl_medlego.site import (
    adapter_template,
    evaluate_site,
    learning_curve,
    load_site_data,
    sites_for_node,
    train_site,
)

from .state import load_full_state, load_state, save_full_state, save_state

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
    if cfg.strategy == FULL_WEIGHT_STRATEGY:  # ViT averaging: full fine-tuning, whole backbones on the wire
        backbone, state, metrics, base = train_full_round(cfg, data, tensors or None, load_full_state(context.state,
                                                                                                      site))
        save_full_state(context.state, site, state)
        return _train_reply(msg, ArrayRecord(backbone), metrics, site, base, data.source)
    merged = wire.decode(tensors, adapter_template(cfg)) if tensors else None  # round 1: train from scratch
    if msg.content[wire.CONFIG].get(wire.LEARNING_CURVE, False):
        epochs = int(msg.content[wire.CONFIG][wire.CURVE_EPOCHS])
        curve = learning_curve(cfg, data, merged, epochs)
        metrics = MetricRecord({wire.NUM_EXAMPLES: float(len(data.train)), **curve})
        return Message(RecordDict({wire.METRICS: metrics, wire.SITE_INFO: ConfigRecord({wire.SITE: site})}),
                       reply_to=msg)
    adapter, state, metrics = train_site(cfg, data, merged, load_state(context.state, site))
    save_state(context.state, site, state)
    return _train_reply(msg, ArrayRecord(wire.encode(adapter)), metrics, site, adapter.metadata["base"], data.source)


def _train_reply(msg: Message, arrays: ArrayRecord, metrics: dict, site: str, base: str, source: str) -> Message:
    info = ConfigRecord({wire.SITE: site, wire.BASE_FINGERPRINT: base, wire.DATA_SOURCE: source})
    return Message(RecordDict({wire.ARRAYS: arrays, wire.METRICS: MetricRecord(metrics), wire.SITE_INFO: info}),
                   reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Test metrics of the given (merged) model with this site's head, and of its own specialist."""
    cfg = parse_run_config(context.run_config)
    site = _site_of(msg, context)
    full = cfg.strategy == FULL_WEIGHT_STRATEGY
    state = load_full_state(context.state, site) if full else load_state(context.state, site)
    if state is None:
        raise ValueError(f"site {site!r} has not trained yet: it has no head to evaluate with")
    data = load_site_data(cfg, site, context.node_config.get("data-root"))
    tensors = msg.content[wire.ARRAYS].to_torch_state_dict()
    with_specialist = msg.content[wire.CONFIG].get(wire.WITH_SPECIALIST, False)
    if full:
        metrics = evaluate_full(cfg, data, tensors, state.head)
        own = evaluate_full(cfg, data, state.specialist_backbone, state.specialist_head) if with_specialist else {}
    else:
        metrics = evaluate_site(cfg, data, wire.decode(tensors, adapter_template(cfg)), state.head)
        own = evaluate_site(cfg, data, state.specialist, state.specialist_head) if with_specialist else {}
    metrics |= {wire.SPECIALIST_PREFIX + k: v for k, v in own.items()}
    metrics[wire.NUM_EXAMPLES] = float(len(data.test))
    content = RecordDict({wire.METRICS: MetricRecord(metrics), wire.SITE_INFO: ConfigRecord({wire.SITE: site})})
    return Message(content, reply_to=msg)
