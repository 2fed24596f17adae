"""Messages as Flower's runtime would deliver them, for testing handlers and strategies directly."""

from fl_medlego.cli.local_run import set_task_identity
from fl_medlego.server.inprocess_grid import delivered_message as message

__all__ = ["message", "set_task_identity"]
