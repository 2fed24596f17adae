"""Find which node hosts which site: ask every connected node (a Flower query message), with a bounded wait."""

from __future__ import annotations

import logging
import time

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fl_medlego import wire

log = logging.getLogger(__name__)


def discover_sites(grid: Grid, declared: list[str], wait_s: float, poll_s: float = 2.0,
                   answer_s: float = 120.0) -> dict[str, int]:
    """Site name -> node id for the declared sites, waiting up to `wait_s` for all of them.

    Goes on with the sites found when the wait ends (a missing hospital should not stop the others);
    raises when none is found. A site claimed by two nodes keeps its first node. A connected node
    gets at least `answer_s` to answer: a cold ClientApp process can take many seconds to start.
    """
    deadline = time.monotonic() + wait_s
    site_nodes: dict[str, int] = {}
    asked: set[int] = set()
    while True:
        new_nodes = [n for n in grid.get_node_ids() if n not in asked]
        if new_nodes:
            queries = [Message(RecordDict({wire.CONFIG: ConfigRecord()}), message_type=MessageType.QUERY,
                               dst_node_id=n) for n in new_nodes]
            for reply in grid.send_and_receive(queries, timeout=max(deadline - time.monotonic(), answer_s)):
                node = reply.metadata.src_node_id
                asked.add(node)
                if reply.has_error():
                    log.warning("node %d could not say which sites it hosts: %s", node, reply.error.reason)
                    continue
                for site in filter(None, str(reply.content[wire.SITE_INFO][wire.SITES]).split(",")):
                    if site not in declared:
                        log.warning("node %d hosts site %r, which the scenario does not declare: ignored", node, site)
                    elif site in site_nodes and site_nodes[site] != node:
                        log.warning("site %r is claimed by nodes %d and %d: keeping %d", site, site_nodes[site],
                                    node, site_nodes[site])
                    else:
                        site_nodes[site] = node
        missing = [s for s in declared if s not in site_nodes]
        if not missing or time.monotonic() >= deadline:
            break
        log.info("waiting for sites %s (%.0f s left)", missing, deadline - time.monotonic())
        time.sleep(poll_s)
    if missing:
        log.warning("going on without sites %s: no connected node hosts them", missing)
    if not site_nodes:
        raise RuntimeError(f"no connected node hosts any of the sites {declared} after {wait_s:.0f} s: "
                           "start SuperNodes with --node-config \"site='NAME'\" (deployment) or check the federation")
    return {s: site_nodes[s] for s in declared if s in site_nodes}
