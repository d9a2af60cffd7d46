"""How low can a remote call's latency go here? The floor under cohort's design.

Run from the repository root::

    python bench/latency_floor.py                 # 2,000 calls per path, 3 rounds, interleaved
    python bench/latency_floor.py --calls 5000 --rounds 5

Issue 2 asks for a trivial `apply` in ≤ 200 µs median "with a controller in
between". This script measures what ZeroMQ and CPython allow on this machine
for the shapes a call could take, each with the least Python a cohort call
could possibly do (sign and check with `cohort.wire.Session`, pickle the
function and arguments, unpickle the result — no futures, no threads of our
own, no records):

* ``bare 2``: a 1-byte zmq ping-pong between two processes (no Python work);
* ``bare 3``: the same through a third process forwarding in C
  (`zmq.devices.MonitoredQueue`, its copies dropped: no Python anywhere there);
* ``lean 2``: client ↔ engine directly, with the Python work above;
* ``lean 3``: the same through the C forwarder, whose copies of every message
  a Python thread in that process checks and decodes (what a controller
  would have to do to keep its records), off the path;
* ``cohort``: `rc[0].apply_sync(f)` on a real 2-engine `cohort.Cluster`.

Paths are measured in turn, round after round, so that the machine's drift
hits all alike; the table gives the median over rounds of each round's
median and p99, in microseconds.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import zmq  # noqa: E402
import zmq.devices  # noqa: E402

KEY = b"latency-floor-key-0123456789abcdef"
WARMUP = 200


def _inc(x):
    return x + 1


# --- the far ends (each in its own process) -------------------------------------------
def _echo(url: str, bind: bool, lean: bool, ready) -> None:
    """An engine: answers each message (lean: runs the shipped call, signs a result)."""
    from cohort.wire import Session
    from cohort.wire.serialize import deserialize
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.identity = b"engine"
    s.bind(url) if bind else s.connect(url)
    sess = Session(KEY)
    functions: dict = {}
    ready.set()
    while True:
        frames = s.recv_multipart(copy=False)
        if not lean:
            s.send_multipart(frames, copy=False)
            continue
        (msg,) = sess.receive_all(frames)
        fn_frames, arg_frames = msg.object_frames()
        key = bytes(fn_frames[0])
        f = functions.get(key) or functions.setdefault(key, deserialize(fn_frames))
        args, kwargs = deserialize(arg_frames)
        started = time.time()
        value = f(*args, **kwargs)
        header = {"parent": msg.header["id"], "status": "ok", "started": started,
                  "completed": time.time()}
        s.send_multipart(list(msg.idents) + sess.build("result", {"status": "ok"}, (value,),
                                                       header=header), copy=False)


def _forwarder(in_url: str, out_url: str, decode: bool, ready) -> None:
    """A controller that forwards in C; a Python thread checks its copies (`decode`)."""
    from cohort.wire import Session
    ctx = zmq.Context()
    dev = zmq.devices.ThreadMonitoredQueue(zmq.ROUTER, zmq.ROUTER, zmq.PUB)
    dev.context_factory = lambda: ctx
    dev.bind_in(in_url)
    dev.bind_out(out_url)
    dev.bind_mon("inproc://copies")
    dev.start()
    time.sleep(0.2)  # the device's sockets are bound
    if not decode:  # nobody subscribes: the copies are dropped in C
        ready.set()
        while True:
            time.sleep(3600)
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect("inproc://copies")
    sess = Session(KEY)
    ready.set()
    while True:
        sess.receive_all(sub.recv_multipart(copy=False)[1:])


# --- the client ------------------------------------------------------------------------------
class CallPath:
    def __init__(self, name: str, hops: int, lean: bool):
        self.name, self.hops, self.lean = name, hops, lean
        self.procs: list = []
        self.sock = None

    def start(self, ctx, base_port: int) -> None:
        mpc = mp.get_context("spawn")
        e_url = f"tcp://127.0.0.1:{base_port}"
        if self.hops == 3:
            in_url = f"tcp://127.0.0.1:{base_port + 1}"
            r = mpc.Event()
            p = mpc.Process(target=_forwarder, args=(in_url, e_url, self.lean, r), daemon=True)
            p.start()
            r.wait(30)
            self.procs.append(p)
        r = mpc.Event()
        p = mpc.Process(target=_echo, args=(e_url, self.hops == 2, self.lean, r), daemon=True)
        p.start()
        r.wait(30)
        self.procs.append(p)
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.connect(in_url if self.hops == 3 else e_url)
        time.sleep(0.3)

    def call_once(self, i: int, sess, fn) -> None:
        route = [b"engine"] if self.hops == 3 else []
        if not self.lean:
            self.sock.send_multipart(route + [b"x"])
            self.sock.recv_multipart()
            return
        from cohort.wire import Payload
        frames = sess.build("apply", None, header={"target": 0}, payload=Payload((fn, ((i,), {}))))
        self.sock.send_multipart(route + frames, copy=False)
        (msg,) = sess.receive_all(self.sock.recv_multipart(copy=False))
        if msg.objects()[0] != i + 1:
            raise AssertionError("wrong result")

    def stop(self) -> None:
        self.sock.close(0)
        for p in self.procs:
            p.terminate()
            p.join(5)


def _timed(call, n: int) -> tuple:
    for i in range(WARMUP):
        call(i)
    lat = []
    for i in range(n):
        t = time.perf_counter()
        call(i)
        lat.append(time.perf_counter() - t)
    lat.sort()
    return lat[n // 2] * 1e6, lat[int(n * 0.99)] * 1e6


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=2000, help="timed calls per path and round")
    ap.add_argument("--rounds", type=int, default=3, help="rounds over all paths (default 3)")
    ap.add_argument("--port", type=int, default=5830, help="first of the loopback ports used")
    args = ap.parse_args(argv)

    import cohort
    from cohort.wire import Session
    from cohort.wire.serialize import serialize_function

    paths = [CallPath("bare 2", 2, False), CallPath("bare 3", 3, False),
             CallPath("lean 2", 2, True), CallPath("lean 3", 3, True)]
    ctx = zmq.Context()
    for k, p in enumerate(paths):
        p.start(ctx, args.port + 2 * k)
    sess = Session(KEY)
    fn = serialize_function(_inc)
    results: dict = {p.name: [] for p in paths}
    results["cohort"] = []
    try:
        with cohort.Cluster(n=2) as rc:
            rc.wait_for_engines(2)
            view = rc[0]
            for r in range(args.rounds):
                for p in paths:
                    results[p.name].append(_timed(lambda i: p.call_once(i, sess, fn), args.calls))
                results["cohort"].append(_timed(lambda i: view.apply_sync(_inc, i), args.calls))
                print(f"round {r + 1}/{args.rounds}: " + ", ".join(
                    f"{k} {v[-1][0]:.0f}" for k, v in results.items()), file=sys.stderr)
    finally:
        for p in paths:
            p.stop()
    what = {"bare 2": "1-byte zmq ping-pong, 2 processes",
            "bare 3": "1-byte, through a C forwarder (3 processes)",
            "lean 2": "least Python a call needs, client <-> engine",
            "lean 3": "the same through a C forwarder + Python copies",
            "cohort": "rc[0].apply_sync(f), real cluster"}
    print(f"\n{'path':8}  {'median us':>9}  {'p99 us':>7}  what")
    for name, rows in results.items():
        med = statistics.median(r[0] for r in rows)
        p99 = statistics.median(r[1] for r in rows)
        print(f"{name:8}  {med:9.0f}  {p99:7.0f}  {what[name]}")
    print(f"\n{args.rounds} rounds x {args.calls} calls per path, interleaved; "
          f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
