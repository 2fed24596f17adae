"""Reuse the test suite's private-SuperLink helpers (free ports, own FLWR_HOME, stop by pid)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from flower_run import flwr_run, local_flower  # noqa: E402

__all__ = ["flwr_run", "local_flower"]
