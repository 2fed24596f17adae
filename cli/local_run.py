"""A whole federation in this process: the real ServerApp code against the real ClientApp, one node per site.

What `flwr run` does, without Flower's SuperLink and Ray: discovery, every round of the strategy, the
sites' training and evaluation, the summary. `fl-medlego compare`'s federated rows and the default
scenario's golden test run through here, so that nothing re-implements a round.

    fed = run_local_federation({**scenario_config, "output-dir": "/tmp/out"}, state_dir=Path("/tmp/state"))
    fed.run_dir / "summary.json"
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from flwr.app import Context, Message, RecordDict

from fl_medlego import wire
from fl_medlego.clients.app import app as site_app
from fl_medlego.config import parse_run_config
from fl_medlego.server.app import Federation, run_federation
from fl_medlego.server.inprocess_grid import InProcessGrid

FIRST_NODE_ID = 100
RUN_ID = 1


def set_task_identity(run_id: int = RUN_ID, node_id: int = 0) -> None:
    """Flower's runtime says which run and node this process is before any message is built; so do we."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = run_id, node_id, 1


def site_nodes(run_config: dict) -> dict[str, int]:
    """One node per declared site, numbered in the order of the run config's sites."""
    return {site: FIRST_NODE_ID + i for i, site in enumerate(parse_run_config(run_config).site_names)}


def run_local_federation(run_config: dict, state_dir: Path, *,
                         tamper: dict[str, Callable[[Message], Message]] | None = None,
                         client_app: Callable[[Message, Context], Message] = site_app,
                         main: Callable = run_federation, **main_kwargs):
    """Run `main(grid, context)` (the ServerApp's federation) over one in-process node per site.

    state_dir: where the nodes keep their sites' state between rounds (a resumed run must use the same).
    tamper: site -> a function that changes that site's replies on their way to the coordinator.
    Returns what `main` returns (run_federation: the Federation, with its run folder).
    """
    set_task_identity()
    nodes = site_nodes(run_config)
    contexts = {node: Context(run_id=RUN_ID, node_id=node, state=RecordDict(), run_config=dict(run_config),
                              node_config={wire.NODE_SITE: site, wire.NODE_STATE_DIR: str(state_dir)})
                for site, node in nodes.items()}
    grid = InProcessGrid(client_app, contexts, tamper={nodes[s]: f for s, f in (tamper or {}).items()})
    server = Context(run_id=RUN_ID, node_id=0, node_config={}, state=RecordDict(), run_config=dict(run_config))
    return main(grid, server, **main_kwargs)


__all__ = ["Federation", "run_local_federation", "set_task_identity", "site_nodes"]
