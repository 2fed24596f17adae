"""A whole federation on one machine, for a hospital's dry run: one SuperLink (TLS, SuperNode
authentication, persistent database) and one authenticated SuperNode per site, all on loopback.

    fl-medlego federation up scenarios/cross_domain --workdir dryrun/
    FLWR_HOME=dryrun/flwr-home flwr run scenarios/cross_domain --stream
    fl-medlego federation down --workdir dryrun/

Every process's pid and log file is recorded in WORKDIR/federation.json as soon as it starts, so
`down` stops exactly what `up` started (by pid, process group first), even after a failed `up`.
This module sits above `clients/` and `server/` (it uses both), like the command line.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from .clients.site_node import SiteNodeConfig, check_site, create_site_keys, supernode_command
from .server.coordinator import create_tls, register_site, registered_nodes, superlink_command, write_connection

STATE_FILE = "federation.json"
CONNECTION = "loopback"
# Popen objects of the processes this interpreter started: kept so that their exit codes can be read
# (a dropped Popen is reaped by the next Popen, and its exit code is lost).
_STARTED: dict[int, subprocess.Popen] = {}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _save(workdir: Path, state: dict) -> None:
    (workdir / STATE_FILE).write_text(json.dumps(state, indent=2))


def start_process(command: list[str], log_file: Path) -> int:
    """Start a Flower process in its own session (so its children can be stopped with it), logging to a file."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log:
        # Flower's processes start helpers (flower-superexec, ...) by name: they must come from this environment.
        env = {**os.environ, "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
               "PATH": f"{Path(command[0]).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True, env=env)
    _STARTED[process.pid] = process
    return process.pid


def exit_code(pid: int, timeout_s: float) -> int | None:
    """Exit code of a process started here, waiting at most timeout_s; None while it still runs."""
    try:
        return _STARTED[pid].wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return None


def descendants(pid: int) -> list[int]:
    """Every live descendant of pid. Flower starts helpers in sessions of their own (so a process-group
    signal misses them), but they stay children of the process that started them."""
    children: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(proc.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    if pid in _STARTED:
        return _STARTED[pid].poll() is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def stop_process(pid: int, grace_s: float = 10.0) -> None:
    """SIGTERM pid, its process group and all its descendants; SIGKILL whatever is left after grace_s."""
    targets = [pid, *descendants(pid)]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for target in targets:
            for kill in (os.killpg, os.kill):
                try:
                    kill(target, sig)
                except (ProcessLookupError, PermissionError):
                    pass
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(_alive(t) for t in targets):
            time.sleep(0.2)
        if not any(_alive(t) for t in targets):
            return


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
        raise FileExistsError(f"{workdir} already holds a federation: run `fl-medlego federation down` first")
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
