"""A Ray cluster of several nodes on this machine (loopback), for tests and for a dry run of what
docs/ray-cluster.md tells an operator to do on several machines: `ray start --head` once, `ray start
--address=HEAD:PORT` per further node, and the SuperLink started with RAY_ADDRESS (and the cluster's token).

Why it is built this way:
- Every node gets ports of its own: a second node with Ray's fixed defaults (52365, 8265, ...) would collide
  with the first, or with another cluster on the machine.
- The cluster gets its own short temp dir (Ray's socket paths must stay under 107 characters), so that its
  `ray_current_cluster` file never reaches a plain `ray.init()` of another simulation on the machine.
- Ray listens on every interface whatever address it is given, so the cluster requires a token
  (RAY_AUTH_MODE=token): a process that does not hold it cannot join or submit work.
- `ray stop` is never used (it stops every Ray on the machine): each node's `ray start` runs in a session of
  its own, every process of the node stays in it, and `stop` / `stop_node` find them there and stop them by pid.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["RayCluster", "alive_nodes", "local_ray_cluster", "node_pids", "start_cluster", "stop", "stop_node"]

log = logging.getLogger(__name__)

BIN = Path(sys.executable).parent  # ray of the running environment: its workers run this interpreter
HOST = "127.0.0.1"
START_S = 120.0  # one `ray start` on a busy two-core machine (GCS, raylet, agents) takes 5-20 s


@dataclass
class RayCluster:
    """A local cluster: its address (what RAY_ADDRESS says), temp dir, token, and its nodes' logs and Ray ids."""

    address: str
    temp_dir: Path
    token: str = field(repr=False)
    log_dir: Path | None = None  # where each node's `ray start` output goes (None: the temp dir, removed with it)
    logs: list[Path] = field(default_factory=list)  # one per node, the head first
    manager_ports: list[int] = field(default_factory=list)  # each node's raylet port: how Ray's node list names it
    sessions: list[int] = field(default_factory=list)  # each node's session (its `ray start` pid): its processes
    node_ids: list[str] = field(default_factory=list)  # Ray's ids of the nodes, in the order they started

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """`base` (default: this process's environment) with what a process needs to join the cluster: give
        it to the SuperLink that runs the simulation, or to any driver."""
        return {**(os.environ if base is None else base), "RAY_ADDRESS": self.address, "RAY_AUTH_MODE": "token",
                "RAY_AUTH_TOKEN": self.token}


# The ports each node gets flags for (Ray's defaults are fixed numbers, the same for every node), the head's own.
NODE_PORTS = ("node-manager-port", "object-manager-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
              "runtime-env-agent-port", "metrics-export-port")
HEAD_PORTS = ("port", "ray-client-server-port", "dashboard-port")


def _free_ports(count: int) -> Iterator[int]:
    """`count` distinct free ports on loopback, all held open while chosen (one at a time, the OS may give the
    same port twice, and Ray refuses a port given to two of its components)."""
    with ExitStack() as stack:
        held = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in held:
            sock.bind((HOST, 0))
        return iter([sock.getsockname()[1] for sock in held])


def _ray_start(cluster: RayCluster, ports: dict[str, int], extra: list[str], num_cpus: int, num_gpus: int) -> None:
    """One `ray start` (it returns once its node is up; the node's processes live on as daemons)."""
    index = len(cluster.logs)
    log_file = (cluster.log_dir or cluster.temp_dir) / f"ray-start-{index}.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    cluster.logs.append(log_file)
    cluster.manager_ports.append(ports["node-manager-port"])
    command = [str(BIN / "ray"), "start", f"--temp-dir={cluster.temp_dir}", f"--node-ip-address={HOST}",
               f"--num-cpus={num_cpus}", f"--num-gpus={num_gpus}", "--disable-usage-stats",
               *(f"--{name}={port}" for name, port in ports.items()), *extra]
    env = {**cluster.env(), "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS")  # `ray start` takes --address; a head must not look for another cluster
    with open(log_file, "wb") as out:
        # A session of its own: every process of the node stays in it, which is how `stop` finds them.
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                   start_new_session=True)
    cluster.sessions.append(process.pid)
    try:
        returncode = process.wait(timeout=START_S)
    except subprocess.TimeoutExpired:
        returncode = None
    if returncode != 0:
        tail = log_file.read_text(errors="replace")[-1500:]
        raise RuntimeError(f"`ray start` of node {index} failed (exit code {returncode}): {tail}")


