"""What a hospital site runs: its configuration, its key pair, and the command that starts its SuperNode.

A site configuration (TOML) names the site, where its data lives and how to reach the coordinator;
nothing in it leaves the site. Example:

    site = "blood"                      # as declared in the scenario's `sites`
    data-root = "/data/medmnist"        # the folder with bloodmnist.npz, and only it ("bundled": the
                                        # package's sample; "": $MEDMNIST_ROOT or ~/.medmnist, downloading)
    # dataset = "cxr"                   # instead of data-root: the site's own images, registered at this
                                        # node with `fl-medlego site data add cxr ...`
    superlink = "coordinator.example.org:8000"
    root-certificates = "ca.crt"        # the federation's CA certificate, from the coordinator
    private-key = "blood_key"           # made by `fl-medlego site keys`
    port = 9094                         # this SuperNode's local port (one per SuperNode on a host)
    state-dir = "state"                 # optional: where the site keeps its state between rounds
"""

from __future__ import annotations

import re
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

from fl_medlego import wire
from fl_medlego.data import canonical_flag, load_medmnist, locate_medmnist
from fl_medlego.errors import UserError
from fl_medlego.security import make_site_keys
from fl_medlego.site import data_root_for_node

BIN = Path(sys.executable).parent


@dataclass
class SiteNodeConfig:
    site: str
    data_root: str  # a MedMNIST data root; unused when `dataset` is set
    superlink: str
    root_certificates: str
    private_key: str
    port: int = 9094
    state_dir: str = ""  # where the site keeps its state between rounds ("" = ~/.cache/fl-medlego/site-state)
    dataset: str = ""  # the site's own registered dataset (`fl-medlego site data add`)

    @classmethod
    def from_file(cls, path: str | Path) -> SiteNodeConfig:
        path = Path(path)
        data = tomllib.loads(path.read_text())
        keys = {wire.NODE_SITE, wire.NODE_DATA_ROOT, wire.NODE_DATASET, "superlink", "root-certificates",
                "private-key", "port", wire.NODE_STATE_DIR}
        optional = {"port", wire.NODE_STATE_DIR, wire.NODE_DATA_ROOT, wire.NODE_DATASET}
        unknown, missing = sorted(set(data) - keys), sorted(keys - optional - set(data))
        if unknown or missing:
            raise ValueError(f"{path}: unknown keys {unknown}, missing keys {missing}; "
                             f"a site config has {sorted(keys)}")
        if (wire.NODE_DATA_ROOT in data) == (wire.NODE_DATASET in data):
            raise ValueError(f"{path}: give the site's data as either {wire.NODE_DATA_ROOT} (a MedMNIST folder) or "
                             f"{wire.NODE_DATASET} (a dataset registered with `fl-medlego site data add`), one of them")
        base = path.parent

        def local(value: str) -> str:  # paths in the file are relative to the file
            return str((base / value).resolve()) if value not in ("bundled", "") else value

        return cls(site=data[wire.NODE_SITE], data_root=local(data.get(wire.NODE_DATA_ROOT, "")),
                   superlink=data["superlink"], root_certificates=local(data["root-certificates"]),
                   private_key=local(data["private-key"]), port=int(data.get("port", 9094)),
                   state_dir=local(data.get(wire.NODE_STATE_DIR, "")), dataset=str(data.get(wire.NODE_DATASET, "")))

    def node_config(self) -> dict[str, str]:
        """What this SuperNode tells the apps about itself (its --node-config)."""
        data = {wire.NODE_DATASET: self.dataset} if self.dataset else {wire.NODE_DATA_ROOT: self.data_root}
        return {wire.NODE_SITE: self.site} | data | ({wire.NODE_STATE_DIR: self.state_dir} if self.state_dir else {})


def modality_of(site: str) -> str:
    """'pneumonia-2' -> 'pneumoniamnist': a site name is its modality, numbered when a modality has several."""
    return canonical_flag(re.sub(r"-\d+$", "", site))


def check_site(config: SiteNodeConfig, dry_run: bool = False) -> str:
    """Refuse to start a site whose data, certificate or key is missing or unreadable; returns the data source.

    The data is the node's `data-root` alone (a folder is never searched past, and never created). A dry run
    creates and downloads nothing: a set the download root ('') lacks is reported, not fetched.
    """
    for label, path in (("CA certificate (root-certificates)", config.root_certificates),
                        ("private key (private-key)", config.private_key)):
        if not Path(path).is_file():
            raise FileNotFoundError(f"site {config.site}: {label} {path} not found")
    if config.dataset:
        return check_dataset_of(config)
    try:
        flag = modality_of(config.site)
    except UserError as err:
        raise UserError(f"site {config.site} reads its data from data-root, which holds MedMNIST sets only ({err}); "
                        f"for the hospital's own images register them (`fl-medlego site data add {config.site} "
                        f"--source folder --path DIR`) and write dataset = \"{config.site}\" instead of "
                        "data-root in the site's TOML") from err
    # The same resolution as the ClientApp's: the node's data-root, which a site config always sets.
    root = data_root_for_node(config.node_config(), scenario_root="")
    try:
        where = locate_medmnist(flag, root)
        if dry_run and not where.present:
            return f"{flag} is not in {where.file.parent} yet: the site downloads it there when it starts"
        return load_medmnist(flag, root).source
    except UserError as err:
        raise UserError(f"site {config.site} cannot read its data: {err}") from err


def check_dataset_of(config: SiteNodeConfig) -> str:
    """The site's registered dataset exists and its files are those registered (the register's fingerprint)."""
    from fl_medlego.data.own.registry import load_record, verify
    from fl_medlego.data.own.site_data import origin_text

    try:
        record = load_record(config.dataset)
        verify(record)
    except UserError as err:
        raise UserError(f"site {config.site} cannot use its dataset: {err}") from err
    return f"dataset {record.name} ({origin_text(record)}) at {record.path}"


def create_site_keys(directory: str | Path, site: str) -> tuple[Path, Path]:
    """The site's EC P-384 key pair: keep the private key at the site, send the .pub to the coordinator."""
    return make_site_keys(directory, site)


def supernode_command(config: SiteNodeConfig) -> list[str]:
    """`flower-supernode` with the CA certificate, the site's key and its name and data root as node config."""
    return [str(BIN / "flower-supernode"), "--superlink", config.superlink,
            "--root-certificates", config.root_certificates,
            "--auth-supernode-private-key", config.private_key, "--port", str(config.port),
            "--node-config", " ".join(f"{key}='{value}'" for key, value in config.node_config().items())]
