"""Starting clusters: controller and engines as processes."""

from .local import Cluster

__all__ = ["Cluster"]
