"""`fl-medlego` commands for real deployments: coordinator, site, and a loopback dry-run federation."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from rich.console import Console

from fl_medlego.errors import UserError

from ._boundary import as_user_error

console = Console(soft_wrap=True)


def cmd_coordinator_tls(args) -> int:
    if args.ca:  # rotating the SuperLink's certificate: the sites keep their ca.crt
        from fl_medlego.security import issue_server_certificate

        paths = issue_server_certificate(args.ca, args.dir, args.host)
        console.print(f"wrote {', '.join(str(p) for p in paths.values())}, signed by the CA in {args.ca}; restart "
                      f"the SuperLink with --tls-dir {args.dir} (the sites' ca.crt stays valid)")
        return 0
    from fl_medlego.server.coordinator import create_tls

    with as_user_error():
        paths = create_tls(args.dir, args.host)
    console.print(f"wrote {', '.join(str(p) for p in paths.values())}; give ca.crt (only) to every site")
    return 0


def cmd_coordinator_start(args) -> int:
    from fl_medlego.server.coordinator import superlink_command

    command = superlink_command(args.tls_dir, args.database, args.host, args.port, args.log_file)
    console.print("starting: " + " ".join(command))
    os.execv(command[0], command)  # become the SuperLink: signals and exit codes are Flower's own


def cmd_coordinator_register(args) -> int:
    from fl_medlego.server.coordinator import register_site

    with as_user_error():
        try:
            node = register_site(args.flwr_home, args.connection, args.public_key)
        except RuntimeError as err:  # Flower's own refusal of this request (an unknown connection, a key twice)
            raise UserError(str(err)) from err
    console.print(f"registered {args.public_key} as node {node}")
    return 0


def cmd_site_keys(args) -> int:
    from fl_medlego.clients.site_node import create_site_keys

    with as_user_error():  # never overwrites a private key: an existing one is the user's to move
        private, public = create_site_keys(args.dir, args.site)
    console.print(f"wrote {private} (keep it at the site) and {public} (send it to the coordinator)")
    return 0


def cmd_site_start(args) -> int:
    from fl_medlego.clients.site_node import SiteNodeConfig, check_site, supernode_command

    with as_user_error(ValueError):  # the site's own file: missing, unknown keys, no data, no certificate or key
        config = SiteNodeConfig.from_file(args.config)
        source = check_site(config, dry_run=args.dry_run)  # refuses without readable data, certificate, key
    console.print(f"site {config.site}: data {source}")
    command = supernode_command(config)
    if args.dry_run:
        console.print(" ".join(command))
        return 0
    os.execv(command[0], command)


def cmd_federation_up(args) -> int:
    from fl_medlego.data import parse_sites
    from fl_medlego.scenario import load_scenario_config

    from .loopback import up

    with as_user_error(ValueError):  # reading the scenario only
        scenario = load_scenario_config(args.scenario)
    sites = args.sites.split(",") if args.sites else [s.name for s in parse_sites(scenario["sites"])]
    datasets = dict(item.split("=", 1) for item in args.dataset)
    if set(datasets) - set(sites):
        raise UserError(f"--dataset names sites {sorted(set(datasets) - set(sites))} that are not among {sites}: "
                        "add them to --sites")
    with as_user_error():  # a site whose data, or a workdir that is taken
        state = up(args.workdir, sites, args.data_root, datasets)
    console.print(json.dumps(state, indent=2))
    console.print(f"\nrun the scenario against it:\n  FLWR_HOME={state['flwr_home']} flwr run {args.scenario} "
                  f"--stream --run-config \"sites='{','.join(sites)}'\"\nstop it:\n  fl-medlego federation down "
                  f"--workdir {args.workdir}")
    return 0


def _site_dataset(text: str) -> str:
    if "=" not in text or not all(part.strip() for part in text.split("=", 1)):
        raise argparse.ArgumentTypeError(f"{text!r}: write SITE=NAME, e.g. smears=smears")
    return text


def cmd_federation_down(args) -> int:
    from .loopback import STATE_FILE, down

    stopped = down(args.workdir)
    console.print(f"stopped {len(stopped)} processes: {stopped}" if stopped else "no federation was running there")
    left = Path(args.workdir) / STATE_FILE
    if left.is_file():  # down keeps only what it could not stop
        raise UserError(f"some processes could not be stopped: they are listed in {left}; stop them by pid")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    coordinator = sub.add_parser("coordinator", help="what the coordinator runs").add_subparsers(dest="action",
                                                                                                 required=True)
    tls = coordinator.add_parser("tls", help="create the CA and the SuperLink certificate")
    tls.add_argument("--dir", required=True, help="folder for the CA and the SuperLink's certificate and key")
    tls.add_argument("--host", action="append", required=True, help="a name or IP sites dial (repeatable)")
    tls.add_argument("--ca", help="issue only a new SuperLink certificate, from the CA in this folder (its ca.crt "
                                  "and ca.key), to rotate the certificate without a new ca.crt at the sites "
                                  "(default: none, a new CA)")
    tls.set_defaults(func=cmd_coordinator_tls)
    start = coordinator.add_parser("start", help="start flower-superlink with TLS, site auth and a database")
    start.add_argument("--tls-dir", required=True, help="the folder `coordinator tls` wrote")
    start.add_argument("--database", required=True, help="the SuperLink's persistent state (a SQLite file)")
    start.add_argument("--host", default="0.0.0.0", help="address the SuperLink listens on")
    start.add_argument("--port", type=int, default=8000, help="port sites dial")
    start.add_argument("--log-file", help="also write Flower's log there (default: the terminal only)")
    start.set_defaults(func=cmd_coordinator_start)
    register = coordinator.add_parser("register", help="register a site's public key")
    register.add_argument("public_key", help="the .pub file a site sent (`site keys`)")
    register.add_argument("--connection", required=True, help="SuperLink connection name in FLWR_HOME/config.toml")
    register.add_argument("--flwr-home", default=os.environ.get("FLWR_HOME", str(Path.home() / ".flwr")),
                          help="Flower's home folder ($FLWR_HOME when set)")
    register.set_defaults(func=cmd_coordinator_register)

    site = sub.add_parser("site", help="what a hospital site runs").add_subparsers(dest="action", required=True)
    keys = site.add_parser("keys", help="create the site's EC P-384 key pair")
    keys.add_argument("--site", required=True, help="the site's name, e.g. blood")
    keys.add_argument("--dir", default=".", help="folder for the key pair")
    keys.set_defaults(func=cmd_site_keys)
    site_start = site.add_parser("start", help="check the site's data, then start its SuperNode")
    site_start.add_argument("config", help="the site's TOML configuration")
    site_start.add_argument("--dry-run", action="store_true", help="check and print the command only")
    site_start.set_defaults(func=cmd_site_start)
    from . import site_data

    site_data.add_commands(site, sub)

    federation = sub.add_parser("federation", help="a loopback federation for a dry run").add_subparsers(
        dest="action", required=True)
    fed_up = federation.add_parser("up", help="SuperLink + one authenticated SuperNode per site, with TLS")
    fed_up.add_argument("scenario", help="a scenario folder, e.g. scenarios/cross_domain")
    fed_up.add_argument("--workdir", required=True, help="folder for keys, certificates, logs and pids")
    fed_up.add_argument("--sites", help="comma-separated (default: the scenario's sites)")
    fed_up.add_argument("--data-root", default="bundled", help="every site's data.root ('bundled': the sample)")
    fed_up.add_argument("--dataset", action="append", default=[], type=_site_dataset,
                        help="SITE=NAME: that site's node trains on NAME, registered here with `fl-medlego site data "
                             "add` (repeatable)")
    fed_up.set_defaults(func=cmd_federation_up)
    fed_down = federation.add_parser("down", help="stop every process `up` started, by pid")
    fed_down.add_argument("--workdir", required=True, help="the folder `federation up` used")
    fed_down.set_defaults(func=cmd_federation_down)
