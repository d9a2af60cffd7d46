"""Engines that share one MPI world (started under ``mpiexec``).

Each engine of the world registers in rank order, so a fresh cluster's
engine ids follow the ranks (engine 0 is rank 0), and says which world it
belongs to: when one member dies, the controller stops the others, whose
collective calls could otherwise wait forever.
"""

from __future__ import annotations

import logging
import secrets

log = logging.getLogger(__name__)


class MPIWorld:
    """This engine's place in ``MPI.COMM_WORLD``."""

    def __init__(self):
        try:
            from mpi4py import MPI
        except ImportError as e:
            raise RuntimeError("an --mpi engine needs mpi4py (pip install mpi4py) and an MPI "
                               f"library (Debian: openmpi-bin libopenmpi-dev): {e}") from None
        self.comm = MPI.COMM_WORLD
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        # one id for the whole world, so the controller knows who shares it
        self.world = self.comm.bcast(secrets.token_hex(6) if self.rank == 0 else None, root=0)
        log.info("MPI rank %d of %d (world %s)", self.rank, self.size, self.world)

    def describe(self) -> dict:
        """What the engine tells the controller when it registers."""
        return {"rank": self.rank, "size": self.size, "world": self.world}

    def in_rank_order(self, action) -> None:
        """Run `action` on each rank in turn (rank 0 first), all ranks taking part."""
        for r in range(self.size):
            if r == self.rank:
                action()
            self.comm.Barrier()
