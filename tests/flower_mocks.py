"""Messages as Flower's runtime would deliver them, for testing handlers and strategies directly."""

import time
import uuid

from flwr.app import Error, Metadata, RecordDict
from flwr.app.message.message import make_message


def message(content: RecordDict | None, message_type: str, src: int = 0, dst: int = 1, error: str = ""):
    metadata = Metadata(run_id=1, message_id=uuid.uuid4().hex, src_node_id=src, dst_node_id=dst,
                        reply_to_message_id="", group_id="1", created_at=time.time(), ttl=3600,
                        message_type=message_type)
    if error:
        return make_message(metadata, error=Error(code=0, reason=error))
    return make_message(metadata, content)


def set_task_identity(run_id: int = 1, node_id: int = 0) -> None:
    """Flower's runtime sets who 'we' are before apps build messages; tests must do the same."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id = run_id
    TaskIdentity.node_id = node_id
    TaskIdentity.task_id = 1
