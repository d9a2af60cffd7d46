"""Unit tests of the wire (signing, framing, serialization) and of error objects.

No sockets except one in-process zmq pair, to check arrays survive a real
zero-copy send. These tests only use `Session.build` / `Session.unpack` and
find the bytes to tamper with by content, so they hold whatever the exact
frame layout is.
"""

from __future__ import annotations

import hashlib
import hmac
import pickle
import struct

import msgpack
import numpy as np
import pytest
import zmq

import cohort
from cohort.errors import (CompositeError, ControllerError, EngineError, NoEnginesError,
                           RemoteError, TaskAborted, error_from_content)
from cohort.wire import (BATCH, DELIM, InvalidMessage, Outbox, Session, batch, deserialize,
                         serialize)
from cohort.wire.protocol import INLINE

KEY = b"k" * 32
BIG = 256 * 1024  # bytes: well above the size at which buffers go out of band


def _b(f) -> bytes:
    return f.bytes if hasattr(f, "bytes") else bytes(f)


def wire(frames) -> list:
    """Frames as bytes, as they would arrive from a socket."""
    return [_b(f) for f in frames]


def flip(frames, index: int, pos: int) -> list:
    out = list(frames)
    b = bytearray(out[index])
    b[pos] ^= 0x01
    out[index] = bytes(b)
    return out


def locate(frames, needle: bytes) -> tuple[int, int]:
    """(frame index, byte offset) of `needle` in the frames; fails if absent."""
    for i, f in enumerate(frames):
        pos = f.find(needle)
        if pos >= 0:
            return i, pos
    raise AssertionError(f"{needle!r} not found in any frame")


@pytest.fixture
def session():
    return Session(KEY, session_id="tester")


# --- sign / verify ---------------------------------------------------------------
def test_round_trip_header_content_objects(session):
    obj = {"x": [1, 2, 3], "s": "hello", "t": (1.5, None)}
    frames = wire(session.build("apply", {"code": "1+1", "n": 7}, objects=[obj, 42],
                                header={"target": 3}))
    assert DELIM in frames
    msg = Session(KEY).unpack(frames)
    assert msg.type == "apply"
    assert msg.header["target"] == 3
    assert msg.header["s"] == "tester"
    assert msg.id.startswith("tester-")
    assert msg.content == {"code": "1+1", "n": 7}
    assert msg.objects() == [obj, 42]
    assert msg.idents == []


def test_message_ids_are_unique(session):
    ids = {session.msg_id() for _ in range(1000)}
    assert len(ids) == 1000
    a = Session(KEY).unpack(wire(session.build("x"))).id
    b = Session(KEY).unpack(wire(session.build("x"))).id
    assert a != b


def test_routing_ids_and_forwarding_without_resigning(session):
    """The controller forwards `msg.frames` as they are behind a new routing id."""
    frames = wire(session.build("execute", {"code": "pass"}, objects=[b"z" * 10]))
    msg = Session(KEY).unpack([b"client-1", b"hop", *frames])
    assert msg.idents == [b"client-1", b"hop"]
    fwd = Session(KEY).unpack([b"engine-7", *wire(msg.frames)])
    assert fwd.idents == [b"engine-7"]
    assert fwd.id == msg.id and fwd.content == msg.content
    assert fwd.objects() == [b"z" * 10]


def test_unrouted_unpack(session):
    frames = wire(session.build("ping", {"a": 1}))
    assert frames[0] == DELIM
    msg = Session(KEY).unpack(frames, route=False)  # starts at the delimiter, no search
    assert msg.content == {"a": 1}


