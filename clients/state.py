"""A site's state between rounds (head and specialist), in a node-local folder; it never leaves the node.

    STATE_DIR/<run key>/<site>/specialist/           specialist.safetensors + specialist-head.safetensors (round 1's)
    STATE_DIR/<run key>/<site>/specialist/adapter/   the specialist as an adapter folder (`fl-medlego merge`, `edit`,
                                                     `evaluate` take it)
    STATE_DIR/<run key>/<site>/round-NNN/            head.safetensors after round N
    STATE_DIR/<run key>/<site>/round-NNN/adapter/    what the site trained in round N, as an adapter folder (where
                                                     the caller passes it)
    STATE_DIR/<run key>/<site>/privacy.json          DP-SGD runs: the site's budget and every round it spent on

The adapter folders are written by the kind's server half (`KindServer.save`: for adapter kinds the
format of fl_medlego.lora.save_adapter, naming the base model and its fingerprint), so they describe
themselves; a kind with another update (whole backbones) leaves its own file there instead.

A round trains from the newest head of an earlier round (a site that missed a round goes on from
the one before) and is evaluated with its own. Files, not the node's Flower context: a restarted
SuperNode or a resumed simulation finds them again, and the context no longer carries every hosted
site's tensors with each message. Each folder is written under a temporary name and renamed when
complete; the specialist is written once and kept, heads of older rounds are removed. The privacy
ledger only grows: a round trained again after a crash is counted again (it was trained twice).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

from fl_medlego import wire
from fl_medlego.files import read_tensors, write_tensor_folder
from fl_medlego.kinds import KindServer, SiteState

DEFAULT_ROOT = Path.home() / ".cache" / "fl-medlego" / "site-state"
STATE_DIR_ENV = "FL_MEDLEGO_STATE_DIR"  # the default for every node of this machine (a Ray worker's shared folder)
Update = object  # a kind's own update (an Adapter, a backbone state dict, ...)
KEEP_ROUNDS = 2  # heads of the newest rounds kept (the one a resumed round starts from, and the last)


def state_folder(node_config: dict, run_key: str) -> Path:
    """Where this node keeps its sites' state for one run: node config `state-dir`, else $FL_MEDLEGO_STATE_DIR
    (simulated nodes have no node config of their own: on a Ray cluster every worker sets it, at `ray start`, to
    one shared folder, since Ray may run a site's next message on another machine), else under ~/.cache."""
    root = Path(str(node_config.get(wire.NODE_STATE_DIR) or os.environ.get(STATE_DIR_ENV) or DEFAULT_ROOT))
    root = root.expanduser()
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", run_key)[:200] or "run"
    return root / safe


def _rounds(folder: Path, site: str) -> list[int]:
    found = (re.fullmatch(r"round-(\d+)", p.name) for p in (folder / site).glob("round-*"))
    return sorted(int(m.group(1)) for m in found if m)


def _adapter_writer(codec: KindServer, update: Update, base_fingerprint: str | None) -> Callable[[Path], object]:
    """Writes `update` into a folder as the kind saves it (adapter kinds: FOLDER/adapter/, self-describing)."""
    def write(folder: Path) -> None:
        codec.save(update, folder, base_fingerprint or codec.shared_base()[1])
    return write


def _add_specialist_adapter(specialist: Path, codec: KindServer, update: Update, base_fingerprint: str | None) -> None:
    """A specialist folder written before adapters were kept (only its safetensors files) gets its adapter folder:
    the folder is written anew, its files copied and the adapter added, and replaces the old one whole."""
    def copy_and_add(tmp: Path) -> None:
        for kept in specialist.iterdir():
            shutil.copy2(kept, tmp / kept.name)
        _adapter_writer(codec, update, base_fingerprint)(tmp)

    write_tensor_folder(specialist, {}, also=copy_and_add)


def specialist_adapter(folder: Path, site: str) -> Path:
    """Where a site's specialist is kept as an adapter folder (for an adapter kind's run)."""
    return folder / site / "specialist" / "adapter"


def latest_adapter(folder: Path, site: str) -> Path | None:
    """The adapter folder of the site's newest round that kept one (None before any)."""
    for server_round in reversed(_rounds(folder, site)):
        path = folder / site / f"round-{server_round:03d}" / "adapter"
        if path.is_dir():
            return path
    return None


def load_state(folder: Path, site: str, upto_round: int, codec: KindServer, template: dict) -> SiteState | None:
    """The site's state after its newest round <= `upto_round` (None before its first training); the specialist
    is kept as the kind's codec encodes it (`codec`: the kind's server half)."""
    rounds = [r for r in _rounds(folder, site) if r <= upto_round]
    specialist = folder / site / "specialist"
    if not rounds or not specialist.is_dir():
        return None
    head = read_tensors(folder / site / f"round-{rounds[-1]:03d}" / "head.safetensors")
    return SiteState(head=head,
                     specialist=codec.decode(read_tensors(specialist / "specialist.safetensors"), template),
                     specialist_head=read_tensors(specialist / "specialist-head.safetensors"))


def save_state(folder: Path, site: str, server_round: int, codec: KindServer, site_state: SiteState,
               update: Update | None = None, base_fingerprint: str | None = None) -> None:
    """Keep the head after `server_round` (and, the first time, the specialist, also as an adapter folder);
    drop older heads.

    update: what the site trained this round, kept beside the head as an adapter folder (None: the head alone);
    base_fingerprint: of the base it was trained on, written into the adapter folders (None: the kind's base is
    fingerprinted here, once per folder written).
    """
    specialist = folder / site / "specialist"
    if not specialist.is_dir():
        write_tensor_folder(specialist, {"specialist": codec.encode(site_state.specialist),
                            "specialist-head": site_state.specialist_head},
               also=_adapter_writer(codec, site_state.specialist, base_fingerprint))
    elif not any(p.name not in ("specialist.safetensors", "specialist-head.safetensors") for p in specialist.iterdir()):
        _add_specialist_adapter(specialist, codec, site_state.specialist, base_fingerprint)
    keep_update = _adapter_writer(codec, update, base_fingerprint) if update is not None else None
    write_tensor_folder(folder / site / f"round-{server_round:03d}", {"head": site_state.head}, also=keep_update)
    for old in _rounds(folder, site)[:-KEEP_ROUNDS]:
        shutil.rmtree(folder / site / f"round-{old:03d}", ignore_errors=True)
