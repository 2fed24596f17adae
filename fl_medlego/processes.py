"""Processes this interpreter starts (Flower's own binaries) and how to stop them and all they started.

Used by the loopback federation and by tests and benchmarks that start SuperLinks: every process is
kept by pid and stopped by pid, with its process group and all its descendants.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

# Popen objects of the processes this interpreter started: kept so that their exit codes can be read
# (a dropped Popen is reaped by the next Popen, and its exit code is lost).
_STARTED: dict[int, subprocess.Popen] = {}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_process(command: list[str], log_file: Path) -> int:
    """Start a Flower process in its own session (so its children can be stopped with it), logging to a file."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log:
        # Flower's processes start helpers (flower-superexec, ...) by name: they must come from this environment.
        # Telemetry off unless the user set it: on SIGTERM Flower waits up to 4 s for its telemetry call and
        # force-exits at 5 s, which leaves a SuperNode about 1 s to deactivate itself at the SuperLink.
        env = {"FLWR_TELEMETRY_ENABLED": "0", **os.environ, "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
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


def is_alive(pid: int) -> bool:
    if pid in _STARTED:
        return _STARTED[pid].poll() is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def stop_process(pid: int, grace_s: float = 10.0) -> bool:
    """Stop pid and everything it started; True when none of them is left.

    The process alone gets SIGTERM first and `grace_s` to end on its own: Flower's exit handler resets
    its signal handlers, so a second SIGTERM (to its group, say) arriving during a SuperNode's graceful
    exit kills it before it deactivates itself at the SuperLink, and that node cannot be activated
    again until its heartbeat expires. Then its process group and descendants get SIGTERM, and
    whatever is left SIGKILL."""
    targets = [pid, *descendants(pid)]  # now: once pid has ended, its children are no longer its
    _signal([pid], signal.SIGTERM, group=False)
    if _wait_gone([pid], grace_s) and _wait_gone(targets, 0.0):
        return True
    for sig in (signal.SIGTERM, signal.SIGKILL):
        _signal(targets, sig, group=True)
        if _wait_gone(targets, grace_s):
            return True
    return False


def _signal(pids: list[int], sig: int, group: bool) -> None:
    for target in pids:
        for kill in ((os.killpg, os.kill) if group else (os.kill,)):
            try:
                kill(target, sig)
            except (ProcessLookupError, PermissionError):
                pass


def _wait_gone(pids: list[int], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while any(is_alive(p) for p in pids):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)
    return True
