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


def is_alive(pid: int) -> bool:
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
        while time.monotonic() < deadline and any(is_alive(t) for t in targets):
            time.sleep(0.2)
        if not any(is_alive(t) for t in targets):
            return