# --- batches --------------------------------------------------------------------
def _three(session):
    arr = np.arange(BIG // 8, dtype=np.float64)  # out of band: frames of their own
    return [session.build("apply", {"n": 1}, objects=[arr]),
            session.build("status", {"n": 2}),
            session.build("apply", {"n": 3}, objects=[b"small", arr[::-1].copy()])]


def test_batch_round_trip_keeps_order_buffers_and_routing(session):
    msgs = _three(session)
    frames = wire(batch(msgs))
    # the index, then each array's buffer; the small pickle streams travel in the envelopes
    assert frames[0] == BATCH and len(frames) == 2 + 1 + 0 + 1
    got = Session(KEY).receive_all([b"client-1", *frames])
    assert [m.content["n"] for m in got] == [1, 2, 3]
    assert all(m.idents == [b"client-1"] for m in got)
    np.testing.assert_array_equal(got[0].objects()[0], np.arange(BIG // 8, dtype=np.float64))
    small, rev = got[2].objects()
    assert small == b"small" and rev[0] == BIG // 8 - 1
    # one message of a batch is forwarded on its own, unchanged and still valid
    fwd = Session(KEY).unpack([b"engine-7", *wire(got[2].frames)])
    assert fwd.id == got[2].id and fwd.objects()[0] == b"small"
    # and batched again with others
    again = Session(KEY).receive_all(wire(batch([got[1].frames, got[0].frames])), route=False)
    assert [m.content["n"] for m in again] == [2, 1]


def test_batch_of_one_is_a_plain_message(session):
    one = session.build("x", {"a": 1})
    assert batch([one]) is one
    assert [m.content for m in Session(KEY).receive_all(wire(one))] == [{"a": 1}]


def test_batch_drops_only_the_tampered_message(session):
    msgs = _three(session)
    env = bytearray(wire(msgs[1])[1])
    env[-1] ^= 0x01  # its content
    msgs[1] = [DELIM, bytes(env)]
    got = Session(KEY).receive_all(wire(batch(msgs)), route=False)
    assert [m.content["n"] for m in got] == [1, 3]


@pytest.mark.parametrize("mangle", [
    lambda f: f[:1],                                  # no index
    lambda f: [f[0], f[1][:-3], *f[2:]],              # index cut inside an envelope
    lambda f: [f[0], f[1] + b"\x00\x00", *f[2:]],      # a partial length at the end
    lambda f: f[:-1],                                 # a buffer missing
    lambda f: [*f, b"stray"],                         # a buffer nobody names
    lambda f: [f[0], b"\x00\x00\x00\x05abcde", *f[2:]],  # an envelope too short to hold a signature
])
def test_malformed_batch_is_dropped_whole(session, mangle):
    frames = mangle(wire(batch(_three(session))))
    assert Session(KEY).receive_all(frames, route=False) == []


def test_outbox_sends_each_peers_messages_as_one_batch_in_order(session):
    ctx = zmq.Context()
    try:
        router = ctx.socket(zmq.ROUTER)
        port = router.bind_to_random_port("tcp://127.0.0.1")
        peers = {}
        for name in (b"a", b"b"):
            d = peers[name] = ctx.socket(zmq.DEALER)
            d.identity = name
            d.connect(f"tcp://127.0.0.1:{port}")
            d.send(b"hello")
            assert router.recv_multipart()[0] == name
        box = Outbox(router)
        for i in range(5):
            box.put(b"a" if i % 2 == 0 else b"b", session.build("x", {"i": i}))
        assert len(box) == 5
        box.flush()
        assert len(box) == 0
        box.flush()  # nothing left: sends nothing
        got = {}
        for name, d in peers.items():
            assert d.poll(5000)
            got[name] = [m.content["i"] for m in Session(KEY).receive_all(d.recv_multipart(),
                                                                           route=False)]
            assert not d.poll(100)  # one zmq message each
        assert got == {b"a": [0, 2, 4], b"b": [1, 3]}
    finally:
        ctx.destroy(linger=0)


def test_unpack_refuses_a_batch(session):
    with pytest.raises(InvalidMessage):
        Session(KEY).unpack(wire(batch(_three(session))))


def test_str_key_equals_bytes_key():
    frames = wire(Session("secret").build("t", {"a": 1}))
    assert Session(b"secret").unpack(frames).content == {"a": 1}


def test_empty_key_refused():
    with pytest.raises(ValueError):
        Session(b"")


def test_wrong_key_rejected(session):
    frames = wire(session.build("execute", {"code": "import os"}))
    with pytest.raises(InvalidMessage):
        Session(b"another key").unpack(frames)


# --- tampering -------------------------------------------------------------------
def test_tampered_header_rejected(session):
    frames = wire(session.build("execute", {"code": "pass"}, header={"zz": "HEADERMARK"}))
    i, pos = locate(frames, b"HEADERMARK")
    with pytest.raises(InvalidMessage):
        Session(KEY).unpack(flip(frames, i, pos))
    # a plausible forgery: same length, another value
    forged = list(frames)
    forged[i] = forged[i].replace(b"HEADERMARK", b"HEADERMARX")
    with pytest.raises(InvalidMessage):
        Session(KEY).unpack(forged)


def test_tampered_content_rejected(session):
    frames = wire(session.build("execute", {"code": "print('CONTENTMARK')"}))
    i, pos = locate(frames, b"CONTENTMARK")
    forged = list(frames)
    forged[i] = forged[i].replace(b"print('CONTENTMARK')", b"import os;os._exit(0)")
    with pytest.raises(InvalidMessage):
        Session(KEY).unpack(forged)
    with pytest.raises(InvalidMessage):
        Session(KEY).unpack(flip(frames, i, pos))


def test_tampered_signature_rejected(session):
    frames = wire(session.build("execute", {"code": "pass"}))
    d = frames.index(DELIM)
    # the HMAC-SHA256 digest is the first 32 bytes after the delimiter
    for pos in (0, 15, 31):
        with pytest.raises(InvalidMessage):
            Session(KEY).unpack(flip(frames, d + 1, pos))


def test_every_single_bit_flip_in_the_signed_part_is_rejected(session):
    """Exhaustive: no byte of delimiter, signature, header or content can change."""
    frames = wire(session.build("apply", {"c": "v"}, objects=[{"k": "v"}]))
    stream = serialize({"k": "v"})[0]
    n_checked = 0
    for i, f in enumerate(frames):
        for pos in range(len(f)):
            with pytest.raises(InvalidMessage):
                Session(KEY).unpack(flip(frames, i, pos))
            n_checked += 1
    assert n_checked > len(stream) + 64


def test_tampered_pickle_stream_rejected(session):
    """Pickle streams are code: they must be covered by the signature."""
    obj = {"payload": "PICKLEMARK" * 3, "pad": "x" * INLINE}  # too big to travel inline
    frames = wire(session.build("push", {}, objects=[obj]))
    stream = _b(serialize(obj)[0])
    assert stream in frames, "the pickle stream should travel as its own frame"
    i = frames.index(stream)
    j = stream.find(b"PICKLEMARK")
    with pytest.raises(InvalidMessage):
        Session(KEY).unpack(flip(frames, i, j))
    # swapping in another valid pickle of the same length is also refused
    evil = _b(serialize({"payload": "PICKLEMARX" * 3, "pad": "x" * INLINE})[0])
    assert len(evil) == len(stream)
    forged = list(frames)
    forged[i] = evil
    with pytest.raises(InvalidMessage):
        Session(KEY).unpack(forged)


def test_truncated_messages_rejected(session):
    arr = np.arange(BIG // 8 * 2, dtype=np.float64)
    frames = wire(session.build("push", {"a": 1}, objects=[{"arr": arr}]))
    d = frames.index(DELIM)
    assert len(frames) - d >= 3, "expected envelope frame(s) + stream + raw buffer"
    for k in range(d + 1, len(frames)):
        with pytest.raises(InvalidMessage):
            Session(KEY).unpack(frames[:k])
    # half of the first frame after the delimiter
    half = list(frames[:d + 1]) + [frames[d + 1][: len(frames[d + 1]) // 2]]
    with pytest.raises(InvalidMessage):
        Session(KEY).unpack(half)
    with pytest.raises(InvalidMessage):
        Session(KEY).unpack([])


@pytest.mark.parametrize("garbage", [
    [b"garbage"],
    [b""],
    [b"id", b"x", b"y", b"z"],
    [DELIM],
    [DELIM, b""],
    [DELIM, b"\x00" * 32],
    [DELIM, b"\x00" * 32, b"\x80", b"\x80"],
    [DELIM, b"\xff" * 200, b"\xc1", b"\xc1"],
    [DELIM, b"\x00" * 36 + b"\xde\xad\xbe\xef"],
    [DELIM, b"\x00" * 32 + b"\x7f\xff\xff\xff" + b"\x80"],
    [b"a"] * 20 + [DELIM, b"\x00" * 40],
], ids=repr)
def test_garbage_rejected_with_invalid_message(garbage):
    with pytest.raises(InvalidMessage):
        Session(KEY).unpack(garbage)


def test_no_delimiter_rejected(session):
    frames = wire(session.build("execute", {"code": "pass"}))
    without = [f for f in frames if f != DELIM]
    with pytest.raises(InvalidMessage):
        Session(KEY).unpack([b"ident", *without])


def test_buffer_length_mismatch_rejected(session):
    """Raw buffers are not hashed, but their lengths are signed."""
    arr = np.arange(BIG // 8 * 4, dtype=np.float64)
    frames = wire(session.build("push", {}, objects=[arr]))
    raw = arr.tobytes()
    assert raw in frames
    i = frames.index(raw)
    longer = list(frames)
    longer[i] = raw + b"\x00" * 8
    with pytest.raises(InvalidMessage):
        Session(KEY).unpack(longer)
    shorter = list(frames)
    shorter[i] = raw[:-8]
    with pytest.raises(InvalidMessage):
        Session(KEY).unpack(shorter)
    extra = list(frames) + [b"\x00" * 8]
    with pytest.raises(InvalidMessage):
        Session(KEY).unpack(extra)


def test_buffers_on_a_message_that_declares_none_rejected(session):
    frames = wire(session.build("execute", {"code": "pass"}))
    with pytest.raises(InvalidMessage):
        Session(KEY).unpack([*frames, b"smuggled"])


def test_raw_buffer_corruption_is_data_only(session):
    """Flipping bits of a raw array buffer changes data, never what code runs."""
    arr = np.zeros(BIG // 8 * 2, dtype=np.float64)
    frames = wire(session.build("push", {}, objects=[arr]))
    i = frames.index(arr.tobytes())
    msg = Session(KEY).unpack(flip(frames, i, 0))
    out = msg.objects()[0]
    assert isinstance(out, np.ndarray) and out.shape == arr.shape and out.dtype == arr.dtype


# --- serialization ---------------------------------------------------------------
def test_small_objects_are_one_frame():
    frames = serialize({"a": 1, "b": b"x" * 100})
    assert len(frames) == 1
    assert deserialize(frames) == {"a": 1, "b": b"x" * 100}


def test_small_pickle_streams_travel_inside_the_envelope(session):
    """A small call is one frame after the delimiter; big streams and arrays keep theirs."""
    arr = np.arange(BIG // 8, dtype=np.float64)
    big_stream = list(range(10_000))  # pickles to more than INLINE bytes, in band
    frames = wire(session.build("apply", {"k": 1}, objects=[(1, 2), "x" * 50]))
    assert frames[0] == DELIM and len(frames) == 2
    assert Session(KEY).unpack(frames).objects() == [(1, 2), "x" * 50]
    frames = wire(session.build("apply", {}, objects=["small", arr, big_stream, 7]))
    assert len(frames) == 2 + 1 + 1  # the array's buffer; the big list's stream
    msg = Session(KEY).unpack(frames)
    small, a, big, seven = msg.objects()
    assert small == "small" and big == big_stream and seven == 7
    np.testing.assert_array_equal(a, arr)


def test_tampered_inline_stream_rejected(session):
    frames = wire(session.build("apply", {}, objects=["payload-to-tamper"]))
    i, pos = locate(frames, b"payload-to-tamper")
    assert i == 1  # it is in the envelope
    with pytest.raises(InvalidMessage):
        Session(KEY).unpack(flip(frames, i, pos))


@pytest.mark.parametrize("inl", [[6], [0, 1], [-1], "x", [10**9]])
def test_bad_inline_lengths_rejected(session, inl):
    """A signed header with nonsense inline lengths is refused, not trusted."""
    hdr = msgpack.packb({"id": "i", "t": "apply", "s": "tester", "parts": [0], "inl": inl})
    hc = struct.pack("!I", len(hdr)) + hdr + msgpack.packb({}) + b"abcde"
    frames = [DELIM, hmac.new(KEY, hc, hashlib.sha256).digest() + hc]  # signed right
    with pytest.raises(InvalidMessage):
        Session(KEY).unpack(frames).objects()


def test_a_shipped_function_is_pickled_again_only_when_what_it_uses_changed():
    from cohort.wire.serialize import serialize_function
    ns = {"__name__": "__main__"}
    exec("def f(x):\n    return x * scale + len(names)\n", ns)
    ns["scale"], ns["names"] = 2, ("a", "b")
    f = ns["f"]
    first = serialize_function(f)
    assert serialize_function(f) is first              # nothing changed: the same bytes
    ns["scale"] = 3                                       # rebound: pickled again
    second = serialize_function(f)
    assert second is not first and deserialize(second.frames)(1) == 5
    ns["names"] = ["a", "b", "c"]                         # now mutable: never cached
    third = serialize_function(f)
    assert serialize_function(f) is not third
    assert deserialize(third.frames)(1) == 6
    del ns["names"]                                       # gone: pickled again, still callable
    assert serialize_function(f) is not third


def test_shipped_code_keeps_its_file_name_for_remote_tracebacks():
    """Newer cloudpickle names shipped code "<dynamic-code>"; cohort keeps the real
    file (inner functions too), so an engine's traceback can show the failing line."""
    ns = {"__name__": "__main__"}
    exec(compile("def outer():\n    inner = lambda: 1 / 0\n    return inner\n",
                 "/some/where/analysis.py", "exec"), ns)
    f = deserialize(serialize(ns["outer"]))
    assert f.__code__.co_filename == "/some/where/analysis.py"
    assert f().__code__.co_filename == "/some/where/analysis.py"


def test_closures_and_lambdas_serialize_by_value():
    n = 5

    def add(x):
        return x + n

    f = deserialize([_b(p) for p in serialize(add)])
    assert f(1) == 6
    g = deserialize([_b(p) for p in serialize(lambda x, k=2: x * k)])
    assert g(4) == 8 and g(4, k=3) == 12


@pytest.mark.parametrize("dtype", ["float64", "int32", "complex128", "uint8", "bool"])
def test_numpy_array_out_of_band_bit_exact(dtype):
    rng = np.random.default_rng(1)
    arr = (rng.standard_normal(300_000) * 1000).astype(dtype)
    frames = serialize(arr)
    assert len(frames) > 1, "a large array must travel as an out-of-band buffer"
    assert memoryview(frames[1]).nbytes == arr.nbytes
    out = deserialize(frames)
    assert out.dtype == arr.dtype and out.shape == arr.shape
    assert out.tobytes() == arr.tobytes()
    assert out.flags.writeable
    out[0] = out[1]  # writable in place


def test_numpy_nan_and_inf_payload_bits_survive():
    arr = np.full(100_000, np.nan)
    arr[1] = np.inf
    arr[2] = -0.0
    arr.view(np.uint64)[3] = 0x7FF8DEADBEEF0001  # a NaN with a payload
    out = deserialize([_b(f) for f in serialize(arr)])
    assert out.view(np.uint64).tobytes() == arr.view(np.uint64).tobytes()


def test_numpy_non_contiguous_and_fortran_order():
    base = np.arange(600_000, dtype=np.float64).reshape(600, 1000)
    for arr in (base.T, base[::2, ::3], np.asfortranarray(base)):
        out = deserialize([_b(f) for f in serialize(arr)])
        np.testing.assert_array_equal(out, arr)


def test_numpy_round_trip_through_a_real_zmq_socket_is_writable(session):
    """Zero-copy frames from a socket: equal, and writable (not a read-only view)."""
    arr = np.random.default_rng(2).standard_normal(500_000)
    ctx = zmq.Context()
    try:
        a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
        a.bind("inproc://wire-test")
        b.connect("inproc://wire-test")
        a.send_multipart(session.build("push", {}, objects=[{"arr": arr}]), copy=False)
        assert b.poll(5000)
        got = b.recv_multipart(copy=False)
        assert len(got) >= 3
        out = Session(KEY).unpack(got).objects()[0]["arr"]
        assert out.tobytes() == arr.tobytes()
        assert out.flags.writeable
        expected = arr * 2  # (inproc may share memory with `arr`: compute this first)
        out *= 2
        np.testing.assert_array_equal(out, expected)
        a.close(0)
        b.close(0)
    finally:
        ctx.destroy(0)


# --- errors: formatting and mapping from reply content ------------------------------
def test_remote_error_formatting_and_fields():
    e = RemoteError(3, "ValueError", "bad value", "Traceback...\n  line 1\nValueError: bad value\n",
                    task_id="t-1")
    s = str(e)
    assert s.startswith("[engine 3] ValueError: bad value")
    assert "line 1" in s
    assert not s.endswith("\n")
    assert (e.engine_id, e.ename, e.evalue, e.task_id) == (3, "ValueError", "bad value", "t-1")
    assert isinstance(e, cohort.CohortError)
    assert str(RemoteError(None, "KeyError", "'k'")) == "KeyError: 'k'"


def test_remote_error_pickles():
    e = RemoteError(1, "ZeroDivisionError", "division by zero", "tb text", "t-9")
    e2 = pickle.loads(pickle.dumps(e))
    assert type(e2) is RemoteError
    assert (e2.engine_id, e2.ename, e2.evalue, e2.traceback, e2.task_id) == \
        (1, "ZeroDivisionError", "division by zero", "tb text", "t-9")


def test_composite_error():
    errs = [RemoteError(0, "ValueError", "a", "tb0"), RemoteError(1, "TypeError", "b", "tb1")]
    c = CompositeError(errs)
    assert isinstance(c, RemoteError)
    assert c.errors == errs
    assert c.engine_id == 0 and c.ename == "ValueError"
    s = str(c)
    assert s.splitlines()[0] == "2 engines raised exceptions:"
    assert "[engine 0] ValueError: a" in s and "[engine 1] TypeError: b" in s
    with pytest.raises(RemoteError) as info:
        c.raise_first()
    assert info.value is errs[0]
    c2 = pickle.loads(pickle.dumps(c))
    assert [(x.engine_id, x.ename) for x in c2.errors] == [(0, "ValueError"), (1, "TypeError")]


def test_timeout_error_is_also_builtin_timeout_error():
    assert issubclass(cohort.TimeoutError, TimeoutError)
    assert issubclass(cohort.TimeoutError, cohort.CohortError)


def test_error_from_content_mapping():
    e = error_from_content({"ename": "TaskAborted", "evalue": "gone"}, 2)
    assert isinstance(e, TaskAborted) and str(e) == "gone"
    e = error_from_content({"ename": "EngineError", "evalue": "died", "engine": 4})
    assert isinstance(e, EngineError) and e.engine_id == 4
    e = error_from_content({"ename": "EngineError", "evalue": "died"}, engine_id=5)
    assert e.engine_id == 5
    assert isinstance(error_from_content({"ename": "NoEnginesError", "evalue": "x"}), NoEnginesError)
    e = error_from_content({"ename": "KeyError", "evalue": "'a'", "traceback": "tb", "engine": 1},
                           task_id="t")
    assert type(e) is RemoteError
    assert (e.engine_id, e.ename, e.evalue, e.traceback, e.task_id) == (1, "KeyError", "'a'", "tb", "t")
    assert isinstance(ControllerError("x"), cohort.CohortError)


def test_weak_id_map_keeps_nothing_alive_and_survives_id_reuse():
    import gc

    from cohort.wire.weakmap import WeakIdMap

    class Thing:
        pass

    m = WeakIdMap()
    a, b = Thing(), Thing()
    m[a] = 1
    m[b] = 2
    assert m.get(a) == 1 and m.get(b) == 2 and m.get(Thing(), "none") == "none"
    m[a] = 3  # replaced: the old entry's death notice must not remove the new one
    gc.collect()
    assert m.get(a) == 3 and len(m) == 2
    del a
    gc.collect()
    assert len(m) == 1
    for _ in range(1000):  # new objects, some at the dead one's address: never its value
        assert m.get(Thing()) is None
