"""Site kinds, registered by name: what a site trains and sends, and how the server combines it.

A kind is one module here: its declaration (`SiteKind`), its site half (`KindSite`) and its server half
(`KindServer`), both built from a `KindContext`."""

from . import adapter, cross_modal, full  # noqa: F401  (importing a kind's module registers it)
from ._context import KindContext
from ._registry import (
    ReportColumns,
    SiteKind,
    all_strategies,
    ceiling_kind,
    get_kind,
    kind_for_strategy,
    list_kinds,
    register_kind,
    unregister_kind,
)
from ._server import KindServer, MergeChoice
from ._site import KindSite, SiteState, TrainResult

__all__ = [
    "KindContext", "KindServer", "KindSite", "MergeChoice", "ReportColumns", "SiteKind", "SiteState", "TrainResult",
    "all_strategies", "ceiling_kind", "get_kind", "kind_for_strategy", "list_kinds", "register_kind",
    "unregister_kind",
]
