"""A site's state between rounds (head and specialist), in a node-local folder; it never leaves the node.

    STATE_DIR/<run key>/<site>/round-NNN/   head.safetensors, specialist.safetensors, specialist-head.safetensors

The state after round N is what round N+1 trains from and what round N is evaluated with. Files, not
the node's Flower context: a restarted SuperNode or a resumed simulation finds it again, and the
context no longer carries every hosted site's tensors with each message. Each round's folder is
written under a temporary name and renamed when complete; older rounds are removed.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from safetensors.torch import save_file

from fl_medlego import wire
from fl_medlego.files import read_tensors, replace_dir
from fl_medlego.kinds import SiteKind, SiteState

DEFAULT_ROOT = Path.home() / ".cache" / "fl-medlego" / "site-state"
_PARTS = ("head", "specialist", "specialist-head")


def state_folder(node_config: dict, run_key: str) -> Path:
    """Where this node keeps its sites' state for one run (node config `state-dir`, else under ~/.cache)."""
    root = Path(str(node_config.get(wire.NODE_STATE_DIR) or DEFAULT_ROOT)).expanduser()
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", run_key)[:200] or "run"
    return root / safe


def _round_dir(folder: Path, site: str, server_round: int) -> Path:
    return folder / site / f"round-{server_round:03d}"


def load_state(folder: Path, site: str, server_round: int, kind: SiteKind, template: dict) -> SiteState | None:
    """The site's state after round `server_round` (None before its first training)."""
    path = _round_dir(folder, site, server_round)
    if server_round < 1 or not path.is_dir():
        return None
    head, specialist, specialist_head = (read_tensors(path / f"{part}.safetensors") for part in _PARTS)
    return SiteState(head=head, specialist=kind.decode(specialist, template), specialist_head=specialist_head)


def save_state(folder: Path, site: str, server_round: int, kind: SiteKind, site_state: SiteState) -> None:
    """Keep the state after `server_round`; earlier rounds but the one before it are removed."""
    final = _round_dir(folder, site, server_round)
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tensors = (site_state.head, kind.encode(site_state.specialist), site_state.specialist_head)
    for part, values in zip(_PARTS, tensors):
        save_file({k: v.contiguous() for k, v in values.items()}, str(tmp / f"{part}.safetensors"))
    replace_dir(tmp, final)
    for old in final.parent.glob("round-*"):
        number = re.fullmatch(r"round-(\d+)", old.name)
        if number and int(number.group(1)) < server_round - 1:
            shutil.rmtree(old, ignore_errors=True)
