"""The wire: framing, signing and serialization. Knows nothing of sockets' roles."""

from .protocol import DELIM, InvalidMessage, Message, Payload, Session, new_id
from .serialize import deserialize, serialize

__all__ = ["DELIM", "InvalidMessage", "Message", "Payload", "Session", "new_id",
           "serialize", "deserialize"]
