"""Offline pretraining of the default backbone, and the fixed protocol that measures a base.

No patient data and no download: formula-driven fractals (`fractals`), procedural noise (`procedural`) and
public-domain photographs shipped by scikit-image (`natural`), learnt by category supervision or SimCLR.
"""

from .evaluate import TASKS, ProtocolSettings, evaluate_one, file_sha256, run_protocol
from .recipes import RECIPES, Recipe, get_recipe
from .runner import PretrainSettings, pretrain
from .table import render_markdown, table_rows, write_tables

__all__ = ["RECIPES", "TASKS", "PretrainSettings", "ProtocolSettings", "Recipe", "evaluate_one", "file_sha256",
           "get_recipe", "pretrain", "render_markdown", "run_protocol", "table_rows", "write_tables"]
