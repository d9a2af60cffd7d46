"""The wire: framing, signing and serialization. Knows nothing of sockets' roles."""

from .outbox import Outbox, drain, recv_frames, send_frames
from .protocol import (BATCH, COPY, DELIM, TASK_TYPES, InvalidMessage, Message, Payload, Session,
                       batch, new_id)
from .serialize import deserialize, serialize

__all__ = ["BATCH", "COPY", "DELIM", "TASK_TYPES", "InvalidMessage", "Message", "Outbox", "Payload",
           "Session", "batch",
           "deserialize", "drain", "new_id", "recv_frames", "send_frames", "serialize"]
