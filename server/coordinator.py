"""What the coordinator runs for a real federation: TLS material, the SuperLink, site registration.

Everything here builds commands for Flower's own binaries (`flower-superlink`, `flwr`); Flower's
Deployment Engine is the server. See docs/deployment.md for the runbook.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from fl_medlego.files import write_text_atomic
from fl_medlego.security import make_tls

BIN = Path(sys.executable).parent


def create_tls(directory: str | Path, hosts: list[str]) -> dict[str, Path]:
    """CA + SuperLink certificate whose SANs are the addresses sites dial (e.g. a DNS name and an IP)."""
    return make_tls(directory, hosts)


def superlink_command(tls_dir: str | Path, database: str | Path, host: str = "0.0.0.0", port: int = 8000,
                      log_file: str | Path | None = None) -> list[str]:
    """`flower-superlink` with TLS, SuperNode authentication and a persistent database.

    Runtime dependency installation is off: the SuperLink runs in the environment where fl-medlego
    is installed, and the apps need nothing else.
    """
    tls_dir = Path(tls_dir).resolve()
    command = [str(BIN / "flower-superlink"), "--host", host, "--port", str(port),
               "--ssl-ca-certfile", str(tls_dir / "ca.crt"), "--ssl-certfile", str(tls_dir / "server.pem"),
               "--ssl-keyfile", str(tls_dir / "server.key"), "--enable-supernode-auth",
               "--database", str(Path(database).resolve()), "--disable-runtime-dependency-installation"]
    if log_file:
        command += ["--log-file", str(Path(log_file).resolve())]
    return command


def write_connection(flwr_home: str | Path, name: str, address: str, ca_cert: str | Path) -> Path:
    """A SuperLink connection in FLWR_HOME/config.toml, made the default, for `flwr run/supernode/list`."""
    flwr_home = Path(flwr_home)
    flwr_home.mkdir(parents=True, exist_ok=True)
    path = flwr_home / "config.toml"
    write_text_atomic(path, f'[superlink]\ndefault = "{name}"\n\n[superlink.{name}]\naddress = "{address}"\n'
                    f'root-certificates = "{Path(ca_cert).resolve()}"\n')
    return path


def _flwr(flwr_home: str | Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    import os

    env = {**os.environ, "FLWR_HOME": str(Path(flwr_home).resolve())}
    return subprocess.run([str(BIN / "flwr"), *args], env=env, capture_output=True, text=True, timeout=timeout)


def _flwr_json(flwr_home: str | Path, what: str, *args: str) -> dict:
    """A `flwr ... --format json` answer; a failure raises with Flower's own message."""
    proc = _flwr(flwr_home, *args, "--format", "json")
    try:
        answer = json.loads(proc.stdout)
    except json.JSONDecodeError:
        answer = {}
    if proc.returncode != 0 or not answer.get("success", False):
        raise RuntimeError(f"{what} failed: {answer.get('error-message', proc.stdout[-1000:] + proc.stderr[-1000:])}")
    return answer


def register_site(flwr_home: str | Path, connection: str, public_key: str | Path) -> int:
    """Register a site's public key with the SuperLink; returns the node id it will have."""
    answer = _flwr_json(flwr_home, f"registering {public_key}", "supernode", "register", str(public_key), connection)
    return int(answer["node-id"])


def registered_nodes(flwr_home: str | Path, connection: str) -> list[dict]:
    return _flwr_json(flwr_home, "listing SuperNodes", "supernode", "list", connection)["nodes"]
