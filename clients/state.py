"""A site's state in the node's Flower context (survives between rounds, never leaves the node)."""

from __future__ import annotations

from flwr.app import ArrayRecord, RecordDict

from fl_medlego.full_finetune import FullSiteState
from fl_medlego.lora import Adapter
from fl_medlego.site import SiteState


def load_state(state: RecordDict, site: str) -> SiteState | None:
    if f"{site}.head" not in state:
        return None
    return SiteState(
        head=state[f"{site}.head"].to_torch_state_dict(),
        specialist=Adapter.from_tensors(state[f"{site}.specialist"].to_torch_state_dict()),
        specialist_head=state[f"{site}.specialist-head"].to_torch_state_dict(),
    )


def save_state(state: RecordDict, site: str, site_state: SiteState) -> None:
    state[f"{site}.head"] = ArrayRecord(site_state.head)
    # Scale folded into E: the same update, stored without extra metadata.
    state[f"{site}.specialist"] = ArrayRecord(Adapter(site_state.specialist.folded()).to_tensors())
    state[f"{site}.specialist-head"] = ArrayRecord(site_state.specialist_head)


def load_full_state(state: RecordDict, site: str) -> FullSiteState | None:
    if f"{site}.head" not in state:
        return None
    return FullSiteState(head=state[f"{site}.head"].to_torch_state_dict(),
                         specialist_backbone=state[f"{site}.specialist-backbone"].to_torch_state_dict(),
                         specialist_head=state[f"{site}.specialist-head"].to_torch_state_dict())


def save_full_state(state: RecordDict, site: str, site_state: FullSiteState) -> None:
    state[f"{site}.head"] = ArrayRecord(site_state.head)
    state[f"{site}.specialist-backbone"] = ArrayRecord(site_state.specialist_backbone)
    state[f"{site}.specialist-head"] = ArrayRecord(site_state.specialist_head)
