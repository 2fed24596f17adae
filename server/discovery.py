"""Find which node hosts which site: ask every connected node (a Flower query message), with a bounded wait.

Which node serves which site is the federation's to decide, never a node's claim alone: a mapping the
coordinator declares (`site-nodes`) binds each site to its node, and without one, two nodes claiming
the same site is an error naming both (first claim never wins).
"""

from __future__ import annotations

import logging
import time

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.common import log as flower_log
from flwr.serverapp import Grid

from fl_medlego import wire
from fl_medlego.errors import UserError

from .replies import bounded

log = logging.getLogger(__name__)


def _claimed_sites(reply: Message) -> list[str]:
    """The site names a node's answer lists ([] for an error or a malformed answer)."""
    try:
        if reply.has_error():
            log.warning("node %d could not say which sites it hosts: %s", reply.metadata.src_node_id,
                        bounded(reply.error.reason))
            return []
        sites = reply.content[wire.SITE_INFO][wire.SITES]
        return [s for s in str(sites).split(",")[:10_000] if s]
    except Exception as err:  # noqa: BLE001  a node's answer must not stop the coordinator
        log.warning("node %d sent a malformed answer to the site query (%s)", reply.metadata.src_node_id,
                    type(err).__name__)
        return []


def discover_sites(grid: Grid, declared: list[str], wait_s: float, poll_s: float = 2.0,
                   answer_s: float = 120.0, pinned: dict[str, int] | None = None,
                   report_s: float = 10.0) -> dict[str, int]:
    """Site name -> node id for the declared sites, waiting up to `wait_s` for all of them.

    Goes on with the sites found when the wait ends (min-sites decides whether that is enough);
    raises when none is found, or when two nodes claim one site without a declared binding. A
    connected node gets at least `answer_s` to answer: a cold ClientApp process can take many seconds.
    Every `report_s` the sites still awaited are named, with the time left, in Flower's log (the one
    `flwr run --stream` shows), so a wait is never silent.
    """
    pinned = dict(pinned or {})
    undeclared = sorted(set(pinned) - set(declared))
    if undeclared:
        raise ValueError(f"site-nodes binds sites {undeclared} that the scenario does not declare ({declared})")
    deadline = time.monotonic() + wait_s
    site_nodes: dict[str, int] = {}
    known = set(declared)  # each claimed site is looked up: a list made that quadratic with 10,000 sites
    asked: set[int] = set()
    next_report = time.monotonic()
    while True:
        new_nodes = [n for n in grid.get_node_ids() if n not in asked]
        if new_nodes:
            queries = [Message(RecordDict({wire.CONFIG: ConfigRecord()}), message_type=MessageType.QUERY,
                               dst_node_id=n) for n in new_nodes]
            for reply in grid.send_and_receive(queries, timeout=max(deadline - time.monotonic(), answer_s)):
                node = reply.metadata.src_node_id
                asked.add(node)
                for site in _claimed_sites(reply):
                    _assign(site, node, known, pinned, site_nodes)
        missing = [s for s in declared if s not in site_nodes]
        if not missing or time.monotonic() >= deadline:
            break
        if time.monotonic() >= next_report:
            next_report = time.monotonic() + report_s
            flower_log(logging.INFO, "fl-medlego: waiting for the nodes of sites %s (node-wait-timeout: %.0f s left; "
                       "connected: %s)", missing, deadline - time.monotonic(), sorted(site_nodes) or "none")
        time.sleep(poll_s)
    if missing:
        log.warning("going on without sites %s: no connected node hosts them", missing)
    if not site_nodes:
        raise RuntimeError(f"no connected node hosts any of the sites {declared} after {wait_s:.0f} s: "
                           "start SuperNodes with --node-config \"site='NAME'\" (deployment) or check the federation")
    return {s: site_nodes[s] for s in declared if s in site_nodes}


def require_quorum(site_nodes: dict[str, int], declared: list[str], required: int, server_round: int = 1) -> None:
    """Refuse, before any training, a run whose hosted sites cannot reach what `server_round` requires.

    A round with fewer sites than min-sites fails after its sites trained; when the nodes found cannot
    reach that number, no round can count, so nothing is sent to them."""
    if len(site_nodes) >= required:
        return
    missing = [s for s in declared if s not in site_nodes]
    hosted = [s for s in declared if s in site_nodes]
    raise UserError(
        f"round {server_round} needs {required} of the {len(declared)} declared sites (min-sites), but only "
        f"{len(hosted)} have a connected node ({', '.join(hosted) or 'none'}); no node hosts {', '.join(missing)}. "
        f"Start their SuperNodes, or run without them: --run-config \"sites='{','.join(hosted)}'\" "
        f"(or min-sites={len(hosted)})")


def _assign(site: str, node: int, declared: set[str], pinned: dict[str, int], site_nodes: dict[str, int]) -> None:
    if site not in declared:
        log.warning("node %d hosts site %s, which the scenario does not declare: ignored", node, bounded(site, 40))
    elif site in pinned:
        if pinned[site] == node:
            site_nodes[site] = node
        else:
            log.warning("node %d claims site %r, which site-nodes binds to node %d: ignored", node, site,
                        pinned[site])
    elif site in site_nodes and site_nodes[site] != node:
        raise RuntimeError(f"site {site!r} is claimed by nodes {site_nodes[site]} and {node}: bind it to one with "
                           f"--run-config \"site-nodes='{site}=NODE_ID'\" (see `flwr supernode list`)")
    else:
        site_nodes[site] = node
