"""The client side: Client, views, AsyncResult, MapResult, executor."""

from .asyncresult import AsyncResult
from .client import Client
from .lbview import LoadBalancedView
from .mapresult import MapResult
from .view import DirectView

__all__ = ["AsyncResult", "Client", "DirectView", "LoadBalancedView", "MapResult"]
