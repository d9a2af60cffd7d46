"""The client side: Client, views, AsyncResult."""

from .asyncresult import AsyncResult
from .client import Client
from .view import DirectView

__all__ = ["AsyncResult", "Client", "DirectView"]
