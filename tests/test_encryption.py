"""CurveZMQ: a controller reachable from other hosts encrypts its traffic.

Tests bind 127.0.0.1 with ``encrypt=True`` (the machine's routable addresses
are off limits here); what a routable bind decides is checked on
`ConnectionInfo` alone.
"""

from __future__ import annotations

import os
import stat

import pytest
import zmq

import cohort
from cohort.profile import ConnectionInfo, is_loopback
from cohort.wire import Session


def test_loopback_is_signed_only_and_routable_is_encrypted():
    assert ConnectionInfo.new("127.0.0.1").curve == {}
    assert is_loopback("localhost") and is_loopback("::1") and not is_loopback("10.1.2.3")
    info = ConnectionInfo.new("10.1.2.3")
    assert set(info.curve) == {"server_public", "server_secret", "client_public", "client_secret"}
    assert all(len(v) == 40 for v in info.curve.values())  # z85 of 32-byte keys
    wild = ConnectionInfo.new("0.0.0.0")
    wild.ports = {"client": 5555}
    assert wild.curve and wild.location and "0.0.0.0" not in wild.url("client")


def test_keys_survive_the_connection_file(tmp_path):
    info = ConnectionInfo.new("127.0.0.1", encrypt=True)
    info.ports = {"client": 1, "engine": 2, "hb_ping": 3, "hb_pong": 4}
    path = info.write(tmp_path / "c.json")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert ConnectionInfo.read(path).curve == info.curve
    moved = ConnectionInfo.read(path)
    moved.curve = {}
    assert moved.moved_to("192.0.2.7").curve, "moving to a routable address adds keys"


def test_encrypted_cluster_runs_tasks_and_plain_peers_get_nothing(make_cluster):
    cl = make_cluster(n=2, encrypt=True)
    rc = cl.client
    assert rc.info.curve
    assert sorted(rc[:].apply_sync(lambda: 6 * 7)) == [42, 42]
    lv = rc.load_balanced_view()
    assert lv.map(lambda x: x + 1, range(50), block=True) == list(range(1, 51))

    # a peer that knows the signing key but not the Curve keys is never answered
    session = Session(rc.info.key)
    ctx = zmq.Context()
    try:
        plain = ctx.socket(zmq.DEALER)
        plain.identity = session.id.encode()  # replies are routed to the session's id
        plain.linger = 0
        plain.connect(rc.info.url("client"))
        plain.send_multipart(session.build("connect", {}))
        assert plain.poll(1500) == 0

        # the same peer with the client keys from the connection file is answered
        curved = ctx.socket(zmq.DEALER)
        curved.identity = session.id.encode()
        curved.linger = 0
        rc.info.secure_client(curved)
        curved.connect(rc.info.url("client"))
        curved.send_multipart(session.build("connect", {}))
        assert curved.poll(10_000), "an encrypted peer with the keys gets a reply"
    finally:
        ctx.destroy(linger=0)
    assert rc[0].apply_sync(pow, 2, 10) == 1024, "the cluster is unharmed"


def test_cli_controller_on_a_routable_address_writes_keys(tmp_path):
    cf = tmp_path / "controller.json"
    ConnectionInfo.new("127.0.0.1").write(cf)
    info = ConnectionInfo.read(cf).moved_to("0.0.0.0")
    assert info.curve and info.location
    with pytest.raises(Exception):
        ConnectionInfo.read(tmp_path / "missing.json")
