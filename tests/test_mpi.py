"""Engines under mpiexec share one MPI world and are steered interactively.

Needs Open MPI (Debian openmpi-bin, libopenmpi-dev) and mpi4py, which
`.ci/run` installs; set COHORT_SKIP_MPI=1 to skip where neither is available.
"""

from __future__ import annotations

import os
import shutil
import signal
import time

import pytest

import cohort
from cohort.errors import EngineError

PI_CODE = """
from mpi4py import MPI
import random
comm = MPI.COMM_WORLD
random.seed(1234 + comm.rank)
n = 100_000
inside = sum(1 for _ in range(n) if random.random() ** 2 + random.random() ** 2 <= 1.0)
total = comm.reduce(inside, op=MPI.SUM, root=0)
pi = 4.0 * total / (n * comm.size) if comm.rank == 0 else None
"""


def require_mpi() -> None:
    """Fail (or skip with COHORT_SKIP_MPI=1) unless mpiexec and mpi4py are there."""
    if os.environ.get("COHORT_SKIP_MPI") == "1":
        pytest.skip("COHORT_SKIP_MPI=1")
    if shutil.which("mpiexec") is None:
        pytest.fail("mpiexec not found: run .ci/run (or .ci/services/mpi.sh) to install Open MPI")
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        pytest.fail("mpi4py is not installed: run .ci/run (or pip install -e '.[test]')")


@pytest.fixture(scope="module")
def mpi_ready():
    require_mpi()


def test_pi_interactively_under_mpiexec(mpi_ready, make_cluster):
    cl = make_cluster(n=3, engines="mpi")
    rc = cl.client
    assert rc.ids == [0, 1, 2]
    # ids follow ranks, and each engine knows its rank and the world's size
    assert [rc.engines[i]["mpi"]["rank"] for i in rc.ids] == [0, 1, 2]
    dv = rc[:]
    dv.execute("from mpi4py import MPI; rank = MPI.COMM_WORLD.Get_rank(); "
               "size = MPI.COMM_WORLD.Get_size()", block=True)
    assert dv.pull("rank", block=True) == [0, 1, 2]
    assert dv.pull("size", block=True) == [3, 3, 3]
    dv.execute(PI_CODE, block=True)
    pi = rc[0]["pi"]
    assert abs(pi - 3.14159) < 0.02
    assert rc[1]["pi"] is None


def test_client_steers_engines_that_exchange_data(mpi_ready, make_cluster):
    """Push parameters, run a step in which ranks talk to each other, pull results."""
    cl = make_cluster(n=2, engines="mpi")
    dv = cl.client[:]
    dv.execute("from mpi4py import MPI; import numpy as np; comm = MPI.COMM_WORLD", block=True)
    step = """
left = np.full(4, float(comm.rank) * scale)
right = comm.sendrecv(left, dest=(comm.rank + 1) % comm.size, source=(comm.rank - 1) % comm.size)
state = state + right
"""
    dv.push({"scale": 10.0, "state": 0.0}, block=True)
    for _ in range(3):
        dv.execute(step, block=True)
    states = dv.pull("state", block=True)
    assert [list(s) for s in states] == [[30.0] * 4, [0.0] * 4]  # each got its neighbour's
    dv.push({"scale": 1.0}, block=True)
    dv.execute(step, block=True)
    assert [list(s) for s in dv.pull("state", block=True)] == [[31.0] * 4, [0.0] * 4]


def test_killing_one_mpi_engine_fails_the_others_instead_of_hanging(mpi_ready, make_cluster):
    cl = make_cluster(n=3, engines="mpi", restart_engines=False)
    rc = cl.client
    dv = rc[:]
    dv.execute("from mpi4py import MPI; comm = MPI.COMM_WORLD", block=True)
    # ranks 0 and 2 wait in a collective that needs rank 1, which sleeps; then rank 1 dies
    ar = dv.execute("import time\nif comm.rank == 1: time.sleep(600)\ncomm.Barrier()")
    time.sleep(1.0)
    os.kill(rc.engines[1]["pid"], signal.SIGKILL)
    with pytest.raises(Exception) as info:
        ar.get(timeout=30)
    err = info.value
    errors = getattr(err, "errors", [err])
    assert errors and all(isinstance(e, EngineError) for e in errors), errors
    assert any("MPI" in str(e) or "died" in str(e) for e in errors)
    deadline = time.monotonic() + 30
    while rc.ids and time.monotonic() < deadline:
        time.sleep(0.1)
    assert rc.ids == [], "every engine of the broken world left the cluster"


def test_mpiexec_missing_says_what_to_install(make_cluster, tmp_path):
    with pytest.raises(cohort.errors.ClusterStartError, match="not on PATH"):
        make_cluster(n=2, engines="mpi", mpiexec=str(tmp_path / "no-such-mpiexec"))
