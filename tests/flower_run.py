"""The private-SuperLink helpers live in the package (fl_medlego.cli.flower_run) so that benchmarks share them."""

from fl_medlego.cli.flower_run import flwr_run, local_flower

__all__ = ["flwr_run", "local_flower"]
