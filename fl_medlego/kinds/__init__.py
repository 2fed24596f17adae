"""Site kinds, registered by name: what a site trains and sends, and how the server combines it."""

from . import adapter, cross_modal, full  # noqa: F401  (importing a kind's module registers it)
from ._registry import (
    REFERENCE_KIND,
    SiteKind,
    SiteState,
    TrainResult,
    all_strategies,
    get_kind,
    kind_for_strategy,
    list_kinds,
    register_kind,
)

__all__ = [
    "REFERENCE_KIND", "SiteKind", "SiteState", "TrainResult", "all_strategies", "get_kind", "kind_for_strategy",
    "list_kinds", "register_kind",
]
