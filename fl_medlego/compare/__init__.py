"""Side-by-side comparison of assembly strategies on the same specialists (`fl-medlego compare`)."""

from .run import Comparison, all_strategies
from .table import render_comparison, summarize

__all__ = ["Comparison", "all_strategies", "render_comparison", "summarize"]
