"""A whole federation on one machine, for a hospital's dry run: one SuperLink (TLS, SuperNode
authentication, persistent database) and one authenticated SuperNode per site, all on loopback.

    fl-medlego federation up scenarios/cross_domain --workdir dryrun/
    FLWR_HOME=dryrun/flwr-home flwr run scenarios/cross_domain --stream
    fl-medlego federation down --workdir dryrun/

Every process's pid and log file is recorded in WORKDIR/federation.json as soon as it starts, so
`down` stops exactly what `up` started (by pid, process group first), even after a failed `up`.
It uses both `clients/` and `server/`, so it lives with the command line, above them and the library.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from fl_medlego.clients.site_node import SiteNodeConfig, check_site, create_site_keys, supernode_command
from fl_medlego.errors import UserError
from fl_medlego.processes import free_port, start_process, stop_process
from fl_medlego.server.coordinator import (
    create_tls,
    register_site,
    registered_nodes,
    superlink_command,
    write_connection,
)

__all__ = ["down", "start_site", "start_superlink", "up"]

STATE_FILE = "federation.json"
CONNECTION = "loopback"


def _save(workdir: Path, state: dict) -> None:
    (workdir / STATE_FILE).write_text(json.dumps(state, indent=2))


def wait_for_superlink(flwr_home: Path, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        try:
            registered_nodes(flwr_home, CONNECTION)
            return
        except RuntimeError as err:
            last = str(err)
        time.sleep(1.0)
    raise TimeoutError(f"the SuperLink did not answer within {timeout_s:.0f} s: {last[-500:]}")


def start_superlink(workdir: Path, state: dict) -> None:
    link = state["superlink"]
    command = superlink_command(workdir / "tls", workdir / "superlink.db", host="127.0.0.1", port=link["port"])
    link["pid"] = start_process(command, Path(link["log"]))
    _save(workdir, state)
    wait_for_superlink(Path(state["flwr_home"]))


def start_site(workdir: Path, state: dict, site: str, data_root: str, key: Path | None = None,
               register: bool = True, with_ca: bool = True) -> dict:
    """Keys (unless given), registration (unless register=False), the site config file, then its SuperNode."""
    flwr_home = Path(state["flwr_home"])
    if key is None:
        key = workdir / "keys" / f"{site}_key"
        if not key.exists():  # a key from an earlier `up` is registered in the persistent database already
            key, public = create_site_keys(workdir / "keys", site)
            if register:
                register_site(flwr_home, CONNECTION, public)
    config = SiteNodeConfig(site=site, data_root=data_root, superlink=f"127.0.0.1:{state['superlink']['port']}",
                            root_certificates=str(workdir / "tls" / "ca.crt"), private_key=str(key),
                            port=free_port())
    source = check_site(config)
    command = supernode_command(config)
    if not with_ca:  # only for testing that a node without the federation's CA cannot connect
        i = command.index("--root-certificates")
        del command[i:i + 2]
    entry = {"log": str(workdir / "logs" / f"{site}.log"), "data_source": source, "port": config.port}
    state["sites"][site] = entry
    entry["pid"] = start_process(command, Path(entry["log"]))
    _save(workdir, state)
    return entry


def up(workdir: str | Path, sites: list[str], data_root: str = "bundled") -> dict:
    """Bring up the SuperLink and one SuperNode per site; on any failure, stop what was started."""
    workdir = Path(workdir).resolve()
    if (workdir / STATE_FILE).exists():
        raise UserError(f"{workdir} already holds a federation: run `fl-medlego federation down` first")
    workdir.mkdir(parents=True, exist_ok=True)
    state = {"superlink": {"port": free_port(), "log": str(workdir / "logs" / "superlink.log")},
             "flwr_home": str(workdir / "flwr-home"), "connection": CONNECTION, "sites": {}}
    try:
        if not (workdir / "tls" / "ca.crt").exists():  # reuse the material of an earlier `up`
            create_tls(workdir / "tls", ["127.0.0.1", "localhost"])
        write_connection(workdir / "flwr-home", CONNECTION, f"127.0.0.1:{state['superlink']['port']}",
                         workdir / "tls" / "ca.crt")
        start_superlink(workdir, state)
        for site in sites:
            start_site(workdir, state, site, data_root)
    except BaseException:
        down(workdir)
        raise
    return state


def down(workdir: str | Path) -> list[int]:
    """Stop every process recorded for this federation (sites first); returns the pids that were stopped."""
    workdir = Path(workdir).resolve()
    path = workdir / STATE_FILE
    if not path.is_file():
        return []
    state = json.loads(path.read_text())
    entries = [*state["sites"].values(), state["superlink"]]
    stopped = []
    for entry in entries:
        if entry.get("pid"):
            stop_process(entry["pid"])
            stopped.append(entry["pid"])
    path.rename(workdir / "federation.stopped.json")
    return stopped
