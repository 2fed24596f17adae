"""A whole federation on one machine, for a hospital's dry run: one SuperLink (TLS, SuperNode
authentication, persistent database) and one authenticated SuperNode per site, all on loopback.

    fl-medlego federation up scenarios/cross_domain --workdir dryrun/
    FLWR_HOME=dryrun/flwr-home flwr run scenarios/cross_domain --stream
    fl-medlego federation down --workdir dryrun/

Every process's pid and log file is recorded in WORKDIR/federation.json as soon as it starts, so
`down` stops exactly what `up` started (by pid, each SuperNode given time to deactivate itself at the
SuperLink), even after a failed `up`. `up` returns only once every site's SuperNode is active at the
SuperLink, and fails naming the site otherwise. After `down`, federation.json lists only what could
not be stopped (nothing, normally: it becomes federation.stopped.json).
It uses both `clients/` and `server/`, so it lives with the command line, above them and the library.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from fl_medlego.clients.site_node import SiteNodeConfig, check_site, create_site_keys, supernode_command
from fl_medlego.errors import UserError
from fl_medlego.files import write_text_atomic
from fl_medlego.processes import exit_code, free_port, is_alive, start_process, stop_process
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
# Flower marks a node online for 2 heartbeats (2 x 30 s) after its last sign of life: a node whose
# SuperNode died without deactivating itself cannot be activated again before that has passed.
STALE_ONLINE_S = 75.0
NODE_ACTIVE_S = 90.0  # a SuperNode's start (imports, TLS, activation) on a busy machine
_NODE_ID = re.compile(rb"SuperNode ID: (\d+)")


def _save(workdir: Path, state: dict) -> None:
    write_text_atomic(workdir / STATE_FILE, json.dumps(state, indent=2))


def _online_nodes(flwr_home: Path) -> set[str]:
    return {n["node-id"] for n in registered_nodes(flwr_home, CONNECTION) if n["status"] == "online"}


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
               register: bool = True, with_ca: bool = True, dataset: str = "") -> dict:
    """Keys (unless given), registration (unless register=False), the site config file, then its SuperNode.
    dataset: the site's own images, registered at this machine (`fl-medlego site data add`), instead of data_root."""
    flwr_home = Path(state["flwr_home"])
    if key is None:
        key = workdir / "keys" / f"{site}_key"
        if not key.exists():  # a key from an earlier `up` is registered in the persistent database already
            key, public = create_site_keys(workdir / "keys", site)
            if register:
                register_site(flwr_home, CONNECTION, public)
    config = SiteNodeConfig(site=site, data_root=data_root, superlink=f"127.0.0.1:{state['superlink']['port']}",
                            root_certificates=str(workdir / "tls" / "ca.crt"), private_key=str(key),
                            port=free_port(), state_dir=str(workdir / "site-state"),  # removed with the workdir
                            dataset=dataset)
    source = check_site(config)
    command = supernode_command(config)
    if not with_ca:  # only for testing that a node without the federation's CA cannot connect
        i = command.index("--root-certificates")
        del command[i:i + 2]
    log = workdir / "logs" / f"{site}.log"
    entry = {"log": str(log), "log_offset": log.stat().st_size if log.exists() else 0, "data_source": source,
             "port": config.port}
    state["sites"][site] = entry
    entry["pid"] = start_process(command, log)
    _save(workdir, state)
    return entry


def up(workdir: str | Path, sites: list[str], data_root: str = "bundled", datasets: dict[str, str] | None = None
       ) -> dict:
    """Bring up the SuperLink and one SuperNode per site; on any failure, stop what was started.
    datasets: site -> the registered dataset its node names (the other sites read data_root)."""
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
        wait_for_stale_nodes(Path(state["flwr_home"]))
        for site in sites:
            start_site(workdir, state, site, data_root, dataset=(datasets or {}).get(site, ""))
        wait_for_active_nodes(workdir, state, sites)
    except BaseException:
        down(workdir)
        raise
    return state


def wait_for_stale_nodes(flwr_home: Path, timeout_s: float = STALE_ONLINE_S) -> None:
    """No SuperNode of ours runs yet: a node the SuperLink still holds online is one an earlier federation
    left behind (its SuperNode killed before it deactivated itself). Wait until Flower marks it offline."""
    deadline = time.monotonic() + timeout_s
    while (stale := _online_nodes(flwr_home)) and time.monotonic() < deadline:
        time.sleep(2.0)
    if stale:
        raise UserError(f"the SuperLink still holds nodes {sorted(stale)} online after {timeout_s:.0f} s: "
                        "run `fl-medlego federation down` and `up` again")


def wait_for_active_nodes(workdir: Path, state: dict, sites: list[str], timeout_s: float = NODE_ACTIVE_S) -> None:
    """Return once every site's SuperNode runs and its node is online at the SuperLink (its id in
    entry["node_id"]); raise, naming the site, its log and Flower's reason, when one ends or is not
    active within timeout_s."""
    deadline = time.monotonic() + timeout_s
    waiting = list(sites)
    while waiting:
        online = _online_nodes(Path(state["flwr_home"]))
        for site in list(waiting):
            entry = state["sites"][site]
            node = _logged_node_id(entry)
            if node is not None and node in online and is_alive(entry["pid"]):
                entry["node_id"] = node
                waiting.remove(site)
            elif exit_code(entry["pid"], 0) is not None:
                raise UserError(f"the SuperNode of site {site} ended before it was active ({_flower_reason(entry)}; "
                                f"log: {entry['log']}): fix what it says and run `fl-medlego federation up` again")
        if waiting and time.monotonic() >= deadline:
            raise UserError(f"the SuperNodes of sites {waiting} were not active within {timeout_s:.0f} s (logs in "
                            f"{workdir / 'logs'}): check them and run `fl-medlego federation up` again")
        if waiting:
            time.sleep(1.0)
    _save(workdir, state)


def _new_log(entry: dict) -> bytes:
    """What the site's SuperNode wrote to its log since this `up` started it (an earlier `up` wrote before)."""
    with open(entry["log"], "rb") as f:
        f.seek(entry.get("log_offset", 0))
        return f.read()


def _logged_node_id(entry: dict) -> str | None:
    found = _NODE_ID.search(_new_log(entry))
    return found.group(1).decode() if found else None


def _flower_reason(entry: dict) -> str:
    """Flower's own words for why a SuperNode stopped: its `Exit Code` line and the message after it."""
    lines = _new_log(entry).decode(errors="replace").splitlines()
    start = next((i for i, line in enumerate(lines) if "Exit Code:" in line), None)
    if start is None:
        return "no reason in its log"
    return " ".join(line.split(":", 1)[-1].strip() for line in lines[start:start + 3] if line.strip())


def down(workdir: str | Path) -> list[int]:
    """Stop every process recorded for this federation (sites first, each SuperNode given time to deactivate
    itself at the SuperLink, which still runs); returns the pids that were stopped. federation.json then
    keeps only what could not be stopped."""
    workdir = Path(workdir).resolve()
    path = workdir / STATE_FILE
    if not path.is_file():
        return []
    state = json.loads(path.read_text())
    stopped = []
    for entry in [*state["sites"].values(), state["superlink"]]:
        if entry.get("pid") and stop_process(entry["pid"]):
            stopped.append(entry.pop("pid"))
    if any(entry.get("pid") for entry in [*state["sites"].values(), state["superlink"]]):
        _save(workdir, state)  # a process that outlived SIGKILL (another user's, say): still listed
    else:
        path.replace(workdir / "federation.stopped.json")
    return stopped