def start_cluster(nodes: int = 2, num_cpus: int = 1, num_gpus: int = 0, log_dir: Path | None = None) -> RayCluster:
    """A head and nodes-1 worker nodes on loopback, `num_cpus` CPUs each, listed once all are up. On any failure,
    whatever was started is stopped before the error goes on."""
    # Under /tmp, not the system's temp dir (long on macOS): Ray's socket paths have a limit.
    temp_dir = Path(tempfile.mkdtemp(prefix="flray-", dir="/tmp"))
    free = _free_ports(len(HEAD_PORTS) + nodes * len(NODE_PORTS))
    head = {name: next(free) for name in HEAD_PORTS}
    cluster = RayCluster(f"{HOST}:{head['port']}", temp_dir, token=secrets.token_hex(32), log_dir=log_dir)
    try:
        for index in range(nodes):
            ports = {name: next(free) for name in NODE_PORTS}
            if index == 0:
                _ray_start(cluster, {**head, **ports}, ["--head", "--include-dashboard=false",
                                                        f"--dashboard-host={HOST}"], num_cpus, num_gpus)
            else:
                _ray_start(cluster, ports, [f"--address={cluster.address}"], num_cpus, num_gpus)
        listed = alive_nodes(cluster)
        cluster.node_ids = [listed.get(port, "") for port in cluster.manager_ports]
        if set(listed) != set(cluster.manager_ports):
            raise RuntimeError(f"the Ray cluster at {cluster.address} lists live nodes at raylet ports "
                               f"{sorted(listed)}, not the {nodes} started ({cluster.manager_ports})")
    except BaseException:
        stop(cluster)
        raise
    return cluster


_LIST_NODES = """
import json, ray
ray.init(logging_level="ERROR", log_to_driver=False)
print(json.dumps({n["NodeManagerPort"]: n["NodeID"] for n in ray.nodes() if n["Alive"]}))
"""


def alive_nodes(cluster: RayCluster, timeout_s: float = 60.0) -> dict[int, str]:
    """Raylet port -> Ray's id of each live node of the cluster, asked by a short driver process of its own
    (never this one: it stays out of Ray)."""
    done = subprocess.run([sys.executable, "-c", _LIST_NODES], capture_output=True, text=True, timeout=timeout_s,
                          env={**cluster.env(), "RAY_USAGE_STATS_ENABLED": "0"})
    if done.returncode != 0:
        raise RuntimeError(f"could not list the Ray nodes at {cluster.address}: {done.stderr[-800:]}")
    return {int(port): node for port, node in json.loads(done.stdout.strip().splitlines()[-1]).items()}


def _sessions() -> Iterator[tuple[int, int]]:
    """(pid, session id) of every live process (zombies are not live)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            state, _ppid, _group, session = (proc / "stat").read_text().rsplit(")", 1)[1].split()[:4]
        except (OSError, ValueError):
            continue
        if state != "Z":
            yield int(proc.name), int(session)


def _members(cluster: RayCluster) -> dict[int, int]:
    """pid -> node index of every live process of the cluster: those in the session of a node's `ray start`.
    Ray's daemons, agents and workers stay in it after `ray start` has exited (and after their parent died);
    their command lines and environments cannot tell (Ray rewrites its workers' process titles over them)."""
    index = {session: i for i, session in enumerate(cluster.sessions)}
    return {pid: index[session] for pid, session in _sessions() if session in index}


def node_pids(cluster: RayCluster, index: int | None = None) -> list[int]:
    """Live processes of one node of the cluster (index: 0 the head, in start order), or of all its nodes."""
    return sorted(pid for pid, node in _members(cluster).items() if index is None or node == index)


def _stop_pids(find: Callable[[], list[int]], grace_s: float) -> list[int]:
    """SIGTERM to what `find()` lists, then SIGKILL to whatever is left (or started since); the pids still alive."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, grace_s)):
        for pid in find():
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + wait_s
        while find() and time.monotonic() < deadline:
            time.sleep(0.2)
    return find()


def stop_node(cluster: RayCluster, index: int, grace_s: float = 10.0) -> list[int]:
    """Stop one node's processes by pid (what a machine leaving the cluster looks like); the pids left (none)."""
    return _stop_pids(lambda: node_pids(cluster, index), grace_s)


def stop(cluster: RayCluster, grace_s: float = 10.0) -> list[int]:
    """Stop every process of the cluster by pid (worker nodes first, the head last); the pids left alive (none,
    normally). The temp dir (logs, sockets) goes too once nothing is left."""
    for index in reversed(range(1, len(cluster.logs))):
        stop_node(cluster, index, grace_s)
    left = _stop_pids(lambda: node_pids(cluster), grace_s)
    if left:
        log.warning("Ray processes of the cluster at %s still alive after stopping: %s", cluster.address, left)
    else:
        shutil.rmtree(cluster.temp_dir, ignore_errors=True)
    return left


@contextmanager
def local_ray_cluster(nodes: int = 2, num_cpus: int = 1, num_gpus: int = 0,
                      log_dir: Path | None = None) -> Iterator[RayCluster]:
    """`start_cluster`, and every process it started stopped by pid on leaving, pass or fail."""
    cluster = start_cluster(nodes, num_cpus, num_gpus, log_dir)
    try:
        yield cluster
    finally:
        stop(cluster)
