"""A site's state in the node's Flower context (survives between rounds, never leaves the node).

Written once for every site kind: the kind's updates are stored in their wire encoding.
"""

from __future__ import annotations

from flwr.app import ArrayRecord, RecordDict

from fl_medlego.kinds import SiteKind, SiteState


def _keys(site: str) -> tuple[str, str, str]:
    return f"{site}.head", f"{site}.specialist", f"{site}.specialist-head"


def load_state(state: RecordDict, site: str, kind: SiteKind, template: dict) -> SiteState | None:
    head, specialist, specialist_head = _keys(site)
    if head not in state:
        return None
    return SiteState(head=state[head].to_torch_state_dict(),
                     specialist=kind.decode(state[specialist].to_torch_state_dict(), template),
                     specialist_head=state[specialist_head].to_torch_state_dict())


def save_state(state: RecordDict, site: str, kind: SiteKind, site_state: SiteState) -> None:
    head, specialist, specialist_head = _keys(site)
    state[head] = ArrayRecord(site_state.head)
    state[specialist] = ArrayRecord(kind.encode(site_state.specialist))
    state[specialist_head] = ArrayRecord(site_state.specialist_head)
