"""The wire: framing, signing and serialization. Knows nothing of sockets' roles."""

from .outbox import Outbox, send_frames
from .protocol import BATCH, DELIM, InvalidMessage, Message, Payload, Session, batch, new_id
from .serialize import deserialize, serialize

__all__ = ["BATCH", "DELIM", "InvalidMessage", "Message", "Outbox", "Payload", "Session", "batch",
           "deserialize", "new_id", "send_frames", "serialize"]
