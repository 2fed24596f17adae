"""Site kinds, registered by name: what a site trains and sends, and how the server combines it."""

from . import adapter, full  # noqa: F401  (importing a kind's module registers it)
from ._registry import (
    SiteKind,
    SiteState,
    TrainResult,
    all_strategies,
    get_kind,
    kind_for_strategy,
    list_kinds,
    progress_line,
    register_kind,
)
from .full import WEIGHT_AVERAGING, average_backbones

__all__ = [
    "WEIGHT_AVERAGING", "SiteKind", "SiteState", "TrainResult", "all_strategies", "average_backbones", "get_kind",
    "kind_for_strategy", "list_kinds", "progress_line", "register_kind",
]
