"""Side-by-side comparison of assembly strategies on the same specialists (`fl-medlego compare`)."""

from .run import Comparison, compared_strategies
from .table import MULTITASK, print_whole, render_comparison, rich_table, specialists_row, summarize

__all__ = ["MULTITASK", "Comparison", "compared_strategies", "print_whole", "render_comparison", "rich_table",
           "specialists_row", "summarize"]
