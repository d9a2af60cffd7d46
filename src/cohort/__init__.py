"""cohort: interactive, fault-tolerant parallel computing for Python.

    import cohort
    with cohort.Cluster(n=4) as rc:      # a local cluster for this script
        dv = rc[:]
        dv.map(pow, range(10), [2] * 10, block=True)

    rc = cohort.Client()                 # or join one started with `cohort start`
"""

from . import errors
from .client import AsyncResult, Client, DirectView, LoadBalancedView, MapResult
from .cluster import Cluster
from .errors import (CohortError, CompositeError, ControllerError, DependencyError, EngineError, NoEnginesError,
                     RemoteError, TaskAborted, TaskCancelled, TaskTimeout, TimeoutError)
from .coprocess import CoprocessResult, coprocess
from .policy import Policy

__version__ = "0.1.0"


def connect(connection_file=None, profile: str | None = None, **kwargs) -> Client:
    """Connect to a running cluster (same as ``Client(...)``)."""
    return Client(connection_file, profile=profile, **kwargs)


__all__ = ["AsyncResult", "Client", "Cluster", "CohortError", "CompositeError", "ControllerError",
           "CoprocessResult", "DependencyError", "coprocess",
           "DirectView", "EngineError", "LoadBalancedView", "MapResult", "NoEnginesError", "Policy",
           "RemoteError", "TaskAborted", "TaskCancelled", "TaskTimeout", "TimeoutError",
           "connect", "errors"]


def load_ipython_extension(ipython) -> None:
    """``%load_ext cohort``: the ``%px`` magics (see docs/interactive.md)."""
    from .client.magics import load_ipython_extension as load
    load(ipython)


def unload_ipython_extension(ipython) -> None:
    from .client.magics import unload_ipython_extension as unload
    unload(ipython)
