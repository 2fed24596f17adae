"""The site: a Flower ClientApp that trains and evaluates the sites this node hosts.

Written once over site kinds (`fl_medlego.kinds`): the kind says what is trained and what goes back
(adapter factors by default; whole backbones for `vit_avg`). Images, labels and heads stay here.
"""

from __future__ import annotations

import functools
import socket
import sys
from dataclasses import dataclass
from logging import ERROR, INFO

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common import log

from fl_medlego import wire
from fl_medlego.config import RunConfig, parse_run_config
from fl_medlego.data import SiteData
from fl_medlego.errors import UserError
from fl_medlego.kinds import KindServer, KindSite
from fl_medlego.privacy.site import PrivateTraining, load_ledger, save_ledger
from fl_medlego.site import dataset_for_node, load_site_data, sites_for_node
from fl_medlego.train import progress_line

from .state import load_state, save_state, state_folder

app = ClientApp()


@functools.lru_cache(maxsize=4)
def _parsed(run_config: tuple) -> tuple[RunConfig, dict]:
    cfg = parse_run_config(dict(run_config))
    return cfg, cfg.kind_server().template()


def run_setup(context: Context) -> tuple[RunConfig, dict]:
    """The run's parsed config and its kind's update template, built once per process and run config.

    A simulated node's process serves every message of its sites: parsing the config (it lists every
    site) and building the template (a model on the meta device) took about 40 ms a message with 1000 sites.
    """
    return _parsed(tuple(sorted(context.run_config.items())))


def site_of(msg: Message, context: Context, cfg: RunConfig) -> str:
    """The site a message is for; a node never serves a site it does not host."""
    site = str(msg.content[wire.CONFIG][wire.SITE])
    hosted = sites_for_node(cfg, context.node_config)
    if site not in hosted:
        raise ValueError(f"this node hosts sites {hosted}, not {site!r}: refusing the message")
    return site


@dataclass
class SiteCall:
    """What a handler works with: the run's config and update template, the site the message is for, the kind's
    site half (training, evaluation) and codec (its server half: the update's encoding), and the site's data."""

    cfg: RunConfig
    template: dict
    site: str
    trainer: KindSite
    codec: KindServer
    data: SiteData


def open_site(msg: Message, context: Context) -> SiteCall:
    """Every site handler opens its message the same way: the run's setup, the hosted site, its kind and data."""
    cfg, template = run_setup(context)
    site = site_of(msg, context, cfg)
    return SiteCall(cfg, template, site, cfg.kind_site(), cfg.kind_server(), site_data(cfg, site, context))


def site_data(cfg: RunConfig, site: str, context: Context) -> SiteData:
    """The site's data. A failure to read a hospital's own images names no file in what goes back: an error
    raised here travels to the coordinator as the reply's reason, and a file's name (DOE_JOHN_1961/CR1.dcm)
    must not leave the hospital. The full message, with the file and the fix, goes to the node's log."""
    own = cfg.site(site).own_data or dataset_for_node(context.node_config)
    try:
        return load_site_data(cfg, site, context.node_config, progress=decoding_progress(site))
    except UserError as err:
        if not own:
            raise
        log(ERROR, f"site {site}: its data could not be read: {err}")
        raise UserError(f"site {site}: its data could not be read ({type(err).__name__}); the reason, with the "
                        "file and the fix, is in the node's log") from None


def decoding_progress(site: str):
    """Log lines while a site's own images are decoded into its cache (first round only): every tenth."""
    shown = set()

    def report(done: int, total: int) -> None:
        tenth = done * 10 // max(total, 1)
        if tenth not in shown:
            shown.add(tenth)
            log(INFO, f"site {site}: decoding its images into the cache, {done}/{total}")

    return report


def _round_and_folder(msg: Message, context: Context) -> tuple[int, object]:
    """The run's round this message is for, and where this node keeps the run's site state."""
    config = msg.content[wire.CONFIG]
    run_key = str(config.get(wire.RUN_KEY, f"run-{context.run_id}"))
    return int(config.get(wire.SERVER_ROUND, 1)), state_folder(context.node_config, run_key)


def progress(site: str):
    # Flower's logger: in a simulation its lines reach the `flwr run --stream` log as they happen.
    return lambda report: log(INFO, progress_line(site, report))


def start_update(msg: Message, codec: KindServer, template: dict):
    """The federation's update a message carries (None: start from the base)."""
    tensors = msg.content[wire.ARRAYS].to_torch_state_dict()
    return codec.decode(tensors, template) if tensors else None


def served_by() -> str:
    """Which Ray node (and machine) runs this process, as "<Ray node id>@<host name>", when it is a simulation's
    Ray worker ("" otherwise): on a cluster, the operator sees in metrics.jsonl where each site's round ran.
    Ray is only looked up, never imported: a deployment's SuperNode does without it."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return ""
    return f"{ray.get_runtime_context().get_node_id()}@{socket.gethostname()}"


def reply(msg: Message, metrics: dict, info: dict, arrays: ArrayRecord | None = None) -> Message:
    content = {wire.METRICS: MetricRecord(metrics), wire.SITE_INFO: ConfigRecord(info)}
    if arrays is not None:
        content[wire.ARRAYS] = arrays
    return Message(RecordDict(content), reply_to=msg)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Tell the server which sites this node hosts."""
    sites = sites_for_node(run_setup(context)[0], context.node_config)
    return Message(RecordDict({wire.SITE_INFO: ConfigRecord({wire.SITES: ",".join(sites)})}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """One round of local training from the federation's update (round 1: from the base)."""
    call = open_site(msg, context)
    cfg, site, trainer, codec, data = call.cfg, call.site, call.trainer, call.codec, call.data
    start = start_update(msg, codec, call.template)
    server_round, folder = _round_and_folder(msg, context)
    state = load_state(folder, site, server_round - 1, codec, call.template)
    if cfg.privacy.private:  # the privacy layer wraps the kind's training step
        private = PrivateTraining(cfg.privacy, cfg.num_rounds)
        result, ledger = private.train(trainer, data, start, state, load_ledger(folder, site), server_round,
                                       on_epoch=progress(site))
        save_ledger(folder, site, ledger)  # before the update leaves: what is sent has been counted
    else:
        result = trainer.train(data, start, state, on_epoch=progress(site), server_round=server_round)
    save_state(folder, site, server_round, codec, result.state, result.update, result.base_fingerprint)
    info = {wire.SITE: site, wire.BASE_FINGERPRINT: result.base_fingerprint, wire.DATA_SOURCE: data.origin}
    if node := served_by():
        info[wire.SERVED_BY] = node
    return reply(msg, result.metrics, info, ArrayRecord(codec.encode(result.update)))


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Test metrics of the federation's update with this site's head, and of its own specialist."""
    call = open_site(msg, context)
    site, trainer, codec, data = call.site, call.trainer, call.codec, call.data
    server_round, folder = _round_and_folder(msg, context)
    state = load_state(folder, site, server_round, codec, call.template)
    if state is None:
        raise ValueError(f"site {site!r} has not trained yet: it has no head to evaluate with")
    update = codec.decode(msg.content[wire.ARRAYS].to_torch_state_dict(), call.template)
    metrics = trainer.evaluate(data, update, state.head)
    if msg.content[wire.CONFIG].get(wire.WITH_SPECIALIST, False):
        own = trainer.evaluate(data, state.specialist, state.specialist_head)
        metrics |= {wire.SPECIALIST_PREFIX + k: v for k, v in own.items()}
    metrics[wire.NUM_EXAMPLES] = float(len(data.test))
    return reply(msg, metrics, {wire.SITE: site})
